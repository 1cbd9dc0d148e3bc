"""The PET-boost columns of the cohort table (``results/cohort/patients.tsv``), from ``plan/plan.json``.

The outcome tables join this table to the clinical follow-up, so it has to say per patient what the
trial's rule did: the arm recorded in the cohort sheet and the arm applied, the boost each arm's
isotoxic escalation reached (the allocated arm is prescribed; the other is what the patient would
have got, which makes the arm comparison visible per patient), what stopped each escalation (a
constraint id, or the protocol ceiling), and for a patient who was not randomized the constraints
the whole-tumour test boost broke.

It also says whether the patient made it through the imaging stages at all (:func:`status_columns`):
a patient whose data failed a stage stays in the table, marked failed with the stage and the first
line of the error (from the failure record the rule's script leaves next to its log, see
:mod:`isotox.runlog`), and the ingest warnings and problems are shown so nothing is handled silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from isotox.planning.allocation import ARMS
from isotox.runlog import read_failure

#: the per-patient stages in workflow order (the first failed one is reported)
STAGES = ("ingest", "register", "segment", "perfusion", "plan")
#: an optional part that is simply absent is not a problem worth a column
ABSENT = "no series with this role"


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


def status_columns(patient_dir: str | Path, log_root: str | Path | None = None, known_failure: str | None = None) -> dict[str, str]:
    """Status of one patient for the cohort table.

    ``status`` is ``ok`` (every stage written), ``failed`` (a stage's script recorded an error:
    ``failed_stage`` and ``error`` say which and why) or ``incomplete`` (stages missing, no record:
    not run yet). ``ingest_warnings`` / ``ingest_problems`` repeat what ingest handled with a
    caveat or left out (absent optional series are not listed). ``log_root`` defaults to the
    ``logs`` folder of the results tree that holds ``patient_dir`` (results/patients/PID).
    ``known_failure``: why ingest cannot start (a DICOM folder that does not exist), known before
    any job runs; used when ingest has left no record of its own.
    """
    folder = Path(patient_dir)
    logs = Path(log_root) if log_root is not None else folder.parent.parent / "logs"
    row = {"status": "ok", "failed_stage": "", "error": "", "ingest_warnings": "", "ingest_problems": ""}
    for stage in STAGES:
        record = read_failure(logs / stage / f"{folder.name}.log")
        if record is not None and not (folder / stage).is_dir():
            row.update(status="failed", failed_stage=stage, error=record["error"])
            break
        if not (folder / stage).is_dir():
            row["status"] = "incomplete"
    if row["status"] == "incomplete" and known_failure and not (folder / "ingest").is_dir():
        row.update(status="failed", failed_stage="ingest", error=known_failure)
    metadata = folder / "ingest" / "metadata.json"
    if metadata.is_file():
        meta = json.loads(metadata.read_text())
        row["ingest_warnings"] = " | ".join(meta.get("warnings") or [])
        row["ingest_problems"] = " | ".join(f"{role}: {problem}" for role, problem in sorted((meta.get("problems") or {}).items()) if problem != ABSENT)
    return row


def add_status_columns(table: pd.DataFrame, patient_dirs: list[Path], log_root: str | Path | None = None,
                       known_failures: dict[str, str] | None = None) -> pd.DataFrame:
    """``table`` with one row for every patient of ``patient_dirs`` (a failed patient gets a row of
    its own, never dropped) and the status columns first after ``patient_id``."""
    known = known_failures or {}
    status = pd.DataFrame([{"patient_id": Path(d).name, **status_columns(d, log_root, known.get(Path(d).name))} for d in patient_dirs])
    merged = status.merge(table, on="patient_id", how="left") if len(table) else status
    return merged.sort_values("patient_id").reset_index(drop=True)


def cohort_table(patient_dirs: list[Path], log_root: str | Path | None = None, known_failures: dict[str, str] | None = None) -> pd.DataFrame:
    """The cohort table (``results/cohort/patients.tsv``): one row per patient of ``patient_dirs``,
    whatever stages it reached: status columns, imaging and plan figures, PET-boost columns."""
    from isotox.outcomes.patients import cohort_patient_table

    dirs = [Path(d) for d in patient_dirs]
    return add_status_columns(add_boost_columns(cohort_patient_table(dirs), dirs), dirs, log_root, known_failures)


def write_cohort_table(path: str | Path, patient_dirs: list[Path], log_root: str | Path | None = None,
                       known_failures: dict[str, str] | None = None) -> pd.DataFrame:
    """Build :func:`cohort_table` and write it atomically as TSV; returns the table."""
    table = cohort_table(patient_dirs, log_root, known_failures)
    write_table(path, table)
    return table


def write_table(path: str | Path, table: pd.DataFrame) -> None:
    """Write a cohort table atomically as TSV (5 significant digits: the figures' own precision)."""
    from isotox.atomic import write_text

    write_text(path, table.to_csv(sep="\t", index=False, float_format="%.5g"))
