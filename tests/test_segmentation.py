"""Stage 3: margins (exact, by law), PET features, and volumes against the sample cohort's truth.

What a threshold segmentation can be asked to get right. The sample PET is blurred by a 6 mm
FWHM PSF (sigma 2.55 mm): on a 25 cc tumour the blur alone makes the 50 % SUVmax volume look like
the true 40 % one, so comparing with the unblurred tumour would either fail a correct method or,
with a band wide enough to absorb the blur (the old S x FWHM/2, 50-80 % of the volume), pass the
wrong threshold. The generator therefore records the volumes *as a perfect scanner of this
resolution shows them* (``tumour.as_measured``: the noiseless PET blurred by the PSF, thresholded
by the protocol's definitions on a 1.5 mm raster). What remains between that and isotox is
registration, resampling onto 4 mm planning voxels, and noise, which raises the maximum by 2-3 SD
(~6 % of the threshold) and so moves the iso-surface inward by about a millimetre at the tumour's
SUV gradient; voxelisation errors average out over the surface. Tolerance: ``S x 1 mm`` with S the
surface of the equivalent sphere (20 % of a 15 cc volume), and each test asserts that the nearest
wrong answer lies outside it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from tests.conftest import sample_patients
from isotox.cli import main as cli_main
from isotox.errors import InputDataError
from isotox.images import dice, lung_mask, read_image
from isotox.segmentation.features import PEAK_RADIUS_MM, pet_features, sphere_kernel
from isotox.segmentation.margins import expand, shrink
from isotox.segmentation.pet import threshold_volume
from isotox.segmentation.stage import SegmentationSettings, segment_patient
from isotox.settings import load_protocol

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = load_protocol(REPO / "config" / "protocols" / "pet_boost.yaml")
FWHM_MM = 6.0


def expected_volume_error_cc(true_cc: float, surface_shift_mm: float = FWHM_MM / 2.0) -> float:
    """|V - V_true| bound when the boundary may move ``surface_shift_mm`` (equivalent-sphere surface)."""
    radius = (3.0 * true_cc * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    return 4.0 * np.pi * radius**2 * surface_shift_mm / 1000.0


#: Residual surface shift against the as-measured truth (noise on the maximum; see the module docstring).
MEASURED_SHIFT_MM = 1.0


# ---------------------------------------------------------------- margins: exact laws -------------
def _grid_points(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.stack([ii * spacing[0], jj * spacing[1], kk * spacing[2]], axis=-1)


def test_margin_on_anisotropic_sphere_is_exact() -> None:
    """Sphere r = 20 mm on 0.98 x 0.98 x 3 mm voxels, +8 mm: membership equals a brute-force
    nearest-neighbour search, and every voxel centre within 28 - 1.6 mm of the centre is inside,
    none beyond 28 + 1e-6 mm (1.6 mm = the largest distance from a point on the 20 mm sphere to
    the nearest voxel centre inside it, half the 3 mm slice step plus in-plane rounding)."""
    spacing = (0.98, 0.98, 3.0)
    shape = (30, 80, 80)
    pts = _grid_points(shape, spacing)
    centre = np.array([40.0, 39.0, 45.0])
    radius = np.linalg.norm(pts - centre, axis=-1)
    sphere = radius <= 20.0
    grown = expand(sphere, spacing, 8.0)
    tree = cKDTree(pts[sphere])
    distance, _ = tree.query(pts.reshape(-1, 3), distance_upper_bound=9.0)
    brute = (distance <= 8.0 + 1e-9).reshape(shape)
    assert np.array_equal(grown, brute)
    assert radius[grown].max() <= 28.0 + 1e-6
    assert grown[radius <= 28.0 - 1.6].all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), a=st.floats(0.5, 6.0), b=st.floats(0.5, 6.0))
def test_margins_compose_within_the_triangle_inequality(seed: int, a: float, b: float) -> None:
    """expand(expand(M, a), b) is inside expand(M, a + b); expand is monotone; shrink undoes no more than it should."""
    rng = np.random.default_rng(seed)
    spacing = (1.0, 1.5, 2.5)
    mask = np.zeros((12, 16, 16), bool)
    mask[tuple(rng.integers(3, 9, size=(3, 4)))] = True
    twice = expand(expand(mask, spacing, a), spacing, b)
    once = expand(mask, spacing, a + b)
    assert not (twice & ~once).any()
    assert not (mask & ~expand(mask, spacing, a)).any()
    assert not (shrink(expand(mask, spacing, a), spacing, a) & ~expand(mask, spacing, a)).any()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), margin=st.floats(0.5, 7.0), edge=st.booleans())
def test_shrink_equals_a_brute_force_nearest_outside_search(seed: int, margin: float, edge: bool) -> None:
    """shrink keeps exactly the mask voxels whose centre is farther than the margin from every
    outside voxel centre of the image (kd-tree reference over all outside voxels, not only those
    near the mask). Masks are a random blob and a block (often apart), half of them cut by the image edge (no outside beyond
    it). Nearest wrong answers rejected by exact equality: searching only the mask's tight box
    (misses the outside ring, keeps boundary voxels) and treating beyond-the-image as outside."""
    rng = np.random.default_rng(seed)
    spacing = (0.9, 1.3, 2.5)
    shape = (10, 18, 16)
    pts = _grid_points(shape, spacing)
    centre = np.array([rng.uniform(-3, 17), rng.uniform(0, 23), rng.uniform(0, 25)]) if edge else np.array([7.0, 11.0, 12.0])
    mask = np.linalg.norm((pts - centre) / [1.0, 1.2, 0.8], axis=-1) <= rng.uniform(4.0, 9.0)
    k, j, i = rng.integers(0, 6), rng.integers(0, 12), rng.integers(0, 10)
    mask[k:k + 4, j:j + 6, i:i + 6] = True  # a flat-faced block: its faces lie on the tight box
    if mask.all() or not mask.any():
        return
    distance, _ = cKDTree(pts[~mask]).query(pts[mask])
    brute = np.zeros(shape, bool)
    brute[mask] = distance > margin + 1e-9
    assert np.array_equal(shrink(mask, spacing, margin), brute)


def test_margin_is_clipped_to_the_body() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[5, 5, 5] = True
    body = np.zeros_like(mask)
    body[:, :, :6] = True
    grown = expand(mask, (2.0, 2.0, 2.0), 5.0, clip=body)
    assert grown.any() and not (grown & ~body).any()


# ---------------------------------------------------------------- PET features ----------------------
def test_suvpeak_sphere_is_1_cc_and_peak_of_uniform_sphere_is_its_value() -> None:
    kernel = sphere_kernel((0.5, 0.5, 0.5), PEAK_RADIUS_MM)
    assert (kernel > 0).sum() * 0.125 / 1000.0 == pytest.approx(1.0, rel=0.02)
    spacing = (2.0, 2.0, 2.0)
    pts = _grid_points((40, 40, 40), spacing)
    inside = np.linalg.norm(pts - 40.0, axis=-1) <= 25.0
    suv = np.where(inside, 5.0, 1.0)
    features = pet_features(suv, inside, spacing)
    assert features["suvpeak"] == pytest.approx(5.0)
    assert features["suvmax"] == 5.0
    assert features["tlg"] == pytest.approx(5.0 * features["mtv_cc"])
    assert features["mtv_cc"] == pytest.approx(4.0 / 3.0 * np.pi * 25.0**3 / 1000.0, rel=0.03)


def test_thresholds_stay_inside_the_search_region() -> None:
    """A hotter organ next to the tumour never enters: it is outside the search region."""
    suv = np.ones((20, 20, 20))
    suv[5:9, 5:9, 5:9] = 6.0  # tumour
    suv[5:15, 12:18, 12:18] = 12.0  # 'heart'
    region = np.zeros(suv.shape, bool)
    region[3:11, 3:11, 3:11] = True
    result = threshold_volume(suv, region, (4.0, 4.0, 4.0), "percent", 40.0)
    assert result.mask.sum() == 64 and result.suvmax == 6.0 and not result.flags
    touching = threshold_volume(suv, region, (4.0, 4.0, 4.0), "absolute", 0.5)
    assert any("border of the search region" in f for f in touching.flags)


# ---------------------------------------------------------------- the sample cohort ----------------
@pytest.fixture(scope="module")
def segmented(sample_run: Path) -> list[tuple[dict, dict, Path]]:
    return [(truth, json.loads((patient / "segment" / "segment.json").read_text()), patient / "segment") for truth, patient in sample_patients(sample_run)]


def test_boost_and_gtv_pet_volumes_reject_the_neighbouring_threshold(segmented: list[tuple[dict, dict, Path]]) -> None:
    """GTV_SUV50 (Arm B boost, >= 50 % SUVmax inside the GTV) and GTV_PET (>= 40 %) within S x 1 mm
    of the as-measured truth. Nearest wrong answer: the other threshold (the 40 % volume passed off
    as the 50 % boost, and vice versa); its as-measured volume lies outside the band (asserted)."""
    for truth, summary, _ in segmented:
        f, t = summary["figures"], truth["tumour"]["as_measured"]
        pairs = (("gtv_suv50_cc", "boost_pet_volume_cc", "pet40_pet_volume_cc"), ("gtv_pet40_cc", "pet40_pet_volume_cc", "boost_pet_volume_cc"))
        for measured_key, true_key, wrong_key in pairs:
            tol = expected_volume_error_cc(t[true_key], MEASURED_SHIFT_MM)
            assert abs(f[measured_key] - t[true_key]) <= tol, (truth["patient_id"], measured_key, f[measured_key], t[true_key], tol)
            assert abs(t[wrong_key] - t[true_key]) > tol, (truth["patient_id"], "the band would hold the wrong threshold", t)


def test_hypoxic_volume_against_truth(segmented: list[tuple[dict, dict, Path]]) -> None:
    """HX4 hypoxic volume (TBR >= 1.4 inside the GTV) at 2 h and 4 h within S x 1 mm of the as-measured
    truth; blood SUV within 5 % (eroded aorta: residual partial volume; measured <= 2.6 %).

    Nearest wrong answer: a blood SUV 15 % off (an earlier bug: aorta ROI voxels outside the PET's
    field of view counted as 0, SAMPLE003 2 h), i.e. the hypoxic volume at TBR >= 1.4 x 0.85 or
    1.4 / 0.85 on the patient's own TBR map: both outside the volume band and the blood band
    (asserted). The other time point's volume is not used: on SAMPLE003 it lies inside the band."""
    for truth, summary, stage in segmented:
        f, t = summary["figures"], truth["tumour"]["as_measured"]
        gtv_image = read_image(stage / "masks" / "GTV.nii.gz")
        gtv = sitk.GetArrayFromImage(gtv_image) > 0
        cc = float(np.prod(gtv_image.GetSpacing())) / 1000.0
        for tag in ("2h", "4h"):
            true_hv = t[f"hypoxic_hx4_{tag}_pet_volume_cc"]
            tol = expected_volume_error_cc(true_hv, MEASURED_SHIFT_MM)
            assert abs(f[f"hx4_{tag}_hv_cc"] - true_hv) <= tol, (truth["patient_id"], tag, f[f"hx4_{tag}_hv_cc"], true_hv, tol)
            tbr = sitk.GetArrayFromImage(read_image(stage / f"tbr_{tag}.nii.gz"))
            for wrong_threshold in (1.4 * 0.85, 1.4 / 0.85):
                wrong_hv = float((gtv & (tbr >= wrong_threshold)).sum()) * cc
                assert abs(wrong_hv - true_hv) > tol, (truth["patient_id"], tag, wrong_threshold, wrong_hv, true_hv, tol)
            true_blood = truth["sessions"][f"hx4_{tag}"]["blood_suv"]
            assert f[f"hx4_{tag}_blood_suv"] == pytest.approx(true_blood, rel=0.05), (truth["patient_id"], tag)
            assert f[f"hx4_{tag}_blood_suv"] != pytest.approx(0.85 * true_blood, rel=0.05)
            assert 0.0 < f[f"hx4_{tag}_fhv"] < 1.0
        assert f["hx4_hv_change_cc"] == pytest.approx(f["hx4_4h_hv_cc"] - f["hx4_2h_hv_cc"])


def test_tbrmax_band_cannot_straddle_the_hypoxia_threshold(segmented: list[tuple[dict, dict, Path]]) -> None:
    """TBRmax against the blurred noiseless maximum T: within [0.95 T, 1.05 T + 3.5 sd], sd the
    per-voxel noise of the TBR (the generator's count noise, CV at SUV 1 x sqrt(SUV) / blood SUV;
    the maximum of ~100 noisy voxels sits 2-3 sd high), 5 % both ways for the blood SUV.

    Nearest wrong answer: a TBR on the other side of the 1.4 hypoxia threshold (the old 25 % band
    accepted 1.2 for a true 1.6). The band's lower end stays above 1.4 (asserted), so a method that
    reports a hypoxic tumour as normoxic fails."""
    for truth, summary, _ in segmented:
        f, t = summary["figures"], truth["tumour"]["as_measured"]
        for tag in ("2h", "4h"):
            s = truth["sessions"][f"hx4_{tag}"]
            true_max = t[f"tbrmax_hx4_{tag}_pet"]
            sd = s["pet_cv_at_suv1"] * np.sqrt(true_max * s["blood_suv"]) / s["blood_suv"]
            low, high = 0.95 * true_max, 1.05 * true_max + 3.5 * sd
            assert low <= f[f"hx4_{tag}_tbrmax"] <= high, (truth["patient_id"], tag, f[f"hx4_{tag}_tbrmax"], (low, high))
            assert low > s["hypoxia_threshold_tbr"] and not low <= 1.2 <= high


def test_gtv_suvmax_against_the_blurred_noiseless_maximum(segmented: list[tuple[dict, dict, Path]]) -> None:
    """GTV SUVmax (registered FDG PET, planning grid) against the generator's blurred noiseless
    maximum T on the PET grid: within [0.92 T, 1.05 T + 3.5 sd], sd the count noise at T (CV at
    SUV 1 x sqrt(T)). The low end: the planning grid (4.5 mm) misses the peak and linear
    interpolation averages it down (measured 0.944-0.990 T on the 4 patients); the high end: the
    maximum of ~100 noisy voxels sits 2-3 sd high.

    Nearest wrong answers: the SUV without decay correction to the injection time (T divided by
    2^(uptake / 109.8 min), 0.65-0.70 T on these patients), excluded on every patient (asserted).
    SUVpeak (the 1 cc sphere mean) is 0.86-0.94 of the max here, too close for this band to
    separate, so the test asserts only that the reported max exceeds it."""
    for truth, summary, _ in segmented:
        fdg = truth["sessions"]["fdg"]
        true_max = fdg["tumour_suvmax_blurred_noiseless"]
        sd = fdg["pet_cv_at_suv1"] * np.sqrt(true_max)
        low, high = 0.92 * true_max, 1.05 * true_max + 3.5 * sd
        measured = summary["figures"]["gtv_suvmax"]
        assert low <= measured <= high, (truth["patient_id"], measured, (low, high))
        undecayed = measured / 2.0 ** (fdg["uptake_time_s"] / (109.77 * 60.0))
        assert not low <= undecayed <= high, (truth["patient_id"], undecayed)
        assert summary["figures"]["gtv_suvpeak"] < measured


def test_targets_nest_and_follow_the_protocol(segmented: list[tuple[dict, dict, Path]]) -> None:
    for truth, summary, stage in segmented:
        masks = {p.name.removesuffix(".nii.gz"): sitk.GetArrayFromImage(read_image(p)) > 0 for p in (stage / "masks").glob("*.nii.gz")}
        for inner, outer in (("GTV", "CTV"), ("CTV", "PTV"), ("GTV_SUV50", "GTV"), ("PTV", "BODY"), ("HYPOXIC_2H", "GTV")):
            assert not (masks[inner] & ~masks[outer]).any(), (inner, outer)
        assert not (masks["LUNGS_MINUS_GTV"] & masks["GTV"]).any()
        assert summary["settings"]["ctv_margin_mm"] == PROTOCOL["margins"]["ctv_mm"][truth["histology"]]
        row = pd.read_csv(stage / "features.tsv", sep="\t")
        assert len(row) == 1 and row["gtv_suvpeak"][0] <= row["gtv_suvmax"][0]
        assert (stage / "qc" / "contours.png").stat().st_size > 10_000


def _first_patient(sample_run: Path, *, contoured: tuple[str, ...] = (), not_contoured: tuple[str, ...] = ()) -> str:
    """The first sample patient whose RTSTRUCT has (or lacks) the named structures; the run must hold one."""
    for truth, _ in sample_patients(sample_run):
        s = truth["structures"]
        if all(s[n]["contoured"] for n in contoured) and not any(s[n]["contoured"] for n in not_contoured):
            return str(truth["patient_id"])
    raise AssertionError(f"no sample patient with {contoured} contoured and {not_contoured} not: change SAMPLE_PATIENTS or the seed")


def test_lungs_from_ct_agree_with_the_rtstruct(sample_run: Path) -> None:
    ingest = sample_run / "patients" / _first_patient(sample_run, contoured=("LUNG_L", "LUNG_R")) / "ingest"
    ct = read_image(ingest / "planning_ct.nii.gz")
    contoured = (sitk.GetArrayFromImage(read_image(ingest / "masks" / "LUNG_L.nii.gz")) > 0) | (sitk.GetArrayFromImage(read_image(ingest / "masks" / "LUNG_R.nii.gz")) > 0)
    assert dice(lung_mask(ct), contoured) > 0.9


def test_uncontoured_lungs_come_from_the_ct_with_the_true_volume(segmented: list[tuple[dict, dict, Path]]) -> None:
    """A patient without lung contours: LUNG_L/LUNG_R from the CT threshold, each within 5 % of the
    true (planimetric) volume. 5 %: a one-voxel (4 mm) boundary shift on a ~1.5 l lung is ~4 %.
    Nearest wrong answer: left and right swapped (the lungs differ by > 10 % in every sample
    patient, asserted) or both lungs as one."""
    checked = 0
    for truth, summary, stage in segmented:
        s = truth["structures"]
        if s["LUNG_L"]["contoured"]:
            continue
        assert summary["structures"]["LUNG_L"] == summary["structures"]["LUNG_R"] == "ct-threshold"
        for side, other in (("LUNG_L", "LUNG_R"), ("LUNG_R", "LUNG_L")):
            measured = float((sitk.GetArrayFromImage(read_image(stage / "masks" / f"{side}.nii.gz")) > 0).sum()) * voxel_cc_of(stage)
            assert measured == pytest.approx(s[side]["volume_cc"], rel=0.05), (truth["patient_id"], side, measured, s[side]["volume_cc"])
            assert abs(s[other]["volume_cc"] - s[side]["volume_cc"]) > 0.10 * s[side]["volume_cc"]
        checked += 1
    assert checked, "the sample run has no patient without lung contours"


def voxel_cc_of(stage: Path) -> float:
    image = read_image(stage / "masks" / "BODY.nii.gz")
    return float(np.prod(image.GetSpacing())) / 1000.0


def test_uncontoured_aorta_is_found_by_anatomy(segmented: list[tuple[dict, dict, Path]]) -> None:
    """A patient without an AORTA contour: AORTA_CT, found on the contrast planning CT, has its
    centre within 3 mm (in-plane) of the true descending aorta's axis, and the HX4 blood SUV from it
    is within 5 % of the truth (eroded 6 mm: residual partial volume).

    Nearest wrong answer: the vertebral body, as bright as the aorta on these CTs (150-400 HU vs
    200-450 HU) and 28 mm to its right; the 3 mm bound excludes it (asserted)."""
    checked = 0
    for truth, summary, stage in segmented:
        if truth["structures"]["AORTA"]["contoured"]:
            continue
        assert summary["structures"]["AORTA_CT"].startswith("descending aorta found on the planning CT by anatomy")
        image = read_image(stage / "masks" / "AORTA_CT.nii.gz")
        found = sitk.GetArrayFromImage(image) > 0
        kk, jj, ii = np.nonzero(found)
        pts = np.array([image.TransformIndexToPhysicalPoint((int(i), int(j), int(k))) for i, j, k in zip(ii, jj, kk)])
        landmarks = truth["landmarks_mm"]
        centre = pts[:, :2].mean(axis=0)
        assert np.linalg.norm(centre - landmarks["descending_aorta_centre_xy"]) <= 3.0, (truth["patient_id"], centre)
        assert np.linalg.norm(np.asarray(landmarks["vertebral_body_centre_xy"]) - landmarks["descending_aorta_centre_xy"]) > 3.0 + 20.0
        # >= 90 % of the voxel centres inside the lumen plus one in-plane voxel diagonal (the partial-volume rim)
        rim = float(np.hypot(*image.GetSpacing()[:2]))
        inside = np.linalg.norm(pts[:, :2] - landmarks["descending_aorta_centre_xy"], axis=1) <= landmarks["descending_aorta_radius"] + rim
        assert inside.mean() >= 0.9, (truth["patient_id"], inside.mean())
        assert summary["figures"]["hx4_2h_blood_suv"] == pytest.approx(truth["sessions"]["hx4_2h"]["blood_suv"], rel=0.05)
        checked += 1
    assert checked, "the sample run has no patient without an AORTA contour"


def _copy_patient(sample_run: Path, tmp_path: Path) -> Path:
    patient = tmp_path / "SAMPLE001"
    for stage in ("ingest", "register"):
        shutil.copytree(sample_run / "patients" / "SAMPLE001" / stage, patient / stage)
    return patient


def test_no_aorta_anywhere_is_flagged(sample_run: Path, tmp_path: Path) -> None:
    """A CT without contrast and no AORTA structure: hypoxia is flagged, not guessed. (Everything from
    100 to 600 HU is set to soft tissue: no enhanced blood, and no bone to locate the spine by.)"""
    patient = _copy_patient(sample_run, tmp_path)
    (patient / "ingest" / "masks" / "AORTA.nii.gz").unlink(missing_ok=True)
    ct_path = patient / "ingest" / "planning_ct.nii.gz"
    ct = read_image(ct_path)
    hu = sitk.GetArrayFromImage(ct)
    plain = sitk.GetImageFromArray(np.where((hu > 100) & (hu < 600), 40, hu).astype(hu.dtype))
    plain.CopyInformation(ct)
    sitk.WriteImage(plain, str(ct_path))  # the test's own copy
    summary = segment_patient(patient, SegmentationSettings.from_config({}, PROTOCOL, "squamous"))
    assert any("no aorta ROI" in f for f in summary["flags"])
    assert "hx4_2h_hv_cc" not in summary["figures"]


def test_no_gtv_and_no_seed_point_is_a_clear_error(sample_run: Path, tmp_path: Path) -> None:
    patient = _copy_patient(sample_run, tmp_path)
    (patient / "ingest" / "masks" / "GTV.nii.gz").unlink()
    with pytest.raises(InputDataError, match="SAMPLE001.*no search region.*seed_point_mm"):
        segment_patient(patient, SegmentationSettings.from_config({}, PROTOCOL, "squamous"))
    assert not (patient / "segment").exists()
    truth = json.loads((sample_run / "sample" / "SAMPLE001" / "ground_truth.json").read_text())
    summary = segment_patient(patient, SegmentationSettings.from_config({}, PROTOCOL, "squamous"), seed_point_mm=tuple(truth["tumour"]["centre_mm"]))
    assert summary["structures"]["GTV"] == "GTV_PET"
    # from a seed-point box instead of the GTV: the 40 % volume as measured, within the wider FWHM/2
    # band (the box's SUVmax and components are not the GTV's); the empty or whole-box answer fails it
    pet40 = truth["tumour"]["as_measured"]["pet40_pet_volume_cc"]
    assert summary["figures"]["gtv_pet_cc"] == pytest.approx(pet40, abs=expected_volume_error_cc(pet40))


def test_no_uptake_above_threshold_is_flagged(sample_run: Path, tmp_path: Path) -> None:
    patient = _copy_patient(sample_run, tmp_path)
    summary = segment_patient(patient, SegmentationSettings.from_config({"absolute_suv": 500.0}, PROTOCOL, "squamous"))
    assert any("GTV_PET_ABS: no uptake above the absolute threshold 500.00" in f for f in summary["flags"])


def test_segment_cli_and_unknown_histology(sample_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patient = _copy_patient(sample_run, tmp_path)
    config = str(REPO / "config" / "config.yaml")
    assert cli_main(["segment", str(patient), "--histology", "adenocarcinoma", "--config", config]) == 0
    assert (patient / "segment" / "masks" / "PTV.nii.gz").exists()
    assert cli_main(["segment", str(patient), "--histology", "mesothelioma", "--config", config]) == 2
    assert "mesothelioma" in capsys.readouterr().err
