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


#: ``_SIGMA_LEVELS_MM`` is geometric: a sigma's fractional level is affine in log(sigma)
_LOG_LEVEL_0 = float(np.log(_SIGMA_LEVELS_MM[0]))
_LEVELS_PER_LOG = float((_SIGMA_LEVELS_MM.size - 1) / (np.log(_SIGMA_LEVELS_MM[-1]) - np.log(_SIGMA_LEVELS_MM[0])))


def _level_position(sigma_mm: NDArray[np.floating]) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Lower pre-blurred level and log-linear weight of the upper one for each sigma (clamped to the
    first and last level). The levels are geometric, so this is the piecewise-linear interpolation
    of log(sigma) on log(levels) (``np.interp``) in closed form, in float32."""
    position = np.clip((np.log(sigma_mm.astype(np.float32, copy=False)) - np.float32(_LOG_LEVEL_0)) * np.float32(_LEVELS_PER_LOG),
                       np.float32(0.0), np.float32(_SIGMA_LEVELS_MM.size - 1))
    low = np.floor(position)
    np.minimum(low, np.float32(_SIGMA_LEVELS_MM.size - 2), out=low)  # whole numbers in float32: exact
    return low.astype(np.intp), position - low


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
    # linear in k: sample (x, z, r) reads slices k0(z, r) and k0 + 1 at (x, r), as one gather of
    # (slice k, slice k + 1) pairs (a complex64 element): half the gathers of two separate ``take``s
    pairs = np.empty((x.size, n_k, r.size), np.complex64)
    pairs.real = plane.transpose(1, 0, 2)
    pairs.imag[:, :-1] = pairs.real[:, 1:]
    pairs.imag[:, -1] = 0.0  # never read: k0 <= n_k - 2
    flat = k0 * r.size + np.arange(r.size)[None, :]  # (nz, nr)
    weight_upper, weight_lower = tk * in_k, (1.0 - tk) * in_k
    both = np.take(pairs.reshape(x.size, n_k * r.size), flat, axis=1)  # (nx, nz, nr)
    return both.real * weight_lower + both.imag * weight_upper


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
    #: (a lower bound, the largest) sigma_iso inside the body: the pre-blurred levels ``fan_dose``
    #: reads, known before it reads them; None: not known (``fan_dose`` finds it on the arrays)
    body_sigma_range: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.ix.size, self.iz.size, self.r_values.size)


@dataclass(frozen=True)
class _AlongRay:
    """The terms of a fan that depend on r only (the sampled part of the ray), shared by its blocks."""

    r: FloatArray  # distances from the source (mm)
    inverse_r: NDArray[np.float32]  # SAD / r: projection to the isocentre plane
    inverse_square: NDArray[np.float32]  # (SAD / r)^2
    field_cm: NDArray[np.float32]  # the aperture's equivalent square at r
    step_mm: float
    smoothing_sigma: float  # of the density along the ray for the electron term of sigma (samples)


def _trace_block(model: BeamModel, density: DensityVolume, beam: BeamGeometry, x: FloatArray, z: FloatArray, along_r: _AlongRay,
                 sigma_out: NDArray[np.float32], factor_out: NDArray[np.float32]) -> float:
    """Fan terms of the rays (x, z) at ``along_r.r``, written into ``sigma_out`` and ``factor_out``
    (views into the fan, shape (x, z, r)); returns the largest sigma inside the body (-inf if none):
    the widest pre-blurred level ``fan_dose`` needs, found while the block is in cache.

    The depth dose is evaluated on the block's samples with the r-only terms (field size, inverse
    square) broadcast along r, then zeroed outside the body: the same float32 values as evaluating it
    on the body's samples alone, without gathering and scattering them (the body is ~half the fan)."""
    rho = _sample_density(density, beam, x, z, along_r.r)
    obliquity = np.sqrt(1.0 + (x[:, None] ** 2 + z[None, :] ** 2) / beam.sad_mm**2)  # ray length per unit r
    # radiological depth at each sample: density integrated up to the sample's midpoint (cm)
    d_rad = np.cumsum(rho, axis=2)
    d_rad -= 0.5 * rho
    d_rad *= (along_r.step_mm * obliquity / 10.0).astype(np.float32)[:, :, None]
    local = ndimage.gaussian_filter1d(rho, along_r.smoothing_sigma, axis=2) if along_r.r.size > 1 else rho.copy()
    np.maximum(local, np.float32(0.05), out=local)
    np.multiply(model.core_sigma_mm(d_rad, local), along_r.inverse_r, out=sigma_out)
    # depth dose only inside the body (density > 0), 0 elsewhere: evaluated on the samples from the
    # block's first to its last in the body (the air before and after it is a good part of the fan)
    body = rho > 0.0
    at_r = np.flatnonzero(body.any(axis=(0, 1)))
    if not at_r.size:
        factor_out[...] = 0.0
        return -np.inf
    span = slice(int(at_r[0]), int(at_r[-1]) + 1)
    dose = model.depth_dose(d_rad[:, :, span], along_r.field_cm[span])
    dose *= along_r.inverse_square[span]
    factor_out[:, :, :span.start] = 0.0
    factor_out[:, :, span.stop:] = 0.0
    np.multiply(dose, body[:, :, span], out=factor_out[:, :, span])
    return float(np.max(sigma_out[:, :, span] * body[:, :, span]))  # sigma > 0: the body's largest sigma


def trace_fan(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture, points_mm: FloatArray,
              step_mm: float = 2.0, chunk_rays: int = 4096) -> Fan | None:
    """Ray-trace the density along every fan ray needed for ``points_mm`` (None when there are no
    points or no ray reaches them): the fan spans the aperture (with its padding) intersected with
    the points' beam's-eye-view extent, and r from the density grid's nearest corner to the
    farthest point. To be shared: a beamlet plan traces each beam once for its whole grid and uses
    the same fan for the beamlet matrix at the optimisation voxels (a subset) and for the final dose
    of the optimised fluence.

    All rays of a block at once (``_trace_block``): the density at every sample, the radiological
    depth as a cumulative sum along r, then the core sigma, depth dose and inverse square on the
    whole block (float32). ``chunk_rays`` keeps a block's float32 temporaries at a few MB, in the
    processor's cache through that chain of element-wise steps (and reused by the allocator rather
    than fresh pages): measured ~1.5x faster than blocks of 20000 rays (~17 MB temporaries)."""
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
    along_r = _AlongRay(r_sampled, inverse_r[skip:], inverse_square[skip:], field_cm[skip:], step_mm, smoothing_sigma)
    highest = max(_trace_block(model, density, beam, x_fan[sel], z_fan, along_r, sigma_iso[sel, :, skip:], depth_factor[sel, :, skip:])
                  for sel in (slice(start, min(start + per_chunk, ix.size)) for start in range(0, ix.size, per_chunk)))
    # every sigma is at least the source's (variance sigma0^2 + terms >= 0) projected from the
    # farthest r; 0.1 % lower, a bound under the float32 rounding of the sigmas
    lowest = 0.999 * model.data.sigma0_mm * float(inverse_r.min())
    coords = np.vstack([(px - x_fan[0]) / h, (pz - z_fan[0]) / h, (pr - r_values[0]) / step_mm])
    return Fan(ix, iz, r_values, sigma_iso, depth_factor, coords, points_mm, (lowest, highest) if lowest <= highest else None)


def _trilinear_block(volume: NDArray[np.float32], coords: FloatArray, nearest: bool) -> NDArray[np.float32]:
    """``volume`` (C-contiguous, every axis >= 2 samples) at fractional indices (3, N) by trilinear
    interpolation in float32: 0 outside (``map_coordinates(order=1, mode="constant")``), or the
    indices clamped to the volume (``nearest``, as ``mode="nearest"``). Interpolated along r, then Z,
    then X, reading the 8 corners by flat index."""
    shape = volume.shape
    (i0, ti, in_i), (j0, tj, in_j), (k0, tk, in_k) = (_linear_weights(np.clip(c, 0, n - 1) if nearest else c, n) for c, n in zip(coords, shape))
    flat = volume.reshape(-1)

    def lerp(at: NDArray[np.intp], stride: int, weight: NDArray[np.float32], read: Any) -> NDArray[np.float32]:
        value = read(at)
        value *= 1.0 - weight
        value += weight * read(at + stride)
        return value

    def along_r(at: NDArray[np.intp]) -> NDArray[np.float32]:
        return lerp(at, 1, tk, lambda a: np.take(flat, a))

    def along_z(at: NDArray[np.intp]) -> NDArray[np.float32]:
        return lerp(at, shape[2], tj, along_r)

    value = lerp((i0 * shape[1] + j0) * shape[2] + k0, shape[1] * shape[2], ti, along_z)
    value *= in_i * in_j * in_k
    return value


def read_fan(volume: NDArray[np.float32], coords: FloatArray, nearest: bool = False, chunk_points: int = 16384) -> NDArray[np.float32]:
    """A fan array (``Fan.sigma_iso``, ``depth_factor`` or ``fan_dose``) at fractional fan indices
    (3, N), trilinear, 0 beyond the fan (``nearest``: clamped to it), float32.

    Why not ``ndimage.map_coordinates``: it is ~2x slower for the half-million points of a plan's
    grid (a general spline path in float64); this reads blocks of ``chunk_points`` points (their
    weights stay in cache) in float32. Differences: float32 rounding of the weights, ~2e-7 of the
    largest value."""
    if min(volume.shape) < 2:
        return ndimage.map_coordinates(volume, coords, order=1, mode="nearest" if nearest else "constant", cval=0.0, output=np.float32)
    out = np.empty(coords.shape[1], np.float32)
    for start in range(0, coords.shape[1], chunk_points):
        out[start:start + chunk_points] = _trilinear_block(volume, coords[:, start:start + chunk_points], nearest)
    return out


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


def _blur_at_rays(fluence: NDArray[np.float32], sigma_px: float, rays: tuple[slice, slice]) -> NDArray[np.float32]:
    """``gaussian_filter(fluence, sigma_px, mode="constant", truncate=4)`` read at the fan's rays
    (``rays``: the window of aperture pixels they are), computed on the fluence's nonzero box grown by
    the kernel's radius only. Why: an aperture is mostly closed padding (room for the scatter tail),
    and beyond the radius of every nonzero pixel the filter is exactly 0; inside the box each output
    pixel is the same sum of the same products as on the whole aperture, so the values are identical."""
    out = np.zeros(fluence.shape, np.float32)
    nonzero = [np.flatnonzero(np.any(fluence != 0, axis=1 - axis)) for axis in (0, 1)]
    if nonzero[0].size:
        radius = int(4.0 * sigma_px + 0.5)  # gaussian_filter1d's kernel radius
        box = tuple(slice(max(int(n[0]) - radius, 0), min(int(n[-1]) + radius + 1, size)) for n, size in zip(nonzero, fluence.shape))
        out[box] = ndimage.gaussian_filter(fluence[box], sigma_px, mode="constant", truncate=4.0)
    return out[rays]


def _level_pairs(fluence: NDArray[np.float32], pixel_mm: float, levels: range, rays: tuple[slice, slice]) -> NDArray[np.complex64]:
    """The fluence blurred at each pre-blurred level and its next one, at every ray: (n_rays,
    n_levels) complex64 of (level l, level l + 1), so one gather per fan voxel reads both levels it
    interpolates between. Only ``levels`` (and the one above each) are blurred: the others are never read."""
    n_rays = (rays[0].stop - rays[0].start) * (rays[1].stop - rays[1].start)
    blurred = np.zeros((n_rays, _SIGMA_LEVELS_MM.size), np.float32)
    for level in range(levels.start, min(levels.stop + 1, _SIGMA_LEVELS_MM.size)):
        blurred[:, level] = _blur_at_rays(fluence, float(_SIGMA_LEVELS_MM[level]) / pixel_mm, rays).ravel()
    pairs = np.zeros(blurred.shape, np.complex64)
    pairs.real = blurred
    pairs.imag[:, :-1] = blurred[:, 1:]
    return pairs


def fan_dose(model: BeamModel, fan: Fan, fluence: NDArray[np.float32], pixel_mm: float, chunk_rays: int = 2048) -> NDArray[np.float32]:
    """Dose on the fan grid for one fluence map on the aperture pixels: the fluence blurred by each
    fan voxel's own core sigma (between pre-blurred levels) plus the scatter tail, times the depth
    terms. Public so that several fluence maps on one aperture can share one ``trace_fan``
    (the painted plans); ``beam_dose_at`` is this, interpolated to points.

    Evaluated on blocks of ``chunk_rays`` rays (cache-sized, as in ``trace_fan``) at every voxel:
    outside the body the depth terms are 0 and so is the dose, without gathering the body's voxels.
    Only the levels between the body's least and largest sigma are blurred (``Fan.body_sigma_range``)."""
    b = model.data
    dose = np.zeros(fan.shape, dtype=np.float32)
    body = fan.depth_factor > 0 if fan.body_sigma_range is None else None
    if body is not None and not body.any():
        return dose
    sigma_range = fan.body_sigma_range or (float(fan.sigma_iso[body].min()), float(fan.sigma_iso[body].max()))
    lowest, highest = _level_position(np.asarray(sigma_range, np.float32))[0]
    rays = (slice(int(fan.ix[0]), int(fan.ix[-1]) + 1), slice(int(fan.iz[0]), int(fan.iz[-1]) + 1))  # contiguous: see trace_fan
    pairs = _level_pairs(fluence, pixel_mm, range(int(lowest), int(highest) + 1), rays)
    n_levels = pairs.shape[1]
    tail_part = (b.tail_fraction * _blur_at_rays(fluence, b.tail_sigma_mm / pixel_mm, rays)).astype(np.float32)  # (X, Z)
    per_chunk = max(1, chunk_rays // fan.iz.size)
    ray_of_row = np.arange(fan.iz.size)[None, :, None]
    for start in range(0, fan.ix.size, per_chunk):
        sel = slice(start, min(start + per_chunk, fan.ix.size))
        at, t = _level_position(fan.sigma_iso[sel])  # the lower level, then its flat (ray, level) index
        at += (np.arange(sel.start, sel.stop)[:, None, None] * fan.iz.size + ray_of_row) * n_levels
        both = np.take(pairs.reshape(-1), at)
        core = (1.0 - t) * both.real + t * both.imag
        core *= np.float32(1.0 - b.tail_fraction)
        core += tail_part[sel, :, None]
        np.multiply(core, fan.depth_factor[sel], out=dose[sel])
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
    out[:] = read_fan(dose, coords)
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


#: Abramowitz and Stegun 7.1.26 (Hastings): erf(x) = 1 - t (a1 + t (a2 + ... + t a5)) exp(-x^2), t = 1 / (1 + p x), x >= 0
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _fast_erf(x: FloatArray) -> FloatArray:
    """erf by Abramowitz and Stegun 7.1.26 (|error| <= 1.5e-7), the exponential in float32:
    |error| <= 2.5e-7 (measured 2.4e-7 against ``scipy.special.erf`` on [-80, 80]).

    Why: the beamlet kernels need an erf per point and beamlet edge (millions per beam), and
    ``scipy.special.erf`` costs ~20 ns a value; this costs a reciprocal, an exponential and a
    polynomial in numpy. Its error is a few times the float32 rounding (6e-8) with which the kernel's
    erf differences and products were already computed: ~5e-7 of a beamlet's full integral at most."""
    a = np.minimum(np.abs(x), 6.0)  # erf(6) is 1 in float64; and exp(-x^2) underflowing is slow
    t = a * _ERF_P
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * _ERF_A[-1]
    for c in _ERF_A[-2::-1]:
        poly += c
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    poly *= np.exp(a.astype(np.float32))  # float32: numpy's exp is vectorised there (~3x faster), and exp(-x^2) <= 1 needs no more
    np.subtract(1.0, poly, out=poly)
    return np.copysign(poly, x, out=poly)


def _gaussian_rectangle(rects: FloatArray, x: FloatArray, z: FloatArray, sigma: FloatArray | float,
                        spans: tuple[Any, ...] | None = None, weight: float = 1.0,
                        out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """``weight`` x the integral of a unit 2-D Gaussian of width ``sigma`` (per point, or one for all)
    centred at each point over each rectangle: (N, R), added to ``out`` when given (the core and the
    tail of the lateral kernel summed without a temporary (N, R) array and a pass over it).
    ``spans``: ``_rectangle_spans(rects)`` when the caller has it (the same rectangles for many points).

    The error functions in float64 (``_fast_erf``), their differences and products (N x R, the bulk
    of the work) in float32: an absolute error of a few 1e-7 of a beamlet's full integral (1)."""
    x_edges, x_spans, x_span, z_edges, z_spans, z_span = spans if spans is not None else _rectangle_spans(rects)
    s = np.sqrt(2.0) * np.reshape(np.asarray(sigma, dtype=float), (-1, 1))
    erf_x = _fast_erf((x_edges[None, :] - x[:, None]) / s).astype(np.float32)
    erf_z = _fast_erf((z_edges[None, :] - z[:, None]) / s).astype(np.float32)
    across = erf_x[:, x_spans[:, 1]] - erf_x[:, x_spans[:, 0]]
    along = erf_z[:, z_spans[:, 1]] - erf_z[:, z_spans[:, 0]]
    across *= np.float32(0.25 * weight)
    product = np.take(across, x_span, axis=1)
    product *= np.take(along, z_span, axis=1)
    if out is None:
        return product
    out += product
    return out


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
    sigma = np.maximum(read_fan(fan.sigma_iso, coords, nearest=True), np.float32(1e-3))
    depth_factor = read_fan(fan.depth_factor, coords)
    px, pz, _ = beam.fan_coordinates(points_mm)
    rects, owner = _beamlet_rectangles(aperture, labels)
    spans = _rectangle_spans(rects)
    first_of_beamlet = np.flatnonzero(np.r_[True, np.diff(owner) != 0])
    one_rectangle_each = first_of_beamlet.size == owner.size  # then the sum over a beamlet's rectangles is the identity
    b = model.data
    for start in range(0, len(points_mm), chunk_points):
        sel = slice(start, start + chunk_points)
        active = np.flatnonzero(depth_factor[sel] > 0) + start
        if not active.size:
            continue
        kernel = _gaussian_rectangle(rects, px[active], pz[active], sigma[active], spans, 1.0 - b.tail_fraction)
        _gaussian_rectangle(rects, px[active], pz[active], b.tail_sigma_mm, spans, b.tail_fraction, out=kernel)
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
