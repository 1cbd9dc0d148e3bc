"""Image formation: sample the anatomy on a scanner grid in its own pose, with partial volume,
point-spread blur and noise.

``pose`` is the planning->session rigid transform and ``breathing`` the session's breathing state
(:mod:`isotox.sample.breathing`); a session voxel at x_s shows the anatomy at
``breathing.pull_back(pose.apply_inverse(x_s))``. Partial volume: every voxel is the mean over s^3 sub-points
(evaluated only where a surface may cross the voxel, :func:`_render_slice`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from isotox.geometry import ImageGrid, RigidTransform
from isotox.sample.anatomy import Anatomy, AnatomySample, texture_field
from isotox.sample.breathing import Breathing

#: Values of one image at the sample's points. With partial volume (:func:`render`, supersample
#: > 1) a painter may read the tissue, rho (inside the tumour), the texture (affinely, as
#: ``CtLook.hu``: the voxel mean of the texture stands in for the mean of the painter) and the
#: *signs* of the structures' level sets: a voxel away from every surface is painted once, at
#: its centre.
Painter = Callable[[AnatomySample], NDArray[np.float64]]

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def sub_offsets(supersample: int) -> NDArray[np.float64]:
    return (np.arange(supersample) + 0.5) / supersample - 0.5


def slice_subpoints(grid: ImageGrid, k: int, supersample: int) -> NDArray[np.float64]:
    """(s, rows*s, cols*s, 3) LPS points: sub-slices of slice k, each supersampled in-plane."""
    return np.stack([_plane_points(grid, k + dz, supersample) for dz in sub_offsets(supersample)])


def _plane_points(grid: ImageGrid, k: float, s: int) -> NDArray[np.float64]:
    off = sub_offsets(s)
    ii = (np.arange(grid.size[0])[:, None] + off[None, :]).ravel()
    jj = (np.arange(grid.size[1])[:, None] + off[None, :]).ravel()
    jgrid, igrid = np.meshgrid(jj, ii, indexing="ij")
    ijk = np.stack([igrid, jgrid, np.full_like(igrid, k)], axis=-1)
    return grid.index_to_physical(ijk.reshape(-1, 3)).reshape(jgrid.shape + (3,))


def _to_anatomy(points: NDArray[np.float64], pose: RigidTransform | None, breathing: Breathing | None) -> NDArray[np.float64]:
    """Scanner points -> the planning points whose anatomy they show."""
    if pose is not None:
        points = pose.apply_inverse(points)
    if breathing is not None:
        points = breathing.pull_back(points)
    return points


def render(grid: ImageGrid, anatomy: Anatomy, pose: RigidTransform | None, painters: dict[str, Painter], supersample: int = 1,
           breathing: Breathing | None = None, at_centres: dict[str, Painter] | None = None) -> dict[str, NDArray[np.float64]]:
    """Evaluate several painters on ``grid`` in one pass over the anatomy; arrays (k, j, i).

    With ``supersample`` > 1 the partial-volume mean is adaptive (:func:`_render_slice`).
    ``at_centres`` painters are taken at the voxel centres without partial volume (level sets
    for contouring: the centres are evaluated anyway, so these cost no second pass).
    """
    at_centres = at_centres or {}
    out = {name: np.zeros(grid.shape, np.float32) for name in [*painters, *at_centres]}  # float32: clinical matrices
    for k in range(grid.size[2]):
        if supersample == 1:
            centre = anatomy.evaluate(_to_anatomy(slice_subpoints(grid, k, 1), pose, breathing)[0])
            values = {name: paint(centre) for name, paint in painters.items()}
        else:
            centre, values = _render_slice(anatomy, painters, _SliceVoxels(grid, k, supersample, pose, breathing))
        for name, paint in at_centres.items():
            out[name][k] = paint(centre)
        for name, v in values.items():
            out[name][k] = v
    return out


class _SliceVoxels:
    """The voxels of slice ``k`` in anatomy coordinates: centres, and sub-points on demand.

    Sub-points are made only for the voxels that need them (mapping all 2.9 M sub-points of a
    breathing PET through the pose and the pull-back was a third of its render).
    """

    def __init__(self, grid: ImageGrid, k: int, s: int, pose: RigidTransform | None, breathing: Breathing | None) -> None:
        self.grid, self.k, self.s, self.pose, self.breathing = grid, k, s, pose, breathing
        self.affine = breathing is None or not any(breathing.shift_mm)
        self.rigid_centres = _to_anatomy(grid.slice_points(k), pose, None)
        self.centres = _to_anatomy(self.rigid_centres, None, breathing)
        off = sub_offsets(s)
        self.offsets = np.stack([g.ravel() for g in np.meshgrid(off, off, off, indexing="ij")], axis=-1)  # (s^3, 3): dk, dj, di
        # the pose is rigid: in planning space too the sub-points lie this far from the centre
        spacing = np.asarray(grid.spacing)[::-1]  # (k, j, i) order, as the offsets
        self.lattice_radius = float(np.sqrt(((self.offsets * spacing) ** 2).sum(-1).max()))

    def subpoints(self, voxels: NDArray[np.bool_] | None = None) -> NDArray[np.float64]:
        """(n, s^3, 3) sub-points of the selected (rows, cols) voxels, all if None: the same
        coordinates as :func:`slice_subpoints` (index + offset, then the grid, pose and breathing)."""
        rows, cols = np.nonzero(voxels) if voxels is not None else np.indices(self.centres.shape[:2]).reshape(2, -1)
        i = cols[:, None] + self.offsets[None, :, 2]
        j = rows[:, None] + self.offsets[None, :, 1]
        ijk = np.stack([i, j, np.broadcast_to(self.k + self.offsets[:, 0], i.shape)], axis=-1)
        pts = self.grid.index_to_physical(ijk.reshape(-1, 3))
        return _to_anatomy(pts, self.pose, self.breathing).reshape(ijk.shape)

    def spread_bound(self) -> float | NDArray[np.float64]:
        """An upper bound of each voxel's centre-to-sub-point distance in anatomy coordinates
        (grown by 1e-9 relative for rounding): the lattice radius, stretched by the breathing
        displacement's local Lipschitz bound (:meth:`Breathing.local_lipschitz`)."""
        if self.affine:
            return self.lattice_radius * (1.0 + 1e-9)
        assert self.breathing is not None
        return self.lattice_radius * (1.0 + self.breathing.local_lipschitz(self.rigid_centres, self.lattice_radius)) * (1.0 + 1e-9)


def _render_slice(anatomy: Anatomy, painters: dict[str, Painter], voxels: _SliceVoxels) -> tuple[AnatomySample, dict[str, NDArray[np.float64]]]:
    """Partial-volume means of one slice.

    Why: the full mean evaluated the anatomy at s^3 = 8 points per voxel, 12 of the 26 CPU
    seconds of a small-preset patient, yet only voxels a surface passes through are mixed
    (9-19 % of them). The anatomy is evaluated at the centres first; a voxel whose sub-points
    all lie within its centre's clearance (:meth:`Anatomy.evaluate`) has one tissue and one set
    of structure memberships at all of them, so every painter's mean there is its value at the
    centre, the texture (the one smooth field painters read there; rho only matters in the
    tumour, whose clearance is 0) replaced by its voxel mean (:func:`_uniform_texture`). Only the
    other voxels are evaluated at their sub-points, as before: the result equals the full mean up
    to rounding. Returns the centre sample too (for ``at_centres``).
    """
    centre = anatomy.evaluate(voxels.centres, clearance=True)
    assert centre.clearance is not None
    mixed = ~(centre.clearance > voxels.spread_bound())  # clear of every sub-point: uniform
    sub = voxels.subpoints(mixed)
    if not voxels.affine and len(sub):  # breathing: the bound is loose, measure each candidate
        d2 = sum((sub[..., i] - voxels.centres[mixed][:, None, i]) ** 2 for i in range(3))  # per component: see levelsets.ellipsoid
        near = ~(centre.clearance[mixed] ** 2 > d2.max(axis=-1))
        mixed[mixed] = near
        sub = sub[near]
    centre.texture_of = _uniform_texture(centre, voxels)
    mixed_sample = anatomy.evaluate(sub) if len(sub) else None
    out = {}
    for name, paint in painters.items():
        values = np.array(paint(centre), dtype=np.float64)
        if mixed_sample is not None:
            values[mixed] = paint(mixed_sample).mean(axis=-1)
        out[name] = values
    return centre, out


def _uniform_texture(centre: AnatomySample, voxels: _SliceVoxels) -> Callable[[], NDArray[np.float64]]:
    """The voxel-mean texture at the centres, computed when a painter first asks for it.

    Through an affine map the sub-points are one lattice symmetric about every centre, so each
    wave's mean is its centre value times the mean of cos(k . offset) (exact; 1/8 of the cosines
    of the 6 M sub-points of a small planning CT, 3.6 s). A breathing session's pull-back bends the
    lattice (by up to ~0.3 mm across a voxel, a 0.1 rad phase of a 14 mm wave), so there the
    mean is taken over the sub-points themselves.
    """
    waves, centres = centre.waves, voxels.centres
    shape = centres.shape[:-1]
    if voxels.affine:
        one = np.zeros(shape, bool)
        one[0, 0] = True
        offsets = voxels.subpoints(one)[0] - centres[0, 0]
        gain = np.cos(offsets @ waves[:, :3].T).mean(axis=0)
        return lambda: texture_field(centres, waves, gain)
    return lambda: texture_field(voxels.subpoints(), waves).mean(axis=-1).reshape(shape)


def psf_blur(image: NDArray[np.float64], grid: ImageGrid, fwhm_mm: float) -> NDArray[np.float64]:
    """Isotropic Gaussian PSF of the given FWHM (mm) on an anisotropic grid."""
    sigma_vox = [fwhm_mm * FWHM_TO_SIGMA / s for s in (grid.spacing[2], grid.spacing[1], grid.spacing[0])]
    return ndimage.gaussian_filter(image, sigma=sigma_vox, mode="nearest")


def pet_noise(rng: np.random.Generator, suv: NDArray[np.float64], cv_at_suv1: float) -> NDArray[np.float64]:
    """Count-like noise: standard deviation proportional to sqrt(SUV) (CV ``cv_at_suv1`` at SUV 1)."""
    noisy = suv + rng.normal(size=suv.shape) * cv_at_suv1 * np.sqrt(np.clip(suv, 0.0, None))
    return np.clip(noisy, 0.0, None)
