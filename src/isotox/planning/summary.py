"""The PET-boost columns of the cohort table (``results/cohort/patients.tsv``), from ``plan/plan.json``.

The outcome tables join this table to the clinical follow-up, so it has to say per patient what the
trial's rule did: the arm recorded in the cohort sheet and the arm applied, the boost each arm's
isotoxic escalation reached (the allocated arm is prescribed; the other is what the patient would
have got, which makes the arm comparison visible per patient), what stopped each escalation (a
constraint id, or the protocol ceiling), and for a patient who was not randomized the constraints
the whole-tumour test boost broke.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from isotox.planning.allocation import ARMS


def boost_columns(plan: dict[str, Any]) -> dict[str, Any]:
    """The PET-boost columns of one plan.json (empty for a protocol without a boost)."""
    prescription = plan.get("prescription") or {}
    if "whole_tumour_boost_test" not in prescription:
        return {}
    row: dict[str, Any] = {"arm_recorded": prescription.get("arm_recorded"), "arm_applied": prescription.get("arm"),
                           "allocation_note": prescription.get("allocation_note"),
                           "boost_test_violated": ",".join(prescription["whole_tumour_boost_test"].get("violated") or [])}
    escalation = prescription.get("escalation_by_arm") or {}
    for arm in ARMS:
        reached = escalation.get(arm) or {}
        row[f"boost_{arm}_reached_gy"] = reached.get("boost_total_gy")
        row[f"boost_{arm}_per_fraction_gy"] = reached.get("boost_dose_per_fraction_gy")
        row[f"boost_{arm}_stopped_by"] = reached.get("stopped_by")
    return row


def add_boost_columns(table: pd.DataFrame, patient_dirs: list[Path]) -> pd.DataFrame:
    """``table`` (one row per ``patient_id``) with the boost columns of each patient's plan.json
    appended; a patient without a plan keeps empty cells (never dropped)."""
    rows = []
    for folder in patient_dirs:
        plan = Path(folder) / "plan" / "plan.json"
        rows.append({"patient_id": Path(folder).name, **(boost_columns(json.loads(plan.read_text())) if plan.is_file() else {})})
    extra = pd.DataFrame(rows)
    if extra.columns.size == 1:
        return table
    return table.merge(extra, on="patient_id", how="left")
