"""Stage 2 against the sample cohort's known poses, and its QC on deliberately bad registrations.

Registration error as the issue defines it: the mean distance between where the true and the
recovered transform send the tumour centre and 200 points on a sphere of 10 cm around it
(the whole thorax a boost plan cares about). Acceptance: < 2 mm for every PET/CT session.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import sample_patients
from isotox.cli import main as cli_main
from isotox.images import body_mask, read_image, resample_to
from isotox.registration.qc import assess, registration_error_mm
from isotox.registration.rigid import RegistrationSettings, register_rigid

SESSIONS = ("fdg", "hx4_2h", "hx4_4h")


@pytest.fixture(scope="module")
def registered(sample_run: Path) -> list[tuple[dict, Path]]:
    return [(truth, patient / "register") for truth, patient in sample_patients(sample_run)]


def test_pet_ct_registration_error_below_2_mm(registered: list[tuple[dict, Path]]) -> None:
    for truth, stage in registered:
        for session in SESSIONS:
            tx = sitk.ReadTransform(str(stage / f"{session}.tfm"))
            err = registration_error_mm(tx, truth["sessions"][session]["planning_to_session"]["affine"], truth["tumour"]["centre_mm"])
            assert err < 2.0, f"{truth['patient_id']} {session}: {err:.2f} mm"


def test_dce_slab_registration_error_below_2_mm(registered: list[tuple[dict, Path]]) -> None:
    for truth, stage in registered:
        tx = sitk.ReadTransform(str(stage / "dce.tfm"))
        err = registration_error_mm(tx, truth["perfusion"]["planning_to_session"]["affine"], truth["tumour"]["centre_mm"])
        assert err < 2.0, f"{truth['patient_id']} DCE: {err:.2f} mm"


def test_qc_record_is_complete_and_clean_for_good_registrations(registered: list[tuple[dict, Path]]) -> None:
    for truth, stage in registered:
        qc = json.loads((stage / "qc.json").read_text())
        assert qc["flagged"] == []
        for session in SESSIONS:
            record = qc["sessions"][session]
            assert record["qc"]["inverse_consistency_mm"] < 1.0  # sub-voxel on 4-4.5 mm voxels
            assert record["qc"]["lung_dice"] > 0.9
            # linear interpolation never raises SUVmax and loses little of it on these grids
            assert record["suvmax_after"] <= record["suvmax_before"] + 1e-6
            assert record["suvmax_after"] >= 0.85 * record["suvmax_before"]
            assert (stage / "qc" / f"{session}_fused.png").stat().st_size > 10_000
        assert (stage / "dce_mc.nii.gz").exists()


def test_resampling_preserves_total_activity(registered: list[tuple[dict, Path]], sample_run: Path) -> None:
    """SUV x volume over the body is conserved within 2 % by the rigid resampling onto the planning grid.

    Rigid motion conserves volume and linear interpolation conserves a smooth field's integral;
    2 % allows for activity that leaves or enters the planning CT's field of view at its ends.
    """
    truth, stage = registered[0]
    ingest = stage.parent / "ingest"
    native = read_image(ingest / "fdg_pet_suv.nii.gz")
    moved = read_image(stage / "fdg_pet_suv.nii.gz")
    tx = sitk.ReadTransform(str(stage / "fdg.tfm"))
    planning = read_image(ingest / "planning_ct.nii.gz")
    # integrate the native PET over the region that lands inside the planning CT
    back = resample_to(sitk.Cast(planning * 0 + 1, sitk.sitkFloat32), native, tx.GetInverse(), sitk.sitkNearestNeighbor, 0.0)
    native_total = float((sitk.GetArrayFromImage(native) * sitk.GetArrayFromImage(back)).sum() * np.prod(native.GetSpacing()))
    moved_total = float(sitk.GetArrayFromImage(moved).sum() * np.prod(moved.GetSpacing()))
    assert moved_total == pytest.approx(native_total, rel=0.02)


def test_poor_registration_is_flagged(sample_run: Path) -> None:
    """A transform 25 mm off (what a failed registration looks like) raises both QC flags."""
    ingest = sample_run / "patients" / "SAMPLE001" / "ingest"
    fixed, moving = read_image(ingest / "planning_ct.nii.gz"), read_image(ingest / "fdg_ct.nii.gz")
    fb, mb = body_mask(fixed), body_mask(moving)
    settings = RegistrationSettings()
    good = register_rigid(fixed, moving, settings, fb, mb)
    bad = sitk.Euler3DTransform(good.transform)
    bad.SetTranslation(tuple(np.asarray(bad.GetTranslation()) + np.array([25.0, 0.0, 0.0])))
    qc = assess(fixed, moving, bad, good.metric, good.iterations, settings, fb, mb)
    assert qc.inverse_consistency_mm is not None and qc.inverse_consistency_mm > 20.0
    assert any("inverse-consistency" in f for f in qc.flags)
    assert any("lung Dice" in f for f in qc.flags)


def test_pet_outside_the_planning_ct_is_flagged(sample_run: Path) -> None:
    ingest = sample_run / "patients" / "SAMPLE001" / "ingest"
    fixed, moving = read_image(ingest / "planning_ct.nii.gz"), read_image(ingest / "fdg_ct.nii.gz")
    fb, mb = body_mask(fixed), body_mask(moving)
    gtv = sitk.GetArrayFromImage(read_image(ingest / "masks" / "GTV.nii.gz")) > 0
    far = sitk.TranslationTransform(3, (0.0, 0.0, 400.0))
    qc = assess(fixed, moving, far, 0.0, 0, RegistrationSettings(inverse_consistency=False), fb, mb, target=gtv)
    assert any("covers only 0 % of the target" in f for f in qc.flags)
    assert any("overlaps only" in f for f in qc.flags)


def test_register_cli_on_a_copy_and_missing_ingest(sample_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patient = tmp_path / "SAMPLE001"
    shutil.copytree(sample_run / "patients" / "SAMPLE001" / "ingest", patient / "ingest")
    config = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    assert cli_main(["register", str(patient), "--config", str(config)]) == 0
    assert (patient / "register" / "fdg.tfm").exists()
    assert cli_main(["register", str(tmp_path / "NOBODY"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "NOBODY" in err and "run `isotox ingest`" in err
    assert not (tmp_path / "NOBODY" / "register").exists()


def test_deformable_refinement_runs_round_trips_and_keeps_accuracy(sample_run: Path, tmp_path: Path) -> None:
    """registration.deformable: the B-spline step (5 L-BFGS-B iterations here, to keep the suite fast)
    on top of the rigid result is saved as one composite .tfm that reads back identically, and on the
    sample's rigid poses it must not spoil the rigid accuracy (still < 2 mm)."""
    from isotox.registration.rigid import refine_bspline

    truth = json.loads((sample_run / "sample" / "SAMPLE001" / "ground_truth.json").read_text())
    ingest = sample_run / "patients" / "SAMPLE001" / "ingest"
    fixed, moving = read_image(ingest / "planning_ct.nii.gz"), read_image(ingest / "fdg_ct.nii.gz")
    fb, mb = body_mask(fixed), body_mask(moving)
    settings = RegistrationSettings(deformable=True, bspline_iterations=5)
    rigid = register_rigid(fixed, moving, settings, fb, mb)
    composite, _ = refine_bspline(fixed, moving, rigid.transform, settings, fb)
    sitk.WriteTransform(composite, str(tmp_path / "fdg.tfm"))
    back = sitk.ReadTransform(str(tmp_path / "fdg.tfm"))
    affine, centre = truth["sessions"]["fdg"]["planning_to_session"]["affine"], truth["tumour"]["centre_mm"]
    assert registration_error_mm(back, affine, centre) == pytest.approx(registration_error_mm(composite, affine, centre), abs=1e-6)
    assert registration_error_mm(composite, affine, centre) < 2.0


def test_working_resolution_averages_fine_ct_without_moving_it() -> None:
    """A 0.98 x 0.98 x 3 mm image is block-averaged 2 x 2 x 1 to >= 1.95 mm in-plane; the mask's
    physical centroid stays put within half a working voxel, so transforms found there apply to the original."""
    from isotox.images import centroid_mm
    from isotox.registration.rigid import working_resolution

    array = np.random.default_rng(0).normal(0.0, 10.0, (20, 64, 64)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.977, 0.977, 3.0))
    image.SetOrigin((-31.0, -20.0, 5.0))
    mask = np.zeros(array.shape, bool)
    mask[5:15, 10:40, 20:50] = True
    small, small_mask = working_resolution(image, mask, 2.0)
    assert small.GetSpacing() == pytest.approx((1.954, 1.954, 3.0)) and small.GetSize() == (32, 32, 20)
    assert float(sitk.GetArrayFromImage(small).std()) < 0.6 * float(array.std())  # averaging, not subsampling
    assert small_mask is not None
    shift = np.linalg.norm(centroid_mm(small, small_mask) - centroid_mm(image, mask))
    assert shift <= 0.5 * 1.954
    same, same_mask = working_resolution(image, mask, 0.5)
    assert same is image and same_mask is mask
