"""Stage 1, ingestion: one patient's DICOM folder -> NIfTI images, masks, dose and metadata.

Writes ``PATIENT_DIR/ingest/`` atomically (all or nothing):

* ``series.tsv``: every series found, its role and why (and files skipped, and why);
* ``planning_ct.nii.gz`` (HU), ``{fdg,hx4_2h,hx4_4h}_pet_suv.nii.gz`` (SUVbw) and their PET/CT CTs
  ``{fdg,hx4_2h,hx4_4h}_ct.nii.gz``, ``dce_ct.nii.gz`` (4-D, HU) with ``dce_frames.tsv``;
* ``masks/{CANONICAL}.nii.gz`` on the planning-CT grid (unmapped ROIs as ``roi_<name>``);
* ``rtdose.nii.gz`` (Gy, on the TPS dose grid) when an RTDOSE is present;
* ``metadata.json``: geometry of every image, the planning CT's DICOM identity (for exports), the SUV factor and every tag it came from, ROI name
  mapping and volumes, warnings, and the problems that left an optional image out.

Only a missing planning CT (or an unreadable folder) stops the patient; a PET that cannot be
converted, a missing HX4 or DCE, an RTSTRUCT on another frame of reference... are recorded in
``metadata.json`` and the rest of the patient is ingested.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from isotox.atomic import atomic_path
from isotox.dicomio.dicom_time import combine, seconds_between
from isotox.dicomio.discovery import PatientIndex, Series, index_folder, load_pixels
from isotox.dicomio.roles import assign_roles, parse_overrides
from isotox.dicomio.reading import NO_FILE_META, read_dataset
from isotox.dicomio.rtdose import read_rtdose
from isotox.dicomio.tps_dose import check_plan_has_no_boost, check_tps_dose, covered_fraction
from isotox.dicomio.rtstruct_reader import StructureSetError, read_structure_set
from isotox.dicomio.suv import rescaled, suv_conversion
from isotox.dicomio.volume import IrregularPolicy, SliceGeometry, non_axial_note, slice_geometry, stack, to_image
from isotox.errors import InputDataError
from isotox.geometry import ImageGrid
from isotox.settings.roi_names import RoiNameMap

log = logging.getLogger(__name__)
STAGE = "ingest"


def _volume(series: Series, patient: str, policy: IrregularPolicy) -> tuple[SliceGeometry, list[Any]]:
    datasets = load_pixels(series, patient)
    geometry = slice_geometry(datasets, [str(p) for p in series.files], patient, policy)
    return geometry, [datasets[i] for i in geometry.order]


def check_rescale_numbers(slices: list[Any], paths: list[Path], patient: str) -> None:
    """RescaleSlope/RescaleIntercept that are not numbers are an error naming the file and tag
    (float() alone would say only 'could not convert string to float')."""
    for ds, path in zip(slices, paths):
        for keyword, tag in (("RescaleSlope", "(0028,1053)"), ("RescaleIntercept", "(0028,1052)")):
            value = ds.get(keyword)
            try:
                float(value) if value not in (None, "") else 0.0
            except (TypeError, ValueError):
                raise InputDataError(patient, path, f"{keyword} {tag} is {str(value)!r}, not a number",
                                     "re-export the series: the rescale tags must be numbers") from None


def _ct_image(series: Series, patient: str, policy: IrregularPolicy) -> tuple[sitk.Image, SliceGeometry, list[Any]]:
    check_rescale_numbers(series.headers, series.files, patient)
    geometry, slices = _volume(series, patient, policy)
    hu = stack(geometry, (rescaled(ds) for ds in slices), np.int16)  # plane by plane: no float64 volume
    return to_image(geometry.grid, hu), geometry, slices


def _dicom_reference(series: Series, slices: list[Any], geometry: SliceGeometry) -> dict[str, Any]:
    """What an exported RTSTRUCT/RTDOSE needs to attach to the planning CT in a TPS: patient and
    study identity, series and frame of reference, and the SOP instance of every slice k (only
    when the volume's slices are the acquired ones, i.e. the series was not resampled)."""
    first = slices[0]
    return {
        "patient_id": str(first.get("PatientID", "")), "patient_name": str(first.get("PatientName", "")),
        "birth_date": str(first.get("PatientBirthDate", "")), "sex": str(first.get("PatientSex", "")),
        "study_uid": str(first.StudyInstanceUID), "study_date": str(first.get("StudyDate", "")), "study_time": str(first.get("StudyTime", "")),
        "study_id": str(first.get("StudyID", "")), "accession": str(first.get("AccessionNumber", "")),
        "series_uid": series.uid, "frame_of_reference_uid": series.frame_of_reference, "sop_class_uid": str(first.SOPClassUID),
        "slice_sop_uids": [str(ds.SOPInstanceUID) for ds in slices] if geometry.regular else None,
    }


def pet_suv_image(series: Series, patient: str, policy: IrregularPolicy) -> tuple[sitk.Image, SliceGeometry, dict[str, Any]]:
    """One PET series as an SUVbw image (float32) on its own grid, with its geometry and conversion record."""
    geometry, slices = _volume(series, patient, policy)
    conversion = suv_conversion(slices, patient, series.files[0])
    suv = stack(geometry, (rescaled(ds) * f for ds, f in zip(slices, conversion.factors)), np.float32)
    return to_image(geometry.grid, suv), geometry, conversion.as_dict()


def _dce_image(series: Series, patient: str, policy: IrregularPolicy) -> tuple[sitk.Image, SliceGeometry, list[dict[str, Any]], list[str]]:
    """4-D DCE-CT: one volume per acquisition, frames ordered by acquisition time (never by
    AcquisitionNumber alone: when the two disagree the times win and a warning says so); times must
    increase strictly. Returns the image, the first frame's geometry, the frame table and warnings."""
    datasets: list[Any] = load_pixels(series, patient)  # an entry becomes None once its frame is stacked
    def frame_key(ds: Any) -> tuple[Any, ...]:
        return (int(ds.get("AcquisitionNumber") or 0), str(ds.get("AcquisitionTime", "")))
    def when(key: tuple[Any, ...]) -> Any:
        first = next(ds for ds in datasets if frame_key(ds) == key)
        try:
            return combine(first.get("AcquisitionDate") or first.SeriesDate, first.AcquisitionTime)
        except (AttributeError, ValueError) as exc:
            raise InputDataError(patient, series.files[0], f"a DCE frame has no usable AcquisitionDate/AcquisitionTime ({exc})",
                                 "export the DCE series with the acquisition time of every frame") from None
    warnings: list[str] = []
    keys = sorted({frame_key(ds) for ds in datasets})
    times_of = {k: when(k) for k in keys}
    by_time = sorted(keys, key=lambda k: (times_of[k], k[0]))
    if len({k[0] for k in keys}) == len(keys) and by_time != keys:
        warnings.append("DCE frames: AcquisitionNumber order disagrees with AcquisitionTime; frames ordered by time")
    keys = by_time
    members_of: dict[tuple[Any, ...], list[int]] = {}
    for i, ds in enumerate(datasets):
        members_of.setdefault(frame_key(ds), []).append(i)
    frames: list[sitk.Image] = []  # float32 images, one per frame: no float64 or numpy copy of the 4-D series
    grid_ref, geometry_ref, times = None, None, []
    for key in keys:
        members = members_of[key]
        geometry = slice_geometry([datasets[i] for i in members], [str(series.files[i]) for i in members], patient, policy)
        if grid_ref is not None and geometry.grid != grid_ref:
            raise InputDataError(patient, series.files[members[0]], f"DCE frame {key} has a different geometry than the first frame", "export all frames on one grid")
        grid_ref, geometry_ref = geometry.grid, geometry
        warnings.extend(f"DCE frame {len(frames)} (AcquisitionNumber {key[0]}): {w}" for w in geometry.warnings)
        frames.append(to_image(geometry.grid, stack(geometry, (rescaled(datasets[members[i]]) for i in geometry.order), np.float32)))
        times.append(times_of[key])
        for i in members:  # this frame's DICOM pixels are done with: at the end only the frames and their join exist
            datasets[i] = None
    t0 = times[0]
    seconds = [seconds_between(t0, t) for t in times]
    if any(b <= a for a, b in zip(seconds, seconds[1:])):
        raise InputDataError(patient, series.files[0], "two DCE frames have the same acquisition time", "export the DCE series with distinct frame times")
    table = [{"frame": k, "time_s": s, "acquisition_time": t.strftime("%H%M%S.%f")} for k, (s, t) in enumerate(zip(seconds, times))]
    image = sitk.JoinSeries(_as_int16_when_lossless(frames))
    return image, geometry_ref, table, warnings  # type: ignore[return-value]


def _as_int16_when_lossless(frames: list[sitk.Image]) -> list[sitk.Image]:
    """The frames as int16 when every HU value is a whole number in int16's range (the usual DCE-CT:
    rescale slope 1), else unchanged (float32).

    Why: compressing the realistic 512 x 512 x 16 x 26 series as float32 took 23 s CPU, a third
    of that patient's ingest; as int16 5 s, with the same values. Readers cast to float32."""
    views = [sitk.GetArrayViewFromImage(f) for f in frames]
    if not all(np.array_equal(v, np.rint(v)) and v.min() >= -32768 and v.max() <= 32767 for v in views):
        return frames
    out = []
    for frame, view in zip(frames, views):
        whole = sitk.GetImageFromArray(view.astype(np.int16))
        whole.CopyInformation(frame)
        out.append(whole)
    return out


def _write_tsv(path: Path, rows: list[dict[str, Any]]) -> None:
    """A tab-separated table with a header row, as pandas' ``to_csv(sep="\t", index=False)`` writes
    it, with the csv module: pandas costs ingest ~0.3 s of import and nothing else needs it here."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _series_table(index: PatientIndex, roles: dict[str, str], reasons: dict[str, str], tracers: dict[str, str], uptake: dict[str, float]) -> list[dict[str, Any]]:
    role_of = {uid: role for role, uid in roles.items()}
    rows = []
    for uid, s in sorted(index.series.items(), key=lambda kv: (kv[1].modality, kv[1].description)):
        ds = s.first
        rows.append({
            "series_uid": uid, "modality": s.modality, "role": role_of.get(uid, ""), "reason": reasons.get(uid, ""),
            "description": s.description, "n_files": s.n_files, "n_images": len(s.headers), "frames_per_position": round(s.repeated_positions(), 2),
            "files_without_meta": s.no_file_meta, "multiframe": s.multiframe,
            "series_date": str(ds.get("SeriesDate", "")), "series_time": str(ds.get("SeriesTime", "")),
            "frame_of_reference": s.frame_of_reference, "tracer": tracers.get(uid, ""),
            "uptake_min": round(uptake[uid], 1) if uid in uptake else "",
            "folder": str(Path(s.files[0]).parent), "warnings": " | ".join(s.warnings),
        })
    return rows


def ingest_patient(dicom_dir: str | Path, patient_dir: str | Path, *, patient_id: str | None = None,
                   roi_names: str | Path, series_roles: str | None = None, irregular: IrregularPolicy = "resample",
                   accept_effective_dose: bool = False) -> dict[str, Any]:
    """Run stage 1 for one patient; returns the metadata written to ``ingest/metadata.json``.

    ``accept_effective_dose``: take a TPS RTDOSE of DoseType EFFECTIVE as the plan dose (refused by default)."""
    patient_dir = Path(patient_dir)
    patient = patient_id or patient_dir.name
    names = RoiNameMap.from_yaml(roi_names)
    index = index_folder(dicom_dir, patient)
    overrides = parse_overrides(series_roles, patient)
    assignment = assign_roles(index, overrides, patient)
    roles = assignment.roles
    log.info("%s: %d series, roles: %s", patient, len(index.series), ", ".join(sorted(roles)))
    if "planning_ct" not in roles:
        found = ", ".join(f"{n} {m}" for m, n in sorted(Counter(s.modality for s in index.series.values()).items()))
        raise InputDataError(patient, dicom_dir, f"no planning CT found among the series ({found}; none is a CT outside PET/CT and DCE)",
                             "add the planning CT to the folder or name it with series_roles=planning_ct=UID in the cohort sheet "
                             "(for a folder of PET alone, SUV quality assurance is `isotox suv`)")
    meta: dict[str, Any] = {
        "patient_id": patient, "dicom_patient_id": index.patient_id, "source": str(dicom_dir), "irregular_policy": irregular,
        "roles": roles, "images": {}, "pet": {}, "structures": {}, "problems": {}, "warnings": [],
        "skipped_files": [{"file": f, "reason": r} for f, r in index.skipped],
    }
    if index.skipped:
        meta["warnings"].append(f"{len(index.skipped)} file(s) skipped (see skipped_files)")
    meta["dicom_encoding"] = {role: {"series_uid": uid, "files_without_file_meta": index.series[uid].no_file_meta,
                                     "multiframe": index.series[uid].multiframe} for role, uid in sorted(roles.items())}
    for role, uid in sorted(roles.items()):
        if index.series[uid].no_file_meta:
            meta["warnings"].append(f"{role}: {index.series[uid].no_file_meta} file(s) with {NO_FILE_META}")
        meta["warnings"].extend(f"{role}: {w}" for w in index.series[uid].warnings if NO_FILE_META not in w)  # duplicates, mixed modalities...
    with atomic_path(patient_dir / STAGE) as out:
        out.mkdir(parents=True)
        _write_tsv(out / "series.tsv", _series_table(index, roles, assignment.reasons, assignment.tracers, assignment.uptake_min))

        planning_series = index.series[roles["planning_ct"]]
        planning, geometry, planning_slices = _ct_image(planning_series, patient, irregular)
        sitk.WriteImage(planning, str(out / "planning_ct.nii.gz"), useCompression=True)
        meta["images"]["planning_ct"] = geometry.summary()
        meta["warnings"].extend(f"planning_ct: {w}" for w in [*geometry.warnings, non_axial_note(geometry.grid)] if w)
        meta["planning_ct_dicom"] = _dicom_reference(planning_series, planning_slices, geometry)
        planning_grid = geometry.grid
        del planning, planning_slices  # the CT's voxels and DICOM pixels are not needed by what follows

        for prefix in ("fdg", "hx4_2h", "hx4_4h"):
            _optional(meta, f"{prefix}_ct", lambda p=prefix: _write_ct(index, roles, f"{p}_ct", out, patient, irregular, meta))
            _optional(meta, f"{prefix}_pet", lambda p=prefix: _write_pet(index, roles, p, out, patient, irregular, meta))
        _optional(meta, "dce_ct", lambda: _write_dce(index, roles, out, patient, irregular, meta))
        _optional(meta, "rtstruct", lambda: _write_masks(index, roles, out, planning_grid, planning_series.frame_of_reference, names, meta))
        _optional(meta, "rtdose", lambda: _write_dose(index, roles, out, patient, meta, planning_series.frame_of_reference,
                                                       planning_grid, accept_effective_dose))
        (out / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    for role, problem in meta["problems"].items():
        log.warning("%s: %s not ingested: %s", patient, role, problem)
    return meta


def _optional(meta: dict[str, Any], role: str, step: Any) -> None:
    """Run an optional part; a user-data problem is recorded, not raised (the rest of the patient goes on)."""
    try:
        step()
    except InputDataError as exc:
        meta["problems"][role] = str(exc)


def _write_ct(index: PatientIndex, roles: dict[str, str], role: str, out: Path, patient: str, policy: IrregularPolicy, meta: dict[str, Any]) -> None:
    if role not in roles:
        meta["problems"][role] = "no series with this role"
        return
    image, geometry, _ = _ct_image(index.series[roles[role]], patient, policy)
    sitk.WriteImage(image, str(out / f"{role}.nii.gz"), useCompression=True)
    meta["images"][role] = geometry.summary()
    meta["warnings"].extend(f"{role}: {w}" for w in geometry.warnings)


def _write_pet(index: PatientIndex, roles: dict[str, str], prefix: str, out: Path, patient: str, policy: IrregularPolicy, meta: dict[str, Any]) -> None:
    role = f"{prefix}_pet"
    if role not in roles:
        meta["problems"][role] = "no series with this role" + _unassigned_pet(index, roles, role)
        return
    image, geometry, conversion = pet_suv_image(index.series[roles[role]], patient, policy)
    sitk.WriteImage(image, str(out / f"{role}_suv.nii.gz"), useCompression=True)
    meta["images"][role] = geometry.summary()
    meta["pet"][role] = conversion
    meta["warnings"].extend(f"{role}: {w}" for w in [*geometry.warnings, *pet_conversion_notes(conversion)])


def _unassigned_pet(index: PatientIndex, roles: dict[str, str], role: str) -> str:
    """A PET series present but given no role (tracer not recognised...) must not vanish silently."""
    given = set(roles.values())
    left = [s for s in index.series.values() if s.modality == "PT" and s.uid not in given]
    if not left:
        return ""
    listing = ", ".join(f"{s.uid} ({s.description or 'no description'})" for s in left)
    return f"; PET series without a role: {listing} -> if one is the {role}, name it with series_roles={role}=UID in the cohort sheet"


def pet_conversion_notes(conversion: dict[str, Any]) -> list[str]:
    """What a reader of the cohort table must know about how a PET became SUV: the converter's own
    warnings (units guessed by magnitude...) and the conversions that rest on a less common header
    form (values already SUV, no decay correction in the image, Philips counts)."""
    notes = list(conversion.get("warnings") or [])
    if conversion["units"] == "GML":
        notes.append(f"Units GML: pixel values are already SUV{str(conversion['suv_type_in_file']).lower()}, taken as stored (no dose or decay used)")
    elif conversion["decay_correction"] == "NONE":
        notes.append("DecayCorrection NONE: the image is not decay-corrected; each slice was decayed to its own AcquisitionTime")
    if conversion["units"] == "CNTS":
        notes.append(f"Units CNTS: converted with the {conversion['sources'].get('philips', 'Philips factor')}")
    return notes


def _write_dce(index: PatientIndex, roles: dict[str, str], out: Path, patient: str, policy: IrregularPolicy, meta: dict[str, Any]) -> None:
    if "dce_ct" not in roles:
        meta["problems"]["dce_ct"] = "no series with this role"
        return
    image, geometry, frames, warnings = _dce_image(index.series[roles["dce_ct"]], patient, policy)
    sitk.WriteImage(image, str(out / "dce_ct.nii.gz"), useCompression=True)
    _write_tsv(out / "dce_frames.tsv", frames)
    meta["images"]["dce_ct"] = {**geometry.summary(), "frames": len(frames), "warnings": warnings}
    meta["warnings"].extend(warnings)


def _write_masks(index: PatientIndex, roles: dict[str, str], out: Path, grid: ImageGrid, frame_uid: str, names: RoiNameMap, meta: dict[str, Any]) -> None:
    if "rtstruct" not in roles:
        meta["problems"]["rtstruct"] = "no RTSTRUCT: structures must come from segmentation"
        return
    rs_series = index.series[roles["rtstruct"]]
    referenced = {str(s.SeriesInstanceUID) for f in rs_series.first.get("ReferencedFrameOfReferenceSequence", [])
                  for st in f.get("RTReferencedStudySequence", []) for s in st.get("RTReferencedSeriesSequence", [])}
    if referenced and roles["planning_ct"] not in referenced:
        meta["warnings"].append(f"the RTSTRUCT references series {', '.join(sorted(referenced))}, not the planning CT: contours placed by frame of reference")
    try:
        structure_set = read_structure_set(rs_series.first, grid, frame_uid, names, rs_series.files[0])
    except StructureSetError as exc:
        raise InputDataError(meta["patient_id"], rs_series.files[0], str(exc), "export the structure set again") from None
    if structure_set.rois == [] and structure_set.other_frame:
        raise InputDataError(meta["patient_id"], rs_series.files[0], "every ROI of the RTSTRUCT is on another frame of reference than the planning CT",
                             "export the structure set drawn on the planning CT")
    (out / "masks").mkdir()
    for roi in structure_set.rois:
        sitk.WriteImage(to_image(grid, roi.mask.astype(np.uint8)), str(out / "masks" / f"{roi.file_stem}.nii.gz"), useCompression=True)
        meta["structures"][roi.file_stem] = {"roi_name": roi.name, "canonical": roi.canonical, "contours": roi.n_contours,
                                             "voxels": int(roi.mask.sum()), "volume_cc": float(roi.mask.sum() * grid.voxel_volume_mm3 / 1000.0),
                                             "interpreted_type": roi.interpreted_type}
    meta["unmapped_roi_names"] = structure_set.unmapped
    meta["warnings"].extend(structure_set.warnings)


def _write_dose(index: PatientIndex, roles: dict[str, str], out: Path, patient: str, meta: dict[str, Any], planning_frame: str,
                planning_grid: ImageGrid, accept_effective: bool) -> None:
    """The TPS dose, if it is a physical plan dose on the planning CT (else a recorded refusal), and
    how much of each structure its grid covers (planning refuses a constrained organ it does not cover)."""
    if "rtdose" not in roles:
        meta["problems"]["rtdose"] = "no RTDOSE: the built-in engine will compute dose"
        return
    series = index.series[roles["rtdose"]]
    dataset = read_dataset(series.files[0])
    dose = read_rtdose(dataset, patient, series.files[0])
    notes = check_tps_dose(dose, patient, series.files[0], planning_frame=planning_frame, accept_effective=accept_effective)
    offsets = dataset.get("GridFrameOffsetVector")
    if offsets and float(offsets[0]) != 0.0:
        notes.append("GridFrameOffsetVector is in the absolute form (z positions, first "
                     f"{float(offsets[0]):g} mm): frames placed relative to ImagePositionPatient")
    if "rtplan" in roles:
        check_plan_has_no_boost(index.series[roles["rtplan"]].first, patient, index.series[roles["rtplan"]].files[0])
    coverage = {}
    for stem in meta["structures"]:
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "masks" / f"{stem}.nii.gz"))).astype(bool)
        coverage[stem] = round(covered_fraction(mask, planning_grid, dose.grid), 4)
    sitk.WriteImage(to_image(dose.grid, dose.dose_gy.astype(np.float32)), str(out / "rtdose.nii.gz"), useCompression=True)
    meta["rtdose"] = {"summation_type": dose.summation_type, "dose_type": dose.dose_type, "max_gy": float(dose.dose_gy.max()),
                      "referenced_plan": dose.referenced_plan, "file": str(series.files[0]), "notes": notes, "coverage": coverage,
                      "grid": {"size": list(dose.grid.size), "spacing_mm": list(dose.grid.spacing)}}
    meta["warnings"].extend(f"rtdose: {note}" for note in notes)  # accepted with a caveat: the cohort table shows it
    partial = {k: v for k, v in coverage.items() if v < 1.0}
    if partial:
        meta["warnings"].append("the RTDOSE grid does not cover " + ", ".join(f"{k} ({100 * (1 - v):.1f} % outside)" for k, v in sorted(partial.items())))
