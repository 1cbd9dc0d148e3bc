"""EORTC QLQ-C30 (version 3) and QLQ-LC13 scale scores, per the EORTC scoring manual (3rd ed., 2001).

Items are answered 1-4 (C30 items 29-30: 1-7). For each scale the raw score RS is the mean of its
items; the score is linearly transformed to 0-100:

* functional scales: S = (1 - (RS - 1) / range) x 100 (high = better functioning);
* symptom scales/items and global health status: S = (RS - 1) / range x 100;

range = 3 for 1-4 items, 6 for 1-7 items. Missing items: a multi-item scale is scored from the
answered items when at least half of its items are answered, otherwise it is missing; a single
item is missing when unanswered. LC13 dyspnoea (items 3-5) is scored only when all three are
answered (the LC13 scoring note: patients who never climb stairs skip item 5, which would bias a
two-item score). In the long TSV the columns are q1-q30 (C30) and q31-q43 (LC13 items 1-13).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: name -> (items, range, kind); kind 'functional' inverts the scale.
C30_SCALES: dict[str, tuple[tuple[int, ...], int, str]] = {
    "QL2": ((29, 30), 6, "global"),
    "PF2": ((1, 2, 3, 4, 5), 3, "functional"),
    "RF2": ((6, 7), 3, "functional"),
    "EF": ((21, 22, 23, 24), 3, "functional"),
    "CF": ((20, 25), 3, "functional"),
    "SF": ((26, 27), 3, "functional"),
    "FA": ((10, 12, 18), 3, "symptom"),
    "NV": ((14, 15), 3, "symptom"),
    "PA": ((9, 19), 3, "symptom"),
    "DY": ((8,), 3, "symptom"),
    "SL": ((11,), 3, "symptom"),
    "AP": ((13,), 3, "symptom"),
    "CO": ((16,), 3, "symptom"),
    "DI": ((17,), 3, "symptom"),
    "FI": ((28,), 3, "symptom"),
}
_LC13_OFFSET = 30  # LC13 item k is column q(30 + k)
LC13_SCALES: dict[str, tuple[tuple[int, ...], int, str]] = {
    "LCDY": ((3, 4, 5), 3, "symptom_all_items"),
    "LCCO": ((1,), 3, "symptom"),
    "LCHA": ((2,), 3, "symptom"),
    "LCSM": ((6,), 3, "symptom"),
    "LCDS": ((7,), 3, "symptom"),
    "LCPN": ((8,), 3, "symptom"),
    "LCHR": ((9,), 3, "symptom"),
    "LCPC": ((10,), 3, "symptom"),
    "LCPA": ((11,), 3, "symptom"),
    "LCPO": ((12,), 3, "symptom"),
}
ITEM_COLUMNS = [f"q{i}" for i in range(1, 44)]


def _score(answers: pd.DataFrame, items: tuple[int, ...], rng: int, kind: str) -> pd.Series:
    values = answers[[f"q{i}" for i in items]].astype(float)
    answered = values.notna().sum(axis=1)
    need = len(items) if kind == "symptom_all_items" else (len(items) + 1) // 2 if len(items) > 1 else 1
    raw = values.mean(axis=1, skipna=True).where(answered >= need)
    if kind == "functional":
        return (1.0 - (raw - 1.0) / rng) * 100.0
    return (raw - 1.0) / rng * 100.0


def check_items(answers: pd.DataFrame) -> pd.DataFrame:
    """Out-of-range answers (patient_id, timepoint, column, value): reported, and set to missing by ``score``."""
    problems = []
    for column in ITEM_COLUMNS:
        if column not in answers.columns:
            continue
        top = 7 if column in ("q29", "q30") else 4
        values = pd.to_numeric(answers[column], errors="coerce")
        bad = answers[column].notna() & (answers[column].astype(str).str.strip() != "") & ~values.between(1, top)
        for idx in np.flatnonzero(bad.to_numpy()):
            row = answers.iloc[idx]
            problems.append({"patient_id": row.get("patient_id"), "timepoint": row.get("timepoint"), "column": column, "value": row[column]})
    return pd.DataFrame(problems, columns=["patient_id", "timepoint", "column", "value"])


def score(answers: pd.DataFrame) -> pd.DataFrame:
    """Long table (patient_id, timepoint, q1..q43) -> one row per patient and timepoint with every scale (0-100)."""
    items = answers.copy()
    for column in ITEM_COLUMNS:
        if column not in items.columns:
            items[column] = np.nan
        top = 7 if column in ("q29", "q30") else 4
        values = pd.to_numeric(items[column], errors="coerce")
        items[column] = values.where(values.between(1, top))
    out = items[["patient_id", "timepoint"]].copy()
    for name, (scale_items, rng, kind) in C30_SCALES.items():
        out[name] = _score(items, scale_items, rng, kind)
    for name, (scale_items, rng, kind) in LC13_SCALES.items():
        out[name] = _score(items, tuple(i + _LC13_OFFSET for i in scale_items), rng, kind)
    return out


def change_from_baseline(scores: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """Each later timepoint minus the patient's baseline, per scale (NaN without a baseline)."""
    scales = [c for c in scores.columns if c not in ("patient_id", "timepoint")]
    base = scores[scores["timepoint"] == baseline].set_index("patient_id")[scales]
    later = scores[scores["timepoint"] != baseline].copy()
    later[scales] = later[scales].to_numpy() - base.reindex(later["patient_id"]).to_numpy()
    return later
