"""Stage 3: margins (exact, by law), PET features, and volumes against the sample cohort's truth.

Expected error of a PET threshold volume. The sample PET is blurred by a 6 mm FWHM PSF
(sigma 2.55 mm), resampled onto 4 mm planning voxels and noisy. A threshold between 20 % and
80 % of the local contrast crosses a blurred edge within 0.84 sigma (2.1 mm) of the true edge,
and voxelisation moves the boundary by up to half a voxel (2 mm): the surface may move by
about FWHM / 2 = 3 mm either way on average. The expected volume error is therefore
``|V - V_true| <= S x 3 mm`` with S the surface of the equivalent sphere of V_true. The truths
are defined the way the segmentations are: the tumour points whose *true* uptake is >= 40 % /
50 % of the true peak (pet40 / boost), and the generator's hypoxic sub-volume (TBR >= 1.4).
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


def expected_volume_error_cc(true_cc: float) -> float:
    radius = (3.0 * true_cc * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    return 4.0 * np.pi * radius**2 * (FWHM_MM / 2.0) / 1000.0


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


def test_gtv_pet_and_boost_volumes_within_the_blur_expectation(segmented: list[tuple[dict, dict, Path]]) -> None:
    for truth, summary, _ in segmented:
        f, t = summary["figures"], truth["tumour"]
        for measured, true in ((f["gtv_pet40_cc"], t["pet40_volume_cc"]), (f["gtv_suv50_cc"], t["boost_volume_cc"])):
            assert abs(measured - true) <= expected_volume_error_cc(true), (truth["patient_id"], measured, true)


def test_hypoxic_volume_and_tbr_against_truth(segmented: list[tuple[dict, dict, Path]]) -> None:
    """Hypoxic volume within the blur expectation; blood SUV within 5 % (eroded aorta: residual
    partial volume); TBRmax within 25 % of the true hypoxic TBR (the maximum of ~100 noisy
    voxels sits ~2.5 noise SD above the mean, ~15 % here, plus the blood error)."""
    for truth, summary, _ in segmented:
        f = summary["figures"]
        for tag, session in (("2h", "hx4_2h"), ("4h", "hx4_4h")):
            s = truth["sessions"][session]
            true_hv = truth["tumour"]["hypoxic_volume_cc"]
            assert abs(f[f"hx4_{tag}_hv_cc"] - true_hv) <= expected_volume_error_cc(true_hv), (truth["patient_id"], tag)
            assert f[f"hx4_{tag}_blood_suv"] == pytest.approx(s["blood_suv"], rel=0.05)
            assert f[f"hx4_{tag}_tbrmax"] == pytest.approx(s["tbr_hypoxic"], rel=0.25)
            assert 0.0 < f[f"hx4_{tag}_fhv"] < 1.0
        assert f["hx4_hv_change_cc"] == pytest.approx(f["hx4_4h_hv_cc"] - f["hx4_2h_hv_cc"])


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


def test_lungs_from_ct_agree_with_the_rtstruct(sample_run: Path) -> None:
    ingest = sample_run / "patients" / "SAMPLE001" / "ingest"
    ct = read_image(ingest / "planning_ct.nii.gz")
    contoured = (sitk.GetArrayFromImage(read_image(ingest / "masks" / "LUNG_L.nii.gz")) > 0) | (sitk.GetArrayFromImage(read_image(ingest / "masks" / "LUNG_R.nii.gz")) > 0)
    assert dice(lung_mask(ct), contoured) > 0.9


def _copy_patient(sample_run: Path, tmp_path: Path) -> Path:
    patient = tmp_path / "SAMPLE001"
    for stage in ("ingest", "register"):
        shutil.copytree(sample_run / "patients" / "SAMPLE001" / stage, patient / stage)
    return patient


def test_missing_aorta_is_found_on_the_ct_and_lungs_from_the_ct(sample_run: Path, tmp_path: Path) -> None:
    """Without AORTA and lung structures: the descending aorta is found on the contrast CT (inside the
    true aorta, blood SUV within 5 % of the truth: same partial-volume argument as above) and the
    lungs are segmented from the CT."""
    patient = _copy_patient(sample_run, tmp_path)
    for name in ("AORTA", "LUNG_L", "LUNG_R"):
        (patient / "ingest" / "masks" / f"{name}.nii.gz").unlink()
    truth = json.loads((sample_run / "sample" / "SAMPLE001" / "ground_truth.json").read_text())
    summary = segment_patient(patient, SegmentationSettings.from_config({}, PROTOCOL, truth["histology"]))
    assert summary["structures"]["AORTA_CT"].startswith("descending aorta found on the planning CT")
    found = sitk.GetArrayFromImage(read_image(patient / "segment" / "masks" / "AORTA_CT.nii.gz")) > 0
    contoured = sitk.GetArrayFromImage(read_image(sample_run / "patients" / "SAMPLE001" / "ingest" / "masks" / "AORTA.nii.gz")) > 0
    assert (found & contoured).sum() >= 0.9 * found.sum()
    assert summary["figures"]["hx4_2h_blood_suv"] == pytest.approx(truth["sessions"]["hx4_2h"]["blood_suv"], rel=0.05)
    assert summary["structures"]["LUNG_L"] == "ct-threshold"
    assert summary["figures"]["lungs_minus_gtv_cc"] > 1000


def test_no_aorta_anywhere_is_flagged(sample_run: Path, tmp_path: Path) -> None:
    """A CT without contrast (blood at soft-tissue HU) and no AORTA structure: hypoxia is flagged, not guessed."""
    patient = _copy_patient(sample_run, tmp_path)
    (patient / "ingest" / "masks" / "AORTA.nii.gz").unlink()
    ct_path = patient / "ingest" / "planning_ct.nii.gz"
    ct = read_image(ct_path)
    hu = sitk.GetArrayFromImage(ct)
    plain = sitk.GetImageFromArray(np.where((hu > 100) & (hu < 200), 40, hu).astype(hu.dtype))
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
    assert summary["figures"]["gtv_pet_cc"] == pytest.approx(truth["tumour"]["pet40_volume_cc"], abs=expected_volume_error_cc(truth["tumour"]["pet40_volume_cc"]))


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
