"""The corpus table: every fault, the input type it breaks, and the outcome isotox must give.

``error``: the CLI exits with code 2 and one message naming the patient, file or tag and the fix.
``handled``: the CLI exits 0 and the problem is recorded (stage metadata, cohort-table status
columns, or the outcome tables' ``problems.tsv``); an image that can be computed is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.faults import dicom, documents, tables

ERROR, HANDLED = "error", "handled"


@dataclass(frozen=True)
class FaultCase:
    """One fault: ``build(good, out)`` writes the broken copy of input ``base`` and returns what the
    command gets; ``expect`` are substrings the error message (or the recorded warning) must hold."""

    name: str
    input_type: str
    outcome: str
    build: Callable[[Path, Path], Path]
    base: str
    command: str
    expect: tuple[str, ...]
    args: tuple[str, ...] = ()


def _dicom(input_type: str, outcome: str, build: Callable[[Path, Path], Path], *expect: str, base: str = "patient",
           args: tuple[str, ...] = ()) -> FaultCase:
    return FaultCase(build.__name__, input_type, outcome, build, base, "ingest", expect, args)


def _doc(input_type: str, command: str, outcome: str, build: Callable[[Path, Path], Path], *expect: str) -> FaultCase:
    base = {"cohort sheet": "cohort", "config": "config", "protocol": "protocol", "clinical TSV": "clinical"}[input_type]
    return FaultCase(build.__name__, input_type, outcome, build, base, command, expect)


CT, PET, RS, RD, DCE, FOLDER = "DICOM CT", "DICOM PET", "DICOM RTSTRUCT", "DICOM RTDOSE", "DICOM DCE", "DICOM folder"
COHORT, CONFIG, PROTOCOL, CLINICAL = "cohort sheet", "config", "protocol", "clinical TSV"

CASES: list[FaultCase] = [
    # planning CT
    _dicom(CT, ERROR, dicom.ct_second_reconstruction_same_uid, "different SliceThickness (3, 6 mm)", "split the series"),
    _dicom(CT, ERROR, dicom.ct_half_at_double_spacing, "two series mixed under one SeriesInstanceUID", "split the series"),
    _dicom(CT, ERROR, dicom.ct_duplicate_sop_different_pixels, "zz_reexport.dcm with different pixel data", "remove the wrong copy"),
    _dicom(CT, HANDLED, dicom.ct_duplicate_file_identical, "SOP instance(s) present more than once: one copy kept"),
    _dicom(CT, ERROR, dicom.ct_same_position_different_pixels, "two different slices at the same position", "split it"),
    _dicom(CT, HANDLED, dicom.ct_gantry_tilt, "planning_ct: gantry tilt 12.00 degrees", "resampled onto a regular orthogonal grid"),
    _dicom(CT, HANDLED, dicom.ct_coronal, "planning_ct: slices are not axial (slice normal 0.000, 1.000, 0.000"),
    _dicom(CT, ERROR, dicom.ct_missing_image_position, "ImagePositionPatient is missing", "re-export the series"),
    _dicom(CT, HANDLED, dicom.ct_missing_slice, "planning_ct: 1 missing slice(s)", "resampled"),
    _dicom(CT, ERROR, dicom.ct_missing_slice, "irregular slice stack: 1 missing slice(s)", "ingest.irregular: resample", args=("--irregular", "refuse")),
    _dicom(CT, HANDLED, dicom.ct_zero_byte_file, "1 file(s) skipped"),
    _dicom(CT, ERROR, dicom.ct_truncated_pixel_data, "pixel data cannot be read", "export it again"),
    _dicom(CT, ERROR, dicom.ct_missing_pixel_spacing, "PixelSpacing (0028,0030) is missing", "re-export"),
    _dicom(CT, ERROR, dicom.ct_mixed_matrix_size, "different matrix sizes", "split the series"),
    _dicom(CT, ERROR, dicom.ct_mixed_orientation, "different ImageOrientationPatient", "split the series"),
    _dicom(CT, ERROR, dicom.ct_rescale_slope_text, "RescaleSlope (0028,1053) is 'one', not a number", "re-export the series"),
    _dicom(FOLDER, ERROR, dicom.two_patients_in_one_folder, "more than one patient", "OTHER99", "give each patient a folder"),
    _dicom(FOLDER, ERROR, dicom.folder_without_dicom, "holds no readable DICOM", "point dicom_dir"),
    _dicom(FOLDER, ERROR, dicom.dicom_dir_missing, "DICOM folder not found", "check dicom_dir"),
    _dicom(FOLDER, ERROR, dicom.no_planning_ct, "no planning CT found", "series_roles=planning_ct"),
    # PET
    _dicom(PET, HANDLED, dicom.pet_units_cnts_without_factor, "fdg_pet", "Units CNTS without a Philips SUV (7053,1000)", "export the PET in Bq/ml"),
    _dicom(PET, HANDLED, dicom.pet_units_cnts_with_philips_factor, "fdg_pet: Units CNTS: converted with the Philips SUV scale factor (7053,1000)"),
    _dicom(PET, HANDLED, dicom.pet_units_gml, "fdg_pet: Units GML: pixel values are already SUVbw"),
    _dicom(PET, HANDLED, dicom.pet_units_cps, "fdg_pet", "Units CPS cannot be converted to SUV"),
    _dicom(PET, HANDLED, dicom.pet_no_radiopharmaceutical_sequence, "fdg_pet: no series with this role; PET series without a role: 1.2.826.0.1.77.30", "series_roles=fdg_pet=UID"),
    _dicom(PET, HANDLED, dicom.pet_weight_zero, "fdg_pet", "PatientWeight (0010,1030) is 0: body-weight SUV needs it"),
    _dicom(PET, HANDLED, dicom.pet_weight_missing, "fdg_pet", "PatientWeight (0010,1030) is missing"),
    _dicom(PET, HANDLED, dicom.pet_decay_correction_none, "fdg_pet: DecayCorrection NONE"),
    _dicom(PET, HANDLED, dicom.pet_decay_correction_unknown, "fdg_pet", "DecayCorrection DECY is not START, ADMIN or NONE"),
    _dicom(PET, HANDLED, dicom.pet_dose_missing, "fdg_pet", "RadionuclideTotalDose (0018,1074) is missing"),
    _dicom(PET, HANDLED, dicom.pet_no_injection_time, "fdg_pet", "no injection time"),
    _dicom(PET, HANDLED, dicom.pet_truncated_slice, "fdg_pet", "pixel data cannot be read"),
    # RTSTRUCT
    _dicom(RS, HANDLED, dicom.rtstruct_other_frame_of_reference, "rtstruct", "another frame of reference"),
    _dicom(RS, HANDLED, dicom.rtstruct_roi_without_contours, "Lung_L: empty ROI"),
    _dicom(RS, HANDLED, dicom.rtstruct_duplicate_roi_names, "GTV: maps to GTV like GTV"),
    _dicom(RS, HANDLED, dicom.rtstruct_truncated, "rtstruct", "ROIContourSequence has no ReferencedROINumber: the RTSTRUCT is truncated or corrupt"),
    # RTDOSE
    _dicom(RD, HANDLED, dicom.rtdose_offsets_absolute, "rtdose: GridFrameOffsetVector is in the absolute form"),
    _dicom(RD, HANDLED, dicom.rtdose_offsets_wrong_count, "rtdose", "GridFrameOffsetVector has 22 values for 24 frames"),
    _dicom(RD, HANDLED, dicom.rtdose_offsets_uneven, "rtdose", "RTDOSE frames are not evenly spaced"),
    _dicom(RD, HANDLED, dicom.rtdose_relative_units, "rtdose", "DoseUnits RELATIVE is not GY"),
    _dicom(RD, HANDLED, dicom.rtdose_zero_byte, "rtdose", "1 file(s) skipped"),
    # DCE-CT
    _dicom(DCE, HANDLED, dicom.dce_frame_without_time, "dce_ct", "no usable AcquisitionDate/AcquisitionTime", base="patient_dce"),
    _dicom(DCE, HANDLED, dicom.dce_frame_other_geometry, "dce_ct", "different geometry than the first frame", base="patient_dce"),
    _dicom(DCE, HANDLED, dicom.dce_frame_missing_slice, "DCE frame 3 (AcquisitionNumber 4): 1 missing slice(s)", base="patient_dce"),
    _dicom(DCE, HANDLED, dicom.dce_truncated_file, "dce_ct", "pixel data cannot be read", base="patient_dce"),
    # cohort sheet
    _doc(COHORT, "validate cohort", ERROR, tables.cohort_duplicate_patient_id, "patient id 'CLIN01' appears more than once"),
    _doc(COHORT, "validate cohort", ERROR, tables.cohort_missing_column, "'histology' is a required property"),
    _doc(COHORT, "validate cohort", ERROR, tables.cohort_dicom_dir_not_found, "CLIN02", "dicom_dir", "moved_away/CLIN02", "not found"),
    _doc(COHORT, "validate cohort", HANDLED, tables.cohort_bom, "valid cohort"),
    _doc(COHORT, "validate cohort", HANDLED, tables.cohort_windows_line_endings, "valid cohort"),
    _doc(COHORT, "validate cohort", ERROR, tables.cohort_header_only, "has no patient rows"),
    _doc(COHORT, "validate cohort", ERROR, tables.cohort_comma_separated, "has no 'patient_id' column (is it tab-separated?)"),
    _doc(COHORT, "validate cohort", ERROR, tables.cohort_unknown_histology, "column 'histology'", "'adeno' is not one of"),
    _doc(COHORT, "validate cohort", ERROR, tables.cohort_bad_series_roles, "column 'series_roles'"),
    _doc(COHORT, "validate cohort", ERROR, tables.cohort_unsafe_patient_id, "../CLIN02"),
    _doc(COHORT, "validate cohort", ERROR, tables.cohort_sheet_not_found, "cohort sheet not found"),
    # config
    _doc(CONFIG, "validate config", ERROR, documents.config_unknown_key, "protocoll", "allowed keys here"),
    _doc(CONFIG, "validate config", ERROR, documents.config_wrong_type, "key 'sample.patients'", "'twelve' is not of type 'integer'"),
    _doc(CONFIG, "validate config", ERROR, documents.config_missing_protocol_file, "key 'protocol'", "pet_boost_v2.yaml", "not found"),
    _doc(CONFIG, "validate config", ERROR, documents.config_missing_roi_names_file, "key 'roi_names'", "roi_names_local.yaml", "not found"),
    _doc(CONFIG, "validate config", ERROR, documents.config_sheet_source_without_sheet, "cohort.source is 'sheet' but cohort.sheet is not set"),
    _doc(CONFIG, "validate config", ERROR, documents.config_invalid_yaml, "is not valid YAML at line"),
    _doc(CONFIG, "validate config", ERROR, documents.config_empty_file, "None is not of type 'object'"),
    # protocol
    _doc(PROTOCOL, "validate protocol", ERROR, documents.protocol_negative_limit, "key 'constraints.0.limit'", "-50.0 is less than the minimum of 0"),
    _doc(PROTOCOL, "validate protocol", ERROR, documents.protocol_unknown_structure, "key 'constraints.1.structure'", "LUNG_TOTAL", "not a known structure"),
    _doc(PROTOCOL, "validate protocol", ERROR, documents.protocol_unknown_ntcp_structure, "key 'ntcp.pneumonitis.structure'", "LUNG_BOTH"),
    _doc(PROTOCOL, "validate protocol", ERROR, documents.protocol_unknown_dose_type, "key 'constraints.1.dose_type'", "'biological' is not one of"),
    _doc(PROTOCOL, "validate protocol", ERROR, documents.protocol_min_above_max, "key 'total_dose_gy'", "is greater than max"),
    _doc(PROTOCOL, "validate protocol", ERROR, documents.protocol_duplicate_constraint_id, "constraint ids must be unique"),
    # clinical follow-up
    _doc(CLINICAL, "outcomes", ERROR, tables.clinical_header_only, "has no patient rows"),
    _doc(CLINICAL, "outcomes", ERROR, tables.clinical_without_patient_id, "has no 'patient_id' column"),
    _doc(CLINICAL, "outcomes", HANDLED, tables.clinical_dates_day_first, "CLIN03", "registration_date"),
    _doc(CLINICAL, "outcomes", HANDLED, tables.clinical_negative_followup, "CLIN02", "last_followup_date", "is before registration_date 2024-02-05 (negative follow-up)"),
    _doc(CLINICAL, "outcomes", HANDLED, tables.clinical_toxicity_without_date, "CLIN04", "pneumonitis_date", "pneumonitis grade 3 without its date"),
    _doc(CLINICAL, "outcomes", HANDLED, tables.clinical_event_before_registration, "CLIN01", "local_progression_date", "is before the time origin (registration_date"),
    _doc(CLINICAL, "outcomes", HANDLED, tables.clinical_duplicate_patient_id, "CLIN01", "duplicate patient id"),
    _doc(CLINICAL, "outcomes", HANDLED, tables.clinical_bom, "6 patients"),
    _doc(CLINICAL, "outcomes", HANDLED, tables.clinical_windows_line_endings, "6 patients"),
    _doc(CLINICAL, "outcomes", HANDLED, tables.clinical_grade_not_a_grade, "CLIN03", "esophagitis_grade"),
    _doc(CLINICAL, "outcomes", ERROR, tables.clinical_all_rows_invalid, "no valid patient row", "registration_date"),
    _doc(CLINICAL, "outcomes", ERROR, tables.clinical_not_found, "clinical table not found"),
]

#: Cases already covered by their own tests (the 16 of the first part of the issue), counted in the corpus.
EXISTING: list[tuple[str, str, str, str]] = [
    ("rtdose_scaling_x1000", RD, HANDLED, "tests/test_bad_input_ingest.py::test_implausible_rtdose_scaling_is_refused"),
    ("rtdose_scaling_missing", RD, HANDLED, "tests/test_bad_input_ingest.py::test_implausible_rtdose_scaling_is_refused"),
    ("rtdose_scaling_zero", RD, HANDLED, "tests/test_bad_input_ingest.py::test_implausible_rtdose_scaling_is_refused"),
    ("pet_injection_after_scan", PET, HANDLED, "tests/test_bad_input_ingest.py::test_injection_after_the_scan_is_refused"),
    ("pet_rescale_slope_missing_on_one_slice", PET, HANDLED, "tests/test_bad_input_ingest.py::test_rescale_slope_missing_on_one_slice_is_refused"),
    ("pet_weight_text", PET, HANDLED, "tests/test_bad_input_ingest.py::test_text_in_numeric_pet_tags_names_the_tag"),
    ("pet_rescale_slope_text", PET, HANDLED, "tests/test_bad_input_ingest.py::test_text_in_numeric_pet_tags_names_the_tag"),
    ("ct_mixed_pixel_spacing", CT, ERROR, "tests/test_bad_input_ingest.py::test_ct_slices_with_different_pixel_spacing_are_refused"),
    ("ct_zero_pixel_spacing", CT, ERROR, "tests/test_bad_input_ingest.py::test_zero_pixel_spacing_is_a_clear_error_not_a_traceback"),
    ("dce_acquisition_number_disagrees_with_time", DCE, HANDLED, "tests/test_bad_input_ingest.py::test_dce_frames_follow_acquisition_time_not_acquisition_number"),
    ("dce_duplicate_frame_times", DCE, HANDLED, "tests/test_bad_input_ingest.py::test_dce_frames_at_the_same_time_are_refused"),
    ("rtstruct_contour_two_points", RS, HANDLED, "tests/test_bad_input_ingest.py::test_damaged_contours_are_reported"),
    ("rtstruct_self_intersecting_contour", RS, HANDLED, "tests/test_bad_input_ingest.py::test_damaged_contours_are_reported"),
    ("rtstruct_contour_data_not_triplets", RS, HANDLED, "tests/test_bad_input_ingest.py::test_damaged_contours_are_reported"),
    ("rtdose_other_frame_of_reference", RD, HANDLED, "tests/test_clinical_dicom.py"),
    ("rtdose_truncated", RD, HANDLED, "tests/test_ingest_patient.py::test_junk_and_truncated_files_are_reported_not_fatal"),
]
