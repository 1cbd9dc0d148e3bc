"""Stage 2 for one patient: ``PATIENT_DIR/ingest`` -> ``PATIENT_DIR/register``.

Writes, per PET/CT session (fdg, hx4_2h, hx4_4h) found by ingestion: ``{session}.tfm`` (planning
points -> session points, the ITK resampling convention: the transform the PET is mapped with,
tumour-focused by default), ``{session}_global.tfm`` (the global, bony stage: the patient's
pose, right for the spine and chest wall), ``{session}_pet_suv.nii.gz`` and ``{session}_ct.nii.gz``
on the planning CT grid, and ``qc/{session}_fused.png``; for the DCE-CT: ``dce_mc.nii.gz``
(motion-corrected frames, DCE grid), ``dce_motion.tsv``, ``dce.tfm`` (tumour-focused) and
``dce_global.tfm``; and ``qc.json`` with every QC figure and flag, both stages' parameters and
how far apart they send the tumour centre (flagged above ``registration.qc.max_tumour_discrepancy_mm``:
breathing moves a tumour 5-15 mm, more suggests the tumour stage locked onto something else).
A session that is missing is recorded, not fatal.

Why two stages: each session is scanned at its own breathing state, so the tumour, lungs and
diaphragm sit 5-15 mm (cranio-caudal) from where the bony pose puts them; the global stage
aligns bone, the tumour-focused stage (``registration.tumour_focus``, metric inside the planning
GTV + ``tumour_margin_mm``) aligns the tumour, which is what the PET targets are drawn on.

PET is resampled with linear interpolation: it never creates values outside the range of its
neighbours (B-spline would overshoot near hot spots and inflate SUVmax), and it preserves the
mean SUV of a region; SUVmax before and after is reported because interpolation onto a grid
that does not contain the hottest voxel centre lowers it slightly.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from isotox.atomic import atomic_path
from isotox.errors import InputDataError
from isotox.images import array, body_mask, centroid_mm, lung_mask, read_image, resample_to, write_image
from isotox.qcplots import three_planes
from isotox.registration import dce
from isotox.registration.parallel import SessionTask, run_sessions
from isotox.registration.qc import assess
from isotox.registration.rigid import RegistrationSettings, RigidResult, point_distance_mm, refine_bspline, register_bony, register_tumour, tumour_region

log = logging.getLogger(__name__)
STAGE = "register"
PET_SESSIONS = ("fdg", "hx4_2h", "hx4_4h")


def _target(ingest: Path) -> np.ndarray | None:
    gtv = ingest / "masks" / "GTV.nii.gz"
    return array(read_image(gtv)) > 0 if gtv.exists() else None


def _require_contrast(image: sitk.Image, body: np.ndarray, path: Path, patient: str) -> None:
    """Mutual information needs more than one intensity inside the body: a CT that is uniform there
    (a phantom, a wrongly windowed or blanked series) cannot be aligned, and ITK would fail deep in
    its histogram code. Refuse it as bad input, naming the file."""
    values = array(image)[body]
    if values.size and float(values.max() - values.min()) < 1.0:
        raise InputDataError(patient, path, f"the CT is uniform inside the body ({float(values.min()):g} HU everywhere): "
                             "image registration needs anatomy to align", "check the series assigned to this role (a phantom or a blanked series?)")


def _rigid_record(result: RigidResult) -> dict[str, Any]:
    return {"metric": result.metric, "iterations": result.iterations, "stop": result.stop,
            "parameters": list(result.transform.GetParameters()), "centre_mm": list(result.transform.GetFixedParameters())}


def _tumour_record(result: RigidResult, global_tx: sitk.Transform, tumour_tx: sitk.Transform, centre_mm: np.ndarray,
                   region_cc: float, settings: RegistrationSettings) -> tuple[dict[str, Any], list[str]]:
    """The tumour-focused stage's record and its flag: how far it sends the tumour centre from the global stage."""
    apart = point_distance_mm(global_tx, tumour_tx, centre_mm)
    record = {**_rigid_record(result), "margin_mm": settings.tumour_margin_mm, "region_cc": region_cc,
              "tumour_centre_mm": [float(v) for v in centre_mm], "displacement_from_global_at_tumour_mm": apart}
    flags = []
    if apart > settings.max_tumour_discrepancy_mm:
        flags.append(f"tumour-focused and global registrations differ by {apart:.1f} mm at the tumour "
                     f"(> {settings.max_tumour_discrepancy_mm} mm: more than breathing moves a tumour)")
    return record, flags


def _register_pet_session(session: str, ingest: Path, out: Path, planning: sitk.Image, planning_body: np.ndarray, planning_lungs: np.ndarray,
                          target: np.ndarray | None, settings: RegistrationSettings, patient: str,
                          focus: np.ndarray | None = None) -> dict[str, Any]:
    ct_path, pet_path = ingest / f"{session}_ct.nii.gz", ingest / f"{session}_pet_suv.nii.gz"
    if not ct_path.exists() or not pet_path.exists():
        missing = ", ".join(p.name for p in (ct_path, pet_path) if not p.exists())
        return {"status": "missing", "reason": f"not ingested: {missing}"}
    ct, pet = read_image(ct_path), read_image(pet_path)
    ct_body = body_mask(ct)
    if not ct_body.any():
        raise InputDataError(patient, ct_path, "no body found on the PET/CT's CT (nothing above -400 HU)", "check the series assigned to this role")
    for image, body, path in ((planning, planning_body, ingest / "planning_ct.nii.gz"), (ct, ct_body, ct_path)):
        _require_contrast(image, body, path, patient)
    rigid = register_bony(planning, ct, settings, planning_body, ct_body)
    transform: sitk.Transform = rigid.transform
    metric = rigid.metric
    record: dict[str, Any] = {"status": "done", "rigid": {**_rigid_record(rigid), "region": settings.global_region}, "transform_used": "global"}
    if settings.deformable:
        transform, metric = refine_bspline(planning, ct, rigid.transform, settings, planning_body)
        record["deformable"] = {"metric": metric, "mesh_mm": settings.bspline_mesh_mm}
        record["transform_used"] = "deformable"
    qc = assess(planning, ct, transform, metric, rigid.iterations, settings, planning_body, ct_body, target, planning_lungs, moving_bone=rigid.bone)
    sitk.WriteTransform(transform, str(out / f"{session}_global.tfm"))
    if focus is not None and target is not None:
        cpu = time.process_time()
        tumour = register_tumour(planning, ct, settings, focus, ct_body, rigid.transform)
        log.info("%s: %s tumour-focused stage %.2f CPU s", patient, session, time.process_time() - cpu)
        record["tumour_focused"], flags = _tumour_record(tumour, rigid.transform, tumour.transform, centroid_mm(planning, target),
                                                         float(focus.sum()) * float(np.prod(planning.GetSpacing())) / 1000.0, settings)
        qc.flags.extend(flags)
        transform = tumour.transform
        record["transform_used"] = "tumour_focused"
    sitk.WriteTransform(transform, str(out / f"{session}.tfm"))
    pet_on_plan = resample_to(pet, planning, transform, sitk.sitkLinear, 0.0)
    write_image(pet_on_plan, out / f"{session}_pet_suv.nii.gz")
    write_image(resample_to(ct, planning, transform, sitk.sitkLinear, -1000.0), out / f"{session}_ct.nii.gz")
    suv_before, suv_after = float(array(pet).max()), float(array(pet_on_plan).max())
    centre = centroid_mm(planning, target) if target is not None and target.any() else centroid_mm(planning, planning_body)
    three_planes(planning, centre, out / "qc" / f"{session}_fused.png", f"{patient}: {session} PET on planning CT", overlay=pet_on_plan,
                 overlay_max=suv_after, contours={"GTV": target} if target is not None else None)
    record.update({"qc": qc.as_dict(), "suvmax_before": suv_before, "suvmax_after": suv_after, "flagged": bool(qc.flags)})
    for flag in qc.flags:
        log.warning("%s: %s registration flagged: %s", patient, session, flag)
    return record


def _register_dce(ingest: Path, out: Path, planning: sitk.Image, planning_body: np.ndarray, settings: RegistrationSettings,
                  target: np.ndarray | None = None, focus: np.ndarray | None = None) -> dict[str, Any]:
    path = ingest / "dce_ct.nii.gz"
    if not path.exists():
        return {"status": "missing", "reason": "not ingested: dce_ct.nii.gz"}
    frames = dce.frames_of(read_image(path))
    corrected = dce.motion_correct(frames, settings)
    write_image(dce.stack(corrected.frames), out / "dce_mc.nii.gz")
    corrected.table.to_csv(out / "dce_motion.tsv", sep="\t", index=False)
    reference = dce.mean_frame(corrected.frames)  # mean over frames: less noise, some enhancement like the planning CT
    # bone is found on the baseline frame (before the contrast reaches the aorta)
    result = dce.slab_to_planning(reference, planning, settings, planning_body, baseline=corrected.frames[0])
    transform = result.transform.GetInverse()
    sitk.WriteTransform(transform, str(out / "dce_global.tfm"))
    record: dict[str, Any] = {"status": "done", "frames": len(frames), "metric": result.metric, "rigid": _rigid_record(result),
                              "max_motion_mm": float(corrected.table["max_displacement_mm"].max()), "transform_used": "global"}
    flags: list[str] = []
    if focus is not None and target is not None:
        cpu = time.process_time()
        tumour = dce.tumour_to_planning(reference, planning, settings, planning_body, focus, result.transform)
        log.info("dce tumour-focused stage %.2f CPU s", time.process_time() - cpu)
        if tumour is not None:
            tumour_tx = tumour.transform.GetInverse()
            record["tumour_focused"], flags = _tumour_record(tumour, transform, tumour_tx, centroid_mm(planning, target),
                                                             float(focus.sum()) * float(np.prod(planning.GetSpacing())) / 1000.0, settings)
            transform = tumour_tx
            record["transform_used"] = "tumour_focused"
    sitk.WriteTransform(transform, str(out / "dce.tfm"))
    record.update({"qc": {"flags": flags}, "flagged": bool(flags)})
    for flag in flags:
        log.warning("DCE registration flagged: %s", flag)
    return record


def register_patient(patient_dir: str | Path, settings: RegistrationSettings | None = None, patient_id: str | None = None) -> dict[str, Any]:
    """Run stage 2 for one patient; returns what ``register/qc.json`` holds."""
    patient_dir = Path(patient_dir)
    patient = patient_id or patient_dir.name
    settings = settings or RegistrationSettings()
    ingest = patient_dir / "ingest"
    planning_path = ingest / "planning_ct.nii.gz"
    if not planning_path.exists():
        raise InputDataError(patient, planning_path, "the planning CT of the ingestion stage is missing", "run `isotox ingest` for this patient first")
    planning = read_image(planning_path)
    planning_body = body_mask(planning)
    planning_lungs = lung_mask(planning, planning_body)  # once, for every session's lung-overlap QC
    target = _target(ingest)
    focus = tumour_region(planning, target, planning_body, settings.tumour_margin_mm) if settings.tumour_focus and target is not None and target.any() else None
    summary: dict[str, Any] = {"patient_id": patient, "convention": "each .tfm maps planning-CT points (LPS mm) to the session's points",
                               "settings": {k: v for k, v in settings.__dict__.items()}, "sessions": {}}
    with atomic_path(patient_dir / STAGE) as out:
        (out / "qc").mkdir(parents=True)
        tasks: dict[str, SessionTask] = {
            "dce": (_register_dce, (ingest, out, planning, planning_body, settings, target, focus))}
        for session in PET_SESSIONS:
            tasks[session] = (_register_pet_session, (session, ingest, out, planning, planning_body, planning_lungs, target, settings, patient, focus))
        records = run_sessions(tasks, settings.threads)
        for session in (*PET_SESSIONS, "dce"):
            record, seconds = records[session]
            summary["sessions"][session] = record
            log.info("%s: %s registered in %.1f s", patient, session, seconds)
        summary["flagged"] = sorted(s for s, r in summary["sessions"].items() if r.get("flagged"))
        (out / "qc.json").write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    return summary
