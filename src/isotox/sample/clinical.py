"""Clinical follow-up and quality-of-life answers for the sample cohort, from a seeded model.

Outcome depends on the patient's tumour (volume, hypoxic fraction, nodal disease) and on a
*nominal* prescription that the generator assumes (72 Gy boost when the tumour is small enough,
otherwise an isotoxic dose <= 66 Gy that falls with tumour volume). It is not the dose the
pipeline's planning stage computes later: the two are compared, never assumed equal.
Times are drawn from exponential hazards (per month), censored by a data cut-off and by loss to
follow-up. The model's coefficients are written into the cohort truth (``clinical_model.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DAYS_PER_MONTH = 365.25 / 12.0
QOL_TIMEPOINTS = (("baseline", -7), ("week4", 28), ("end_rt", 33), ("fu3m", 125))

CLINICAL_COLUMNS = [
    "patient_id", "arm", "stage", "histology", "chemotherapy", "induction_cycles", "registration_date",
    "rt_start_date", "rt_end_date", "local_progression_date", "regional_progression_date",
    "distant_progression_date", "death_date", "last_followup_date", "pneumonitis_grade", "pneumonitis_date",
    "esophagitis_grade", "esophagitis_date", "rt_interruption_days",
]


@dataclass(frozen=True)
class OutcomeModel:
    """Hazards per month and their dependence on tumour and nominal dose (documented, seeded)."""

    local_base: float = 0.022
    local_per_log_volume: float = 0.5
    local_per_gy_eqd2: float = -0.06
    local_per_hypoxic_fraction: float = 1.5
    regional_base: float = 0.006
    regional_node_factor: float = 2.0
    distant_base: float = 0.022
    distant_per_log_volume: float = 0.35
    death_base: float = 0.010
    death_after_distant_months: float = 8.0
    loss_to_followup: float = 0.004
    data_cutoff: str = "2026-06-30"
    boost_feasible_volume_cc: float = 45.0


def _nominal_prescription(gtv_cc: float, has_node: bool, rng: np.random.Generator, model: OutcomeModel) -> tuple[bool, float]:
    """(boost feasible, nominal tumour dose in Gy over 24 fractions) -- the generator's assumption."""
    p_feasible = 1.0 / (1.0 + np.exp((gtv_cc - model.boost_feasible_volume_cc) / 12.0 + (0.8 if has_node else 0.0)))
    if rng.random() < p_feasible:
        return True, 72.0
    return False, float(np.clip(66.0 - 5.0 * max(np.log2(gtv_cc / 40.0), 0.0), 54.0, 66.0))


def sample_allocation(index: int, seed: int) -> str:
    """The sample cohort's randomisation list: the arm ('A'/'B') patient ``index`` is allocated at
    registration (1:1, independent of everything else about the patient), as a trial statistician's
    list drawn before enrolment. Only ``_enrol`` applies it, when the generator's boost is feasible."""
    return str(np.random.default_rng([seed, index, 13]).choice(["A", "B"]))


@dataclass(frozen=True)
class Enrolment:
    """What the trial records when a sample patient is registered, before any planning: the
    allocation, stage and chemotherapy schedule (the cohort sheet's row), and the generator's
    nominal prescription (its own assumption, never the plan stage's result)."""

    patient_id: str
    histology: str
    arm: str
    stage: str
    chemotherapy: str
    induction_cycles: int
    boost_feasible: bool
    nominal_dose_gy: float

    def sheet_row(self, dicom_dir: str) -> dict[str, str]:
        """The patient's row of a cohort sheet (config/schemas/cohort.schema.yaml)."""
        return {"patient_id": self.patient_id, "dicom_dir": dicom_dir, "histology": self.histology, "arm": self.arm,
                "stage": self.stage, "chemotherapy": self.chemotherapy}


def _enrol(truth: dict[str, Any], seed: int, model: OutcomeModel) -> tuple[Enrolment, np.random.Generator]:
    """The patient's enrolment and the random stream the rest of its follow-up continues from.

    Per patient (the stream is seeded by seed and index alone), so one patient's record exists as
    soon as that patient is generated: the plan reads it without waiting for the whole cohort."""
    rng = np.random.default_rng([seed, truth["index"], 7])
    gtv, node = float(truth["tumour"]["gtv_volume_cc"]), bool(truth["has_node"])
    feasible, dose = _nominal_prescription(gtv, node, rng, model)
    arm = sample_allocation(int(truth["index"]), seed) if feasible else "not_randomized"
    stage = str(rng.choice(["IIIA", "IIIB"])) if node else ("IB" if gtv < 15 else ("IIA" if gtv < 40 else "IIB"))
    chemo = str(rng.choice(["concurrent", "sequential"], p=[0.6, 0.4])) if stage.startswith("III") else "none"
    induction = int(rng.integers(0, 3)) if chemo != "none" else 0
    return Enrolment(truth["patient_id"], str(truth["histology"]), arm, stage, chemo, induction, feasible, dose), rng


def enrolment(truth: dict[str, Any], seed: int, model: OutcomeModel | None = None) -> Enrolment:
    """The enrolment record of one sample patient (its ground truth and the cohort seed)."""
    return _enrol(truth, seed, model or OutcomeModel())[0]


def _eqd2(total: float, fractions: int, alpha_beta: float = 10.0) -> float:
    d = total / fractions
    return total * (d + alpha_beta) / (2.0 + alpha_beta)


def _iso(day: date | None) -> str:
    return day.isoformat() if day else ""


def _add_weekdays(start: date, n: int) -> date:
    day, done = start, 1
    while done < n:
        day += timedelta(days=1)
        if day.weekday() < 5:
            done += 1
    return day


def simulate_clinical(truths: list[dict[str, Any]], seed: int, model: OutcomeModel | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Return (clinical table, QoL long table, per-patient model truth)."""
    model = model or OutcomeModel()
    cutoff = date.fromisoformat(model.data_cutoff)
    rows, qol_rows, truth_rows = [], [], {}
    for t in sorted(truths, key=lambda x: x["index"]):
        enrolled, rng = _enrol(t, seed, model)
        pid, gtv = t["patient_id"], float(t["tumour"]["gtv_volume_cc"])
        node, fhv = bool(t["has_node"]), float(t["tumour"]["hypoxic_fraction"])
        feasible, dose, arm = enrolled.boost_feasible, enrolled.nominal_dose_gy, enrolled.arm
        stage, chemo, induction = enrolled.stage, enrolled.chemotherapy, enrolled.induction_cycles
        planning = datetime.strptime(t["planning_date"], "%Y%m%d").date()
        registration = planning - timedelta(days=int(rng.integers(3, 10)))
        rt_start = planning + timedelta(days=int(rng.integers(7, 14)))
        while rt_start.weekday() >= 5:
            rt_start += timedelta(days=1)

        # acute oesophagitis during RT, pneumonitis months after: risk rises with dose, nodes and concurrent chemo
        eso_risk = 0.15 + 0.25 * node + 0.2 * (chemo == "concurrent") + 0.01 * (dose - 66.0)
        eso_grade = int(rng.choice([0, 1, 2, 3, 4], p=_grade_probs(eso_risk)))
        interruption = int(rng.integers(3, 12)) if eso_grade >= 3 and rng.random() < 0.6 else 0
        rt_end = _add_weekdays(rt_start, 24) + timedelta(days=interruption)
        pneu_risk = 0.08 + 0.004 * gtv + 0.02 * (dose - 66.0) / 6.0 + 0.1 * (chemo == "concurrent")
        pneu_grade = int(rng.choice([0, 1, 2, 3, 4, 5], p=_grade_probs(pneu_risk, five=True)))
        eso_date = rt_start + timedelta(days=int(rng.integers(14, 35))) if eso_grade else None
        pneu_date = rt_end + timedelta(days=int(rng.integers(30, 180))) if pneu_grade else None

        log_vol = np.log(gtv / 30.0)
        lam_local = model.local_base * np.exp(model.local_per_log_volume * log_vol + model.local_per_gy_eqd2 * (_eqd2(dose, 24) - 66.0) + model.local_per_hypoxic_fraction * fhv)
        lam_regional = model.regional_base * (model.regional_node_factor if node else 1.0)
        lam_distant = model.distant_base * np.exp(model.distant_per_log_volume * log_vol)
        months = {name: float(rng.exponential(1.0 / lam)) for name, lam in (("local", lam_local), ("regional", lam_regional), ("distant", lam_distant), ("death", model.death_base))}
        months["death"] = min(months["death"], months["distant"] + float(rng.exponential(model.death_after_distant_months)))
        if pneu_grade == 5:
            months["death"] = min(months["death"], (pneu_date - registration).days / DAYS_PER_MONTH + 0.1)  # type: ignore[operator]
        loss = float(rng.exponential(1.0 / model.loss_to_followup))
        to_date = lambda m: registration + timedelta(days=int(round(m * DAYS_PER_MONTH)))  # noqa: E731
        death = to_date(months["death"]) if to_date(months["death"]) <= cutoff and months["death"] <= loss else None
        last_fu = death or min(cutoff, to_date(loss))
        event = {k: (to_date(months[k]) if to_date(months[k]) <= last_fu and to_date(months[k]) > rt_start else None) for k in ("local", "regional", "distant")}
        if pneu_date and pneu_date > last_fu:
            pneu_grade, pneu_date = 0, None

        rows.append({
            "patient_id": pid, "arm": arm, "stage": stage, "histology": t["histology"], "chemotherapy": chemo,
            "induction_cycles": induction, "registration_date": _iso(registration), "rt_start_date": _iso(rt_start),
            "rt_end_date": _iso(rt_end), "local_progression_date": _iso(event["local"]),
            "regional_progression_date": _iso(event["regional"]), "distant_progression_date": _iso(event["distant"]),
            "death_date": _iso(death), "last_followup_date": _iso(last_fu), "pneumonitis_grade": pneu_grade,
            "pneumonitis_date": _iso(pneu_date), "esophagitis_grade": eso_grade, "esophagitis_date": _iso(eso_date),
            "rt_interruption_days": interruption,
        })
        truth_rows[pid] = {"nominal_boost_feasible": feasible, "nominal_tumour_dose_gy": dose,
                           "hazards_per_month": {"local": lam_local, "regional": lam_regional, "distant": lam_distant, "death": model.death_base}}
        qol_rows.extend(_qol_answers(rng, pid, rt_start, last_fu, eso_grade, pneu_grade))
    import pandas as pd  # here: a patient job imports this module for the enrolment record, without pandas (0.5 s CPU)

    clinical = pd.DataFrame(rows, columns=CLINICAL_COLUMNS)
    qol = pd.DataFrame(qol_rows, columns=["patient_id", "timepoint", *[f"q{i}" for i in range(1, 44)]])
    return clinical, qol, {"model": asdict(model), "patients": truth_rows}


def _grade_probs(risk: float, five: bool = False) -> list[float]:
    """Grade distribution with P(grade >= 2) about ``risk`` (clipped to [0.02, 0.9])."""
    r = float(np.clip(risk, 0.02, 0.9))
    probs = [0.55 * (1 - r), 0.45 * (1 - r), 0.6 * r, 0.32 * r, 0.08 * r]
    if five:
        probs = probs[:4] + [0.07 * r, 0.01 * r]
    total = sum(probs)
    return [p / total for p in probs]


def _qol_answers(rng: np.random.Generator, pid: str, rt_start: date, last_fu: date, eso_grade: int, pneu_grade: int) -> list[dict[str, Any]]:
    """EORTC QLQ-C30 (items 1-30) and QLQ-LC13 (31-43) answers at the protocol's time points.

    Items 1-28 and 31-42 run 1 (not at all) .. 4 (very much); 29-30 (global health) 1..7;
    43 (took pain medicine) 1 = no, 2 = yes. About 3 % of answers are missing at random.
    """
    wellbeing = float(rng.normal())
    out = []
    for name, offset in QOL_TIMEPOINTS:
        when = rt_start + timedelta(days=offset)
        if when > last_fu or rng.random() < 0.05:  # not alive / not followed, or questionnaire not returned
            continue
        burden = -0.6 * wellbeing + (0.5 if name in ("week4", "end_rt") else 0.0) + (0.4 * pneu_grade if name == "fu3m" else 0.0)
        answers: dict[str, Any] = {"patient_id": pid, "timepoint": name}
        for item in range(1, 44):
            local = burden + (0.8 * eso_grade if item in (36, 37) and name in ("week4", "end_rt") else 0.0)
            if item in (29, 30):
                value = int(np.clip(np.rint(5.0 - 1.2 * local + rng.normal(scale=0.8)), 1, 7))
            elif item == 43:
                value = 2 if rng.random() < 1 / (1 + np.exp(-local)) else 1
            else:
                value = int(np.clip(np.rint(1.6 + 0.9 * local + rng.normal(scale=0.7)), 1, 4))
            answers[f"q{item}"] = "" if rng.random() < 0.03 else value
        out.append(answers)
    return out
