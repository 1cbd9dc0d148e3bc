"""The built-in photon dose engine: divergent ray tracing through electron density, per beam.

For one beam with an aperture, the dose at a point is

    D = Phi(X, Z; sigma) * DD(d_rad, s_eq r / SAD) * (SAD / r)^2

* ``d_rad``: radiological depth, the line integral of relative electron density from the source
  along the divergent ray through the point (density is 0 outside the body contour);
* ``DD``: the commissioned depth dose (``BeamModel.depth_dose``) for the aperture's equivalent
  square projected to the point's distance;
* ``(SAD / r)^2``: inverse square;
* ``Phi``: the aperture's fluence (1 in an open field, the optimised map with beamlets) blurred by
  the lateral kernel (core sigma growing with depth and widened by 1/density in lung, plus a broad
  scatter tail), evaluated at the point's own sigma.

It is computed on a fan grid (rays of constant X, Z on the isocentre plane, samples every
``step_mm`` along r), so one beam costs a few million trilinear density samples and a cumulative
sum, then interpolated to the requested points. For beamlet optimisation the same fan terms are
interpolated to the optimisation points and each beamlet's kernel is integrated analytically there
(``beamlet_doses_at``), so a plan of a few hundred beamlets costs one trace per beam.

What it does not model (a "type a" pencil-beam-like algorithm in the sense of Knoos et al. 2006,
Phys Med Biol 51:5785): lateral electron transport in the depth direction (no loss of lateral
electronic equilibrium in lung: on-axis dose inside lung for small fields is overestimated, and
the re-build-up beyond lung is absent); scatter changes with heterogeneity (scatter uses the
field size, not the scattering volume's density); electron contamination and the skin build-up
(surface dose is 0); head scatter and output factors (beam weights are relative, not monitor
units); MLC leaf width, transmission and tongue-and-groove; off-axis beam softening and horns;
couch attenuation; dose to medium vs water (the dose is water-equivalent). A modulated beam is an
ideal fluence map (no leaf sequencing or deliverability check) whose scatter is that of its open
field (the equivalent square of the aperture, not of the fluence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, special

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


def _blurred_levels(fluence: NDArray[np.float32], pixel_mm: float, sigmas_mm: FloatArray) -> NDArray[np.float32]:
    return np.stack([ndimage.gaussian_filter(fluence, s / pixel_mm, mode="constant", truncate=4.0) for s in sigmas_mm])


def _level_position(sigma_mm: FloatArray) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Lower pre-blurred level and log-linear weight of the upper one for each sigma."""
    position = np.interp(np.log(sigma_mm), np.log(_SIGMA_LEVELS_MM), np.arange(_SIGMA_LEVELS_MM.size))
    low = np.clip(np.floor(position).astype(np.intp), 0, _SIGMA_LEVELS_MM.size - 2)
    return low, (position - low).astype(np.float32)


def _interpolate_levels(levels: NDArray[np.float32], sigma_mm: FloatArray, xi: NDArray, zi: NDArray) -> NDArray[np.float32]:
    """Fluence at each fan voxel from its own sigma, between the pre-blurred levels (log-linear)."""
    low, t = _level_position(sigma_mm)
    return (1.0 - t) * levels[low, xi, zi] + t * levels[low + 1, xi, zi]


def _fan_sample_indices(beam: BeamGeometry, grid: ImageGrid, x: FloatArray, z: FloatArray, r: FloatArray,
                        shape: tuple[int, ...]) -> FloatArray:
    """Continuous (k, j, i) indices on ``grid`` of fan samples (broadcastable X, Z on the isocentre
    plane and r from the source), flattened to (3, N) for map_coordinates.

    The index is affine in r, r X and r Z, so it is built per axis by broadcasting instead of
    forming (N, 3) LPS points and a matrix product (the ray tracer's largest cost before)."""
    to_index = grid.direction_matrix / np.asarray(grid.spacing)[None, :]  # index = (p - origin) @ to_index
    source = (beam.source_mm - np.asarray(grid.origin)) @ to_index
    along, across, up = beam.axis @ to_index, beam.lateral @ to_index, beam.cranial @ to_index
    scaled_x, scaled_z = r * x / beam.sad_mm, r * z / beam.sad_mm
    return np.stack([np.broadcast_to(source[c] + r * along[c] + scaled_x * across[c] + scaled_z * up[c], shape).ravel()
                     for c in (2, 1, 0)])


@dataclass
class _Fan:
    """The fan grid of one beam around a set of points: ray (x, z) pixels of the aperture and
    distances r from the source, with the fluence-independent terms of the dose on it."""

    ix: NDArray[np.intp]  # aperture pixel columns (X) traced
    iz: NDArray[np.intp]  # aperture pixel rows (Z) traced
    r_values: FloatArray
    sigma_iso: NDArray[np.float32]  # core sigma at each fan voxel, projected to the isocentre plane (mm)
    depth_factor: NDArray[np.float32]  # DD x inverse square, 0 outside the body
    point_coords: FloatArray  # (3, N) fractional fan indices of the points

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.ix.size, self.iz.size, self.r_values.size)


def _trace_fan(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray,
               step_mm: float, chunk_rays: int = 4000) -> _Fan | None:
    """Ray-trace the density along every fan ray needed for ``points_mm``: the fan spans the
    aperture (with its padding) intersected with the points' beam's-eye-view extent and their depth range."""
    px, pz, pr = beam.fan_coordinates(points_mm)
    h = aperture.pixel_mm
    xs, zs = aperture.x_mm(), aperture.z_mm()
    ix = np.nonzero((xs >= px.min() - 2 * h) & (xs <= px.max() + 2 * h))[0]
    iz = np.nonzero((zs >= pz.min() - 2 * h) & (zs <= pz.max() + 2 * h))[0]
    if ix.size == 0 or iz.size == 0:
        return None
    # rays start where the body can begin: the nearest corner of the density grid along the axis
    corners = density.grid.index_to_physical(np.array([[i, j, k] for i in (0, density.grid.size[0] - 1)
                                                       for j in (0, density.grid.size[1] - 1) for k in (0, density.grid.size[2] - 1)], float))
    r_start = max(float(((corners - beam.source_mm) @ beam.axis).min()) - step_mm, 1.0)
    r_values = np.arange(r_start, pr.max() + 2 * step_mm, step_mm)
    sad = beam.sad_mm
    x_fan, z_fan = xs[ix], zs[iz]
    sigma_iso = np.zeros((ix.size, iz.size, r_values.size), dtype=np.float32)
    depth_factor = np.zeros_like(sigma_iso)
    per_chunk = max(1, chunk_rays // iz.size)
    for start in range(0, ix.size, per_chunk):
        sel = slice(start, min(start + per_chunk, ix.size))
        xg, zg, rg = x_fan[sel][:, None, None], z_fan[None, :, None], r_values[None, None, :]
        shape = (xg.shape[0], zg.shape[1], rg.shape[2])
        rho = ndimage.map_coordinates(density.red, _fan_sample_indices(beam, density.grid, xg, zg, rg, shape), order=1,
                                      mode="constant", cval=0.0).reshape(shape).astype(np.float32)
        obliquity = np.sqrt(1.0 + (xg[..., :1] ** 2 + zg[..., :1] ** 2) / sad**2)
        # radiological depth at each sample: density integrated up to the sample's midpoint (cm)
        d_rad = (np.cumsum(rho, axis=2) - 0.5 * rho) * (step_mm * obliquity / 10.0)
        local = ndimage.gaussian_filter(rho, sigma=(0.0, 0.0, 2.5 / step_mm)) if r_values.size > 1 else rho
        sigma_iso[sel] = model.core_sigma_mm(d_rad, np.maximum(local, 0.05)) * (sad / rg)
        depth_dose = model.depth_dose(d_rad, np.broadcast_to(aperture.equivalent_square_cm * rg / sad, shape))
        depth_factor[sel] = np.where(rho > 0.0, depth_dose * (sad / rg) ** 2, 0.0)
    coords = np.vstack([(px - x_fan[0]) / h, (pz - z_fan[0]) / h, (pr - r_values[0]) / step_mm])
    return _Fan(ix, iz, r_values, sigma_iso, depth_factor, coords)


def trace_fan(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray,
              step_mm: float = 2.0) -> _Fan | None:
    """The fluence-independent terms of one beam around ``points_mm``, to be shared: a beamlet plan
    traces each beam once for its whole grid and uses the same fan for the beamlet matrix at the
    optimisation voxels (a subset) and for the final dose of the optimised fluence."""
    return _trace_fan(model, density, beam, aperture, np.asarray(points_mm, dtype=float), step_mm) if len(points_mm) else None


def _points_on_fan(fan: _Fan, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray, step_mm: float) -> FloatArray:
    """Fractional fan indices of ``points_mm`` (as ``_trace_fan`` computes them). The fan must have been
    traced for a superset of the points; points beyond the aperture's rays fall off the fan's sides
    and are treated as by ``_trace_fan`` itself (no dose from the depth terms there)."""
    px, pz, pr = beam.fan_coordinates(points_mm)
    h = aperture.pixel_mm
    return np.vstack([(px - aperture.x_mm()[fan.ix[0]]) / h, (pz - aperture.z_mm()[fan.iz[0]]) / h, (pr - fan.r_values[0]) / step_mm])


def _fan_dose(model: BeamModel, fan: _Fan, fluence: NDArray[np.float32], pixel_mm: float) -> NDArray[np.float32]:
    """Dose on the fan grid for one fluence map on the aperture pixels."""
    b = model.data
    levels = _blurred_levels(fluence, pixel_mm, _SIGMA_LEVELS_MM)
    tail = ndimage.gaussian_filter(fluence, b.tail_sigma_mm / pixel_mm, mode="constant", truncate=4.0)
    xi, zi = fan.ix[:, None, None], fan.iz[None, :, None]
    core = _interpolate_levels(levels, fan.sigma_iso, xi, zi)
    return ((1.0 - b.tail_fraction) * core + b.tail_fraction * tail[xi, zi]) * fan.depth_factor


def beam_dose_at(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray,
                 step_mm: float = 2.0, fan: _Fan | None = None) -> NDArray[np.float32]:
    """Dose (relative: 1 = d_max of a 10 x 10 field at SAD) at ``points_mm`` (N, 3) from one beam,
    with the aperture's fluence (open field, or a modulated map). ``fan``: from ``trace_fan`` for
    these points (or a superset), instead of tracing again."""
    points_mm = np.asarray(points_mm, dtype=float)
    out = np.zeros(len(points_mm), dtype=np.float32)
    if fan is not None and len(points_mm):
        coords = _points_on_fan(fan, beam, aperture, points_mm, step_mm)
    else:
        fan = _trace_fan(model, density, beam, aperture, points_mm, step_mm) if len(points_mm) else None
        coords = fan.point_coords if fan is not None else None
    if fan is None:
        return out
    dose = _fan_dose(model, fan, aperture.fluence_map(), aperture.pixel_mm)
    out[:] = ndimage.map_coordinates(dose, coords, order=1, mode="constant", cval=0.0)
    return out


def _beamlet_rectangles(aperture: Aperture, labels: NDArray[np.int32]) -> tuple[FloatArray, NDArray[np.intp]]:
    """The open pixels of each beamlet as axis-aligned rectangles on the isocentre plane:
    runs of open pixels along Z per pixel column, merged across neighbouring columns with the same run.

    Returns (R, 4) [x_lo, x_hi, z_lo, z_hi] in mm and the beamlet of each rectangle, sorted by beamlet."""
    h = aperture.pixel_mm
    runs: list[tuple[int, int, int, int]] = []  # (beamlet, column, first row, last row)
    for i in range(labels.shape[0]):
        column = labels[i]
        edges = np.flatnonzero(np.diff(np.r_[-1, column, -1]) != 0)  # starts of constant-label runs, and the end
        for first, stop in zip(edges[:-1], edges[1:]):
            if column[first] >= 0:
                runs.append((int(column[first]), i, int(first), int(stop - 1)))
    runs.sort(key=lambda run: (run[0], run[2], run[3], run[1]))
    merged: list[list[int]] = []
    for beamlet, i, first, last in runs:
        if merged and merged[-1][0] == beamlet and merged[-1][2] == first and merged[-1][3] == last and merged[-1][4] == i - 1:
            merged[-1][4] = i
        else:
            merged.append([beamlet, i, first, last, i])
    cells = np.array(merged, dtype=float).reshape(-1, 5)
    rects = np.c_[aperture.x0_mm + (cells[:, 1] - 0.5) * h, aperture.x0_mm + (cells[:, 4] + 0.5) * h,
                  aperture.z0_mm + (cells[:, 2] - 0.5) * h, aperture.z0_mm + (cells[:, 3] + 0.5) * h]
    return rects, cells[:, 0].astype(np.intp)


def _gaussian_rectangle(rects: FloatArray, x: FloatArray, z: FloatArray, sigma: FloatArray) -> FloatArray:
    """Integral of a unit 2-D Gaussian of width ``sigma`` centred at each point over each rectangle: (N, R)."""
    s = (np.sqrt(2.0) * sigma)[:, None]
    # rectangles share their edges (the beamlet grid): one erf per point and distinct edge, then gathered
    # (the same numbers as one erf per rectangle edge, at a fraction of the erf evaluations)
    x_edges, x_index = np.unique(rects[:, :2], return_inverse=True)
    z_edges, z_index = np.unique(rects[:, 2:], return_inverse=True)
    x_index, z_index = x_index.reshape(-1, 2), z_index.reshape(-1, 2)
    erf_x = special.erf((x_edges[None, :] - x[:, None]) / s)
    erf_z = special.erf((z_edges[None, :] - z[:, None]) / s)
    across = erf_x[:, x_index[:, 1]] - erf_x[:, x_index[:, 0]]
    along = erf_z[:, z_index[:, 1]] - erf_z[:, z_index[:, 0]]
    return 0.25 * across * along


def beamlet_doses_at(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray,
                     beamlet_mm: float, step_mm: float = 2.0, chunk_points: int = 4000,
                     fan: _Fan | None = None) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """Dose at ``points_mm`` from each beamlet of the aperture: the open pixels cut into squares of
    ``beamlet_mm`` on the isocentre plane (a grid through the beam axis).

    Returns the (N points, n beamlets) matrix and the beamlet label of each aperture pixel (-1 closed).
    Every beamlet uses the open field's depth dose (its scatter belongs to the whole field), so the
    columns sum to the open-field dose: a fluence map sum_j w_j beamlet_j gives the dose matrix @ w.
    The fluence-independent terms (radiological depth, sigma, DD, inverse square) are traced once and
    interpolated to the points; the lateral kernel of each beamlet is then integrated analytically
    (error functions over the beamlet's pixel rectangles, at each point's own sigma), which is what
    the pre-blurred levels of ``beam_dose_at`` approximate on the pixel grid."""
    points_mm = np.asarray(points_mm, dtype=float)
    xs, zs = aperture.x_mm(), aperture.z_mm()
    cell_x = np.floor(xs / beamlet_mm).astype(int)
    cell_z = np.floor(zs / beamlet_mm).astype(int)
    cells = (cell_x - cell_x.min())[:, None] * (cell_z.max() - cell_z.min() + 1) + (cell_z - cell_z.min())[None, :]
    labels = np.full(aperture.mask.shape, -1, dtype=np.int32)
    _, labels[aperture.mask] = np.unique(cells[aperture.mask], return_inverse=True)
    n_beamlets = int(labels.max()) + 1
    matrix = np.zeros((len(points_mm), n_beamlets), dtype=np.float32)
    if not (len(points_mm) and n_beamlets):
        return matrix, labels
    if fan is not None:  # traced by the caller for a superset of the points (``trace_fan``)
        coords = _points_on_fan(fan, beam, aperture, points_mm, step_mm)
    else:
        fan = _trace_fan(model, density, beam, aperture, points_mm, step_mm)
        coords = fan.point_coords if fan is not None else None
    if fan is None:
        return matrix, labels
    sigma = np.maximum(ndimage.map_coordinates(fan.sigma_iso, coords, order=1, mode="nearest"), 1e-3)
    depth_factor = ndimage.map_coordinates(fan.depth_factor, coords, order=1, mode="constant", cval=0.0)
    px, pz, _ = beam.fan_coordinates(points_mm)
    rects, owner = _beamlet_rectangles(aperture, labels)
    first_of_beamlet = np.flatnonzero(np.r_[True, np.diff(owner) != 0])
    b = model.data
    for start in range(0, len(points_mm), chunk_points):
        sel = slice(start, start + chunk_points)
        active = np.flatnonzero(depth_factor[sel] > 0) + start
        if not active.size:
            continue
        kernel = (1.0 - b.tail_fraction) * _gaussian_rectangle(rects, px[active], pz[active], sigma[active])
        kernel += b.tail_fraction * _gaussian_rectangle(rects, px[active], pz[active], np.full(active.size, b.tail_sigma_mm))
        per_beamlet = np.add.reduceat(kernel, first_of_beamlet, axis=1)
        matrix[active[:, None], owner[first_of_beamlet][None, :]] = per_beamlet * depth_factor[active, None]
    return matrix, labels


def beam_dose_on_grid(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, dose_grid: ImageGrid,
                      calc_mask: NDArray[np.bool_], step_mm: float = 2.0, points_mm: FloatArray | None = None,
                      fan: _Fan | None = None) -> NDArray[np.float32]:
    """One beam's dose on ``dose_grid`` (array k, j, i), computed at the voxels of ``calc_mask``.
    ``points_mm``: those voxels' centres (C order) when the caller has them (every beam of a plan shares them)."""
    dose = np.zeros(dose_grid.shape, dtype=np.float32)
    if points_mm is None:
        kji = np.argwhere(calc_mask)
        points_mm = dose_grid.index_to_physical(kji[:, ::-1].astype(float)) if kji.size else np.zeros((0, 3))
    if len(points_mm):
        dose[calc_mask] = beam_dose_at(model, density, beam, aperture, points_mm, step_mm, fan)
    return dose
