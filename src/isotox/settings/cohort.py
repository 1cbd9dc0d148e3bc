"""The cohort sheet: one validated row per patient, ids safe to use as folder names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from isotox.errors import ConfigError
from isotox.settings.documents import table_row_errors

if TYPE_CHECKING:
    import pandas as pd

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_patient_id(patient_id: str, file: str | Path = "<cohort>") -> str:
    """Return ``patient_id`` if it is safe as a path component, else raise ConfigError.

    Ids become folders under results/patients/, so '../x', 'a/b', spaces or an empty id
    would write outside the results tree or break wildcards.
    """
    if not _SAFE_ID.match(patient_id) or ".." in patient_id:
        raise ConfigError(
            file,
            f"patient id {patient_id!r} is not safe as a folder name: use letters, digits, '.', '_' "
            "and '-' only, starting with a letter or digit, no '..', at most 64 characters",
            "patient_id",
        )
    return patient_id


def read_cohort_sheet(path: str | Path, *, check_dirs: bool = False) -> pd.DataFrame:
    """Read and validate a cohort TSV; return it indexed by ``patient_id`` and sorted.

    Every cell is read as text (ids like '007' keep their zeros); empty cells count as absent.
    All problems of all rows are collected, so a user fixes the sheet in one pass. A UTF-8 byte
    order mark (Excel's 'UTF-8' export) and Windows line endings are read as if absent.

    ``check_dirs``: also refuse a ``dicom_dir`` that is not a folder (``isotox validate cohort``).
    The workflow does not: there a missing folder fails that patient's jobs only (``--keep-going``).
    """
    import pandas as pd  # here, not at module level: ingest imports isotox.settings and needs no pandas

    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "cohort sheet not found (set cohort.sheet in the config)")
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment=None, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot be read as a tab-separated table: {exc}") from exc
    sheet.columns = [c.strip() for c in sheet.columns]
    if "patient_id" not in sheet.columns:
        raise ConfigError(path, "has no 'patient_id' column (is it tab-separated?)", "patient_id")
    if sheet.empty:
        raise ConfigError(path, "has no patient rows")

    problems: list[str] = []
    for line_no, record, errors in table_row_errors(sheet, "cohort"):
        problems += [f"line {line_no} ({record.get('patient_id', '?')}), column '{column}': {message}" for column, message in errors]
    duplicated = sheet["patient_id"][sheet["patient_id"].duplicated()].unique()
    for pid in duplicated:
        problems.append(f"patient id {pid!r} appears more than once")
    if check_dirs and "dicom_dir" in sheet.columns:
        for line_no, (pid, folder) in enumerate(zip(sheet["patient_id"], sheet["dicom_dir"]), start=2):
            if folder.strip() and not Path(folder.strip()).is_dir():
                problems.append(f"line {line_no} ({pid}), column 'dicom_dir': folder {folder.strip()!r} not found "
                                "(relative paths are read from the working directory)")
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ConfigError(path, f"invalid cohort sheet: {shown}{more}")
    for pid in sheet["patient_id"]:
        check_patient_id(pid, path)
    return sheet.set_index("patient_id", drop=False).sort_index()
