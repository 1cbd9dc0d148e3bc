"""Faults of the hand-curated tables: the cohort sheet and the clinical follow-up TSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.faults.common import copy_input


def _rewrite(good: Path, out: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """Read ``good`` as text cells, apply ``change`` to the DataFrame, write it tab-separated at ``out``."""
    table = pd.read_csv(good, sep="\t", dtype=str, keep_default_na=False)
    table = change(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False)
    return out


def _set(row: int, column: str, value: str):  # type: ignore[no-untyped-def]
    def change(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[row, column] = value
        return table
    return change


# --- cohort sheet --------------------------------------------------------------------------------

def cohort_duplicate_patient_id(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _set(1, "patient_id", "CLIN01"))


def cohort_missing_column(good: Path, out: Path) -> Path:
    return _rewrite(good, out, lambda t: t.drop(columns=["histology"]))


def cohort_dicom_dir_not_found(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _set(1, "dicom_dir", str(good.parent / "moved_away" / "CLIN02")))


def cohort_bom(good: Path, out: Path) -> Path:
    """Saved by Excel as 'UTF-8 with BOM': the first column name starts with U+FEFF."""
    out.write_bytes(b"\xef\xbb\xbf" + good.read_bytes())
    return out


def cohort_windows_line_endings(good: Path, out: Path) -> Path:
    out.write_bytes(good.read_bytes().replace(b"\n", b"\r\n"))
    return out


def cohort_header_only(good: Path, out: Path) -> Path:
    out.write_text(good.read_text().splitlines()[0] + "\n")
    return out


def cohort_comma_separated(good: Path, out: Path) -> Path:
    return _rewrite_with_separator(good, out, ",")


def _rewrite_with_separator(good: Path, out: Path, sep: str) -> Path:
    pd.read_csv(good, sep="\t", dtype=str, keep_default_na=False).to_csv(out, sep=sep, index=False)
    return out


def cohort_unknown_histology(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _set(0, "histology", "adeno"))


def cohort_bad_series_roles(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _set(0, "series_roles", "planning ct=1.2.3"))


def cohort_unsafe_patient_id(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _set(1, "patient_id", "../CLIN02"))


def cohort_sheet_not_found(good: Path, out: Path) -> Path:
    return out.parent / "no_such_cohort.tsv"


# --- clinical follow-up TSV ----------------------------------------------------------------------

def clinical_header_only(good: Path, out: Path) -> Path:
    out.write_text(good.read_text().splitlines()[0] + "\n")
    return out


def clinical_without_patient_id(good: Path, out: Path) -> Path:
    return _rewrite(good, out, lambda t: t.rename(columns={"patient_id": "patient"}))


def clinical_dates_day_first(good: Path, out: Path) -> Path:
    """One row's dates typed as DD/MM/YYYY."""
    def change(table: pd.DataFrame) -> pd.DataFrame:
        for column in ("registration_date", "last_followup_date"):
            year, month, day = table.loc[2, column].split("-")
            table.loc[2, column] = f"{day}/{month}/{year}"
        return table
    return _rewrite(good, out, change)


def clinical_negative_followup(good: Path, out: Path) -> Path:
    """Last follow-up a year before registration (year typed wrong)."""
    def change(table: pd.DataFrame) -> pd.DataFrame:
        year, rest = table.loc[1, "last_followup_date"].split("-", 1)
        registration_year = int(table.loc[1, "registration_date"][:4])
        table.loc[1, "last_followup_date"] = f"{registration_year - 1}-{rest}"
        return table
    return _rewrite(good, out, change)


def clinical_toxicity_without_date(good: Path, out: Path) -> Path:
    """Grade 3 pneumonitis recorded without its onset date (the toxicity window needs it)."""
    def change(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[3, "pneumonitis_grade"] = "3"
        table.loc[3, "pneumonitis_date"] = ""
        return table
    return _rewrite(good, out, change)


def clinical_event_before_registration(good: Path, out: Path) -> Path:
    def change(table: pd.DataFrame) -> pd.DataFrame:
        year = int(table.loc[0, "registration_date"][:4])
        table.loc[0, "local_progression_date"] = f"{year - 1}-06-01"
        return table
    return _rewrite(good, out, change)


def clinical_duplicate_patient_id(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _set(4, "patient_id", "CLIN01"))


def clinical_bom(good: Path, out: Path) -> Path:
    return cohort_bom(good, out)


def clinical_windows_line_endings(good: Path, out: Path) -> Path:
    return cohort_windows_line_endings(good, out)


def clinical_grade_not_a_grade(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _set(2, "esophagitis_grade", "G2"))


def clinical_all_rows_invalid(good: Path, out: Path) -> Path:
    return _rewrite(good, out, lambda t: t.assign(registration_date="unknown"))


def clinical_not_found(good: Path, out: Path) -> Path:
    return out.parent / "no_such_clinical.tsv"


__all__ = [name for name in dir() if name.startswith(("cohort_", "clinical_"))] + ["copy_input"]
