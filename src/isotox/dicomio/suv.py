"""Body-weight SUV from PET DICOM headers, following the vendor-neutral rules (QIBA / oncoray manual).

SUVbw = (RescaleSlope * P + RescaleIntercept) * weight[g] / decayed dose[Bq], slope per slice.

* DecayCorrection START: the dose is decayed from injection to the series reference time:
  SeriesDateTime, unless it is later than the earliest AcquisitionDateTime (some scanners rewrite
  SeriesTime on reconstruction); then the GE private scan datetime (0009,100D) if present; else
  the start is back-computed from the earliest slice's AcquisitionDateTime and FrameReferenceTime.
* ADMIN: images are decay-corrected to the administration time; no decay.
* NONE: images are not decay-corrected; each slice is decayed to its own AcquisitionDateTime,
  averaged over its frame duration.
* Units BQML (activity), GML (already an SUV: LBM or IBW re-normalised to BW), CM2ML (SUVbsa,
  Du Bois BSA), CNTS (Philips: (7053,1000) SUV factor or (7053,1009) activity factor).
* Dose in MBq or Bq and weight in g or kg are recognised by magnitude; an injection time with no
  date later than the scan is taken from the day before (injection before midnight).

Anything that cannot be converted (CPS, PROPCPS, weight 0, missing dose or time) raises
:class:`~isotox.errors.InputDataError` naming the series file and the tag.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from isotox.dicomio.dicom_time import combine, parse_dt, seconds_between
from isotox.errors import InputDataError

GE_SCAN_DATETIME = Tag(0x0009, 0x100D)
PHILIPS_SUV_FACTOR = Tag(0x7053, 0x1000)
PHILIPS_ACTIVITY_FACTOR = Tag(0x7053, 0x1009)
UNCONVERTIBLE_UNITS = {"CPS", "PROPCPS", "NPC", "MGMINML", "UMOLMINML", "MLMGM", "MLGM", "1/CM", "PCNT", "ENVELOP", "UMOLML", "MLMINML", "MLML"}


@dataclass
class SuvConversion:
    """How the SUV was computed: per-slice factors (multiply rescaled pixel values) and every input used."""

    factors: NDArray[np.float64]
    units: str
    decay_correction: str
    suv_type_in_file: str
    weight_kg: float
    height_m: float | None
    injected_dose_bq: float
    half_life_s: float
    injection_datetime: str
    reference_datetime: str | None
    reference_source: str
    decay_factor: float | None
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        factors = np.asarray(self.factors)
        out["factors"] = float(factors[0]) if np.allclose(factors, factors[0], rtol=1e-12) else factors.tolist()
        return out


class _Context:
    """Carries patient and file for error messages."""

    def __init__(self, patient: str, file: str | Path) -> None:
        self.patient, self.file = patient, str(file)

    def fail(self, problem: str, fix: str) -> InputDataError:
        return InputDataError(self.patient, self.file, problem, fix)


def _get(ds: Dataset, keyword: str) -> Any:
    value = ds.get(keyword)
    return None if value is None or value == "" else value


def _weight_kg(ds: Dataset, ctx: _Context, sources: dict[str, str], warnings: list[str]) -> float:
    weight = _get(ds, "PatientWeight")
    try:
        float(weight) if weight is not None else None
    except (TypeError, ValueError):
        raise ctx.fail(f"PatientWeight (0010,1030) is {str(weight)!r}, not a number in kg", "enter the weight as a number of kg in the PET header") from None
    if weight is None or float(weight) <= 0:
        raise ctx.fail(f"PatientWeight (0010,1030) is {'missing' if weight is None else weight}: body-weight SUV needs it",
                       "enter the patient's weight in kg in the PET header or the cohort sheet")
    weight = float(weight)
    sources["weight"] = f"PatientWeight = {weight}"
    if weight > 1000:  # recorded in grams
        warnings.append(f"PatientWeight {weight} read as grams (> 1000)")
        weight /= 1000.0
    return weight


def _dose_bq(info: Dataset, ctx: _Context, sources: dict[str, str], warnings: list[str]) -> float:
    dose = _get(info, "RadionuclideTotalDose")
    if dose is None or float(dose) <= 0:
        raise ctx.fail("RadionuclideTotalDose (0018,1074) is missing or zero", "enter the injected activity (Bq) in the PET header")
    dose = float(dose)
    sources["dose"] = f"RadionuclideTotalDose = {dose}"
    if dose < 1e5:  # MBq: no clinical PET injects less than 0.1 MBq
        warnings.append(f"RadionuclideTotalDose {dose} read as MBq (< 1e5)")
        dose *= 1e6
    return dose


def _injection(ds: Dataset, info: Dataset, ctx: _Context, sources: dict[str, str], warnings: list[str]) -> datetime:
    start_dt = _get(info, "RadiopharmaceuticalStartDateTime")
    if start_dt is not None:
        sources["injection"] = f"RadiopharmaceuticalStartDateTime = {start_dt}"
        return parse_dt(start_dt)
    start_tm = _get(info, "RadiopharmaceuticalStartTime")
    if start_tm is None:
        raise ctx.fail("no injection time: neither RadiopharmaceuticalStartDateTime (0018,1078) nor RadiopharmaceuticalStartTime (0018,1072)",
                       "enter the injection time in the PET header")
    day = _get(ds, "SeriesDate") or _get(ds, "AcquisitionDate") or _get(ds, "StudyDate")
    if day is None:
        raise ctx.fail("RadiopharmaceuticalStartTime has no date and SeriesDate/AcquisitionDate/StudyDate are missing", "add the series date")
    injection = combine(day, start_tm)
    sources["injection"] = f"RadiopharmaceuticalStartTime = {start_tm} on {day}"
    scan_clock = _get(ds, "SeriesTime") or _get(ds, "AcquisitionTime")
    if scan_clock is not None and combine(day, scan_clock) < injection:
        injection -= timedelta(days=1)
        warnings.append("injection time later than scan time on the same date: injection taken on the day before (midnight)")
    return injection


def _acquisition(ds: Dataset) -> datetime | None:
    if _get(ds, "AcquisitionDateTime"):
        return parse_dt(ds.AcquisitionDateTime)
    day, clock = _get(ds, "AcquisitionDate") or _get(ds, "SeriesDate"), _get(ds, "AcquisitionTime")
    return combine(day, clock) if day and clock else None


def _average_within_frame_s(decay_constant: float, duration_s: float) -> float:
    """Time after frame start at which the activity equals the frame average (decay during the frame)."""
    x = decay_constant * duration_s
    if x < 1e-9:
        return duration_s / 2.0
    return math.log(x / (1.0 - math.exp(-x))) / decay_constant


def _reference_time(slices: list[Dataset], half_life_s: float, ctx: _Context, sources: dict[str, str]) -> tuple[datetime, str]:
    first = slices[0]
    acquisitions = [a for a in (_acquisition(ds) for ds in slices) if a is not None]
    earliest = min(acquisitions) if acquisitions else None
    series = combine(first.SeriesDate, first.SeriesTime) if _get(first, "SeriesDate") and _get(first, "SeriesTime") else None
    if series is not None and (earliest is None or series <= earliest):
        return series, "SeriesDate/SeriesTime"
    if GE_SCAN_DATETIME in first and str(first[GE_SCAN_DATETIME].value).strip():
        return parse_dt(str(first[GE_SCAN_DATETIME].value)), "GE private (0009,100D) scan datetime (SeriesTime after AcquisitionTime)"
    if earliest is None:
        raise ctx.fail("neither SeriesTime nor AcquisitionTime is usable for decay correction", "add SeriesDate/SeriesTime")
    ds = next(d for d in slices if _acquisition(d) == earliest)
    frt, duration = _get(ds, "FrameReferenceTime"), _get(ds, "ActualFrameDuration")
    if frt is None or duration is None:
        raise ctx.fail("SeriesTime is after AcquisitionTime and FrameReferenceTime/ActualFrameDuration are missing: the scan start cannot be recovered",
                       "check SeriesTime or add FrameReferenceTime (0054,1300)")
    lam = math.log(2) / half_life_s
    start = earliest - timedelta(seconds=float(frt) / 1000.0 - _average_within_frame_s(lam, float(duration) / 1000.0))
    sources["frame_reference_time_ms"] = str(frt)
    return start, "back-computed from AcquisitionTime and FrameReferenceTime (SeriesTime after AcquisitionTime)"


def _by_sex(male: float, female: float, sex: str) -> float:
    """Sex-specific formula; for 'O' or an unknown sex the mean of both (as the oncoray SUV manual does)."""
    return male if sex == "M" else female if sex == "F" else 0.5 * (male + female)


def _lean_body_mass_kg(weight: float, height_m: float, sex: str) -> float:
    """James (1976) lean body mass (DICOM SUVType LBM / 'LBMJAMES128'), height in cm in the formula."""
    h = height_m * 100.0
    return _by_sex(1.10 * weight - 128.0 * (weight / h) ** 2, 1.07 * weight - 148.0 * (weight / h) ** 2, sex)


def _ideal_body_weight_kg(height_m: float, sex: str) -> float:
    """Ideal body weight in metric form: 48 + 1.06 (H - 152) for men, 45.5 + 0.91 (H - 152) for women (H in cm)."""
    h = height_m * 100.0
    return _by_sex(48.0 + 1.06 * (h - 152.0), 45.5 + 0.91 * (h - 152.0), sex)


def _bsa_m2(weight: float, height_m: float) -> float:
    """Du Bois body surface area (m^2)."""
    return 0.007184 * weight**0.425 * (height_m * 100.0) ** 0.725


def suv_conversion(slices: list[Dataset], patient: str, file: str | Path) -> SuvConversion:
    """Per-slice SUVbw factors for ``slices`` (sorted along the slice normal) of one PET series."""
    ctx = _Context(patient, file)
    first = slices[0]
    sources: dict[str, str] = {}
    warnings: list[str] = []
    with_slope = sum(1 for ds in slices if _get(ds, "RescaleSlope") is not None)
    if 0 < with_slope < len(slices):
        # a missing slope on one slice would silently be taken as 1 (SUV off by the slope ratio there)
        raise ctx.fail(f"RescaleSlope (0028,1053) is missing on {len(slices) - with_slope} of {len(slices)} slices",
                       "export the PET series again: every slice needs its own RescaleSlope")
    for ds in slices:
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            value = _get(ds, keyword)
            try:
                float(value) if value is not None else 0.0
            except (TypeError, ValueError):
                raise ctx.fail(f"{keyword} is {str(value)!r}, not a number (instance {ds.get('SOPInstanceUID', '?')})",
                               "export the PET series again") from None
    units = str(_get(first, "Units") or "").upper()
    if not units:
        raise ctx.fail("Units (0054,1001) is missing", "the PET series must state its pixel units (BQML expected)")
    if units in UNCONVERTIBLE_UNITS or units not in {"BQML", "GML", "CM2ML", "CNTS"}:
        raise ctx.fail(f"Units {units} cannot be converted to SUV", "export the PET reconstruction in Bq/ml (BQML)")
    sources["units"] = f"Units = {units}"
    seq = _get(first, "RadiopharmaceuticalInformationSequence")
    if not seq:
        raise ctx.fail("RadiopharmaceuticalInformationSequence (0054,0016) is missing", "export the PET with its radiopharmaceutical information")
    info = seq[0]
    weight = _weight_kg(first, ctx, sources, warnings)
    height = float(first.PatientSize) if _get(first, "PatientSize") else None
    if height is not None and height > 3.0:  # recorded in cm
        warnings.append(f"PatientSize {height} read as cm")
        height /= 100.0
    sex = str(_get(first, "PatientSex") or "O").upper()
    decay_correction = str(_get(first, "DecayCorrection") or "").upper()
    suv_type = str(_get(first, "SUVType") or "BW").upper()
    n = len(slices)

    if units == "GML":
        factors = np.full(n, _gml_to_bw(suv_type, weight, height, sex, ctx, sources))
        return SuvConversion(factors, units, decay_correction, suv_type, weight, height, float("nan"), float("nan"), "", None,
                             f"values already SUV{suv_type.lower()}", None, sources, warnings)

    dose = _dose_bq(info, ctx, sources, warnings)
    half_life = _get(info, "RadionuclideHalfLife")
    if half_life is None or float(half_life) <= 0:
        raise ctx.fail("RadionuclideHalfLife (0018,1075) is missing", "add the radionuclide half-life (s)")
    half_life = float(half_life)
    sources["half_life"] = f"RadionuclideHalfLife = {half_life}"
    injection = _injection(first, info, ctx, sources, warnings)
    lam = math.log(2) / half_life

    reference: datetime | None = None
    decay: float | None = None
    if decay_correction == "START":
        reference, ref_source = _reference_time(slices, half_life, ctx, sources)
        elapsed = seconds_between(injection, reference)
        if elapsed < 0:
            raise ctx.fail(f"the injection ({injection.isoformat()}) is after the scan reference time ({reference.isoformat()}, {ref_source})",
                           "correct RadiopharmaceuticalStartDateTime/StartTime or the scan date in the PET header")
        decay = math.exp(-lam * elapsed)
        per_slice_dose = np.full(n, dose * decay)
    elif decay_correction == "ADMIN":
        ref_source, per_slice_dose = "administration (no decay)", np.full(n, dose)
    elif decay_correction == "NONE":
        ref_source = "each slice's AcquisitionTime, averaged over its frame duration"
        per_slice_dose = np.empty(n)
        for k, ds in enumerate(slices):
            acq = _acquisition(ds)
            duration = _get(ds, "ActualFrameDuration")
            if acq is None or duration is None:
                raise ctx.fail("DecayCorrection NONE needs AcquisitionTime and ActualFrameDuration on every slice", "add them or export decay-corrected images")
            d = float(duration) / 1000.0
            elapsed = seconds_between(injection, acq)
            # mean activity over [acq, acq + d] relative to injection
            per_slice_dose[k] = dose * math.exp(-lam * elapsed) * ((1 - math.exp(-lam * d)) / (lam * d) if d > 0 else 1.0)
    else:
        raise ctx.fail(f"DecayCorrection {decay_correction or 'missing'} is not START, ADMIN or NONE", "export the PET with DecayCorrection START")

    factors = weight * 1000.0 / per_slice_dose
    if units == "CM2ML":
        if height is None:
            raise ctx.fail("Units CM2ML (SUVbsa) needs PatientSize for the body surface area", "add PatientSize (m)")
        bsa_cm2 = _bsa_m2(weight, height) * 1e4
        factors = np.full(n, weight * 1000.0 / bsa_cm2)  # SUVbsa -> SUVbw
        sources["bsa"] = f"Du Bois BSA {bsa_cm2 / 1e4:.4f} m^2"
    elif units == "CNTS":
        if PHILIPS_SUV_FACTOR in first and float(first[PHILIPS_SUV_FACTOR].value) > 0:
            factors = np.array([float(ds[PHILIPS_SUV_FACTOR].value) for ds in slices])
            sources["philips"] = "Philips SUV scale factor (7053,1000)"
        elif PHILIPS_ACTIVITY_FACTOR in first and float(first[PHILIPS_ACTIVITY_FACTOR].value) > 0:
            factors = factors * np.array([float(ds[PHILIPS_ACTIVITY_FACTOR].value) for ds in slices])
            sources["philips"] = "Philips activity concentration factor (7053,1009) -> Bq/ml"
        else:
            raise ctx.fail("Units CNTS without a Philips SUV (7053,1000) or activity (7053,1009) factor", "export the PET in Bq/ml (BQML)")
    return SuvConversion(factors, units, decay_correction, suv_type, weight, height, dose, half_life, injection.isoformat(),
                         reference.isoformat() if reference else None, ref_source, decay, sources, warnings)


def _gml_to_bw(suv_type: str, weight: float, height: float | None, sex: str, ctx: _Context, sources: dict[str, str]) -> float:
    """Factor that turns stored SUV of ``suv_type`` into SUVbw."""
    if suv_type == "BW":
        return 1.0
    if height is None:
        raise ctx.fail(f"SUVType {suv_type} needs PatientSize to re-normalise to body weight", "add PatientSize (m)")
    if suv_type.startswith("LBM"):
        reference = _lean_body_mass_kg(weight, height, sex)
    elif suv_type == "IBW":
        reference = _ideal_body_weight_kg(height, sex)
    elif suv_type == "BSA":
        return weight * 1000.0 / (_bsa_m2(weight, height) * 1e4)
    else:
        raise ctx.fail(f"SUVType {suv_type} is not supported", "export SUVbw (SUVType BW) or Bq/ml")
    sources["suv_type"] = f"SUVType {suv_type}: x weight / {reference:.3f} kg (sex {sex}{', mean of male and female formulas' if sex not in ('M', 'F') else ''})"
    return weight / reference


def rescaled(ds: Dataset) -> NDArray[np.float64]:
    """Pixel data with this slice's RescaleSlope and RescaleIntercept applied."""
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
