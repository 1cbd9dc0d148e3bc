"""DICOM faults seen in real archives, applied to a copy of the clinical-looking test patient.

The good patient (tests/clinical_patient.py): ``ct/`` planning CT (24 axial slices, 3 mm),
``petct_ct/`` and ``pet_ac/`` FDG PET/CT, ``rt/rs.dcm`` RTSTRUCT (GTV, Lung_L), ``rt/rd.dcm``
TPS RTDOSE; the DCE variant adds ``dce/`` (6 frames). Every builder returns the folder to ingest.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from tests.faults.common import copy_input, dicom_files, edit, set_pixels, truncate

NEW_UID_ROOT = "1.2.826.0.1.77.900."


def _new_uid(n: int) -> str:
    return f"{NEW_UID_ROOT}{n}"


# --- planning CT --------------------------------------------------------------------------------

def ct_second_reconstruction_same_uid(good: Path, out: Path) -> Path:
    """A 6 mm reconstruction exported under the planning CT's SeriesInstanceUID (new SOP instances,
    SliceThickness 6, positions between the 3 mm slices): two series under one UID."""
    root = copy_input(good, out)
    for n, path in enumerate(dicom_files(root / "ct")[::2]):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _new_uid(100 + n)
        ds.SliceThickness = "6.0"
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], f"{float(ds.ImagePositionPatient[2]) + 1.5:.2f}"]
        ds.save_as(root / "ct" / f"thick_{n:02d}.dcm", enforce_file_format=True)
    return root


def ct_half_at_double_spacing(good: Path, out: Path) -> Path:
    """Every other slice of the upper half missing: half the stack at 6 mm, half at 3 mm, one UID
    (two series merged by an archive), not a few missing slices."""
    root = copy_input(good, out)
    files = dicom_files(root / "ct")
    for path in files[len(files) // 2 + 1::2]:
        path.unlink()
    return root


def ct_duplicate_sop_different_pixels(good: Path, out: Path) -> Path:
    """One slice stored twice under the same SOPInstanceUID, the copy with different pixels
    (an edited re-export next to the original)."""
    root = copy_input(good, out)
    source = dicom_files(root / "ct")[10]
    ds = pydicom.dcmread(source)
    set_pixels(ds, ds.pixel_array + 200)
    ds.save_as(root / "ct" / "zz_reexport.dcm", enforce_file_format=True)
    return root


def ct_duplicate_file_identical(good: Path, out: Path) -> Path:
    """One slice copied under a second file name (same bytes): a harmless duplicate."""
    root = copy_input(good, out)
    shutil.copy2(dicom_files(root / "ct")[5], root / "ct" / "copy_of_slice.dcm")
    return root


def ct_same_position_different_pixels(good: Path, out: Path) -> Path:
    """A second image (new SOPInstanceUID, different pixels) at an existing slice position."""
    root = copy_input(good, out)
    ds = pydicom.dcmread(dicom_files(root / "ct")[7])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _new_uid(1)
    set_pixels(ds, ds.pixel_array - 300)
    ds.save_as(root / "ct" / "other_image_same_z.dcm", enforce_file_format=True)
    return root


def ct_gantry_tilt(good: Path, out: Path) -> Path:
    """Gantry tilted 12 degrees: each slice shifted in y by z * tan(12 deg), orientation unchanged."""
    root = copy_input(good, out)
    files = dicom_files(root / "ct")
    z0 = float(pydicom.dcmread(files[0]).ImagePositionPatient[2])

    def tilt(ds: Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.3f}", f"{y + (z - z0) * math.tan(math.radians(12)):.3f}", f"{z:.3f}"]
    edit(files, tilt)
    return root


def ct_coronal(good: Path, out: Path) -> Path:
    """The planning CT exported as coronal slices: rows along x, columns along -z, slices along y."""
    root = copy_input(good, out)
    for k, path in enumerate(dicom_files(root / "ct")):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
        ds.ImagePositionPatient = ["-48.75", f"{-43.75 + 3.0 * k:.2f}", "34.5"]
        ds.save_as(path, enforce_file_format=True)
    return root


def ct_missing_image_position(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(dicom_files(root / "ct")[12:13], lambda ds: delattr(ds, "ImagePositionPatient"))
    return root


def ct_missing_slice(good: Path, out: Path) -> Path:
    """One slice (not at an end) missing from the planning CT."""
    root = copy_input(good, out)
    dicom_files(root / "ct")[9].unlink()
    return root


def ct_zero_byte_file(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    (root / "ct" / "empty.dcm").write_bytes(b"")
    return root


def ct_truncated_pixel_data(good: Path, out: Path) -> Path:
    """A planning-CT slice cut in the middle of its pixel data (header intact)."""
    root = copy_input(good, out)
    truncate(dicom_files(root / "ct")[6], 0.75)
    return root


def ct_missing_pixel_spacing(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(dicom_files(root / "ct"), lambda ds: delattr(ds, "PixelSpacing"))
    return root


def ct_mixed_matrix_size(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(dicom_files(root / "ct")[4:5], lambda ds: set_pixels(ds, ds.pixel_array[:30, :30]))
    return root


def ct_mixed_orientation(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(dicom_files(root / "ct")[3:4], lambda ds: setattr(ds, "ImageOrientationPatient", ["0.9962", "0.0872", "0", "-0.0872", "0.9962", "0"]))
    return root


def ct_rescale_slope_text(good: Path, out: Path) -> Path:
    root = copy_input(good, out)

    def put(ds: Dataset) -> None:
        ds["RescaleSlope"].VR = "LO"
        ds["RescaleSlope"].value = "one"
    edit(dicom_files(root / "ct")[2:3], put)
    return root


def two_patients_in_one_folder(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(dicom_files(root / "pet_ac"), lambda ds: setattr(ds, "PatientID", "OTHER99"))
    return root


def folder_without_dicom(good: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    (out / "README.txt").write_text("images were not exported\n")
    (out / "scan.bin").write_bytes(b"\x00\x01not dicom" * 50)
    return out


def dicom_dir_missing(good: Path, out: Path) -> Path:
    return out / "no_such_folder"


def no_planning_ct(good: Path, out: Path) -> Path:
    """Only the PET/CT: no CT outside the PET/CT pair."""
    root = copy_input(good, out)
    shutil.rmtree(root / "ct")
    (root / "rt" / "rs.dcm").unlink()
    (root / "rt" / "rd.dcm").unlink()
    return root


# --- PET ------------------------------------------------------------------------------------------

def _pet(root: Path) -> list[Path]:
    return dicom_files(root / "pet_ac")


def pet_units_cnts_without_factor(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(_pet(root), lambda ds: setattr(ds, "Units", "CNTS"))
    return root


def _suv_factors(files: list[Path]) -> list[float]:
    """The good series' own BQML -> SUVbw factor per slice (what a scanner's SUV factor would be)."""
    from isotox.dicomio.suv import suv_conversion

    return [float(f) for f in suv_conversion([pydicom.dcmread(p) for p in files], "CLIN01", files[0]).factors]


def pet_units_cnts_with_philips_factor(good: Path, out: Path) -> Path:
    """Philips counts with the private SUV scale factor (7053,1000), as the scanner writes them; the
    factor is the series' true one, so the SUV image must equal the good one."""
    root = copy_input(good, out)
    files = _pet(root)
    for path, factor in zip(files, _suv_factors(files)):
        ds = pydicom.dcmread(path)
        ds.Units = "CNTS"
        block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        block.add_new(0x00, "DS", f"{factor:.10g}"[:16])
        ds.save_as(path, enforce_file_format=True)
    return root


def pet_units_gml(good: Path, out: Path) -> Path:
    """Units GML (values already SUVbw): the stored values are made SUVs by scaling RescaleSlope
    with the series' own BQML -> SUVbw factor, so the SUV image must equal the good one."""
    root = copy_input(good, out)
    files = _pet(root)
    for path, factor in zip(files, _suv_factors(files)):
        ds = pydicom.dcmread(path)
        ds.Units = "GML"
        ds.SUVType = "BW"
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * factor:.10g}"[:16]
        ds.save_as(path, enforce_file_format=True)
    return root


def pet_units_cps(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(_pet(root), lambda ds: setattr(ds, "Units", "CPS"))
    return root


def pet_no_radiopharmaceutical_sequence(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(_pet(root), lambda ds: delattr(ds, "RadiopharmaceuticalInformationSequence"))
    return root


def pet_weight_zero(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(_pet(root), lambda ds: setattr(ds, "PatientWeight", "0"))
    return root


def pet_weight_missing(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(_pet(root), lambda ds: delattr(ds, "PatientWeight"))
    return root


def pet_decay_correction_none(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(_pet(root), lambda ds: setattr(ds, "DecayCorrection", "NONE"))
    return root


def pet_decay_correction_unknown(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(_pet(root), lambda ds: setattr(ds, "DecayCorrection", "DECY"))
    return root


def pet_dose_missing(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(_pet(root), lambda ds: delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose"))
    return root


def pet_no_injection_time(good: Path, out: Path) -> Path:
    root = copy_input(good, out)

    def drop(ds: Dataset) -> None:
        info = ds.RadiopharmaceuticalInformationSequence[0]
        for keyword in ("RadiopharmaceuticalStartDateTime", "RadiopharmaceuticalStartTime"):
            if keyword in info:
                delattr(info, keyword)
    edit(_pet(root), drop)
    return root


def pet_truncated_slice(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    truncate(_pet(root)[5], 0.6)
    return root


# --- RTSTRUCT -------------------------------------------------------------------------------------

def _structures(root: Path) -> Path:
    return root / "rt" / "rs.dcm"


def rtstruct_other_frame_of_reference(good: Path, out: Path) -> Path:
    """The structure set of another CT (its FrameOfReferenceUID, every ROI on it)."""
    root = copy_input(good, out)

    def move(ds: Dataset) -> None:
        ds.FrameOfReferenceUID = _new_uid(2)
        for item in ds.ReferencedFrameOfReferenceSequence:
            item.FrameOfReferenceUID = _new_uid(2)
        for roi in ds.StructureSetROISequence:
            roi.ReferencedFrameOfReferenceUID = _new_uid(2)
    edit([_structures(root)], move)
    return root


def rtstruct_roi_without_contours(good: Path, out: Path) -> Path:
    """Lung_L is listed in StructureSetROISequence but its ROIContourSequence item has no contours."""
    root = copy_input(good, out)

    def empty(ds: Dataset) -> None:
        number = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "Lung_L")
        item = next(c for c in ds.ROIContourSequence if int(c.ReferencedROINumber) == number)
        del item.ContourSequence
    edit([_structures(root)], empty)
    return root


def rtstruct_duplicate_roi_names(good: Path, out: Path) -> Path:
    """Two ROIs named 'GTV' (the lung renamed by mistake)."""
    root = copy_input(good, out)

    def rename(ds: Dataset) -> None:
        next(r for r in ds.StructureSetROISequence if r.ROIName == "Lung_L").ROIName = "GTV"
    edit([_structures(root)], rename)
    return root


def rtstruct_truncated(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    truncate(_structures(root), 0.5)
    return root


# --- RTDOSE ---------------------------------------------------------------------------------------

def _dose(root: Path) -> Path:
    return root / "rt" / "rd.dcm"


def rtdose_offsets_absolute(good: Path, out: Path) -> Path:
    """GridFrameOffsetVector in the absolute form (the frames' z positions), as some TPS write it."""
    root = copy_input(good, out)

    def absolute(ds: Dataset) -> None:
        z0 = float(ds.ImagePositionPatient[2])
        ds.GridFrameOffsetVector = [f"{z0 + float(v):.4f}" for v in ds.GridFrameOffsetVector]
    edit([_dose(root)], absolute)
    return root


def rtdose_offsets_wrong_count(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit([_dose(root)], lambda ds: setattr(ds, "GridFrameOffsetVector", list(ds.GridFrameOffsetVector)[:-2]))
    return root


def rtdose_offsets_uneven(good: Path, out: Path) -> Path:
    root = copy_input(good, out)

    def uneven(ds: Dataset) -> None:
        values = [float(v) for v in ds.GridFrameOffsetVector]
        values[5] += 1.2
        ds.GridFrameOffsetVector = [f"{v:.4f}" for v in values]
    edit([_dose(root)], uneven)
    return root


def rtdose_relative_units(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit([_dose(root)], lambda ds: setattr(ds, "DoseUnits", "RELATIVE"))
    return root


def rtdose_zero_byte(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    _dose(root).write_bytes(b"")
    return root


# --- DCE-CT (the DCE variant of the patient) ------------------------------------------------------

def _dce_frame_files(root: Path, acquisition_number: int) -> list[Path]:
    return [p for p in dicom_files(root / "dce") if int(pydicom.dcmread(p, stop_before_pixels=True).AcquisitionNumber) == acquisition_number]


def dce_frame_without_time(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    edit(_dce_frame_files(root, 3), lambda ds: delattr(ds, "AcquisitionTime"))
    return root


def dce_frame_other_geometry(good: Path, out: Path) -> Path:
    """One DCE frame shifted by 5 mm in x (a different reconstruction field of view)."""
    root = copy_input(good, out)

    def shift(ds: Dataset) -> None:
        ds.ImagePositionPatient = [f"{float(ds.ImagePositionPatient[0]) + 5.0:.2f}", *ds.ImagePositionPatient[1:]]
    edit(_dce_frame_files(root, 2), shift)
    return root


def dce_frame_missing_slice(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    _dce_frame_files(root, 4)[10].unlink()
    return root


def dce_truncated_file(good: Path, out: Path) -> Path:
    root = copy_input(good, out)
    truncate(_dce_frame_files(root, 1)[3], 0.7)
    return root
