"""The fast isotoxic search against an exhaustive scan written separately (issue 16).

The search evaluates candidates without sorting per candidate and memoises values across the
PET-boost rule's repeated scans (``isotox.dose.candidate_metrics``). The reference below is
deliberately naive and shares no helper with isotox: for every candidate it forms the plan sum
voxel by voxel, converts it to the constraint's terms and reads the metric off a full sort
(quantiles), a count (Vx) or a plain mean.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from isotox.dose.dvh import StructureSamples
from isotox.dose.search import Candidate, search

STRUCTURES = ("CORD", "LUNG", "OESOPHAGUS")
METRICS = ("Dmean", "Dmax", "Dmin", "D0.03cc", "D2", "D95", "D50", "V20", "V5", "V10cc", "gEUD_a=8")
#: relative agreement of values: the fast path sums in another order than the reference (float
#: rounding ~1e-13); a one-step error in the candidate gives >= 1e-4 relative (asserted below)
REL_TOL = 1e-9


def _reference_metric(dose: np.ndarray, cc_per_sample: float, metric: str) -> float:
    n = dose.size
    if metric in ("Dmean",):
        return float(np.mean(dose))
    if metric == "Dmax":
        return float(np.max(dose))
    if metric == "Dmin":
        return float(np.min(dose))
    if metric.startswith("gEUD_a="):
        a = float(metric.split("=")[1])
        return float(np.mean(dose**a) ** (1.0 / a))
    if metric.startswith("V"):
        cc = metric.endswith("cc")
        threshold = float(metric[1:-2] if cc else metric[1:])
        count = int(np.count_nonzero(dose >= threshold))
        return count * cc_per_sample if cc else 100.0 * count / n
    cc = metric.endswith("cc")
    amount = float(metric[1:-2] if cc else metric[1:])
    volume = amount if cc else amount / 100.0 * n * cc_per_sample
    hottest = min(max(math.ceil(volume / cc_per_sample - 1e-9), 1), n)  # samples making up the hottest volume
    return float(np.sort(dose)[n - hottest])


def _reference_value(plans: list[np.ndarray], cc: float, constraint: dict, cand: Candidate) -> float:
    dose = cand.total_gy * plans[0] + (cand.boost_increment_gy * plans[1] if len(plans) > 1 else 0.0)
    if constraint["scope"] == "per_fraction":
        dose = dose / cand.fractions
    elif constraint["dose_type"] == "eqd2":
        ab = constraint["alpha_beta_gy"]
        dose = dose * (dose / cand.fractions + ab) / (2.0 + ab)
    return _reference_metric(dose, cc, constraint["metric"])


def _random_world(rng: np.random.Generator) -> tuple[dict[str, list[np.ndarray]], float]:
    """Non-negative unit doses: base (1 Gy to the PTV scale) and boost, several shapes per organ."""
    cc = float(rng.uniform(0.002, 0.02))
    plans = {}
    for name in STRUCTURES:
        n = int(rng.integers(300, 4000))
        base = rng.beta(rng.uniform(0.3, 3), rng.uniform(0.5, 4), n) * rng.uniform(0.3, 1.1)
        boost = rng.uniform(0, 1, n) ** rng.uniform(1, 6) * rng.uniform(0.0, 0.8)
        plans[name] = [base, boost]
    return plans, cc


def _random_candidates(rng: np.random.Generator) -> list[Candidate]:
    kind = rng.integers(3)
    if kind == 0:  # fixed fractions, escalating dose per fraction (base-only: one sort per structure)
        n = int(rng.integers(20, 35))
        return [Candidate(round(d * n, 6), n) for d in np.arange(1.8, 3.0, 0.05)]
    if kind == 1:  # fixed dose per fraction, escalating the number of fractions
        return [Candidate(round(2.0 * n, 6), n) for n in range(25, 40)]
    base = 66.0  # integrated boost on a fixed base: the plan sum's order changes with the increment
    return [Candidate(base, 24, round(t - base, 6)) for t in np.arange(72.0, 86.5, 0.5)]


def _random_constraints(rng: np.random.Generator, plans: dict[str, list[np.ndarray]], cc: float, cands: list[Candidate]) -> list[dict]:
    """3-6 constraints; each limit lies between two neighbouring candidates' reference values (so the
    constraint binds inside the scan), above all of them (never binds) or below all (always violated)."""
    out = []
    for i in range(int(rng.integers(3, 7))):
        c = {"id": f"c{i}", "structure": str(rng.choice(STRUCTURES)), "metric": str(rng.choice(METRICS)),
             "scope": "per_fraction" if rng.uniform() < 0.15 else "total"}
        c["dose_type"] = "eqd2" if c["scope"] == "total" and rng.uniform() < 0.4 else "physical"
        if c["dose_type"] == "eqd2":
            c["alpha_beta_gy"] = float(rng.choice([2.0, 3.0, 10.0]))
        values = np.array([_reference_value(plans[c["structure"]], cc, c, k) for k in cands])
        where = rng.uniform()
        if where < 0.1:
            c["limit"] = float(values.max() * 1.1 + 1.0)
        elif where < 0.15:
            c["limit"] = float(values.min() * 0.5 - 1.0)
        else:
            j = int(rng.integers(len(cands) - 1))
            c["limit"] = float(0.5 * (values[j] + values[j + 1]))
        out.append(c)
    return out


def _view(plans: dict[str, list[np.ndarray]], cc: float, which: list[int], cache: dict[str, dict]) -> dict[str, StructureSamples]:
    """Samples restricted to some plans, sharing one memo per structure (as ``plans_view`` does)."""
    return {n: StructureSamples(n, [p[i] for i in which], np.full(p[0].size, cc), 0.0, cache.setdefault(n, {})) for n, p in plans.items()}


@pytest.mark.parametrize("seed", range(40))
def test_search_equals_an_exhaustive_scan_on_random_plans(seed: int) -> None:
    """Random non-negative unit doses (base + boost), random constraint sets (Dmean, Dmax, Dmin,
    D0.03cc, D2/D50/D95, V20/V5/V10cc, gEUD; physical, EQD2 and per-fraction) and three kinds of
    candidate grid: the chosen candidate, each candidate's feasibility, the limiting constraints,
    the binding doses and every value agree with the naive reference (values to 1e-9 relative).

    Nearest wrong answer: the neighbouring candidate (an off-by-one in the scan or a value read at
    the wrong prescription): the limits sit half-way between two neighbours' values, so its values
    differ by >= 1e-4 relative somewhere, which the 1e-9 tolerance rejects (asserted)."""
    rng = np.random.default_rng(seed)
    plans, cc = _random_world(rng)
    cands = _random_candidates(rng)
    constraints = _random_constraints(rng, plans, cc, cands)
    cache: dict[str, dict] = {}
    # a view with another boost plan first, sharing the memo: its values must not leak into this one
    other = {n: [p[0], p[1][::-1].copy()] for n, p in plans.items()}
    search({n: StructureSamples(n, v, np.full(v[0].size, cc), 0.0, cache.setdefault(n, {})) for n, v in other.items()}, constraints, cands)
    result = search(_view(plans, cc, [0, 1], cache), constraints, cands)

    reference = [{c["id"]: _reference_value(plans[c["structure"]], cc, c, k) for c in constraints} for k in cands]
    ref_violated = [[c["id"] for c in constraints if values[c["id"]] > c["limit"] + 1e-9] for values in reference]
    ref_feasible = [i for i, v in enumerate(ref_violated) if not v]
    assert [e.violated for e in result.evaluations] == ref_violated
    if ref_feasible:
        assert result.chosen is not None and result.chosen.candidate == cands[ref_feasible[-1]]
        limiting = ref_violated[ref_feasible[-1] + 1] if ref_feasible[-1] + 1 < len(cands) else []
        assert result.limiting == limiting
    else:
        assert result.chosen is None
    for c in constraints:
        first = next((k for k, v in zip(cands, ref_violated) if c["id"] in v), None)
        assert result.binds_at_gy[c["id"]] == (first.total_gy + first.boost_increment_gy if first else None)
    worst_error, step_change = 0.0, 0.0
    for i, (e, values) in enumerate(zip(result.evaluations, reference)):
        for cid, ref in values.items():
            worst_error = max(worst_error, abs(e.values[cid] - ref) / max(abs(ref), 1e-12))
            if i + 1 < len(reference):
                step_change = max(step_change, abs(reference[i + 1][cid] - ref) / max(abs(ref), 1e-12))
    assert worst_error <= REL_TOL
    assert step_change > 1e-4 > REL_TOL  # the nearest wrong answer is far outside the tolerance


def test_memo_keeps_the_plans_of_each_view_apart() -> None:
    """Two views sharing one memo (base + boost A, base + boost B): the same candidate gives each view
    its own plan sum. Nearest wrong answer: view B reading view A's memoised value (Dmax 2 x 0.5 + 1 x
    0.9 = 1.9 Gy instead of 2 x 0.5 + 1 x 0.1 = 1.1 Gy); tolerance 1e-12 Gy rejects it."""
    cache: dict = {}
    base, boost_a, boost_b = np.full(10, 0.5), np.full(10, 0.9), np.full(10, 0.1)
    a = {"X": StructureSamples("X", [base, boost_a], np.full(10, 0.01), 0.0, cache)}
    b = {"X": StructureSamples("X", [base, boost_b], np.full(10, 0.01), 0.0, cache)}
    constraint = [{"id": "x", "structure": "X", "metric": "Dmax", "limit": 100.0, "scope": "total", "dose_type": "physical"}]
    cand = [Candidate(2.0, 2, 1.0)]
    value_a = search(a, constraint, cand).chosen.values["x"]
    value_b = search(b, constraint, cand).chosen.values["x"]
    assert abs(value_a - 1.9) < 1e-12 and abs(value_b - 1.1) < 1e-12 and abs(value_a - value_b) > 1e-12
