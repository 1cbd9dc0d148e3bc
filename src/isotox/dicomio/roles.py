"""Which series plays which role: planning CT, PET/CT CTs, FDG PET, HX4 PET 2 h / 4 h, DCE-CT, RT objects.

Every decision carries a reason (written to series.tsv), and the cohort sheet can override any
role with ``series_roles`` (``role=SeriesInstanceUID;role=...``) when the rules guess wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from isotox.dicomio.dicom_time import combine, parse_dt, parse_tm, seconds_between
from isotox.dicomio.discovery import PatientIndex, Series
from isotox.errors import InputDataError

ROLES = ("planning_ct", "rtstruct", "rtdose", "rtplan", "fdg_pet", "fdg_ct", "hx4_2h_pet", "hx4_2h_ct", "hx4_4h_pet", "hx4_4h_ct", "dce_ct")
_FDG = re.compile(r"fdg|fluorodeoxyglucose|fludeoxyglucose", re.IGNORECASE)
_HX4 = re.compile(r"hx[-_ ]?4|flortanidazole", re.IGNORECASE)
DCE_MIN_FRAMES = 3
#: Fewer slices than this: a scout, not a volume.
MIN_VOLUME_SLICES = 5
_NAC = re.compile(r"\bNAC\b|non[-_ ]?(ac|attn|attenuation)|\bno[-_ ]?ac\b|uncorrected|\bnoattn\b", re.IGNORECASE)
_AVERAGE = re.compile(r"\bavg\b|\bave\b|average|\baip\b|mean[-_ ]?ip", re.IGNORECASE)
_PROJECTION = re.compile(r"\bmip\b|\bminip\b|max(imum)?[-_ ]?ip", re.IGNORECASE)
_PHASE = re.compile(r"\b\d{1,3}(\.\d)?\s?%|\bphase\b|\bph\s?\d|gated|\b(in|ex)hale\b|\bT\d0\b|\b4d", re.IGNORECASE)


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


def attenuation_corrected(s: Series) -> bool | None:
    """True for an attenuation-corrected PET, False for a non-corrected one, None when the header
    does not say (CorrectedImage (0028,0051) lists ATTN on AC series; NAC series lack it or say so)."""
    corrected = s.first.get("CorrectedImage")
    if corrected is not None and str(corrected) != "":
        values = [corrected] if isinstance(corrected, str) else list(corrected)
        return "ATTN" in {str(v).upper() for v in values}
    if _NAC.search(s.description):
        return False
    return None


def _ct_kind(s: Series) -> str:
    """volume | localizer | projection | phase | average | dynamic: what a CT series is, from its header."""
    image_type = {str(v).upper() for v in (s.first.get("ImageType") or [])}
    text = s.description + " " + " ".join(image_type)
    if "LOCALIZER" in image_type or len(s.headers) < MIN_VOLUME_SLICES:
        return "localizer"
    if s.repeated_positions() >= DCE_MIN_FRAMES:
        return "dynamic"
    if _PROJECTION.search(text):
        return "projection"
    if _AVERAGE.search(text):
        return "average"
    if _PHASE.search(text):
        return "phase"
    return "volume"


_CT_KIND_TEXT = {"volume": "static volume CT", "average": "average CT", "phase": "4D CT phase"}


def _ct_label(s: Series) -> str:
    contrast = "contrast" if str(s.first.get("ContrastBolusAgent", "")).strip() else "no contrast agent in header"
    return f"{s.description or '(no description)'}, {len(s.headers)} slices, {contrast}"


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
    corrected = {s.uid: attenuation_corrected(s) for s in pets}
    for s in pets:
        tracer, source = _tracer(s)
        tracers[s.uid] = tracer
        minutes = _uptake_minutes(s)
        if minutes is not None:
            uptake[s.uid] = minutes
        if corrected[s.uid] is False:
            reasons.setdefault(s.uid, f"unused: {tracer} PET not attenuation-corrected (CorrectedImage without ATTN or 'NAC' in the description); "
                                      "SUV comes from the attenuation-corrected series only")
    # attenuation-corrected series first, so a study with AC + NAC always gives the AC series its role
    for s in sorted(pets, key=lambda p: corrected[p.uid] is not True):
        if corrected[s.uid] is False:
            continue
        tracer, source = _tracer(s)
        ac = "attenuation-corrected" if corrected[s.uid] else "attenuation correction not stated"
        if tracer == "FDG":
            give("fdg_pet", s.uid, f"PET, tracer FDG from {source}, {ac}")
            if s.uid not in reasons:
                reasons[s.uid] = "unused: another FDG PET series has the role"
        elif tracer == "HX4":
            hx4.append((uptake.get(s.uid, float("inf")), s))
        else:
            reasons.setdefault(s.uid, f"unused: PET with unrecognised tracer (from {source})")
    for minutes, s in sorted(hx4, key=lambda x: x[0]):
        role = "hx4_2h_pet" if minutes < 180 else "hx4_4h_pet"
        if role in roles:
            role = "hx4_4h_pet"
        give(role, s.uid, f"PET, tracer HX4, {minutes:.0f} min after injection")
        reasons.setdefault(s.uid, "unused: the HX4 roles are taken by other series")

    cts = by_modality.get("CT", [])
    kinds = {s.uid: _ct_kind(s) for s in cts}
    for s in cts:
        if kinds[s.uid] == "dynamic":
            give("dce_ct", s.uid, f"CT with {s.repeated_positions():.0f} acquisitions per table position (dynamic)")
        elif kinds[s.uid] == "localizer":
            reasons.setdefault(s.uid, f"unused: localizer/scout ({_ct_label(s)})")
        elif kinds[s.uid] == "projection":
            reasons.setdefault(s.uid, f"unused: intensity projection (MIP/MinIP), not a planning volume ({_ct_label(s)})")
    referenced = _rtstruct_series(series.get(roles.get("rtstruct", "")))
    if "planning_ct" not in roles:  # the RTSTRUCT's own CT wins over every other rule
        chosen = next((s for s in cts if s.uid in referenced and s.uid not in reasons), None)
        if chosen is not None:
            give("planning_ct", chosen.uid, f"CT referenced by the RTSTRUCT ({_ct_label(chosen)})")
    pet_roles = {roles[r]: r for r in ("fdg_pet", "hx4_2h_pet", "hx4_4h_pet") if r in roles}
    for pet_uid, pet_role in pet_roles.items():
        pet = series[pet_uid]
        same_frame = [s for s in cts if s.frame_of_reference and s.frame_of_reference == pet.frame_of_reference and s.uid not in reasons]
        if same_frame:
            pet_time = str(pet.first.get("SeriesTime", ""))
            ct = min(same_frame, key=lambda c: abs(_clock_s(str(c.first.get("SeriesTime", ""))) - _clock_s(pet_time)))
            give(pet_role.replace("_pet", "_ct"), ct.uid, f"CT sharing the frame of reference of the {pet_role.replace('_pet', '').upper()} PET"
                 + (f" (closest in time of {len(same_frame)})" if len(same_frame) > 1 else ""))
    if "planning_ct" not in roles:
        candidates = [s for s in cts if s.uid not in reasons]
        if candidates:
            # a 4D study: the average (or a free-breathing volume) plans, phases do not
            rank = {"volume": 0, "average": 1, "phase": 2}
            chosen = min(candidates, key=lambda s: (rank[kinds[s.uid]], -len(s.headers)))
            why = "CT referenced by no RTSTRUCT; " if roles.get("rtstruct") else ""
            why += f"{kinds[chosen.uid] if kinds[chosen.uid] != 'volume' else 'static volume'} with the most slices among {len(candidates)} CT(s) outside PET/CT and DCE"
            if referenced:
                why += " (the RTSTRUCT references a series that is not in the folder)"
            give("planning_ct", chosen.uid, f"{why} ({_ct_label(chosen)})")
    planning = series.get(roles.get("planning_ct", ""))
    for s in cts:  # the other CTs of the planning study: the phases, a second volume
        if planning is not None and s.uid not in reasons:
            reasons[s.uid] = f"unused: {_CT_KIND_TEXT[kinds[s.uid]]} ({_ct_label(s)}); the planning CT is {planning.description or planning.uid}"
    for s in series.values():
        reasons.setdefault(s.uid, "unused: no role matched")
    return RoleAssignment(roles, reasons, tracers, uptake)


def _clock_s(text: str) -> float:
    """HHMMSS(.frac) -> seconds after midnight (inf when absent, so it sorts last)."""
    if not text.strip():
        return float("inf")
    try:
        t = parse_tm(text)
    except ValueError:
        return float("inf")
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


def _rtstruct_series(rs: Series | None) -> set[str]:
    if rs is None:
        return set()
    out = set()
    for ref_for in rs.first.get("ReferencedFrameOfReferenceSequence", []):
        for study in ref_for.get("RTReferencedStudySequence", []):
            for ser in study.get("RTReferencedSeriesSequence", []):
                out.add(str(ser.SeriesInstanceUID))
    return out
