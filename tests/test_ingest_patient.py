"""Stage 1 on whole patients: the sample cohort's truth is recovered; bad input is reported, not fatal.

The sample patients come from the real workflow run (conftest ``sample_run``), which runs the
``ingest`` rule too; the bad-input cases copy one patient and damage the copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from isotox.errors import InputDataError
from isotox.ingest import ingest_patient

REPO = Path(__file__).resolve().parents[1]
ROI_NAMES = REPO / "config" / "roi_names.yaml"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def ingested(sample_run: Path) -> list[tuple[dict, dict, Path]]:
    out = []
    for truth_file in sorted((sample_run / "sample").glob("SAMPLE*/ground_truth.json")):
        pid = truth_file.parent.name
        stage = sample_run / "patients" / pid / "ingest"
        out.append((json.loads(truth_file.read_text()), json.loads((stage / "metadata.json").read_text()), stage))
    assert out
    return out


def test_roles_geometry_and_files(ingested: list) -> None:
    expected = {"planning_ct", "rtstruct", "fdg_pet", "fdg_ct", "hx4_2h_pet", "hx4_2h_ct", "hx4_4h_pet", "hx4_4h_ct", "dce_ct"}
    for truth, meta, stage in ingested:
        assert set(meta["roles"]) == expected
        assert set(meta["problems"]) == {"rtdose"}  # the sample has no TPS dose: that is reported, not an error
        series = pd.read_csv(stage / "series.tsv", sep="\t")
        assert series["reason"].str.len().gt(0).all()
        planning = sitk.ReadImage(str(stage / "planning_ct.nii.gz"))
        grid = truth["planning_grid"]
        assert list(planning.GetSize()) == grid["size"]
        np.testing.assert_allclose(planning.GetOrigin(), grid["origin_mm"], atol=1e-3)
        np.testing.assert_allclose(planning.GetSpacing(), grid["spacing_mm"], atol=1e-3)
        for role, key in (("fdg_pet", "fdg"), ("hx4_2h_pet", "hx4_2h"), ("hx4_4h_pet", "hx4_4h")):
            pet_grid = truth["sessions"][key]["pet_grid"]
            assert meta["images"][role]["size"] == pet_grid["size"]
            np.testing.assert_allclose(meta["images"][role]["origin_mm"], pet_grid["origin_mm"], atol=1e-3)


def test_suv_images_match_truth(ingested: list) -> None:
    """Mean SUV of the 3x3x3 voxels at the tumour centre vs the noiseless truth: 5 % (noise < 2 %)."""
    for truth, meta, stage in ingested:
        for role, key in (("fdg_pet", "fdg"), ("hx4_2h_pet", "hx4_2h"), ("hx4_4h_pet", "hx4_4h")):
            suv = sitk.GetArrayFromImage(sitk.ReadImage(str(stage / f"{role}_suv.nii.gz")))
            i, j, k = truth["sessions"][key]["tumour_centre_voxel_ijk"]
            mean = float(suv[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2].mean())
            assert mean == pytest.approx(truth["sessions"][key]["tumour_centre_mean_suv_3x3x3_noiseless"], rel=0.05), role
            assert meta["pet"][role]["weight_kg"] == pytest.approx(truth["weight_kg"])
            assert meta["pet"][role]["reference_source"] == "SeriesDate/SeriesTime"


def test_masks_match_truth_volumes(ingested: list) -> None:
    """Masks rasterised by voxel centres vs the true planimetric volume.

    Counting voxel centres inside a cross-section of radius R voxels has an error that shrinks
    roughly like R^-1.5 (the Gauss circle problem): 3 % for R >= 5 voxels (lungs, heart, body,
    most GTVs), 8 % for 3 <= R < 5 (aorta, small GTVs). Thinner organs (cord: R = 1.3 voxels,
    +-30 %) are not compared: the DVH stage supersamples them instead.
    """
    for truth, meta, _ in ingested:
        spacing = truth["planning_grid"]["spacing_mm"]
        for name, t in truth["structures"].items():
            if not t["contoured"]:
                assert name not in meta["structures"], name
                continue
            assert meta["structures"][name]["roi_name"] == t["roi_name"]
            slices = t["volume_cc"] * 1000.0 / spacing[2] / max(1, meta["structures"][name]["contours"])
            radius_voxels = np.sqrt(slices / np.pi) / spacing[0]
            if radius_voxels < 3:
                continue
            tolerance = 0.03 if radius_voxels >= 5 else 0.08
            assert meta["structures"][name]["volume_cc"] == pytest.approx(t["volume_cc"], rel=tolerance), name


def test_dce_frames_and_times(ingested: list) -> None:
    for truth, _, stage in ingested:
        image = sitk.ReadImage(str(stage / "dce_ct.nii.gz"))
        frames = pd.read_csv(stage / "dce_frames.tsv", sep="\t")
        times = truth["perfusion"]["frame_times_s"]
        assert image.GetDimension() == 4 and image.GetSize()[3] == len(times) == len(frames)
        np.testing.assert_allclose(frames["time_s"], times, atol=1e-3)
        assert list(image.GetSize()[:3]) == truth["perfusion"]["grid"]["size"]


@pytest.fixture()
def patient_copy(sample_run: Path, tmp_path: Path) -> Path:
    source = sample_run / "sample" / "SAMPLE001" / "dicom"
    target = tmp_path / "dicom"
    shutil.copytree(source, target)
    return target


def _series_files(folder: Path, description: str) -> list[Path]:
    return [p for p in folder.rglob("*.dcm") if description in str(pydicom.dcmread(p, stop_before_pixels=True).get("SeriesDescription", ""))]


def test_junk_and_truncated_files_are_reported_not_fatal(patient_copy: Path, tmp_path: Path) -> None:
    (patient_copy / "notes.txt").write_text("scanned by ...")
    (patient_copy / "README").write_bytes(b"\x00\x01 not dicom at all")
    victim = _series_files(patient_copy, "FDG PET/CT low-dose CT")[5]
    victim.write_bytes(victim.read_bytes()[:-20000])  # pixel data cut short
    before = _tree_digest(patient_copy)
    meta = ingest_patient(patient_copy, tmp_path / "P1", roi_names=ROI_NAMES)
    assert _tree_digest(patient_copy) == before, "ingestion modified its input"
    assert {Path(s["file"]).name for s in meta["skipped_files"]} >= {"notes.txt", "README"}
    assert victim.name in meta["problems"]["fdg_ct"] and "truncated" in meta["problems"]["fdg_ct"]
    assert (tmp_path / "P1" / "ingest" / "fdg_pet_suv.nii.gz").is_file()
    assert not (tmp_path / "P1" / "ingest" / "fdg_ct.nii.gz").exists()


def test_two_patients_in_one_folder_is_an_error(patient_copy: Path, tmp_path: Path) -> None:
    stranger = next(patient_copy.rglob("*.dcm"))
    ds = pydicom.dcmread(stranger)
    ds.PatientID = "SOMEONE_ELSE"
    ds.SOPInstanceUID = ds.SOPInstanceUID[:-3] + "999"
    ds.save_as(patient_copy / "stray.dcm")
    with pytest.raises(InputDataError, match="more than one patient: .*SOMEONE_ELSE") as err:
        ingest_patient(patient_copy, tmp_path / "P2", roi_names=ROI_NAMES, patient_id="P2")
    assert "patient P2" in str(err.value) and "folder of their own" in str(err.value)
    assert not (tmp_path / "P2" / "ingest").exists(), "no half-written stage folder"


def test_pet_without_radiopharmaceutical_sequence(patient_copy: Path, tmp_path: Path) -> None:
    for path in _series_files(patient_copy, "FDG PET AC"):
        ds = pydicom.dcmread(path)
        del ds.RadiopharmaceuticalInformationSequence
        ds.save_as(path)
    meta = ingest_patient(patient_copy, tmp_path / "P3", roi_names=ROI_NAMES)
    assert "RadiopharmaceuticalInformationSequence" in meta["problems"]["fdg_pet"]
    assert "fdg_pet" in meta["roles"]  # still recognised, from its SeriesDescription
    series = pd.read_csv(tmp_path / "P3" / "ingest" / "series.tsv", sep="\t")
    assert "SeriesDescription" in series.loc[series["role"] == "fdg_pet", "reason"].item()
    assert (tmp_path / "P3" / "ingest" / "hx4_2h_pet_suv.nii.gz").is_file()


def test_rtstruct_referencing_a_missing_ct(patient_copy: Path, tmp_path: Path) -> None:
    rs_path = next(p for p in patient_copy.rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT")
    ds = pydicom.dcmread(rs_path)
    ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID = "1.2.3.404"
    ds.save_as(rs_path)
    meta = ingest_patient(patient_copy, tmp_path / "P4", roi_names=ROI_NAMES)
    assert any("references series 1.2.3.404" in w for w in meta["warnings"])
    assert "GTV" in meta["structures"]


def test_no_planning_ct_is_fatal_and_clear(patient_copy: Path, tmp_path: Path) -> None:
    for path in _series_files(patient_copy, "Planning CT"):
        path.unlink()
    with pytest.raises(InputDataError, match="no planning CT found") as err:
        ingest_patient(patient_copy, tmp_path / "P5", roi_names=ROI_NAMES, patient_id="P5")
    assert "series_roles=planning_ct=UID" in str(err.value)


def test_role_override_from_cohort_sheet(patient_copy: Path, tmp_path: Path) -> None:
    fdg_ct = pydicom.dcmread(_series_files(patient_copy, "FDG PET/CT low-dose CT")[0], stop_before_pixels=True).SeriesInstanceUID
    meta = ingest_patient(patient_copy, tmp_path / "P6", roi_names=ROI_NAMES, series_roles=f"planning_ct={fdg_ct}")
    assert meta["roles"]["planning_ct"] == fdg_ct
    with pytest.raises(InputDataError, match="not in the patient's folder"):
        ingest_patient(patient_copy, tmp_path / "P7", roi_names=ROI_NAMES, series_roles="planning_ct=1.2.3")


def test_all_series_mixed_in_one_flat_folder(patient_copy: Path, tmp_path: Path) -> None:
    """Grouping is by SeriesInstanceUID, not by folder: one flat folder gives the same roles."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for n, path in enumerate(sorted(patient_copy.rglob("*.dcm"))):
        shutil.copy(path, flat / f"IMG{n:05d}")  # no extension, names carry no order
    meta = ingest_patient(flat, tmp_path / "P8", roi_names=ROI_NAMES)
    reference = ingest_patient(patient_copy, tmp_path / "P9", roi_names=ROI_NAMES)
    assert meta["roles"] == reference["roles"]
    assert meta["structures"] == reference["structures"]


def test_rtstruct_on_another_frame_of_reference_is_a_problem_not_a_crash(patient_copy: Path, tmp_path: Path) -> None:
    rs_path = next(p for p in patient_copy.rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTSTRUCT")
    ds = pydicom.dcmread(rs_path)
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = "1.2.3.777"
    ds.save_as(rs_path)
    meta = ingest_patient(patient_copy, tmp_path / "P10", roi_names=ROI_NAMES)
    assert "another frame of reference" in meta["problems"]["rtstruct"]
    assert (tmp_path / "P10" / "ingest" / "planning_ct.nii.gz").is_file()
