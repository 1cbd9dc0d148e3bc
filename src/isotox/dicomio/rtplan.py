"""A prescription-only RT Plan: the fractionation and the target doses, without beams.

An RTDOSE of a whole plan (DoseSummationType PLAN) must reference the RT Plan it belongs to
(PS3.3 C.8.8.3, Referenced RT Plan Sequence, Type 1C). isotox's dose comes from its own engine,
whose beams are not deliverable machine parameters (no MLC leaf model, no monitor units), so the
plan it exports carries what *is* meaningful for a TPS: the prescription (RT Prescription module:
one dose reference per target ROI of the exported structure set, with its prescription dose), the
fraction scheme (number of fractions, no beams) and the structure set it refers to. The TPS
re-plans the beams.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from isotox.dicomio.modules import PatientStudy, SeriesInfo, new_series_instance
from isotox.dicomio.rtdose import RT_PLAN_STORAGE
from isotox.dicomio.rtstruct_writer import RT_STRUCTURE_SET_STORAGE


@dataclass(frozen=True)
class TargetPrescription:
    roi_number: int  # ROINumber in the referenced structure set
    name: str
    dose_gy: float  # total prescription dose to this target


def write_prescription_plan(path: Path, who: PatientStudy, series: SeriesInfo, *, sop_instance_uid: str, label: str,
                            fractions: int, targets: list[TargetPrescription], structure_set_uid: str, intent: str = "RESEARCH") -> Dataset:
    ds = new_series_instance(RT_PLAN_STORAGE, sop_instance_uid, who, series)
    ds.RTPlanLabel = label[:16]
    ds.RTPlanName = label[:64]
    ds.RTPlanDate, ds.RTPlanTime = series.date, series.time
    ds.RTPlanGeometry = "PATIENT"
    ds.PlanIntent = intent
    ref = Dataset()
    ref.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ref.ReferencedSOPInstanceUID = structure_set_uid
    ds.ReferencedStructureSetSequence = Sequence([ref])
    ds.PrescriptionDescription = "; ".join(f"{t.name} {t.dose_gy:g} Gy" for t in targets) + f" in {fractions} fractions"
    references = Sequence()
    for number, target in enumerate(targets, start=1):
        item = Dataset()
        item.DoseReferenceNumber = number
        item.DoseReferenceStructureType = "VOLUME"
        item.DoseReferenceDescription = target.name[:64]
        item.ReferencedROINumber = target.roi_number
        item.DoseReferenceType = "TARGET"
        item.TargetPrescriptionDose = f"{target.dose_gy:.4f}"
        references.append(item)
    ds.DoseReferenceSequence = references
    group = Dataset()
    group.FractionGroupNumber = 1
    group.NumberOfFractionsPlanned = fractions
    group.NumberOfBeams = 0
    group.NumberOfBrachyApplicationSetups = 0
    ds.FractionGroupSequence = Sequence([group])
    ds.ApprovalStatus = "UNAPPROVED"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds

