"""Which series plays which role: planning CT, PET/CT CTs, FDG PET, HX4 PET 2 h / 4 h, DCE-CT, RT objects.

Every decision carries a reason (written to series.tsv), and the cohort sheet can override any
role with ``series_roles`` (``role=SeriesInstanceUID;role=...``) when the rules guess wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from isotox.dicomio.dicom_time import combine, parse_dt, seconds_between
from isotox.dicomio.discovery import PatientIndex, Series
from isotox.errors import InputDataError

ROLES = ("planning_ct", "rtstruct", "rtdose", "rtplan", "fdg_pet", "fdg_ct", "hx4_2h_pet", "hx4_2h_ct", "hx4_4h_pet", "hx4_4h_ct", "dce_ct")
_FDG = re.compile(r"fdg|fluorodeoxyglucose|fludeoxyglucose", re.IGNORECASE)
_HX4 = re.compile(r"hx[-_ ]?4|flortanidazole", re.IGNORECASE)
DCE_MIN_FRAMES = 3


@dataclass
class RoleAssignment:
    """Series UID -> role, and the reason for every series (also for those left without a role)."""

    roles: dict[str, str]
    reasons: dict[str, str]
    tracers: dict[str, str]
    uptake_min: dict[str, float]

    def series_for(self, role: str) -> str | None:
        return self.roles.get(role)


def parse_overrides(text: str | None, patient: str) -> dict[str, str]:
    """``'planning_ct=1.2.3;fdg_pet=1.2.4'`` -> {role: uid}; unknown roles are an error."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        role, _, uid = part.partition("=")
        if role.strip() not in ROLES or not uid.strip():
            raise InputDataError(patient, "cohort sheet (series_roles)", f"cannot read {part!r}", f"write role=SeriesInstanceUID with a role from {', '.join(ROLES)}")
        out[role.strip()] = uid.strip()
    return out


def _tracer(s: Series) -> tuple[str, str]:
    seq = s.first.get("RadiopharmaceuticalInformationSequence")
    texts = []
    if seq:
        info = seq[0]
        texts.append(str(info.get("Radiopharmaceutical", "")))
        for code in info.get("RadiopharmaceuticalCodeSequence", []):
            texts.append(str(code.get("CodeMeaning", "")))
    source = "RadiopharmaceuticalInformationSequence" if any(texts) else "SeriesDescription (no radiopharmaceutical sequence)"
    texts.append(s.description)
    joined = " ".join(texts)
    if _HX4.search(joined):
        return "HX4", source
    if _FDG.search(joined):
        return "FDG", source
    return "unknown", source


def _uptake_minutes(s: Series) -> float | None:
    seq = s.first.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        return None
    info, ds = seq[0], s.first
    try:
        injection = parse_dt(info.RadiopharmaceuticalStartDateTime) if info.get("RadiopharmaceuticalStartDateTime") else combine(ds.SeriesDate, info.RadiopharmaceuticalStartTime)
        start = combine(ds.SeriesDate, ds.SeriesTime)
    except (AttributeError, ValueError):
        return None
    minutes = seconds_between(injection, start) / 60.0
    return minutes + 24 * 60 if minutes < 0 else minutes


def assign_roles(index: PatientIndex, overrides: dict[str, str], patient: str) -> RoleAssignment:
    roles: dict[str, str] = {}
    reasons: dict[str, str] = {}
    tracers: dict[str, str] = {}
    uptake: dict[str, float] = {}
    series = index.series
    for role, uid in overrides.items():
        if uid not in series:
            raise InputDataError(patient, "cohort sheet (series_roles)", f"series {uid} given for {role} is not in the patient's folder", "check the SeriesInstanceUID")
        roles[role] = uid
        reasons[uid] = f"{role}: set in the cohort sheet"

    def give(role: str, uid: str, why: str) -> None:
        if role in roles or uid in reasons:
            return
        roles[role] = uid
        reasons[uid] = f"{role}: {why}"

    by_modality: dict[str, list[Series]] = {}
    for s in series.values():
        by_modality.setdefault(s.modality, []).append(s)
    for modality, role in (("RTSTRUCT", "rtstruct"), ("RTDOSE", "rtdose"), ("RTPLAN", "rtplan")):
        items = sorted(by_modality.get(modality, []), key=lambda s: (str(s.first.get("SeriesDate", "")), str(s.first.get("SeriesTime", ""))))
        if items:
            give(role, items[-1].uid, f"Modality {modality}" + (f" (latest of {len(items)})" if len(items) > 1 else ""))
            for other in items[:-1]:
                reasons.setdefault(other.uid, f"unused: an older {modality}")

    pets = by_modality.get("PT", [])
    hx4: list[tuple[float, Series]] = []
    for s in pets:
        tracer, source = _tracer(s)
        tracers[s.uid] = tracer
        minutes = _uptake_minutes(s)
        if minutes is not None:
            uptake[s.uid] = minutes
        if tracer == "FDG":
            give("fdg_pet", s.uid, f"PET, tracer FDG from {source}")
        elif tracer == "HX4":
            hx4.append((minutes if minutes is not None else float("inf"), s))
        else:
            reasons.setdefault(s.uid, f"unused: PET with unrecognised tracer (from {source})")
    for minutes, s in sorted(hx4, key=lambda x: x[0]):
        role = "hx4_2h_pet" if minutes < 180 else "hx4_4h_pet"
        if role in roles:
            role = "hx4_4h_pet"
        give(role, s.uid, f"PET, tracer HX4, {minutes:.0f} min after injection")

    cts = by_modality.get("CT", [])
    for s in cts:
        frames = s.repeated_positions()
        if frames >= DCE_MIN_FRAMES:
            give("dce_ct", s.uid, f"CT with {frames:.0f} acquisitions per table position (dynamic)")
    pet_roles = {roles[r]: r for r in ("fdg_pet", "hx4_2h_pet", "hx4_4h_pet") if r in roles}
    for pet_uid, pet_role in pet_roles.items():
        ct = [s for s in cts if s.frame_of_reference and s.frame_of_reference == series[pet_uid].frame_of_reference and s.uid not in reasons]
        if ct:
            give(pet_role.replace("_pet", "_ct"), ct[0].uid, f"CT sharing the frame of reference of the {pet_role.replace('_pet', '').upper()} PET")
    if "planning_ct" not in roles:
        referenced = _rtstruct_series(series.get(roles.get("rtstruct", "")))
        candidates = [s for s in cts if s.uid not in reasons]
        chosen = next((s for s in candidates if s.uid in referenced), None)
        if chosen is not None:
            give("planning_ct", chosen.uid, "CT referenced by the RTSTRUCT")
        elif candidates:
            chosen = max(candidates, key=lambda s: len(s.files))
            give("planning_ct", chosen.uid, "largest CT not belonging to a PET/CT or DCE" + (" (RTSTRUCT references another series)" if referenced else ""))
    for s in series.values():
        reasons.setdefault(s.uid, "unused: no role matched")
    return RoleAssignment(roles, reasons, tracers, uptake)


def _rtstruct_series(rs: Series | None) -> set[str]:
    if rs is None:
        return set()
    out = set()
    for ref_for in rs.first.get("ReferencedFrameOfReferenceSequence", []):
        for study in ref_for.get("RTReferencedStudySequence", []):
            for ser in study.get("RTReferencedSeriesSequence", []):
                out.add(str(ser.SeriesInstanceUID))
    return out
