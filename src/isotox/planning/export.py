"""DICOM export of the prescribed plan for a TPS: an RTSTRUCT of the planning structures drawn on
the planning CT (every contour referencing its slice), a prescription-only RTPLAN (fractions and
target doses, no beams: see ``dicomio.rtplan``) and an RTDOSE of the prescribed total dose that
references it.

Both carry the planning CT's patient, study and frame of reference (recorded by ingestion), and
deterministic UIDs (a rerun of the same plan keeps its UIDs, so a TPS sees an update, not a new object). Names are the canonical
ones of ``config/roi_names.yaml``, which the clinic's TPS templates can map back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from isotox.dicomio.contours import contours_from_field
from isotox.dicomio.modules import PatientStudy, SeriesInfo
from isotox.dicomio.rtdose import DoseGrid, write_rtdose
from isotox.dicomio.rtplan import TargetPrescription, write_prescription_plan
from isotox.dicomio.rtstruct_writer import ReferencedImages, RoiContours, write_rtstruct
from isotox.dicomio.uids import stable_uid
from isotox.geometry import ImageGrid

#: exported structures: RT ROI interpreted type and display colour
EXPORTED_ROIS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "BODY": ("EXTERNAL", (0, 255, 0)), "GTV": ("GTV", (255, 0, 0)), "GTV_SUV50": ("GTV", (255, 128, 0)),
    "CTV": ("CTV", (255, 0, 255)), "PTV": ("PTV", (0, 0, 255)), "PTV_BOOST_A": ("PTV", (128, 0, 255)), "PTV_BOOST_B": ("PTV", (0, 128, 255)),
    "LUNGS": ("ORGAN", (0, 200, 200)), "LUNGS_MINUS_GTV": ("ORGAN", (0, 160, 160)), "HEART": ("ORGAN", (200, 0, 0)),
    "ESOPHAGUS": ("ORGAN", (160, 100, 0)), "SPINAL_CORD": ("ORGAN", (255, 255, 0)), "AORTA": ("ORGAN", (200, 50, 50)),
}


class ExportError(ValueError):
    """The plan cannot be exported (the message says why and what to do)."""


def patient_study(reference: dict[str, Any]) -> PatientStudy:
    """The patient and study identity of the planning CT as ingestion recorded it
    (``metadata.json``'s ``planning_ct_dicom``), for the DICOM objects written against that CT:
    every export (the prescribed plan here, the painted plans in ``isotox.painting.export``) must
    name the same patient and study as the CT the TPS has."""
    return PatientStudy(reference["patient_id"], reference["patient_name"], reference["birth_date"], reference["sex"], reference["study_uid"],
                        reference["study_date"], reference["study_time"], reference.get("study_id") or "1", reference.get("accession", ""))


def export_plan(folder: Path, reference: dict[str, Any] | None, ct_grid: ImageGrid, masks: dict[str, NDArray[np.bool_]],
                dose_gy: NDArray[np.float32], dose_grid: ImageGrid, key: tuple[str, ...], fractions: int,
                target_doses: dict[str, float]) -> dict[str, Any]:
    """Write ``RS.dcm``, ``RP.dcm`` and ``RD.dcm`` into ``folder``; returns their paths and UIDs.
    ``target_doses``: total prescription dose per exported target ROI (PTV, the boost PTV)."""
    if not reference:
        raise ExportError("ingestion recorded no planning-CT DICOM identity (re-run ingestion with this isotox version)")
    if not reference.get("slice_sop_uids"):
        raise ExportError("the planning CT was resampled at ingestion (irregular slices): contours cannot reference acquired slices; "
                          "export the structures from the TPS, or re-acquire/re-export the CT on a regular grid")
    if len(reference["slice_sop_uids"]) != ct_grid.size[2]:
        raise ExportError(f"the planning CT has {ct_grid.size[2]} slices but {len(reference['slice_sop_uids'])} recorded SOP instances")
    who = patient_study(reference)
    # The series date is the planning study's, not the day of the run: a rerun must write the same bytes
    # (the time is fixed for the same reason); when the plan was computed is in the plan's log.
    series_date = who.study_date
    frame = reference["frame_of_reference_uid"]
    folder.mkdir(parents=True, exist_ok=True)
    rois = [RoiContours(name, kind, colour, contours_from_field(ct_grid, masks[name])) for name, (kind, colour) in EXPORTED_ROIS.items() if name in masks]
    images = ReferencedImages(reference["study_uid"], reference["series_uid"], frame, reference["sop_class_uid"], list(reference["slice_sop_uids"]))
    rs_series = SeriesInfo("RTSTRUCT", stable_uid(*key, "rtstruct-series"), 901, "isotox planning structures", series_date, "120000.000000", frame)
    rs_uid = stable_uid(*key, "rtstruct")
    write_rtstruct(folder / "RS.dcm", who, rs_series, images, rois, sop_instance_uid=rs_uid, label="isotox")
    numbers = {roi.name: n for n, roi in enumerate(rois, start=1)}  # write_rtstruct numbers ROIs from 1 in order
    targets = [TargetPrescription(numbers[name], name, dose) for name, dose in target_doses.items() if name in numbers]
    rp_series = SeriesInfo("RTPLAN", stable_uid(*key, "rtplan-series"), 903, "isotox prescription", series_date, "120000.000000", frame)
    rp_uid = stable_uid(*key, "rtplan")
    write_prescription_plan(folder / "RP.dcm", who, rp_series, sop_instance_uid=rp_uid, label="isotox", fractions=fractions,
                            targets=targets, structure_set_uid=rs_uid)
    rd_series = SeriesInfo("RTDOSE", stable_uid(*key, "rtdose-series"), 902, "isotox prescribed plan dose", series_date, "120000.000000", frame)
    rd_uid = stable_uid(*key, "rtdose")
    write_rtdose(folder / "RD.dcm", DoseGrid(dose_grid, dose_gy.astype(np.float64), "PLAN", "PHYSICAL", frame, None), who, rd_series,
                 sop_instance_uid=rd_uid, plan_sop_uid=rp_uid)
    return {"rtstruct": str(folder / "RS.dcm"), "rtplan": str(folder / "RP.dcm"), "rtdose": str(folder / "RD.dcm"), "rtstruct_sop_uid": str(rs_uid),
            "rtplan_sop_uid": str(rp_uid), "rtdose_sop_uid": str(rd_uid), "structures": [r.name for r in rois],
            "prescription": {t.name: t.dose_gy for t in targets}, "fractions": fractions}
