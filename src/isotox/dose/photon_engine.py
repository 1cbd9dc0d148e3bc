"""The built-in photon dose engine: divergent ray tracing through electron density, per beam.

For one beam with an aperture, the dose at a point is

    D = Phi(X, Z; sigma) * DD(d_rad, s_eq r / SAD) * (SAD / r)^2

* ``d_rad``: radiological depth, the line integral of relative electron density from the source
  along the divergent ray through the point (density is 0 outside the body contour);
* ``DD``: the commissioned depth dose (``BeamModel.depth_dose``) for the aperture's equivalent
  square projected to the point's distance;
* ``(SAD / r)^2``: inverse square;
* ``Phi``: the aperture blurred by the lateral kernel (core sigma growing with depth and widened by
  1/density in lung, plus a broad scatter tail), evaluated at the point's own sigma.

It is computed on a fan grid (rays of constant X, Z on the isocentre plane, samples every
``step_mm`` along r), so one beam costs a few million trilinear density samples and a cumulative
sum, then interpolated to the requested points.

What it does not model (a "type a" pencil-beam-like algorithm in the sense of Knoos et al. 2006,
Phys Med Biol 51:5785): lateral electron transport in the depth direction (no loss of lateral
electronic equilibrium in lung: on-axis dose inside lung for small fields is overestimated, and
the re-build-up beyond lung is absent); scatter changes with heterogeneity (scatter uses the
field size, not the scattering volume's density); electron contamination and the skin build-up
(surface dose is 0); head scatter and output factors (beam weights are relative, not monitor
units); MLC leaf width, transmission and tongue-and-groove; off-axis beam softening and horns;
couch attenuation; dose to medium vs water (the dose is water-equivalent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from isotox.dose.beam_model import BeamModel
from isotox.dose.beams import Aperture, BeamGeometry
from isotox.geometry import ImageGrid

FloatArray = NDArray[np.float64]

#: sigma levels (mm on the isocentre plane) at which the aperture is pre-blurred; a point's
#: fluence is interpolated between the two levels around its own sigma (log scale).
_SIGMA_LEVELS_MM = np.geomspace(0.4, 60.0, 24)


@dataclass
class DensityVolume:
    """Relative electron density on a grid (array k, j, i), zero outside the body contour."""

    grid: ImageGrid
    red: NDArray[np.float32]


def _blurred_levels(aperture: Aperture, sigmas_mm: FloatArray) -> NDArray[np.float32]:
    field = aperture.mask.astype(np.float32)
    return np.stack([ndimage.gaussian_filter(field, s / aperture.pixel_mm, mode="constant", truncate=4.0) for s in sigmas_mm])


def _interpolate_levels(levels: NDArray[np.float32], sigma_mm: FloatArray, xi: NDArray, zi: NDArray) -> NDArray[np.float32]:
    """Fluence at each fan voxel from its own sigma, between the pre-blurred levels (log-linear)."""
    position = np.interp(np.log(sigma_mm), np.log(_SIGMA_LEVELS_MM), np.arange(_SIGMA_LEVELS_MM.size))
    low = np.clip(np.floor(position).astype(np.intp), 0, _SIGMA_LEVELS_MM.size - 2)
    t = (position - low).astype(np.float32)
    return (1.0 - t) * levels[low, xi, zi] + t * levels[low + 1, xi, zi]


def beam_dose_at(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray,
                 step_mm: float = 2.0, chunk_rays: int = 4000) -> NDArray[np.float32]:
    """Dose (relative: 1 = d_max of a 10 x 10 field at SAD) at ``points_mm`` (N, 3) from one beam.

    Only the rays needed for the points are traced: the fan grid spans the aperture (with its
    padding) intersected with the points' beam's-eye-view extent, and the points' depth range."""
    points_mm = np.asarray(points_mm, dtype=float)
    out = np.zeros(len(points_mm), dtype=np.float32)
    if not len(points_mm):
        return out
    px, pz, pr = beam.fan_coordinates(points_mm)
    h = aperture.pixel_mm
    xs, zs = aperture.x_mm(), aperture.z_mm()
    ix = np.nonzero((xs >= px.min() - 2 * h) & (xs <= px.max() + 2 * h))[0]
    iz = np.nonzero((zs >= pz.min() - 2 * h) & (zs <= pz.max() + 2 * h))[0]
    if ix.size == 0 or iz.size == 0:
        return out
    # rays start where the body can begin: the nearest corner of the density grid along the axis
    corners = density.grid.index_to_physical(np.array([[i, j, k] for i in (0, density.grid.size[0] - 1)
                                                       for j in (0, density.grid.size[1] - 1) for k in (0, density.grid.size[2] - 1)], float))
    r_start = max(float(((corners - beam.source_mm) @ beam.axis).min()) - step_mm, 1.0)
    r_values = np.arange(r_start, pr.max() + 2 * step_mm, step_mm)
    b = model.data
    sad = beam.sad_mm

    levels = _blurred_levels(aperture, _SIGMA_LEVELS_MM)
    tail = ndimage.gaussian_filter(aperture.mask.astype(np.float32), b.tail_sigma_mm / h, mode="constant", truncate=4.0)
    x_fan, z_fan = xs[ix], zs[iz]
    fan = np.zeros((ix.size, iz.size, r_values.size), dtype=np.float32)
    rays_per_x = iz.size
    per_chunk = max(1, chunk_rays // rays_per_x)
    red = density.red
    for start in range(0, ix.size, per_chunk):
        sel = slice(start, min(start + per_chunk, ix.size))
        xg, zg, rg = np.meshgrid(x_fan[sel], z_fan, r_values, indexing="ij")
        points = beam.fan_points(xg, zg, rg).reshape(-1, 3)
        ijk = density.grid.physical_to_index(points)
        rho = ndimage.map_coordinates(red, ijk[:, ::-1].T, order=1, mode="constant", cval=0.0).reshape(xg.shape).astype(np.float32)
        obliquity = np.sqrt(1.0 + (xg[..., :1] ** 2 + zg[..., :1] ** 2) / sad**2)
        # radiological depth at each sample: density integrated up to the sample's midpoint (cm)
        d_rad = (np.cumsum(rho, axis=2) - 0.5 * rho) * (step_mm * obliquity / 10.0)
        local = ndimage.gaussian_filter(rho, sigma=(0.0, 0.0, 2.5 / step_mm)) if r_values.size > 1 else rho
        sigma_iso = model.core_sigma_mm(d_rad, np.maximum(local, 0.05)) * (sad / rg)
        xi = (ix[sel])[:, None, None]
        zi = iz[None, :, None]
        core = _interpolate_levels(levels, sigma_iso, xi, zi)
        phi = (1.0 - b.tail_fraction) * core + b.tail_fraction * tail[xi, zi]
        depth_dose = model.depth_dose(d_rad, aperture.equivalent_square_cm * rg / sad)
        fan[sel] = np.where(rho > 0.0, phi * depth_dose * (sad / rg) ** 2, 0.0)
    coords = np.vstack([(px - x_fan[0]) / h, (pz - z_fan[0]) / h, (pr - r_values[0]) / step_mm])
    out[:] = ndimage.map_coordinates(fan, coords, order=1, mode="constant", cval=0.0)
    return out


def beam_dose_on_grid(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, dose_grid: ImageGrid,
                      calc_mask: NDArray[np.bool_], step_mm: float = 2.0) -> NDArray[np.float32]:
    """One beam's dose on ``dose_grid`` (array k, j, i), computed at the voxels of ``calc_mask``."""
    dose = np.zeros(dose_grid.shape, dtype=np.float32)
    kji = np.argwhere(calc_mask)
    if kji.size:
        points = dose_grid.index_to_physical(kji[:, ::-1].astype(float))
        dose[calc_mask] = beam_dose_at(model, density, beam, aperture, points, step_mm)
    return dose
