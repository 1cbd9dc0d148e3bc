"""Time-to-event endpoints from the clinical dates, as the protocol defines them.

Times are in months (days / 30.4375) from the protocol's time origin (``registration`` or
``rt_start``). Definitions (event; what censors):

* OS: death from any cause; alive at last follow-up.
* PFS: local, regional or distant progression, or death; last follow-up.
* TTP: any progression; death and last follow-up censor.
* LC (local control): local progression; death and last follow-up censor.
* LPFS: local progression, or death when ``death_in_local_progression: event``; with
  ``competing`` death is a competing event (code 2, for cumulative incidence) and KM censors it.
* LF (local failure, competing risks): local progression (1); death without it competes (2).
  Written whatever the protocol's LPFS rule: the probability of local failure by a landmark is
  the Aalen-Johansen cumulative incidence of code 1 whenever patients can die first. Not a
  Kaplan-Meier endpoint (so not in ``ENDPOINTS``).

Impossible dates are *reported* per patient (an event before the origin, after the last
follow-up, or a progression after death) and that patient's affected endpoints are left empty;
nothing is silently moved.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DAYS_PER_MONTH = 30.4375
ENDPOINTS = ("OS", "PFS", "TTP", "LC", "LPFS")
PROGRESSION = ("local_progression_date", "regional_progression_date", "distant_progression_date")


def _origin_column(time_origin: str) -> str:
    return {"registration": "registration_date", "rt_start": "rt_start_date"}[time_origin]


def date_problems(rows: pd.DataFrame, origin_column: str) -> pd.DataFrame:
    """One line per impossible date relation (patient_id, column, problem)."""
    out = []
    for pid, r in rows.iterrows():
        origin, last, death = r.get(origin_column), r.get("last_followup_date"), r.get("death_date")
        for column in (*PROGRESSION, "death_date"):
            when = r.get(column)
            if pd.isna(when):
                continue
            if pd.notna(origin) and when < origin:
                out.append({"patient_id": pid, "column": column, "problem": f"{when.date()} is before the time origin ({origin_column} {origin.date()})"})
            if pd.notna(last) and when > last:
                out.append({"patient_id": pid, "column": column, "problem": f"{when.date()} is after the last follow-up ({last.date()})"})
            if column != "death_date" and pd.notna(death) and when > death:
                out.append({"patient_id": pid, "column": column, "problem": f"{when.date()} is after the death date ({death.date()})"})
        if pd.isna(origin):
            out.append({"patient_id": pid, "column": origin_column, "problem": "the time origin is missing"})
    return pd.DataFrame(out, columns=["patient_id", "column", "problem"])


def _first(r: pd.Series, columns: tuple[str, ...]) -> pd.Timestamp | None:
    dates = [r.get(c) for c in columns if pd.notna(r.get(c))]
    return min(dates) if dates else None


def endpoint_table(rows: pd.DataFrame, time_origin: str = "registration", death_in_local_progression: str = "event") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per patient: ``{EP}_months`` and ``{EP}_event`` (1 event, 0 censored, 2 competing death for LPFS and LF).

    Returns (table, problems). Patients with an impossible date have NaN for the endpoints that
    the date enters.
    """
    origin_column = _origin_column(time_origin)
    problems = date_problems(rows, origin_column)
    bad_columns = problems.groupby("patient_id")["column"].apply(set).to_dict() if len(problems) else {}
    records = []
    for pid, r in rows.iterrows():
        origin, last, death = r.get(origin_column), r.get("last_followup_date"), r.get("death_date")
        record: dict[str, object] = {"patient_id": pid}
        end = death if pd.notna(death) else last
        definitions = {
            "OS": (("death_date",), True, False),
            "PFS": ((*PROGRESSION, "death_date"), True, False),
            "TTP": (PROGRESSION, False, False),
            "LC": (("local_progression_date",), False, False),
            "LPFS": (("local_progression_date", "death_date"), death_in_local_progression == "event", death_in_local_progression == "competing"),
            "LF": (("local_progression_date", "death_date"), False, True),
        }
        bad = bad_columns.get(pid, set())
        for name, (columns, death_is_event, death_competes) in definitions.items():
            needed = set(columns) | {origin_column, "last_followup_date", "death_date"}
            if bad & needed or pd.isna(origin) or pd.isna(end):
                record[f"{name}_months"], record[f"{name}_event"] = np.nan, np.nan
                continue
            event_columns = tuple(c for c in columns if c != "death_date")
            first = _first(r, event_columns)
            code = 0
            when = end
            if first is not None:
                when, code = first, 1
            elif pd.notna(death) and (death_is_event or death_competes):
                when, code = death, (1 if death_is_event else 2)
            record[f"{name}_months"] = (when - origin).days / DAYS_PER_MONTH
            record[f"{name}_event"] = code
        records.append(record)
    return pd.DataFrame(records).set_index("patient_id", drop=False), problems
