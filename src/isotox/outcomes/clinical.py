"""The clinical follow-up table: read, validate row by row, keep the good rows.

A clinical table is curated by hand; one bad cell must not stop a whole cohort's analysis. Each
row is validated against ``clinical.schema.yaml`` and checked for real calendar dates; a row
with a problem is reported (patient, column, what is wrong) and left out, the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from isotox.errors import ConfigError
from isotox.settings.documents import table_row_errors

DATE_COLUMNS = ("registration_date", "rt_start_date", "rt_end_date", "local_progression_date", "regional_progression_date",
                "distant_progression_date", "death_date", "last_followup_date", "pneumonitis_date", "esophagitis_date")
INT_COLUMNS = ("induction_cycles", "pneumonitis_grade", "esophagitis_grade", "rt_interruption_days")


@dataclass
class ClinicalTable:
    rows: pd.DataFrame  # valid rows, indexed by patient_id; dates as datetime64, grades as Int64
    problems: pd.DataFrame  # patient_id, column, problem

    @property
    def excluded(self) -> list[str]:
        return sorted(set(self.problems["patient_id"])) if len(self.problems) else []


def _real_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
        return True
    except ValueError:
        return False


def read_clinical(path: str | Path) -> ClinicalTable:
    """Read a clinical TSV; invalid rows go to ``problems`` instead of stopping the analysis."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "clinical table not found (cohort.clinical in the config, or the CLI argument)")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot be read as a tab-separated table: {exc}") from exc
    table.columns = [c.strip() for c in table.columns]
    if "patient_id" not in table.columns:
        raise ConfigError(path, "has no 'patient_id' column (is it tab-separated?)", "patient_id")
    problems: list[dict[str, str]] = []
    good: list[dict[str, str]] = []
    seen: set[str] = set()
    for line_no, record, errors in table_row_errors(table, "clinical"):
        pid = record.get("patient_id", f"line {line_no}")
        row_problems = [{"patient_id": pid, "column": column, "problem": f"line {line_no}: {message}"} for column, message in errors]
        for column in DATE_COLUMNS:
            if column in record and not _real_date(record[column]) and not any(p["column"] == column for p in row_problems):
                row_problems.append({"patient_id": pid, "column": column, "problem": f"line {line_no}: {record[column]!r} is not a calendar date"})
        if pid in seen:
            row_problems.append({"patient_id": pid, "column": "patient_id", "problem": f"line {line_no}: duplicate patient id"})
        seen.add(pid)
        if row_problems:
            problems.extend(row_problems)
        else:
            good.append(record)
    rows = pd.DataFrame(good, columns=table.columns)
    for column in DATE_COLUMNS:
        if column in rows.columns:
            rows[column] = pd.to_datetime(rows[column], format="%Y-%m-%d", errors="coerce")
    for column in INT_COLUMNS:
        if column in rows.columns:
            rows[column] = pd.to_numeric(rows[column], errors="coerce").astype("Int64")
    return ClinicalTable(rows.set_index("patient_id", drop=False).sort_index(), pd.DataFrame(problems, columns=["patient_id", "column", "problem"]))
