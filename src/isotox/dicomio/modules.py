"""Attribute groups (DICOM 'modules') shared by every object isotox writes.

Kept in one place so CT, PET, RTSTRUCT and RTDOSE writers fill the Patient, Study, Series,
Equipment and SOP Common modules the same way and validate with dciodvfy.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from isotox import __version__


@dataclass(frozen=True)
class PatientStudy:
    """Who and which study: the attributes every object of one patient shares."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_uid: str
    study_date: str
    study_time: str
    study_id: str = "1"
    accession: str = ""


@dataclass(frozen=True)
class SeriesInfo:
    """One series: modality, identity, timing and frame of reference."""

    modality: str
    series_uid: str
    series_number: int
    description: str
    date: str
    time: str
    frame_of_reference_uid: str


def new_dataset(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """Empty dataset with file meta (explicit VR little endian) and SOP Common filled in."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"ISOTOX_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    return ds


def fill_patient_study(ds: Dataset, who: PatientStudy) -> None:
    """Patient and General Study modules."""
    ds.PatientName = who.patient_name
    ds.PatientID = who.patient_id
    ds.PatientBirthDate = who.birth_date
    ds.PatientSex = who.sex
    ds.StudyInstanceUID = who.study_uid
    ds.StudyDate = who.study_date
    ds.StudyTime = who.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = who.study_id
    ds.AccessionNumber = who.accession


def fill_series(ds: Dataset, series: SeriesInfo) -> None:
    """General Series, General Equipment and Frame of Reference modules."""
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.description
    ds.SeriesDate = series.date
    ds.SeriesTime = series.time
    if not series.modality.startswith("RT"):  # General Series (images) has Laterality; the RT Series module has not
        ds.Laterality = ""
    ds.OperatorsName = ""
    ds.Manufacturer = "isotox"
    ds.ManufacturerModelName = "isotox synthetic"
    ds.SoftwareVersions = __version__
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""


def new_series_instance(sop_class_uid: str, sop_instance_uid: str, who: PatientStudy, series: SeriesInfo) -> Dataset:
    """First (and only) instance of a single-object series such as an RTSTRUCT, RTPLAN or RTDOSE.

    One place for the patient/study/series boilerplate, so the RT writers only add their own modules.
    """
    ds = new_dataset(sop_class_uid, sop_instance_uid)
    fill_patient_study(ds, who)
    fill_series(ds, series)
    ds.InstanceNumber = 1
    return ds
