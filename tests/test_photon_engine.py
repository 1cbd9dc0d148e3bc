"""The built-in photon engine against physics one can cite.

Reference values (6 MV, 10 x 10 cm2, SSD 100 cm, water):
* depth of maximum 1.5 cm and PDD(10) ~ 67 % (BJR Supplement 25, 1996; vendors' representative
  data span about 66.5-67.5 %). PDD(10) of the 10 x 10 field is NOT among the commissioning
  points (config/beams/generic_6mv.yaml), so the check is a prediction: it tests the depth-dose
  model's shape and the 3-D engine (divergence, inverse square, ray tracing, grid) together;
* IAEA TRS-398 (2000), eq. 37 (Followill et al. 1998): TPR20,10 = 1.2661 PDD20,10 - 0.0595 for
  clinical beams, a law relating an SAD measurement to an SSD one; the engine must obey it;
* the Mayneord F factor for a change of SSD (Khan, ch. 9): PDD(d, SSD2) / PDD(d, SSD1) =
  [(SSD2 + dm)(SSD1 + d) / ((SSD1 + dm)(SSD2 + d))]^2, valid for the primary-dominated 6 MV beam
  to ~1-2 % (scatter changes with the field size at depth);
* lung: Khan's rule of thumb (ch. 12, Table 12.2) of +3 % per cm of lung for 4-6 MV beyond an
  inhomogeneity; and a wider penumbra in lung (secondary electrons travel 1/density farther).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from isotox.dose.beam_model import BeamData, BeamModel, commission
from isotox.dose.beams import Aperture, BeamGeometry, conformal_aperture
from isotox.dose.density import DEFAULT_HU_TO_RED, relative_electron_density, validate_curve
from isotox.dose.photon_engine import DensityVolume, beam_dose_at, beamlet_doses_at, trace_fan
from isotox.geometry import ImageGrid

BEAM_FILE = Path(__file__).resolve().parents[1] / "config" / "beams" / "generic_6mv.yaml"


@pytest.fixture(scope="module")
def model() -> BeamModel:
    return commission(BeamData.from_dict(yaml.safe_load(BEAM_FILE.read_text())))


def _water(red_of_depth=None, spacing: float = 2.0) -> DensityVolume:
    """A 40 x 40 x 40 cm water phantom whose surface is the plane y = 0 (the beam enters along +y)."""
    grid = ImageGrid((200, 200, 200), (spacing,) * 3, (-199.0, 1.0, -199.0))
    red = np.ones(grid.shape, np.float32)
    if red_of_depth is not None:
        y = grid.origin[1] + spacing * np.arange(grid.size[1])
        red[:, :, :] = red_of_depth(y)[None, :, None].astype(np.float32)
    return DensityVolume(grid, red)


def _axis_dose(model: BeamModel, density: DensityVolume, ssd_mm: float = 1000.0, field_mm: float = 100.0, depths_mm=None) -> tuple[np.ndarray, np.ndarray]:
    """Central-axis dose of a square field defined at the surface (SSD set-up: isocentre on the surface)."""
    depths = np.arange(0.5, 300.0, 0.5) if depths_mm is None else np.asarray(depths_mm, float)
    beam = BeamGeometry(0.0, (0.0, 0.0, 0.0), sad_mm=ssd_mm)
    aperture = Aperture.rectangle(field_mm, field_mm, 1.0, 120.0)
    points = np.c_[np.zeros_like(depths), depths, np.zeros_like(depths)]
    return depths, beam_dose_at(model, density, beam, aperture, points, step_mm=1.0).astype(float)


def _penumbra(model: BeamModel, density: DensityVolume, depth_mm: float) -> tuple[float, float]:
    """(80-20 % width, 50 % position) of the right edge of a 10 x 10 field at ``depth_mm``."""
    beam = BeamGeometry(0.0, (0.0, 0.0, 0.0))
    x = np.arange(0.0, 90.0, 0.25)
    dose = beam_dose_at(model, density, beam, Aperture.rectangle(100.0, 100.0, 0.5, 120.0), np.c_[x, np.full_like(x, depth_mm), np.zeros_like(x)], 1.0)
    profile = dose / dose[0]
    at = lambda level: float(np.interp(-level, -profile, x))  # noqa: E731 - profile decreases with x
    return at(0.2) - at(0.8), at(0.5)


def test_commissioning_fits_its_points_and_leaves_pdd10_out(model: BeamModel) -> None:
    data = yaml.safe_load(BEAM_FILE.read_text())
    assert 10.0 not in {float(d) for d in data["pdd_10x10_ssd100"]}, "PDD(10) must stay a prediction, not a fitted point"
    assert model.residual_pdd_percent < 1.0  # the 5-parameter model reproduces its 7 commissioning points
    assert 0.035 < model.mu_per_cm < 0.065  # primary attenuation of a ~2 MeV effective photon spectrum in water


def test_water_10x10_depth_of_maximum_and_pdd10(model: BeamModel) -> None:
    """PDD(10 cm) of the 10 x 10 field against the published 67.0 % within 2 % of it: a prediction,
    since 10 cm is left out of the commissioning points (asserted in the test above); the nearest
    wrong answers, the PDD(10) of the 5 x 5 or the 20 x 20 field (63.0 %, 71.0 %), are outside it.

    The depth of maximum is *not* an accuracy check: ``d_max_cm`` is a commissioning input (the
    build-up constant is solved to put the maximum there), so this only asserts that the traced
    dose honours it, to the 1 mm sampling plus the 2 mm CT grid (nearest wrong answer: a maximum at
    the surface or at the build-up constant's own depth, > 3 mm away)."""
    depths, dose = _axis_dose(model, _water())
    pdd = 100.0 * dose / dose.max()
    d_max = depths[np.argmax(dose)]
    configured = 10.0 * float(yaml.safe_load(BEAM_FILE.read_text())["d_max_cm"])
    assert abs(d_max - configured) <= 3.0, (d_max, configured)
    pdd10 = float(np.interp(100.0, depths, pdd))
    assert abs(pdd10 - 67.0) / 67.0 <= 0.02, pdd10  # the tolerance: 2 % of the published value
    assert all(abs(wrong - 67.0) / 67.0 > 0.02 for wrong in (63.0, 71.0))


def test_trs398_relation_between_tpr20_10_and_pdd20_10(model: BeamModel) -> None:
    depths, dose = _axis_dose(model, _water())
    pdd20_10 = float(np.interp(200.0, depths, dose) / np.interp(100.0, depths, dose))
    # TPR: chamber fixed at 100 cm from the source with a 10 x 10 field there; water surface moved
    tpr = []
    for depth in (100.0, 200.0):
        beam = BeamGeometry(0.0, (0.0, depth, 0.0), sad_mm=1000.0)  # isocentre at the chamber
        aperture = Aperture.rectangle(100.0, 100.0, 1.0, 120.0)
        tpr.append(float(beam_dose_at(model, _water(), beam, aperture, np.array([[0.0, depth, 0.0]]), step_mm=1.0)[0]))
    tpr20_10 = tpr[1] / tpr[0]
    assert tpr20_10 == pytest.approx(1.2661 * pdd20_10 - 0.0595, abs=0.01)
    assert 0.65 <= tpr20_10 <= 0.69  # 6 MV clinical beams


def test_mayneord_factor_for_a_longer_ssd(model: BeamModel) -> None:
    d = np.array([50.0, 100.0, 150.0])
    _, at_100 = _axis_dose(model, _water(), 1000.0, 100.0, np.r_[15.0, d])
    _, at_120 = _axis_dose(model, _water(), 1200.0, 120.0, np.r_[15.0, d])  # same field size at the surface (scaled to iso)
    ratio = (at_120[1:] / at_120[0]) / (at_100[1:] / at_100[0])
    f = ((1200 + 15.0) * (1000 + d) / ((1000 + 15.0) * (1200 + d))) ** 2
    np.testing.assert_allclose(ratio, f, rtol=0.02)


def test_penumbra_and_field_edge_in_water(model: BeamModel) -> None:
    for depth, (low, high) in ((15.0, (2.5, 5.0)), (100.0, (4.5, 8.0))):
        width, edge = _penumbra(model, _water(), depth)
        assert low <= width <= high, (depth, width)  # 6 MV 80-20 % penumbra: ~3-4 mm at d_max, ~5-7 mm at 10 cm
        assert edge == pytest.approx(50.0 * (1000.0 + depth) / 1000.0, abs=1.0)  # 50 % at the divergent geometric edge


def test_lung_slab_raises_dose_beyond_it_and_widens_the_penumbra(model: BeamModel) -> None:
    lung_red = float(relative_electron_density(np.array([-740.0]))[0])
    slab = _water(lambda y: np.where((y > 50.0) & (y < 150.0), lung_red, 1.0))
    depths, water = _axis_dose(model, _water())
    _, hetero = _axis_dose(model, slab)
    ratio = hetero / water
    assert ratio[depths == 40.0][0] == pytest.approx(1.0, abs=0.005)  # nothing changes upstream of the slab
    per_cm = (ratio[depths == 200.0][0] - 1.0) / 10.0
    assert 0.025 <= per_cm <= 0.045, per_cm  # Khan: ~ +3 %/cm of lung for 4-6 MV
    assert np.all(np.diff(ratio[(depths > 55) & (depths < 145)]) >= -1e-4)  # the correction grows through the lung
    in_water, _ = _penumbra(model, _water(), 100.0)
    in_lung, _ = _penumbra(model, slab, 100.0)
    assert in_lung > 1.3 * in_water, (in_lung, in_water)


def test_dose_is_linear_in_fluence_and_zero_outside_the_body(model: BeamModel) -> None:
    density = _water()
    beam = BeamGeometry(0.0, (0.0, 100.0, 0.0))
    points = np.array([[0.0, 100.0, 0.0], [30.0, 120.0, 10.0], [0.0, -20.0, 0.0]])
    aperture = Aperture.rectangle(80.0, 80.0, 1.0, 120.0)
    dose = beam_dose_at(model, density, beam, aperture, points)
    assert dose[2] == 0.0 and dose[0] > 0.5  # in air in front of the phantom: no dose is reported
    # a point outside the aperture's padded grid gets 0, not garbage
    assert beam_dose_at(model, density, beam, aperture, np.array([[190.0, 100.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-3)


def test_beamlets_superpose_to_the_field_and_to_any_modulated_fluence(model: BeamModel) -> None:
    """Superposition law of a linear engine: the beamlet columns add up to the open field, and a
    fluence map sum_j w_j beamlet_j gives matrix @ w. The matrix integrates the lateral kernel
    exactly at each point; the fan dose interpolates it linearly between rays 2 mm apart, whose error
    in a penumbra of sigma ~ 2.3 mm is at most h^2/8 max|f''| ~ 2 % of the maximum (second order in
    the ray spacing). Tolerances: 2 % of the maximum anywhere, 1 % for 99 % of the points."""
    slab = _water(lambda y: np.where((y > 40.0) & (y < 120.0), 0.26, 1.0))  # lung-like slab: sigma varies along the rays
    beam = BeamGeometry(0.0, (0.0, 100.0, 0.0))
    aperture = Aperture.rectangle(70.0, 50.0, 2.0, 60.0)
    rng = np.random.default_rng(3)
    points = np.c_[rng.uniform(-50, 50, 3000), rng.uniform(5, 220, 3000), rng.uniform(-40, 40, 3000)]
    matrix, labels = beamlet_doses_at(model, slab, beam, aperture, points, beamlet_mm=10.0)
    # 70 x 50 mm cut by a 10 mm grid through the axis: 8 x 6 beamlets, the outer ones 5 mm wide
    assert matrix.shape[1] == labels.max() + 1 == 8 * 6
    assert np.all(matrix >= 0)
    open_field = beam_dose_at(model, slab, beam, aperture, points)
    scale = float(open_field.max())
    difference = np.abs(matrix.sum(axis=1) - open_field)
    assert difference.max() < 0.02 * scale and np.percentile(difference, 99) < 0.01 * scale
    weights = rng.uniform(0.2, 1.8, matrix.shape[1])
    fluence = np.where(labels >= 0, weights[np.maximum(labels, 0)], 0.0).astype(np.float32)
    modulated = Aperture(aperture.x0_mm, aperture.z0_mm, aperture.pixel_mm, aperture.mask, fluence)
    difference = np.abs(matrix @ weights - beam_dose_at(model, slab, beam, modulated, points))
    assert difference.max() < 0.02 * scale * weights.max() and np.percentile(difference, 99) < 0.01 * scale * weights.max()


def test_a_fan_traced_for_a_superset_gives_the_subsets_doses(model: BeamModel) -> None:
    """A beamlet plan traces each beam once for the whole grid (``trace_fan``) and evaluates the
    beamlet matrix at the optimisation voxels, a subset, on that fan. The subset's own fan has the
    same rays and r samples (r starts at the density grid's corner, X and Z are aperture pixels), so
    the values agree except where the 2.5 mm smoothing of the density along r meets the end of the
    shorter fan, beyond the subset's deepest point. Tolerance 1e-3 of the maximum (the end effect is
    ~1e-4 in sigma there); nearest wrong answer: the points read one ray (2 mm) off on the fan, which
    in a 10 mm beamlet's penumbra changes a column by > 5 % of the maximum (asserted).
    The open-field dose on the superset's own fan is the same computation as before: exact."""
    slab = _water(lambda y: np.where((y > 40.0) & (y < 120.0), 0.26, 1.0))
    beam = BeamGeometry(0.0, (0.0, 100.0, 0.0))
    aperture = Aperture.rectangle(70.0, 50.0, 2.0, 60.0)
    rng = np.random.default_rng(4)
    everything = np.c_[rng.uniform(-60, 60, 6000), rng.uniform(5, 260, 6000), rng.uniform(-50, 50, 6000)]
    subset = everything[rng.choice(6000, 1500, replace=False)]
    fan = trace_fan(model, slab, beam, aperture, everything)
    own, _ = beamlet_doses_at(model, slab, beam, aperture, subset, beamlet_mm=10.0)
    shared, _ = beamlet_doses_at(model, slab, beam, aperture, subset, beamlet_mm=10.0, fan=fan)
    scale = float(own.max())
    assert np.abs(shared - own).max() < 1e-3 * scale
    assert np.array_equal(beam_dose_at(model, slab, beam, aperture, everything, fan=fan), beam_dose_at(model, slab, beam, aperture, everything))
    # the nearest wrong answer: the points read one ray (2 mm) off on the fan
    wrong, _ = beamlet_doses_at(model, slab, beam, aperture, subset + np.array([2.0, 0.0, 0.0]), beamlet_mm=10.0, fan=fan)
    assert np.abs(wrong - own).max() > 0.05 * scale


def test_conformal_aperture_covers_the_target_projection_with_the_margin() -> None:
    beam = BeamGeometry(90.0, (0.0, 0.0, 0.0))
    rng = np.random.default_rng(1)
    sphere = rng.normal(size=(20000, 3))
    sphere = 30.0 * sphere / np.linalg.norm(sphere, axis=1)[:, None] * rng.random((20000, 1)) ** (1 / 3)  # ball of radius 30 mm
    aperture = conformal_aperture(beam, sphere, margin_mm=7.0, pixel_mm=1.0, pad_mm=10.0)
    # a ball of 30 mm at the isocentre projects to a disc of 30 mm; with the margin: 37 mm -> area pi 3.7^2 cm2
    assert aperture.area_cm2 == pytest.approx(np.pi * 3.7**2, rel=0.04)
    assert aperture.equivalent_square_cm == pytest.approx(2 * 3.7, rel=0.03)  # Sterling 4A/P of a disc = 2 r


def test_hu_to_red_curve() -> None:
    assert float(relative_electron_density(np.array([0.0]))[0]) == pytest.approx(1.0)
    red = relative_electron_density(np.linspace(-1200, 3500, 200))
    assert np.all(np.diff(red) >= 0) and red[0] == pytest.approx(DEFAULT_HU_TO_RED[0][1])
    with pytest.raises(ValueError, match="increasing"):
        validate_curve([[0, 1.0], [0, 1.1]])


# --- the vectorised engine against a deliberately simple per-ray reference (issue 16) -----------------


def _phantom(tilt_deg: float) -> DensityVolume:
    """A water cylinder (axis along k) with a lung-like slab, a bone-like block and an air pocket, air
    around it; anisotropic voxels. ``tilt_deg``: the grid's axes tilted about i, which makes the
    fan's sample indices non-separable (the engine's general map_coordinates path)."""
    size, spacing = (48, 44, 40), (3.0, 3.5, 4.0)
    t = np.deg2rad(tilt_deg)
    direction = (1.0, 0.0, 0.0, 0.0, np.cos(t), np.sin(t), 0.0, -np.sin(t), np.cos(t))  # columns: the i, j, k axes
    origin = (-70.5, -75.25, -78.0)
    grid = ImageGrid(size, spacing, origin, direction)
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    p = grid.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3).astype(float)).reshape(*size[::-1], 3)
    red = np.where(p[..., 0] ** 2 + p[..., 1] ** 2 < 62.0**2, 1.0, 0.0)
    red = np.where((np.abs(p[..., 1] + 10.0) < 15.0) & (red > 0), 0.26, red)  # lung slab
    red = np.where((np.abs(p[..., 0] - 20.0) < 8.0) & (np.abs(p[..., 1] - 30.0) < 8.0), 1.6, red)  # bone
    red = np.where(np.linalg.norm(p - np.array([-25.0, 25.0, 5.0]), axis=-1) < 7.0, 0.001, red)  # air pocket
    return DensityVolume(grid, red.astype(np.float32))


def _trilinear(volume: np.ndarray, index: np.ndarray, outside: str) -> np.ndarray:
    """Plain trilinear interpolation of volume[a, b, c] at fractional indices (M, 3): 0 where an
    index is outside [0, n - 1] on any axis (``outside="zero"``), or the index clamped there (``"clamp"``)."""
    index = np.atleast_2d(np.asarray(index, float))
    shape = np.asarray(volume.shape)
    off = np.any((index < 0) | (index > shape - 1), axis=1)
    index = np.clip(index, 0, shape - 1)
    low = np.minimum(np.floor(index).astype(int), np.maximum(shape - 2, 0))
    frac = index - low
    value = np.zeros(len(index))
    for corner in np.ndindex(2, 2, 2):
        at = np.minimum(low + np.array(corner), shape - 1)
        value += np.prod(np.where(np.array(corner, bool), frac, 1.0 - frac), axis=1) * volume[at[:, 0], at[:, 1], at[:, 2]]
    return np.where(off, 0.0, value) if outside == "zero" else value


def _reference_fan(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture,
                   x_rays: np.ndarray, z_rays: np.ndarray, r: np.ndarray, step_mm: float, depth_shift: int = 0,
                   inverse_square: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The engine's fan terms (core sigma on the isocentre plane, DD x inverse square) one ray and one
    sample at a time, from the formulas in photon_engine's docstring: sample points on the divergent
    ray, trilinear density, midpoint-rule radiological depth, density smoothed along the ray (Gaussian
    of 2.5 mm, mirrored at the ray's ends), then the model's terms written out. ``depth_shift`` and
    ``inverse_square`` make the nearest wrong answers."""
    b = model.data
    to_index = np.linalg.inv(density.grid.direction_matrix)  # LPS offset -> (i, j, k) in mm units
    red_kji = density.red.astype(float)
    sigma = np.zeros((x_rays.size, z_rays.size, r.size))
    factor = np.zeros_like(sigma)
    width = 2.5 / step_mm
    radius = int(4.0 * width + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / width) ** 2)
    taps /= taps.sum()
    for a, x in enumerate(x_rays):
        for c, z in enumerate(z_rays):
            points = beam.source_mm + r[:, None] * beam.axis + (r[:, None] / beam.sad_mm) * (x * beam.lateral + z * beam.cranial)
            ijk = (points - np.asarray(density.grid.origin)) @ to_index.T / np.asarray(density.grid.spacing)
            rho = _trilinear(red_kji, ijk[:, ::-1], "zero")
            length = step_mm * np.sqrt(1.0 + (x**2 + z**2) / beam.sad_mm**2) / 10.0  # cm of ray per sample
            depth = (np.cumsum(rho) - 0.5 * rho) * length
            if depth_shift:  # each sample reads the depth of the one before it (0 at the first)
                depth = np.r_[np.zeros(depth_shift), depth[:-depth_shift]]
            local = np.convolve(np.pad(rho, radius, mode="symmetric"), taps, mode="valid")
            local = np.maximum(local, 0.05)
            core = np.sqrt(b.sigma0_mm**2 + (b.sigma_depth_mm_per_cm * depth) ** 2 + b.sigma_electron_mm**2 * np.maximum(1.0 / local**2 - 1.0, 0.0))
            sigma[a, c] = core * beam.sad_mm / r
            dd = model.depth_dose(depth, aperture.equivalent_square_cm * r / beam.sad_mm)
            factor[a, c] = np.where(rho > 0, dd * ((beam.sad_mm / r) ** 2 if inverse_square else 1.0), 0.0)
    return sigma, factor


def _reference_beamlets(model: BeamModel, beam: BeamGeometry, aperture: Aperture, sigma_fan: np.ndarray, factor_fan: np.ndarray,
                        fan_origin: tuple[float, float, float], points: np.ndarray, beamlet_mm: float, step_mm: float) -> np.ndarray:
    """Beamlet doses one point at a time: the fan terms interpolated at the point (sigma clamped at
    the fan's edges, the depth terms 0 beyond them), then the Gaussian kernel integrated over every
    open pixel square of each beamlet with error functions (core at the point's sigma + tail)."""
    from scipy.special import erf

    b = model.data
    xs, zs = aperture.x_mm(), aperture.z_mm()
    cells = np.floor(xs / beamlet_mm)[:, None] * 1e4 + np.floor(zs / beamlet_mm)[None, :]
    _, label = np.unique(cells[aperture.mask], return_inverse=True)
    ox, oz = np.nonzero(aperture.mask)
    h = aperture.pixel_mm
    out = np.zeros((len(points), label.max() + 1))
    for n, p in enumerate(points):
        rel = p - beam.source_mm
        r = rel @ beam.axis
        x, z = (rel @ beam.lateral) * beam.sad_mm / r, (rel @ beam.cranial) * beam.sad_mm / r
        at = np.array([(x - fan_origin[0]) / h, (z - fan_origin[1]) / h, (r - fan_origin[2]) / step_mm])
        sigma, factor = max(float(_trilinear(sigma_fan, at, "clamp")[0]), 1e-3), float(_trilinear(factor_fan, at, "zero")[0])
        if factor <= 0:
            continue

        def square(s: float) -> np.ndarray:
            q = np.sqrt(2.0) * s
            return 0.25 * ((erf((xs[ox] + h / 2 - x) / q) - erf((xs[ox] - h / 2 - x) / q))
                           * (erf((zs[oz] + h / 2 - z) / q) - erf((zs[oz] - h / 2 - z) / q)))

        kernel = (1.0 - b.tail_fraction) * square(sigma) + b.tail_fraction * square(b.tail_sigma_mm)
        out[n] = np.bincount(label, kernel, minlength=out.shape[1]) * factor
    return out


@pytest.mark.parametrize("tilt_deg", [0.0, 7.0])
def test_vectorised_fan_and_beamlets_match_a_per_ray_reference(model: BeamModel, tilt_deg: float) -> None:
    """``trace_fan`` (all rays at once, separable trilinear sampling on an axial grid, the leading air
    skipped, float32) and ``beamlet_doses_at`` (erf products over merged rectangles, float32) against
    the per-ray, per-sample, per-pixel loops above, on a heterogeneous phantom (lung, bone, an air
    pocket, air around the body), an oblique gantry and an axial grid (0 deg) or a tilted one (7 deg:
    the non-separable path).

    Tolerance: 1e-4 of the maximum. Both are float32 where the engine is: the fan terms are stored in
    float32 (relative rounding 6e-8) and the radiological depth is a float32 cumulative sum over ~100
    samples (relative error <= ~1e-5 in the worst case, ~1e-6 typically); the erf differences and
    their products are float32 (absolute ~1e-7 of a beamlet). So 1e-4 leaves a 10x margin over the
    worst float32 accumulation (measured: ~3e-7). The nearest wrong answers are asserted to fail it
    by far: the radiological depth read one sample (2 mm) off along the ray (~30 % of the maximum in
    the build-up at the body's surface; ~0.8 % on the beamlet doses at the points inside), and a
    missing inverse-square factor (~9 % of the maximum here, r within ~10 % of the SAD)."""
    density = _phantom(tilt_deg)
    beam = BeamGeometry(33.0, (5.0, -4.0, 3.0))
    aperture = Aperture.rectangle(40.0, 30.0, 2.0, 16.0)
    step = 2.0
    rng = np.random.default_rng(11)
    # points in the body around the axis: a modest fan (rays x samples) for the loops
    points = np.c_[rng.uniform(-20, 30, 150), rng.uniform(-25, 35, 150), rng.uniform(-20, 25, 150)]
    points = points[np.hypot(points[:, 0], points[:, 1]) < 58.0]
    fan = trace_fan(model, density, beam, aperture, points, step)
    assert fan is not None
    x_rays, z_rays = aperture.x_mm()[fan.ix], aperture.z_mm()[fan.iz]
    sigma_ref, factor_ref = _reference_fan(model, density, beam, aperture, x_rays, z_rays, fan.r_values, step)
    assert (factor_ref > 0).mean() > 0.3  # the fan crosses the body (and air before it)
    assert np.abs(fan.sigma_iso - sigma_ref).max() < 1e-4 * sigma_ref.max()
    assert np.abs(fan.depth_factor - factor_ref).max() < 1e-4 * factor_ref.max()
    # the nearest wrong answers fail the tolerance by far
    _, shifted = _reference_fan(model, density, beam, aperture, x_rays, z_rays, fan.r_values, step, depth_shift=1)
    assert np.abs(shifted - factor_ref).max() > 50 * 1e-4 * factor_ref.max()
    _, no_inverse_square = _reference_fan(model, density, beam, aperture, x_rays, z_rays, fan.r_values, step, inverse_square=False)
    assert np.abs(no_inverse_square - factor_ref).max() > 50 * 1e-4 * factor_ref.max()

    subset = points[:40]
    matrix, labels = beamlet_doses_at(model, density, beam, aperture, subset, beamlet_mm=10.0, step_mm=step, fan=fan)
    origin = (x_rays[0], z_rays[0], fan.r_values[0])
    reference = _reference_beamlets(model, beam, aperture, sigma_ref, factor_ref, origin, subset, 10.0, step)
    assert matrix.shape == reference.shape and labels.max() + 1 == reference.shape[1]
    assert np.abs(matrix - reference).max() < 1e-4 * reference.max()
    wrong = _reference_beamlets(model, beam, aperture, sigma_ref, shifted, origin, subset, 10.0, step)
    assert np.abs(wrong - reference).max() > 10 * 1e-4 * reference.max()
    # the open field's dose on the fan (pre-blurred levels) agrees with the beamlet columns' sum as
    # before (the superposition test's 2 % bound), so the vectorised fan dose reads the same terms
    open_field = beam_dose_at(model, density, beam, aperture, subset, step, fan=fan)
    assert np.abs(matrix.sum(axis=1) - open_field).max() < 0.02 * open_field.max()


# --- the speed-ups of issue 16 (second pass) against plain references ----------------------------


def test_fast_erf_is_scipys_erf_to_its_stated_bound() -> None:
    """``_fast_erf`` (Abramowitz and Stegun 7.1.26, the exponential in float32) against
    ``scipy.special.erf`` on a dense range and the edges the clamp at |x| = 6 meets. Bound: 2.5e-7
    (7.1.26's 1.5e-7 plus the float32 exponential's rounding, <= ~1e-7 of exp(-x^2) <= 1). The
    nearest wrong answer, the float32 rounding of erf itself, is 6e-8: the bound is the scale of it,
    and a 7.1.26 coefficient off in its last printed digit (1e-9) moves the error by ~1e-9, so the
    check is of the formula and the clamp (a missing sign or clamp errs by ~1)."""
    from scipy import special

    from isotox.dose.photon_engine import _fast_erf

    x = np.r_[np.linspace(-80.0, 80.0, 400_001), -6.0, 6.0, 5.999, 6.001, 0.0, -1e-12, 1e-12]
    error = np.abs(_fast_erf(x) - special.erf(x))
    assert error.max() < 2.5e-7
    assert _fast_erf(np.array([-100.0]))[0] == -1.0 and _fast_erf(np.array([100.0]))[0] == 1.0


def test_read_fan_is_a_per_point_trilinear_interpolation() -> None:
    """``read_fan`` (blocked, float32, by flat index) against the per-point 8-corner loop above
    (``_trilinear``, float64), on a random volume with points inside, on the last sample of an axis,
    and outside it (0 there, or clamped with ``nearest``), in several blocks. Tolerance 1e-6 of the
    maximum: float32 weights (relative 6e-8 each) and a float32 sum of 8 terms. Nearest wrong answer:
    the corners read one sample off along r, ~0.3 of a random volume's range."""
    from isotox.dose.photon_engine import read_fan

    rng = np.random.default_rng(3)
    volume = rng.uniform(0.0, 1.0, (7, 5, 9)).astype(np.float32)
    coords = np.stack([rng.uniform(-1.5, 7.5, 3000), rng.uniform(-1.5, 5.5, 3000), rng.uniform(-1.5, 9.5, 3000)])
    coords[:, :3] = [[6.0, 0.0, 3.2], [4.0, 4.0, 0.0], [8.0, 2.5, 8.0]]  # on the last sample of an axis
    for nearest, outside in ((False, "zero"), (True, "clamp")):
        reference = _trilinear(volume, coords.T, outside)
        got = read_fan(volume, coords, nearest=nearest, chunk_points=700)
        assert np.abs(got - reference).max() < 1e-6 * volume.max()
        assert np.abs(read_fan(volume, coords + np.array([[0.0], [0.0], [1.0]]), nearest) - reference).max() > 0.1
    assert (read_fan(volume, np.array([[-0.01], [2.0], [2.0]]))[0], read_fan(volume, np.array([[6.01], [2.0], [2.0]]))[0]) == (0.0, 0.0)


def test_fan_dose_is_the_per_voxel_level_interpolation(model: BeamModel) -> None:
    """``fan_dose`` (blocks of rays, the blurred levels of only the fluence's nonzero box, one gather
    of a level pair per voxel) against the formula one voxel at a time: the fluence blurred on the
    whole aperture at each of the 24 levels (``gaussian_filter``, constant 0 outside), log-linear
    between the two levels around the voxel's sigma (``np.interp`` in float64), core and tail
    weighted, times the depth terms; 0 outside the body. A modulated fluence on the heterogeneous
    phantom above. Tolerance 1e-5 of the maximum: the engine's level position is float32 (1e-7 in
    log sigma, and a level's blur changes by < 1 % per 1 % of sigma, so < 1e-6). Nearest wrong
    answer: a voxel reading the levels of the next ray along X (2 mm), > 1 % of the maximum."""
    from scipy import ndimage

    from isotox.dose.photon_engine import _SIGMA_LEVELS_MM, fan_dose

    density = _phantom(0.0)
    beam = BeamGeometry(33.0, (5.0, -4.0, 3.0))
    aperture = Aperture.rectangle(40.0, 30.0, 2.0, 16.0)
    rng = np.random.default_rng(5)
    fluence = np.where(aperture.mask, rng.uniform(0.2, 1.5, aperture.mask.shape), 0.0).astype(np.float32)
    points = np.c_[rng.uniform(-20, 30, 150), rng.uniform(-25, 35, 150), rng.uniform(-20, 25, 150)]
    fan = trace_fan(model, density, beam, aperture, points[np.hypot(points[:, 0], points[:, 1]) < 58.0])
    assert fan is not None
    got = fan_dose(model, fan, fluence, aperture.pixel_mm, chunk_rays=50)  # several blocks

    b = model.data
    levels = np.stack([ndimage.gaussian_filter(fluence, s / aperture.pixel_mm, mode="constant", truncate=4.0) for s in _SIGMA_LEVELS_MM])
    tail = ndimage.gaussian_filter(fluence, b.tail_sigma_mm / aperture.pixel_mm, mode="constant", truncate=4.0)
    log_levels = np.log(_SIGMA_LEVELS_MM)

    def reference(shift: int) -> np.ndarray:
        expected = np.zeros(fan.shape)
        for a, c, k in zip(*np.nonzero(fan.depth_factor > 0)):
            x, z = min(fan.ix[a] + shift, fluence.shape[0] - 1), fan.iz[c]
            core = np.interp(np.log(float(fan.sigma_iso[a, c, k])), log_levels, levels[:, x, z])
            expected[a, c, k] = ((1.0 - b.tail_fraction) * core + b.tail_fraction * tail[x, z]) * fan.depth_factor[a, c, k]
        return expected

    expected = reference(0)
    assert (expected > 0).mean() > 0.3
    assert np.abs(got - expected).max() < 1e-5 * expected.max()
    assert np.abs(reference(1) - expected).max() > 0.01 * expected.max()
    # a Fan made without the body's sigma range (None): found on its arrays, the same dose
    import dataclasses

    assert np.array_equal(fan_dose(model, dataclasses.replace(fan, body_sigma_range=None), fluence, aperture.pixel_mm, chunk_rays=50), got)
