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
from functools import cached_property
from typing import Any

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

    @cached_property
    def nonzero_box(self) -> FloatArray | None:
        """The 8 LPS corners of the box of voxels with density > 0, one voxel added on every side
        (a trilinear sample outside it reads 0); None if the density is 0 everywhere. Computed once:
        a DensityVolume is not changed after it is made."""
        k, j, i = (np.flatnonzero(np.any(self.red > 0, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
        if not i.size:
            return None
        lo, hi = np.array([i[0], j[0], k[0]], float) - 1.0, np.array([i[-1], j[-1], k[-1]], float) + 1.0
        return self.grid.index_to_physical(np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]))


def _blurred_levels(fluence: NDArray[np.float32], pixel_mm: float, sigmas_mm: FloatArray) -> NDArray[np.float32]:
    return np.stack([ndimage.gaussian_filter(fluence, s / pixel_mm, mode="constant", truncate=4.0) for s in sigmas_mm])


#: ``_SIGMA_LEVELS_MM`` is geometric: a sigma's fractional level is affine in log(sigma)
_LOG_LEVEL_0 = float(np.log(_SIGMA_LEVELS_MM[0]))
_LEVELS_PER_LOG = float((_SIGMA_LEVELS_MM.size - 1) / (np.log(_SIGMA_LEVELS_MM[-1]) - np.log(_SIGMA_LEVELS_MM[0])))


def _level_position(sigma_mm: NDArray[np.floating]) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Lower pre-blurred level and log-linear weight of the upper one for each sigma (clamped to the
    first and last level). The levels are geometric, so this is the piecewise-linear interpolation
    of log(sigma) on log(levels) (``np.interp``) in closed form, in float32."""
    position = np.clip((np.log(sigma_mm.astype(np.float32, copy=False)) - np.float32(_LOG_LEVEL_0)) * np.float32(_LEVELS_PER_LOG),
                       np.float32(0.0), np.float32(_SIGMA_LEVELS_MM.size - 1))
    low = np.minimum(position.astype(np.intp), _SIGMA_LEVELS_MM.size - 2)  # position >= 0: truncation is floor
    return low, position - low.astype(np.float32)


def _fan_sample_indices(beam: BeamGeometry, grid: ImageGrid, x: FloatArray, z: FloatArray, r: FloatArray,
                        shape: tuple[int, ...]) -> FloatArray:
    """Continuous (k, j, i) indices on ``grid`` of fan samples (broadcastable X, Z on the isocentre
    plane and r from the source), flattened to (3, N) for map_coordinates.

    The index is affine in r, r X and r Z, so it is built per axis by broadcasting instead of
    forming (N, 3) LPS points and a matrix product."""
    to_index = grid.direction_matrix / np.asarray(grid.spacing)[None, :]  # index = (p - origin) @ to_index
    source = (beam.source_mm - np.asarray(grid.origin)) @ to_index
    along, across, up = beam.axis @ to_index, beam.lateral @ to_index, beam.cranial @ to_index
    scaled_x, scaled_z = r * x / beam.sad_mm, r * z / beam.sad_mm
    return np.stack([np.broadcast_to(source[c] + r * along[c] + scaled_x * across[c] + scaled_z * up[c], shape).ravel()
                     for c in (2, 1, 0)])


def _linear_weights(coordinate: FloatArray, n: int) -> tuple[NDArray[np.intp], NDArray[np.float32], NDArray[np.float32]]:
    """Lower neighbour, weight of the upper one and in-range flag (0/1) of linear interpolation
    along one axis of ``n`` samples, as ``map_coordinates(order=1, mode="constant")``: a coordinate
    outside [0, n - 1] reads 0."""
    inside = (coordinate >= 0.0) & (coordinate <= n - 1)
    low = np.clip(np.floor(coordinate), 0, n - 2).astype(np.intp)
    return low, (coordinate - low).astype(np.float32), inside.astype(np.float32)


def _sample_density(density: DensityVolume, beam: BeamGeometry, x: FloatArray, z: FloatArray, r: FloatArray) -> NDArray[np.float32]:
    """Trilinear density at the fan samples (X x Z x r), (nx, nz, nr) float32, 0 outside the grid.

    A coplanar beam on an axial grid (the usual case: the gantry turns about the grid's k axis)
    separates: the in-plane indices (i, j) of a sample depend on (X, r) only and k on (Z, r) only.
    So each grid slice is interpolated bilinearly once per (X, r) and the slices linearly once per
    (Z, r): the same trilinear value as ``map_coordinates`` at 8 corners per sample, with about a
    third of the work. Other geometries (oblique grids) use ``map_coordinates`` on the samples."""
    grid = density.grid
    to_index = grid.direction_matrix / np.asarray(grid.spacing)[None, :]
    source = (beam.source_mm - np.asarray(grid.origin)) @ to_index
    along, across, up = beam.axis @ to_index, beam.lateral @ to_index, beam.cranial @ to_index
    reach = float(r.max()) * (1.0 + (np.abs(x).max() + np.abs(z).max()) / beam.sad_mm)  # largest |coefficient x term| factor
    separable = max(abs(along[2]), abs(across[2]), abs(up[0]), abs(up[1])) * reach < 1e-6 and min(grid.size) >= 2
    if not separable:
        shape = (x.size, z.size, r.size)
        coords = _fan_sample_indices(beam, grid, x[:, None, None], z[None, :, None], r[None, None, :], shape)
        return ndimage.map_coordinates(density.red, coords, order=1, mode="constant", cval=0.0, output=np.float32).reshape(shape)
    n_i, n_j, n_k = grid.size
    scaled_x, scaled_z = r[None, :] * x[:, None] / beam.sad_mm, r[None, :] * z[:, None] / beam.sad_mm  # (nx, nr), (nz, nr)
    i0, ti, in_i = _linear_weights(source[0] + r[None, :] * along[0] + scaled_x * across[0], n_i)
    j0, tj, in_j = _linear_weights(source[1] + r[None, :] * along[1] + scaled_x * across[1], n_j)
    k0, tk, in_k = _linear_weights(source[2] + scaled_z * up[2], n_k)
    red = density.red
    # bilinear in (i, j) on every slice: (nk, nx, nr)
    lower = (1.0 - ti) * red[:, j0, i0] + ti * red[:, j0, i0 + 1]
    upper = (1.0 - ti) * red[:, j0 + 1, i0] + ti * red[:, j0 + 1, i0 + 1]
    plane = ((1.0 - tj) * lower + tj * upper) * (in_i * in_j)
    # linear in k: sample (x, z, r) reads slices k0(z, r) and k0 + 1 at (x, r)
    by_slice = np.ascontiguousarray(plane.transpose(1, 0, 2)).reshape(x.size, n_k * r.size)  # (nx, nk * nr)
    flat = k0 * r.size + np.arange(r.size)[None, :]  # (nz, nr)
    weight_upper, weight_lower = tk * in_k, (1.0 - tk) * in_k
    return np.take(by_slice, flat, axis=1) * weight_lower + np.take(by_slice, flat + r.size, axis=1) * weight_upper


@dataclass
class Fan:
    """The fan grid of one beam around a set of points: the rays (X, Z pixels of the aperture) and
    the distances r from the source, with the fluence-independent terms of the dose on it.

    Public because it is what one traces once and shares: a beamlet plan uses one fan per beam for
    the beamlet matrix and the final dose, the painted plans for several fluence maps
    (``isotox.painting.optimise``). Made by ``trace_fan``; read by ``fan_dose``, ``points_on_fan``,
    ``beam_dose_at`` and ``beamlet_doses_at``."""

    ix: NDArray[np.intp]  # aperture pixel columns (X) traced
    iz: NDArray[np.intp]  # aperture pixel rows (Z) traced
    r_values: FloatArray
    sigma_iso: NDArray[np.float32]  # core sigma at each fan voxel, projected to the isocentre plane (mm)
    depth_factor: NDArray[np.float32]  # DD x inverse square, 0 outside the body
    point_coords: FloatArray  # (3, N) fractional fan indices of the points traced for
    traced_points: FloatArray | None = None  # those points (the caller's array, not a copy)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.ix.size, self.iz.size, self.r_values.size)


def trace_fan(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray,
              step_mm: float = 2.0, chunk_rays: int = 20000) -> Fan | None:
    """Ray-trace the density along every fan ray needed for ``points_mm`` (None when there are no
    points or no ray reaches them): the fan spans the aperture (with its padding) intersected with
    the points' beam's-eye-view extent, and r from the density grid's nearest corner to the
    farthest point. To be shared: a beamlet plan traces each beam once for its whole grid and uses
    the same fan for the beamlet matrix at the optimisation voxels (a subset) and for the final dose
    of the optimised fluence.

    All rays of a block (``chunk_rays``, for memory) at once: the density at every sample
    (``_sample_density``), the radiological depth as a cumulative sum along r, then the depth dose,
    inverse square and core sigma on the whole block (float32)."""
    points_mm = np.asarray(points_mm, dtype=float)
    if not len(points_mm):
        return None
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
    sigma_iso = np.empty((ix.size, iz.size, r_values.size), dtype=np.float32)
    depth_factor = np.zeros_like(sigma_iso)
    inverse_r = (sad / r_values).astype(np.float32)  # projection to the isocentre plane
    inverse_square = ((sad / r_values) ** 2).astype(np.float32)
    field_cm = (aperture.equivalent_square_cm * r_values / sad).astype(np.float32)  # the equivalent square at each r
    # samples nearer the source than the density's nonzero box read 0: they are not sampled, their
    # depth is 0 and sigma that of air (one profile along r). ``skip`` leaves the smoothing window's
    # reach of zeros before the first sampled density, so the smoothed density is the same as on the whole ray.
    smoothing_sigma = 2.5 / step_mm
    reach = int(4.0 * smoothing_sigma + 0.5)  # gaussian_filter1d's radius (truncate 4)
    box = density.nonzero_box
    first_dense = r_values.size if box is None else int(np.searchsorted(r_values, float(((box - beam.source_mm) @ beam.axis).min())))
    skip = max(first_dense - reach - 1, 0) if r_values.size > 1 else 0
    if skip:
        sigma_iso[:, :, :skip] = model.core_sigma_mm(np.zeros(skip, np.float32), np.full(skip, 0.05, np.float32)) * inverse_r[:skip]
    r_sampled = r_values[skip:]
    per_chunk = max(1, chunk_rays // iz.size)
    for start in range(0, ix.size, per_chunk):
        sel = slice(start, min(start + per_chunk, ix.size))
        xg = x_fan[sel]
        rho = _sample_density(density, beam, xg, z_fan, r_sampled)
        obliquity = np.sqrt(1.0 + (xg[:, None] ** 2 + z_fan[None, :] ** 2) / sad**2)  # ray length per unit r
        # radiological depth at each sample: density integrated up to the sample's midpoint (cm)
        d_rad = np.cumsum(rho, axis=2)
        d_rad -= 0.5 * rho
        d_rad *= (step_mm * obliquity / 10.0).astype(np.float32)[:, :, None]
        local = ndimage.gaussian_filter1d(rho, smoothing_sigma, axis=2) if r_values.size > 1 else rho
        np.maximum(local, np.float32(0.05), out=local)
        sigma_iso[sel, :, skip:] = model.core_sigma_mm(d_rad, local) * inverse_r[skip:]
        # depth dose only inside the body (density > 0): 0 elsewhere
        inside = np.flatnonzero(rho > 0.0)
        at_r = inside % r_sampled.size
        block = depth_factor[sel, :, skip:]
        values = model.depth_dose(d_rad.reshape(-1)[inside], field_cm[skip:][at_r]) * inverse_square[skip:][at_r]
        flat_block = np.zeros(block.size, np.float32)
        flat_block[inside] = values
        block[...] = flat_block.reshape(block.shape)
    coords = np.vstack([(px - x_fan[0]) / h, (pz - z_fan[0]) / h, (pr - r_values[0]) / step_mm])
    return Fan(ix, iz, r_values, sigma_iso, depth_factor, coords, points_mm)


def points_on_fan(fan: Fan, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray, step_mm: float) -> FloatArray:
    """Fractional fan indices (3, N) of ``points_mm``, as ``trace_fan`` computes them for its own
    points; why: to read a fan traced for a superset (the whole grid) at other points (the
    optimisation voxels). Points beyond the aperture's rays fall off the fan's sides and are treated
    as by ``trace_fan`` itself (no dose from the depth terms there)."""
    if fan.traced_points is not None and points_mm is fan.traced_points:
        return fan.point_coords
    px, pz, pr = beam.fan_coordinates(points_mm)
    h = aperture.pixel_mm
    return np.vstack([(px - aperture.x_mm()[fan.ix[0]]) / h, (pz - aperture.z_mm()[fan.iz[0]]) / h, (pr - fan.r_values[0]) / step_mm])


def fan_dose(model: BeamModel, fan: Fan, fluence: NDArray[np.float32], pixel_mm: float) -> NDArray[np.float32]:
    """Dose on the fan grid for one fluence map on the aperture pixels: the fluence blurred by each
    fan voxel's own core sigma (between pre-blurred levels) plus the scatter tail, times the depth
    terms. Public so that several fluence maps on one aperture can share one ``trace_fan``
    (the painted plans); ``beam_dose_at`` is this, interpolated to points.

    Computed only at the voxels inside the body (depth terms > 0; the dose is 0 elsewhere)."""
    b = model.data
    n_r = fan.r_values.size
    flat_factor = fan.depth_factor.reshape(-1)
    inside = np.flatnonzero(flat_factor)
    ray = inside // n_r
    low, t = _level_position(fan.sigma_iso.reshape(-1)[inside])
    # only the levels some voxel reads (the body's sigmas span a few of the 24), each blurred on the
    # whole aperture and kept at the fan's rays
    used = np.bincount(low, minlength=_SIGMA_LEVELS_MM.size) > 0
    used[1:] |= used[:-1]  # and the level above each
    n_rays = fan.ix.size * fan.iz.size
    on_rays = np.zeros((_SIGMA_LEVELS_MM.size, n_rays), np.float32)  # (level, ray)
    rays = (fan.ix[:, None], fan.iz[None, :])
    for level in np.flatnonzero(used):
        on_rays[level] = _blurred_levels(fluence, pixel_mm, _SIGMA_LEVELS_MM[level:level + 1])[0][rays].ravel()
    tail_on_rays = ndimage.gaussian_filter(fluence, b.tail_sigma_mm / pixel_mm, mode="constant", truncate=4.0)[rays].ravel()
    at = low * n_rays + ray  # flat (level, ray) index
    on_rays = on_rays.reshape(-1)
    core = (1.0 - t) * np.take(on_rays, at) + t * np.take(on_rays, at + n_rays)
    dose = np.zeros(fan.shape, dtype=np.float32)
    dose.reshape(-1)[inside] = ((1.0 - b.tail_fraction) * core + b.tail_fraction * np.take(tail_on_rays, ray)) * flat_factor[inside]
    return dose


def beam_dose_at(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray,
                 step_mm: float = 2.0, fan: Fan | None = None) -> NDArray[np.float32]:
    """Dose (relative: 1 = d_max of a 10 x 10 field at SAD) at ``points_mm`` (N, 3) from one beam,
    with the aperture's fluence (open field, or a modulated map). ``fan``: from ``trace_fan`` for
    these points (or a superset), instead of tracing again."""
    points_mm = np.asarray(points_mm, dtype=float)
    out = np.zeros(len(points_mm), dtype=np.float32)
    if fan is not None and len(points_mm):
        coords = points_on_fan(fan, beam, aperture, points_mm, step_mm)
    else:
        fan = trace_fan(model, density, beam, aperture, points_mm, step_mm)
        coords = fan.point_coords if fan is not None else None
    if fan is None:
        return out
    dose = fan_dose(model, fan, aperture.fluence_map(), aperture.pixel_mm)
    out[:] = ndimage.map_coordinates(dose, coords, order=1, mode="constant", cval=0.0, output=np.float32)
    return out


def _beamlet_rectangles(aperture: Aperture, labels: NDArray[np.int32]) -> tuple[FloatArray, NDArray[np.intp]]:
    """The open pixels of each beamlet as axis-aligned rectangles on the isocentre plane:
    runs of open pixels along Z per pixel column, merged across neighbouring columns with the same run.

    Returns (R, 4) [x_lo, x_hi, z_lo, z_hi] in mm and the beamlet of each rectangle, sorted by beamlet."""
    h = aperture.pixel_mm
    # runs of one label along Z in each column (label -1 between columns' ends)
    padded = np.pad(labels, ((0, 0), (1, 1)), constant_values=-1)
    column, edge = np.nonzero(padded[:, 1:] != padded[:, :-1])  # run boundaries, column by column in order
    same_column = column[1:] == column[:-1]
    first, stop = edge[:-1][same_column], edge[1:][same_column]
    column = column[:-1][same_column]
    label = labels[column, first]
    keep = label >= 0
    beamlet, column, first, last = label[keep].astype(np.intp), column[keep], first[keep], stop[keep] - 1
    # merge the same run (beamlet, first row, last row) in consecutive columns into one rectangle
    order = np.lexsort((column, last, first, beamlet))
    beamlet, column, first, last = beamlet[order], column[order], first[order], last[order]
    new = np.r_[True, (beamlet[1:] != beamlet[:-1]) | (first[1:] != first[:-1]) | (last[1:] != last[:-1]) | (column[1:] != column[:-1] + 1)]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], beamlet.size] - 1
    cells = np.c_[beamlet[starts], column[starts], first[starts], last[starts], column[ends]].astype(float).reshape(-1, 5)
    rects = np.c_[aperture.x0_mm + (cells[:, 1] - 0.5) * h, aperture.x0_mm + (cells[:, 4] + 0.5) * h,
                  aperture.z0_mm + (cells[:, 2] - 0.5) * h, aperture.z0_mm + (cells[:, 3] + 0.5) * h]
    return rects, cells[:, 0].astype(np.intp)


def _rectangle_spans(rects: FloatArray) -> tuple[FloatArray, NDArray[np.intp], NDArray[np.intp], FloatArray, NDArray[np.intp], NDArray[np.intp]]:
    """The distinct edges of the rectangles along X and Z, the distinct (lower, upper) edge pairs
    and each rectangle's pair: rectangles share their edges and intervals (the beamlet grid), so
    ``_gaussian_rectangle`` needs one erf per point and edge and one difference per point and interval."""
    x_edges, x_index = np.unique(rects[:, :2], return_inverse=True)
    z_edges, z_index = np.unique(rects[:, 2:], return_inverse=True)
    x_spans, x_span = np.unique(x_index.reshape(-1, 2), axis=0, return_inverse=True)
    z_spans, z_span = np.unique(z_index.reshape(-1, 2), axis=0, return_inverse=True)
    return x_edges, x_spans, x_span.ravel(), z_edges, z_spans, z_span.ravel()


def _gaussian_rectangle(rects: FloatArray, x: FloatArray, z: FloatArray, sigma: FloatArray,
                        spans: tuple[Any, ...] | None = None) -> NDArray[np.float32]:
    """Integral of a unit 2-D Gaussian of width ``sigma`` centred at each point over each rectangle: (N, R).
    ``spans``: ``_rectangle_spans(rects)`` when the caller has it (the same rectangles for many points).

    The error functions in float64, their differences and products (N x R, the bulk of the work) in
    float32: an absolute error of ~1e-7 of a beamlet's full integral (1)."""
    x_edges, x_spans, x_span, z_edges, z_spans, z_span = spans if spans is not None else _rectangle_spans(rects)
    s = (np.sqrt(2.0) * sigma)[:, None]
    erf_x = special.erf((x_edges[None, :] - x[:, None]) / s).astype(np.float32)
    erf_z = special.erf((z_edges[None, :] - z[:, None]) / s).astype(np.float32)
    across = erf_x[:, x_spans[:, 1]] - erf_x[:, x_spans[:, 0]]
    along = erf_z[:, z_spans[:, 1]] - erf_z[:, z_spans[:, 0]]
    across *= np.float32(0.25)
    return np.take(across, x_span, axis=1) * np.take(along, z_span, axis=1)


def beamlet_doses_at(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray,
                     beamlet_mm: float, step_mm: float = 2.0, chunk_points: int = 8192,
                     fan: Fan | None = None) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
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
        coords = points_on_fan(fan, beam, aperture, points_mm, step_mm)
    else:
        fan = trace_fan(model, density, beam, aperture, points_mm, step_mm)
        coords = fan.point_coords if fan is not None else None
    if fan is None:
        return matrix, labels
    sigma = np.maximum(ndimage.map_coordinates(fan.sigma_iso, coords, order=1, mode="nearest"), 1e-3)
    depth_factor = ndimage.map_coordinates(fan.depth_factor, coords, order=1, mode="constant", cval=0.0)
    px, pz, _ = beam.fan_coordinates(points_mm)
    rects, owner = _beamlet_rectangles(aperture, labels)
    spans = _rectangle_spans(rects)
    first_of_beamlet = np.flatnonzero(np.r_[True, np.diff(owner) != 0])
    one_rectangle_each = first_of_beamlet.size == owner.size  # then the sum over a beamlet's rectangles is the identity
    b = model.data
    core_weight, tail_weight = np.float32(1.0 - b.tail_fraction), np.float32(b.tail_fraction)
    for start in range(0, len(points_mm), chunk_points):
        sel = slice(start, start + chunk_points)
        active = np.flatnonzero(depth_factor[sel] > 0) + start
        if not active.size:
            continue
        kernel = _gaussian_rectangle(rects, px[active], pz[active], sigma[active], spans)
        kernel *= core_weight
        kernel += tail_weight * _gaussian_rectangle(rects, px[active], pz[active], np.full(active.size, b.tail_sigma_mm), spans)
        per_beamlet = kernel if one_rectangle_each else np.add.reduceat(kernel, first_of_beamlet, axis=1)
        # owner is sorted and every beamlet has a rectangle: column j of per_beamlet is beamlet j
        matrix[active] = per_beamlet * depth_factor[active, None].astype(np.float32)
    return matrix, labels


def beam_dose_on_grid(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, dose_grid: ImageGrid,
                      calc_mask: NDArray[np.bool_], step_mm: float = 2.0, points_mm: FloatArray | None = None,
                      fan: Fan | None = None) -> NDArray[np.float32]:
    """One beam's dose on ``dose_grid`` (array k, j, i), computed at the voxels of ``calc_mask``.
    ``points_mm``: those voxels' centres (C order) when the caller has them (every beam of a plan shares them)."""
    dose = np.zeros(dose_grid.shape, dtype=np.float32)
    if points_mm is None:
        kji = np.argwhere(calc_mask)
        points_mm = dose_grid.index_to_physical(kji[:, ::-1].astype(float)) if kji.size else np.zeros((0, 3))
    if len(points_mm):
        dose[calc_mask] = beam_dose_at(model, density, beam, aperture, points_mm, step_mm, fan)
    return dose
