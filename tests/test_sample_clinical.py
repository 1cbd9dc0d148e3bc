"""The clinical follow-up model: consistent dates, valid grades and answers, outcome driven by dose and tumour."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from isotox.sample.clinical import CLINICAL_COLUMNS, simulate_clinical


def _fake_truths(n: int, seed: int = 3) -> list[dict]:
    """Minimal patient truths (what the clinical model reads) over a wide range of tumour volumes."""
    rng = np.random.default_rng(seed)
    return [
        {"index": i + 1, "patient_id": f"SAMPLE{i + 1:03d}", "histology": "squamous", "has_node": bool(rng.random() < 0.4),
         "planning_date": "20240301", "tumour": {"gtv_volume_cc": float(rng.lognormal(np.log(30), 0.7)), "hypoxic_fraction": float(rng.uniform(0, 0.4))}}
        for i in range(n)
    ]


def _d(text: str) -> date | None:
    return date.fromisoformat(text) if text else None


def test_dates_grades_and_columns_are_consistent() -> None:
    clinical, qol, _ = simulate_clinical(_fake_truths(300), seed=11)
    assert list(clinical.columns) == CLINICAL_COLUMNS
    for row in clinical.astype(str).to_dict(orient="records"):
        reg, start, end, last = (_d(row[k]) for k in ("registration_date", "rt_start_date", "rt_end_date", "last_followup_date"))
        assert reg < start < end and last > reg  # follow-up may end during RT (death, loss), never before registration
        for event in ("local_progression_date", "regional_progression_date", "distant_progression_date"):
            if row[event]:
                assert start < _d(row[event]) <= last
        if row["death_date"]:
            assert _d(row["death_date"]) == last
        assert 0 <= int(row["pneumonitis_grade"]) <= 5 and 0 <= int(row["esophagitis_grade"]) <= 4
        assert bool(row["pneumonitis_date"]) == (int(row["pneumonitis_grade"]) > 0)
        assert row["arm"] in {"A", "B", "not_randomized"}
    answers = qol[[f"q{i}" for i in range(1, 44)]].apply(pd.to_numeric, errors="coerce")
    assert answers.iloc[:, :28].stack().between(1, 4).all() and answers[["q29", "q30"]].stack().between(1, 7).all()
    assert answers["q43"].dropna().isin([1, 2]).all()
    assert 0.01 < answers.isna().mean().mean() < 0.06  # ~3 % missing items, as documented
    assert set(qol["timepoint"]) <= {"baseline", "week4", "end_rt", "fu3m"}


def test_outcome_depends_on_tumour_volume_and_dose() -> None:
    """Large tumours progress locally more often than small ones (model: hazard ~ volume^0.5, lower with dose)."""
    truths = _fake_truths(1200, seed=5)
    clinical, _, model = simulate_clinical(truths, seed=9)
    volume = pd.Series({t["patient_id"]: t["tumour"]["gtv_volume_cc"] for t in truths})
    clinical = clinical.set_index("patient_id")
    local = clinical["local_progression_date"] != ""
    small, large = volume <= volume.quantile(0.25), volume >= volume.quantile(0.75)
    assert local[large].mean() > local[small].mean() + 0.05
    doses = pd.Series({pid: p["nominal_tumour_dose_gy"] for pid, p in model["patients"].items()})
    hazards = pd.Series({pid: p["hazards_per_month"]["local"] for pid, p in model["patients"].items()})
    same_size = (volume > 25) & (volume < 35)
    boosted = same_size & (doses == 72.0)
    not_boosted = same_size & (doses < 66.5)
    assert hazards[boosted].mean() < hazards[not_boosted].mean()


def test_simulation_is_deterministic() -> None:
    a = simulate_clinical(_fake_truths(20), seed=1)
    b = simulate_clinical(_fake_truths(20), seed=1)
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert not simulate_clinical(_fake_truths(20), seed=2)[0].equals(a[0])
