"""Image formation: sample the anatomy on a scanner grid in its own pose, with partial volume,
point-spread blur and noise.

``pose`` is the planning->session rigid transform and ``breathing`` the session's breathing state
(:mod:`isotox.sample.breathing`); a session voxel at x_s shows the anatomy at
``breathing.pull_back(pose.apply_inverse(x_s))``. Partial volume: every voxel is the mean over s^3 sub-points.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from isotox.geometry import ImageGrid, RigidTransform
from isotox.sample.anatomy import Anatomy, AnatomySample
from isotox.sample.breathing import Breathing

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


def _block_mean(values: NDArray[np.float64], s: int) -> NDArray[np.float64]:
    """(s, rows*s, cols*s) -> (rows, cols) mean over each voxel's sub-points."""
    z, r, c = values.shape
    return values.reshape(z, r // s, s, c // s, s).mean(axis=(0, 2, 4))


def render(grid: ImageGrid, anatomy: Anatomy, pose: RigidTransform | None, painters: dict[str, Painter], supersample: int = 1,
           breathing: Breathing | None = None) -> dict[str, NDArray[np.float64]]:
    """Evaluate several painters on ``grid`` in one pass over the anatomy; arrays (k, j, i)."""
    out = {name: np.zeros(grid.shape, np.float32) for name in painters}  # float32: clinical matrices
    for k in range(grid.size[2]):
        pts = slice_subpoints(grid, k, supersample)
        if pose is not None:
            pts = pose.apply_inverse(pts)
        if breathing is not None:
            pts = breathing.pull_back(pts)
        sample = anatomy.evaluate(pts)
        for name, paint in painters.items():
            out[name][k] = _block_mean(paint(sample), supersample)
    return out


def psf_blur(image: NDArray[np.float64], grid: ImageGrid, fwhm_mm: float) -> NDArray[np.float64]:
    """Isotropic Gaussian PSF of the given FWHM (mm) on an anisotropic grid."""
    sigma_vox = [fwhm_mm * FWHM_TO_SIGMA / s for s in (grid.spacing[2], grid.spacing[1], grid.spacing[0])]
    return ndimage.gaussian_filter(image, sigma=sigma_vox, mode="nearest")


def pet_noise(rng: np.random.Generator, suv: NDArray[np.float64], cv_at_suv1: float) -> NDArray[np.float64]:
    """Count-like noise: standard deviation proportional to sqrt(SUV) (CV ``cv_at_suv1`` at SUV 1)."""
    noisy = suv + rng.normal(size=suv.shape) * cv_at_suv1 * np.sqrt(np.clip(suv, 0.0, None))
    return np.clip(noisy, 0.0, None)
