"""Clinical DICOM as archives and TPSs deliver it, not as the sample generator writes it.

Each test builds a small patient (planning CT of a sphere phantom, an FDG PET/CT, an RTSTRUCT, a
TPS RTDOSE) with real-looking headers, then rewrites the files the way clinics store them: raw
datasets without preamble/file meta (implicit VR), deflated transfer syntax, a tree of symbolic
links, enhanced multi-frame CT and PET, an AC + NAC PET pair, several CTs, and RTDOSE files that
must be refused. References are independent of isotox's readers: geometry and SUV from the tags
by tests/sample_dicom.py (straight from the DICOM rules), the voxel values as written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from isotox.cli import main as cli_main
from isotox.errors import InputDataError
from isotox.geometry import ImageGrid
from isotox.ingest import ingest_patient
from tests.clinical_patient import (CT_GRID, PET_GRID, PLANNING_FOR, WHO, build_patient, grid_points, rewrite_deflated, rewrite_raw,
                                    sphere, tree_digest, write_ct, write_pet, write_tps_dose)
from tests.sample_dicom import geometry as tag_geometry
from tests.sample_dicom import suv_factor

REPO = Path(__file__).resolve().parents[1]
ROI_NAMES = REPO / "config" / "roi_names.yaml"


# ------------------------------------------------------------------ file encodings -----------------
def test_raw_and_deflated_files_are_read_and_recorded(tmp_path: Path) -> None:
    """Every RT file and the planning CT as a raw dataset (no preamble/meta, implicit VR), the PET
    deflated. Old behaviour: pydicom InvalidDicomError -> the files were skipped and ingest said
    'no planning CT found'. Now: same images as the standard files (HU exact, SUV to the int16
    quantum), and metadata counts the files without meta header per role."""
    patient = build_patient(tmp_path / "dicom")
    reference = ingest_patient(patient, tmp_path / "standard", roi_names=ROI_NAMES)
    for path in [*sorted((patient / "ct").glob("*.dcm")), patient / "rt" / "rs.dcm", patient / "rt" / "rd.dcm"]:
        rewrite_raw(path)
    for path in sorted((patient / "pet_ac").glob("*.dcm")):
        rewrite_deflated(path)
    assert pydicom.dcmread(next((patient / "pet_ac").glob("*.dcm"))).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(patient / "rt" / "rd.dcm")
    before = tree_digest(patient)
    meta = ingest_patient(patient, tmp_path / "clinical", roi_names=ROI_NAMES)
    assert tree_digest(patient) == before  # inputs untouched
    assert set(meta["roles"]) == set(reference["roles"]) and "rtdose" in meta["roles"]
    assert meta["dicom_encoding"]["planning_ct"]["files_without_file_meta"] == CT_GRID.size[2]
    assert meta["dicom_encoding"]["rtstruct"]["files_without_file_meta"] == 1
    assert meta["dicom_encoding"]["fdg_pet"]["files_without_file_meta"] == 0
    assert any("planning_ct" in w and "no DICOM preamble/file meta header" in w for w in meta["warnings"])
    for name in ("planning_ct.nii.gz", "fdg_pet_suv.nii.gz", "rtdose.nii.gz", "masks/GTV.nii.gz"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "standard" / "ingest" / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "clinical" / "ingest" / name)))
        np.testing.assert_array_equal(a, b, err_msg=name)
    series = pd.read_csv(tmp_path / "clinical" / "ingest" / "series.tsv", sep="\t")
    assert series.set_index("role").loc["planning_ct", "files_without_meta"] == CT_GRID.size[2]


def test_dvh_reads_a_tps_rtdose_without_meta_header(tmp_path: Path, breast_example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: `isotox dvh` on an RTDOSE with no preamble and no file meta (a TPS export)
    stopped with a traceback. Heart mean must equal the standard file's (dicompyler-core 0.6475 Gy)."""
    raw = tmp_path / "rtdose_raw.dcm"
    raw.write_bytes((breast_example / "rtdose.dcm").read_bytes())
    rewrite_raw(raw)
    assert cli_main(["dvh", str(breast_example / "rtss.dcm"), str(raw), "--roi", "Heart"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    table = dict(zip(out[0].split("\t"), out[1].split("\t")))
    assert float(table["Dmean"]) == pytest.approx(0.6475, rel=0.005)


def test_not_dicom_is_still_refused(tmp_path: Path) -> None:
    """The forced retry must not turn any binary file into a dataset: a folder of non-DICOM files is
    'no readable DICOM' with the count, never 'no planning CT found' (which sends users to the wrong fix)."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "IM0001").write_bytes(os.urandom(4096))
    (folder / "notes").write_text("patient notes, not an image\n" * 20)
    with pytest.raises(InputDataError, match="holds no readable DICOM: 2 file"):
        ingest_patient(folder, tmp_path / "out", roi_names=ROI_NAMES)


# ------------------------------------------------------------------ folders ------------------------
def test_symlinked_series_folders_with_a_loop(tmp_path: Path) -> None:
    """A patient assembled as links to series folders in an archive, with a link back up the tree.
    Old behaviour: links not followed, the folder read as empty, error 'no planning CT found'."""
    archive = build_patient(tmp_path / "archive")
    patient = tmp_path / "patient"
    patient.mkdir()
    for name in ("ct", "petct_ct", "pet_ac", "rt"):
        (patient / f"series_{name}").symlink_to(archive / name, target_is_directory=True)
    (archive / "ct" / "loop").symlink_to(patient, target_is_directory=True)  # a cycle through the archive
    meta = ingest_patient(patient, tmp_path / "out", roi_names=ROI_NAMES)
    assert {"planning_ct", "fdg_pet", "fdg_ct", "rtstruct", "rtdose"} <= set(meta["roles"])
    assert meta["images"]["planning_ct"]["size"] == list(CT_GRID.size)


def test_empty_link_tree_says_no_readable_dicom(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "patient").mkdir()
    (tmp_path / "patient" / "link").symlink_to(tmp_path / "empty", target_is_directory=True)
    with pytest.raises(InputDataError, match="holds no readable DICOM: 0 file"):
        ingest_patient(tmp_path / "patient", tmp_path / "out", roi_names=ROI_NAMES)


# ------------------------------------------------------------------ series choice ------------------
def test_ac_pet_is_chosen_over_nac_and_the_reason_is_written(tmp_path: Path) -> None:
    """A PET study with an attenuation-corrected and a non-corrected series. Nearest wrong answer:
    SUV from the NAC series (values several-fold off in the body). The NAC series is written 'unused'
    with the reason, whichever order the series are found in."""
    patient = build_patient(tmp_path / "dicom", nac=True)
    meta = ingest_patient(patient, tmp_path / "out", roi_names=ROI_NAMES)
    assert meta["roles"]["fdg_pet"] == "1.2.826.0.1.77.30"
    series = pd.read_csv(tmp_path / "out" / "ingest" / "series.tsv", sep="\t").set_index("series_uid")
    assert "not attenuation-corrected" in series.loc["1.2.826.0.1.77.31", "reason"]
    assert "attenuation-corrected" in series.loc["1.2.826.0.1.77.30", "reason"]


def test_planning_ct_is_the_rtstruct_reference_among_several_cts(tmp_path: Path) -> None:
    """A scout, a contrast CT with more slices, two 4D phases and an average beside the planning CT
    the RTSTRUCT references. Nearest wrong answer: the largest CT (the contrast series). Every CT has
    a reason; without the RTSTRUCT reference the 4D average is chosen over the phases."""
    patient = build_patient(tmp_path / "dicom", dose=False)
    big = ImageGrid((40, 36, 30), (2.5, 2.5, 3.0), (-48.75, -43.75, -43.5))
    write_ct(patient / "contrast", "1.2.826.0.1.77.11", "Thorax C+ arterial", PLANNING_FOR, grid=big, ContrastBolusAgent="Iomeprol")
    write_ct(patient / "scout", "1.2.826.0.1.77.12", "Topogram", PLANNING_FOR, grid=ImageGrid((40, 36, 1), (2.5, 2.5, 3.0), (0, 0, 0)),
              ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    meta = ingest_patient(patient, tmp_path / "out", roi_names=ROI_NAMES)
    assert meta["roles"]["planning_ct"] == "1.2.826.0.1.77.10"
    series = pd.read_csv(tmp_path / "out" / "ingest" / "series.tsv", sep="\t").set_index("series_uid")
    assert series.loc["1.2.826.0.1.77.10", "reason"].startswith("planning_ct: CT referenced by the RTSTRUCT")
    assert "localizer" in series.loc["1.2.826.0.1.77.12", "reason"]
    assert series.loc["1.2.826.0.1.77.11", "reason"].startswith("unused")

    fourd = tmp_path / "fourd"
    write_ct(fourd / "p0", "1.2.826.0.1.77.60", "4D CT 0% phase", PLANNING_FOR, grid=big)
    write_ct(fourd / "p50", "1.2.826.0.1.77.61", "4D CT 50% phase", PLANNING_FOR, grid=big)
    write_ct(fourd / "avg", "1.2.826.0.1.77.62", "4D CT AVG", PLANNING_FOR)
    write_ct(fourd / "mip", "1.2.826.0.1.77.63", "4D CT MIP", PLANNING_FOR, grid=big)
    meta = ingest_patient(fourd, tmp_path / "out4d", roi_names=ROI_NAMES)
    assert meta["roles"]["planning_ct"] == "1.2.826.0.1.77.62"
    series = pd.read_csv(tmp_path / "out4d" / "ingest" / "series.tsv", sep="\t").set_index("series_uid")
    assert "phase" in series.loc["1.2.826.0.1.77.60", "reason"] and "projection" in series.loc["1.2.826.0.1.77.63", "reason"]


# ------------------------------------------------------------------ enhanced multi-frame -----------
def _enhanced(single: list[Path], out: Path, sop_class: str) -> None:
    """Pack a single-frame series into one Enhanced CT / Enhanced PET file: per-frame position,
    rescale and times in functional groups, shared orientation and pixel measures."""
    slices = [pydicom.dcmread(p) for p in single]
    first = slices[0]
    ds = Dataset()
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SeriesDate",
                    "SeriesTime", "FrameOfReferenceUID", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PatientWeight", "PatientSize",
                    "RadiopharmaceuticalInformationSequence", "CorrectedImage", "DecayCorrection", "SeriesType"):
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(out)])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = len(slices)
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([orientation]), Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for s in reversed(slices):  # frames in reverse file order: readers must sort by position
        group, position, transform, content = Dataset(), Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = s.ImagePositionPatient
        transform.RescaleSlope, transform.RescaleIntercept = s.RescaleSlope, s.RescaleIntercept
        transform.RescaleType = "BQML" if first.Modality == "PT" else "HU"
        content.FrameAcquisitionDateTime = str(s.AcquisitionDate) + str(s.AcquisitionTime)
        content.FrameAcquisitionDuration = float(s.get("ActualFrameDuration", 1000))
        group.PlanePositionSequence, group.PixelValueTransformationSequence = Sequence([position]), Sequence([transform])
        group.FrameContentSequence = Sequence([content])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    if first.Modality == "PT":  # Enhanced PET states units by Real World Value Mapping and DecayCorrected
        del ds.DecayCorrection
        ds.DecayCorrected = "YES"
        unit, mapping = Dataset(), Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "Bq/ml", "UCUM", "Becquerels/milliliter"
        mapping.MeasurementUnitsCodeSequence = Sequence([unit])
        mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept = 1.0, 0.0
        ds.RealWorldValueMappingSequence = Sequence([mapping])
    ds.PixelData = b"".join(s.PixelData for s in reversed(slices))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    for p in single:
        p.unlink()


def test_enhanced_multiframe_ct_and_pet_match_their_single_frame_form(tmp_path: Path) -> None:
    """Enhanced CT (1.2.840.10008.5.1.4.1.1.2.1) and Enhanced PET (...1.130), frames stored in reverse
    order, units by Real World Value Mapping. Old behaviour: one header for the whole file, no
    ImagePositionPatient -> 'missing or malformed', the series unusable. Reference: the same patient
    as single-frame files (geometry to 1e-6 mm, HU exact, SUV exact) and the tag geometry of the
    single-frame CT computed by the independent reader."""
    patient = build_patient(tmp_path / "dicom", dose=False)
    single = ingest_patient(patient, tmp_path / "single", roi_names=ROI_NAMES)
    ct_tags = tag_geometry([(p, pydicom.dcmread(p)) for p in sorted((patient / "ct").glob("*.dcm"))])
    _enhanced(sorted((patient / "ct").glob("*.dcm")), patient / "ct" / "enhanced_ct.dcm", "1.2.840.10008.5.1.4.1.1.2.1")
    _enhanced(sorted((patient / "pet_ac").glob("*.dcm")), patient / "pet_ac" / "enhanced_pet.dcm", "1.2.840.10008.5.1.4.1.1.130")
    assert len(list((patient / "ct").glob("*.dcm"))) == 1
    meta = ingest_patient(patient, tmp_path / "enhanced", roi_names=ROI_NAMES)
    assert meta["dicom_encoding"]["planning_ct"]["multiframe"] and meta["dicom_encoding"]["fdg_pet"]["multiframe"]
    np.testing.assert_allclose(meta["images"]["planning_ct"]["origin_mm"], ct_tags["origin"], atol=1e-6)
    np.testing.assert_allclose(meta["images"]["planning_ct"]["spacing_mm"], ct_tags["spacing"], atol=1e-6)
    for name in ("planning_ct.nii.gz", "fdg_pet_suv.nii.gz"):
        a = sitk.ReadImage(str(tmp_path / "single" / "ingest" / name))
        b = sitk.ReadImage(str(tmp_path / "enhanced" / "ingest" / name))
        assert a.GetSize() == b.GetSize()
        np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b), err_msg=name)
    assert meta["pet"]["fdg_pet"]["units"] == "BQML" and meta["pet"]["fdg_pet"]["decay_correction"] == "START"
    assert meta["pet"]["fdg_pet"]["factors"] == pytest.approx(single["pet"]["fdg_pet"]["factors"], rel=1e-12)


# ------------------------------------------------------------------ TPS dose -----------------------
@pytest.mark.parametrize(("change", "message"), [
    ({"summation": "BEAM"}, "DoseSummationType BEAM is the dose of one beam"),
    ({"summation": "MULTI_PLAN"}, "DoseSummationType MULTI_PLAN is a sum of several plans"),
    ({"dose_type": "EFFECTIVE"}, "DoseType EFFECTIVE"),
    ({"dose_type": "ERROR"}, "DoseType ERROR is not PHYSICAL"),
    ({"frame": "1.2.826.0.1.77.99"}, "the RTDOSE is on frame of reference 1.2.826.0.1.77.99"),
])
def test_unusable_tps_doses_are_refused_with_the_fix(tmp_path: Path, change: dict, message: str) -> None:
    """Old behaviour: any RTDOSE was ingested as the plan dose. Now each is refused with patient,
    file and fix, recorded as the rtdose problem (the rest of the patient is ingested)."""
    patient = build_patient(tmp_path / "dicom")
    write_tps_dose(patient / "rt" / "rd.dcm", **change)
    meta = ingest_patient(patient, tmp_path / "out", patient_id="CLIN01", roi_names=ROI_NAMES)
    problem = meta["problems"]["rtdose"]
    assert message in problem and "patient CLIN01" in problem and "rd.dcm" in problem and "->" in problem
    assert not (tmp_path / "out" / "ingest" / "rtdose.nii.gz").exists()
    assert "planning_ct" in meta["images"]


def test_effective_dose_accepted_only_when_configured_and_fraction_dose_noted(tmp_path: Path) -> None:
    patient = build_patient(tmp_path / "dicom")
    write_tps_dose(patient / "rt" / "rd.dcm", dose_type="EFFECTIVE", summation="FRACTION")
    meta = ingest_patient(patient, tmp_path / "out", roi_names=ROI_NAMES, accept_effective_dose=True)
    assert "rtdose" not in meta["problems"]
    assert any("FRACTION" in n for n in meta["rtdose"]["notes"]) and any("EFFECTIVE" in n for n in meta["rtdose"]["notes"])


def test_plan_with_a_boost_already_is_refused(tmp_path: Path) -> None:
    """An RTPLAN prescribing two target doses (66 and 72 Gy) already holds the boost: the PET-boost rule
    would boost it twice. Refused, naming the RTPLAN and the fix."""
    patient = build_patient(tmp_path / "dicom")
    plan = Dataset()
    plan.SOPClassUID, plan.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.5", "1.2.826.0.1.77.61"
    plan.Modality, plan.SeriesInstanceUID, plan.PatientID, plan.StudyInstanceUID = "RTPLAN", "1.2.826.0.1.77.60", WHO.patient_id, WHO.study_uid
    plan.FrameOfReferenceUID, plan.SeriesDate, plan.SeriesTime = PLANNING_FOR, "20250301", "093000"
    refs = []
    for number, dose in ((1, 66.0), (2, 72.0)):
        ref = Dataset()
        ref.DoseReferenceNumber, ref.DoseReferenceStructureType, ref.DoseReferenceType, ref.TargetPrescriptionDose = number, "VOLUME", "TARGET", dose
        refs.append(ref)
    plan.DoseReferenceSequence = Sequence(refs)
    plan.file_meta = FileMetaDataset()
    plan.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plan.save_as(patient / "rt" / "rp.dcm", enforce_file_format=True)
    meta = ingest_patient(patient, tmp_path / "out", roi_names=ROI_NAMES)
    assert "prescribes different target doses (66, 72 Gy)" in meta["problems"]["rtdose"] and "rp.dcm" in meta["problems"]["rtdose"]


def test_dose_grid_coverage_is_measured(tmp_path: Path) -> None:
    """A TPS dose grid that stops at x = 0 mm covers about half of the left lung (x > 10 mm is all
    outside: Lung_L 0 %, GTV x in [-11, 19] mm: ~ 40 % inside). Reference: the fraction of mask voxel
    centres with x < 0 counted directly on the written masks."""
    patient = build_patient(tmp_path / "dicom")
    half = ImageGrid((20, 36, 24), (2.5, 2.5, 3.0), (-48.75, -43.75, -34.5))  # x from -48.75 to -1.25 mm
    write_tps_dose(patient / "rt" / "rd.dcm", grid=half)
    meta = ingest_patient(patient, tmp_path / "out", roi_names=ROI_NAMES)
    gtv = sitk.ReadImage(str(tmp_path / "out" / "ingest" / "masks" / "GTV.nii.gz"))
    mask = sitk.GetArrayFromImage(gtv).astype(bool)
    x = grid_points(CT_GRID)[..., 0]
    expected = float((x[mask] < 0.0).mean())
    assert meta["rtdose"]["coverage"]["GTV"] == pytest.approx(expected, abs=1e-3)
    assert 0.2 < expected < 0.8
    assert meta["rtdose"]["coverage"]["LUNG_L"] == 0.0
    assert any("does not cover" in w and "GTV" in w for w in meta["warnings"])


# ------------------------------------------------------------------ isotox suv ---------------------
def test_suv_command_on_pet_alone_single_slice_and_unconvertible(tmp_path: Path) -> None:
    """A folder with a PET alone (no planning CT; ingest refuses it), one one-slice PET series and one
    in CPS. Expected SUV: written activity x the factor the independent reader computes from the tags;
    tolerance the int16 quantum of each slice (peak/32000 of the written Bq/ml). Nearest wrong answer:
    no decay correction (factor 1.4x smaller for F-18 an hour after injection), rejected by rel 1e-9."""
    folder = tmp_path / "qa"
    write_pet(folder / "a", "1.2.826.0.1.77.30", "PET WB AC")
    one = sorted((folder / "a").glob("*.dcm"))[0]
    single = folder / "b" / "single.dcm"
    single.parent.mkdir()
    ds = pydicom.dcmread(one)
    ds.SeriesInstanceUID = "1.2.826.0.1.77.32"
    ds.SOPInstanceUID = "1.2.826.0.1.77.32.1"
    ds.save_as(single, enforce_file_format=True)
    cps = folder / "c" / "cps.dcm"
    cps.parent.mkdir()
    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.Units = "1.2.826.0.1.77.33", "1.2.826.0.1.77.33.1", "CPS"
    ds.save_as(cps, enforce_file_format=True)
    with pytest.raises(InputDataError, match="no planning CT"):
        ingest_patient(folder, tmp_path / "ingest", roi_names=ROI_NAMES)
    before = tree_digest(folder)
    assert cli_main(["suv", str(folder), str(tmp_path / "out")]) == 0
    assert tree_digest(folder) == before
    records = json.loads((tmp_path / "out" / "suv.json").read_text())
    assert set(records) == {"1.2.826.0.1.77.30", "1.2.826.0.1.77.32", "1.2.826.0.1.77.33"}
    assert "Units CPS cannot be converted" in records["1.2.826.0.1.77.33"]["error"]
    factor = suv_factor(pydicom.dcmread(one))
    assert records["1.2.826.0.1.77.30"]["factor"] == pytest.approx(factor, rel=1e-9)
    for uid, slices in (("1.2.826.0.1.77.30", PET_GRID.size[2]), ("1.2.826.0.1.77.32", 1)):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{uid}.nii.gz")))
        assert image.shape[0] == slices and records[uid]["slices"] == slices
        written = np.where(sphere(PET_GRID), 40000.0, 4000.0)[:slices]
        np.testing.assert_allclose(image, written * factor, rtol=0, atol=40000.0 / 32000.0 * factor)
    assert not (tmp_path / "out" / "1.2.826.0.1.77.33.nii.gz").exists()


def test_suv_command_exit_code_2_when_nothing_converts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "qa"
    write_pet(folder, "1.2.826.0.1.77.30", "PET")
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        del ds.PatientWeight
        ds.save_as(path, enforce_file_format=True)
    assert cli_main(["suv", str(folder), str(tmp_path / "out")]) == 2
    assert "PatientWeight" in json.loads((tmp_path / "out" / "suv.json").read_text())["1.2.826.0.1.77.30"]["error"]
    assert "no PET series could be converted" in capsys.readouterr().err


# ------------------------------------------------------------------ TPS dose in planning -----------
def _planning_copy(sample_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    from tests.conftest import sample_patients

    _, patient_dir = sample_patients(sample_run)[0]
    out = tmp_path / patient_dir.name
    for stage in ("ingest", "segment"):
        shutil.copytree(patient_dir / stage, out / stage)
    return patient_dir, out


def test_plan_refuses_a_tps_dose_that_misses_an_organ(sample_run: Path, tmp_path: Path) -> None:
    """A TPS dose grid cut at the patient's midline leaves part of a lung and the heart without dose.
    Old behaviour: the missing part counted as 0 Gy and the plan passed its lung/heart constraints.
    Now `isotox plan` refuses it, naming the structure, the file and the fix; nothing is written."""
    from isotox.planning.settings import PlanningSettings
    from isotox.planning.stage import plan_patient

    source, patient = _planning_copy(sample_run, tmp_path)
    full = sitk.ReadImage(str(source / "plan" / "dose" / "base_unit.nii.gz")) * 66.0
    size = list(full.GetSize())
    half = sitk.RegionOfInterest(full, [size[0] // 2, size[1], size[2]], [0, 0, 0])
    sitk.WriteImage(half, str(patient / "ingest" / "rtdose.nii.gz"))
    with pytest.raises(InputDataError, match="does not cover") as info:
        plan_patient(patient, "pet_boost", settings=PlanningSettings(dose_source="tps"), patient_id="P1")
    assert "rtdose.nii.gz" in str(info.value) and "dose_source: engine" in str(info.value)
    assert not (patient / "plan").exists()
