"""Configuration as data: schema validation of the run config, cohort sheet, protocols and ROI names."""

from isotox.settings.cohort import read_cohort_sheet, check_patient_id
from isotox.settings.documents import load_validated_yaml, validate_document
from isotox.settings.protocol import load_protocol
from isotox.settings.roi_names import RoiNameMap

__all__ = [
    "RoiNameMap",
    "check_patient_id",
    "load_protocol",
    "load_validated_yaml",
    "read_cohort_sheet",
    "validate_document",
]
