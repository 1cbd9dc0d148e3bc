"""The clinical follow-up table: read, validate row by row, keep the good rows.

A clinical table is curated by hand; one bad cell must not stop a whole cohort's analysis. Each
row is validated against ``clinical.schema.yaml`` and checked for real calendar dates; a row
with a problem is reported (patient, column, what is wrong) and left out, the others go on.
Beyond the schema a row must be consistent with itself: the last follow-up not before
registration, and a toxicity grade of 1 or more with its onset date when the table has that
date column (the toxicity window is counted from it). A table with no patient rows, or none valid, is an error: there is nothing
to tabulate, and empty tables would look like a cohort without events.
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
GRADE_DATES = {"pneumonitis_grade": "pneumonitis_date", "esophagitis_grade": "esophagitis_date"}


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


def _consistency_problems(record: dict[str, str], line_no: int, columns: set[str]) -> list[tuple[str, str]]:
    """(column, problem) for a row whose valid cells contradict each other. A grade without its
    date counts only when the table has the date column (a table that records no onsets at all
    is read as such; one empty onset among recorded ones is a data-entry gap)."""
    problems = []
    registration, last = record.get("registration_date"), record.get("last_followup_date")
    if registration and last and _real_date(registration) and _real_date(last) and last < registration:
        problems.append(("last_followup_date", f"line {line_no}: last_followup_date {last} is before registration_date {registration} (negative follow-up)"))
    for grade_column, date_column in GRADE_DATES.items():
        grade = record.get(grade_column, "")
        if date_column in columns and grade.isdigit() and int(grade) >= 1 and not record.get(date_column):
            problems.append((date_column, f"line {line_no}: {grade_column.split('_')[0]} grade {grade} without its date ({date_column} is empty)"))
    return problems


def read_clinical(path: str | Path) -> ClinicalTable:
    """Read a clinical TSV; invalid rows go to ``problems`` instead of stopping the analysis."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "clinical table not found (cohort.clinical in the config, or the CLI argument)")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot be read as a tab-separated table: {exc}") from exc
    table.columns = [c.strip() for c in table.columns]
    if "patient_id" not in table.columns:
        raise ConfigError(path, "has no 'patient_id' column (is it tab-separated?)", "patient_id")
    if table.empty:
        raise ConfigError(path, "has no patient rows (only a header): nothing to tabulate")
    problems: list[dict[str, str]] = []
    good: list[dict[str, str]] = []
    seen: set[str] = set()
    for line_no, record, errors in table_row_errors(table, "clinical"):
        pid = record.get("patient_id", f"line {line_no}")
        row_problems = [{"patient_id": pid, "column": column, "problem": f"line {line_no}: {message}"} for column, message in errors]
        for column in DATE_COLUMNS:
            if column in record and not _real_date(record[column]) and not any(p["column"] == column for p in row_problems):
                row_problems.append({"patient_id": pid, "column": column, "problem": f"line {line_no}: {record[column]!r} is not a calendar date"})
        if not row_problems:
            row_problems += [{"patient_id": pid, "column": c, "problem": p} for c, p in _consistency_problems(record, line_no, set(table.columns))]
        if pid in seen:
            row_problems.append({"patient_id": pid, "column": "patient_id", "problem": f"line {line_no}: duplicate patient id"})
        seen.add(pid)
        if row_problems:
            problems.extend(row_problems)
        else:
            good.append(record)
    if not good:
        shown = "; ".join(f"{p['patient_id']}, column '{p['column']}': {p['problem']}" for p in problems[:5])
        raise ConfigError(path, f"no valid patient row ({len(problems)} problem(s): {shown})")
    rows = pd.DataFrame(good, columns=table.columns)
    for column in DATE_COLUMNS:
        if column in rows.columns:
            rows[column] = pd.to_datetime(rows[column], format="%Y-%m-%d", errors="coerce")
    for column in INT_COLUMNS:
        if column in rows.columns:
            rows[column] = pd.to_numeric(rows[column], errors="coerce").astype("Int64")
    return ClinicalTable(rows.set_index("patient_id", drop=False).sort_index(), pd.DataFrame(problems, columns=["patient_id", "column", "problem"]))
