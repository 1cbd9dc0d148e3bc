"""Ingest on damaged inputs that used to pass silently with a wrong result (issue: faults and bad input).

Each case damages one file of a small clinical-looking patient (tests/clinical_patient.py) and
asserts the outcome class: a clear refusal naming the patient, the file or tag, and the fix
(recorded under ``problems`` for an optional part, raised for the planning CT), or a handled case
with the warning in metadata. Inputs are checksummed before and after.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from isotox.dicomio.image_series import CtFrame, write_ct_series
from isotox.dicomio.modules import SeriesInfo
from isotox.errors import InputDataError
from isotox.ingest import ingest_patient
from tests.clinical_patient import CT_GRID, PLANNING_FOR, WHO, build_patient, sphere, tree_digest

REPO = Path(__file__).resolve().parents[1]
ROI_NAMES = REPO / "config" / "roi_names.yaml"


def _edit(paths: list[Path], change) -> None:  # type: ignore[no-untyped-def]
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=True)


def _ingest(patient: Path, out: Path) -> dict:
    before = tree_digest(patient)
    meta = ingest_patient(patient, out, patient_id="CLIN01", roi_names=ROI_NAMES)
    assert tree_digest(patient) == before
    return meta


@pytest.mark.parametrize(("change", "message"), [
    (lambda ds: setattr(ds, "DoseGridScaling", f"{float(ds.DoseGridScaling) * 1000:.8e}"[:16]), "above the plausible 150 Gy"),
    (lambda ds: delattr(ds, "DoseGridScaling"), "DoseGridScaling (3004,000E) is missing"),
    (lambda ds: setattr(ds, "DoseGridScaling", "0"), "DoseGridScaling (3004,000E) is '0'"),
])
def test_implausible_rtdose_scaling_is_refused(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    """Old behaviour: x1000, missing or zero scaling gave plan maxima of 60,000-66,000 Gy, used silently."""
    patient = build_patient(tmp_path / "dicom")
    _edit([patient / "rt" / "rd.dcm"], change)
    meta = _ingest(patient, tmp_path / "out")
    assert message in meta["problems"]["rtdose"] and "rd.dcm" in meta["problems"]["rtdose"] and "->" in meta["problems"]["rtdose"]


def _pet_files(patient: Path) -> list[Path]:
    return sorted((patient / "pet_ac").glob("*.dcm"))


def test_injection_after_the_scan_is_refused(tmp_path: Path) -> None:
    """Old behaviour: a negative uptake time decayed the dose 'forwards' and wrote an SUV image (SUVmax
    6.9 instead of 14.6 in the issue's case)."""
    patient = build_patient(tmp_path / "dicom")
    def late(ds: pydicom.Dataset) -> None:
        info = ds.RadiopharmaceuticalInformationSequence[0]
        info.RadiopharmaceuticalStartDateTime = "20250301110000.000000"  # the series is at 10:00
        info.RadiopharmaceuticalStartTime = "110000.000000"
    _edit(_pet_files(patient), late)
    meta = _ingest(patient, tmp_path / "out")
    assert "after the scan reference time" in meta["problems"]["fdg_pet"]
    assert not (tmp_path / "out" / "ingest" / "fdg_pet_suv.nii.gz").exists()


def test_rescale_slope_missing_on_one_slice_is_refused(tmp_path: Path) -> None:
    """Old behaviour: slope 1 assumed for that slice, its SUV off by the slope ratio, no warning."""
    patient = build_patient(tmp_path / "dicom")
    _edit(_pet_files(patient)[3:4], lambda ds: delattr(ds, "RescaleSlope"))
    meta = _ingest(patient, tmp_path / "out")
    assert "RescaleSlope (0028,1053) is missing on 1 of 12 slices" in meta["problems"]["fdg_pet"]


@pytest.mark.parametrize(("tag", "value", "message"), [
    ("PatientWeight", "61kg", "PatientWeight (0010,1030) is '61kg', not a number"),
    ("RescaleSlope", "abc", "RescaleSlope is 'abc', not a number"),
])
def test_text_in_numeric_pet_tags_names_the_tag(tmp_path: Path, tag: str, value: str, message: str) -> None:
    """Old behaviour: 'could not convert string to float' with no patient, file or tag."""
    patient = build_patient(tmp_path / "dicom")
    def put(ds: pydicom.Dataset) -> None:
        ds[tag].VR = "LO"  # a DS/IS value that is not a number: write it as text, as broken exporters do
        ds[tag].value = value
    _edit(_pet_files(patient) if tag == "PatientWeight" else _pet_files(patient)[:1], put)  # weight: patient-level, every slice
    meta = _ingest(patient, tmp_path / "out")
    assert message in meta["problems"]["fdg_pet"] and "CLIN01" in meta["problems"]["fdg_pet"]


def test_ct_slices_with_different_pixel_spacing_are_refused(tmp_path: Path) -> None:
    """Old behaviour: accepted, the first slice's spacing applied to all, nothing reported."""
    patient = build_patient(tmp_path / "dicom")
    files = sorted((patient / "ct").glob("*.dcm"))
    _edit(files[5:6], lambda ds: setattr(ds, "PixelSpacing", ["1.25", "1.25"]))
    with pytest.raises(InputDataError, match="different PixelSpacing") as info:
        _ingest(patient, tmp_path / "out")
    assert "CLIN01" in str(info.value) and "series_roles" in str(info.value)


def test_zero_pixel_spacing_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """Old behaviour: a SimpleITK RuntimeError traceback."""
    patient = build_patient(tmp_path / "dicom")
    _edit(sorted((patient / "ct").glob("*.dcm")), lambda ds: setattr(ds, "PixelSpacing", ["0", "0"]))
    with pytest.raises(InputDataError, match="a pixel must have a size"):
        _ingest(patient, tmp_path / "out")


def _dce(patient: Path, times: list[str]) -> None:
    hu = np.where(sphere(CT_GRID), 40.0, -800.0)
    frames = [CtFrame(hu + 10.0 * f, t) for f, t in enumerate(times)]
    write_ct_series(patient / "dce", CT_GRID, frames, WHO, SeriesInfo("CT", "1.2.826.0.1.77.70", 7, "DCE", "20250301", times[0], PLANNING_FOR),
                    uid_key=("clin", "dce"))


def test_dce_frames_follow_acquisition_time_not_acquisition_number(tmp_path: Path) -> None:
    """Old behaviour: frames ordered by AcquisitionNumber even when AcquisitionTime disagreed:
    dce_frames.tsv read 0, 3, 6, 36, 12 ... s and the fit ran on it. Now the times are increasing,
    the frames follow them (frame 3's enhancement proves it) and a warning is recorded."""
    patient = build_patient(tmp_path / "dicom", dose=False)
    times = ["083000", "083003", "083006", "083036", "083012", "083015"]  # frame 4 (number 4) was acquired last
    _dce(patient, times)
    meta = _ingest(patient, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "ingest" / "dce_frames.tsv", sep="\t")
    assert list(table["time_s"]) == [0.0, 3.0, 6.0, 12.0, 15.0, 36.0]
    assert any("AcquisitionNumber order disagrees with AcquisitionTime" in w for w in meta["warnings"])


def test_dce_frames_at_the_same_time_are_refused(tmp_path: Path) -> None:
    patient = build_patient(tmp_path / "dicom", dose=False)
    _dce(patient, ["083000", "083003", "083003", "083009"])
    meta = _ingest(patient, tmp_path / "out")
    assert "same acquisition time" in meta["problems"]["dce_ct"]


def _structures_file(patient: Path) -> Path:
    return patient / "rt" / "rs.dcm"


def _gtv_contours(ds: pydicom.Dataset) -> list:
    number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "GTV")
    return next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == number).ContourSequence


@pytest.mark.parametrize(("damage", "message"), [
    ("two_points", "1 contour(s) with fewer than 3 points"),
    ("figure_eight", "1 self-intersecting contour(s)"),
    ("not_triplets", "ContourData values, not (x, y, z) triplets: dropped"),
])
def test_damaged_contours_are_reported(tmp_path: Path, damage: str, message: str) -> None:
    """Old behaviour: a 2-point or self-intersecting contour silently changed the GTV volume; ContourData
    not in triplets ended the RTSTRUCT with 'cannot reshape array of size 533 into shape (3)'."""
    patient = build_patient(tmp_path / "dicom", dose=False)

    def change(ds: pydicom.Dataset) -> None:
        contour = _gtv_contours(ds)[len(_gtv_contours(ds)) // 2]
        points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
        if damage == "two_points":
            contour.ContourData, contour.NumberOfContourPoints = [f"{v:.3f}" for v in points[:2].ravel()], 2
        elif damage == "figure_eight":  # swap two far-apart vertices: the outline crosses itself
            n = len(points)
            points[[n // 4, 3 * n // 4]] = points[[3 * n // 4, n // 4]]
            contour.ContourData = [f"{v:.3f}" for v in points.ravel()]
        else:
            contour.ContourData = [f"{v:.3f}" for v in points.ravel()][:-1]
    _edit([_structures_file(patient)], change)
    meta = _ingest(patient, tmp_path / "out")
    assert any("GTV" in w and message in w for w in meta["warnings"]), meta["warnings"]
    assert "GTV" in meta["structures"]


def test_self_intersection_count_on_known_polygons() -> None:
    """A square has none; a bow-tie (figure-of-eight) has exactly one crossing; a star pentagram five."""
    from isotox.dicomio.rtstruct_reader import self_intersections

    assert self_intersections(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)) == 0
    assert self_intersections(np.array([[0, 0], [1, 1], [1, 0], [0, 1]], float)) == 1
    angles = np.radians(90 + 144 * np.arange(5))
    assert self_intersections(np.c_[np.cos(angles), np.sin(angles)]) == 5
