"""A constraint's DVH metric for a candidate prescription, without sorting the structure's samples.

Why: the isotoxic search evaluates every candidate, and a candidate's dose is a weighted sum of
unit plans (base x total + boost x increment). Building a sorted ``Dvh`` per structure and
candidate (what the search did) made 374 argsorts 81 % of a 538 s search at clinical size. Only
the quantile metrics (Dx, Dxcc) need an order statistic, and one order statistic is a partial sort
(``np.partition``, O(N)); Vx, Dmean, Dmax, Dmin and gEUD need no order at all. When a candidate
scales a single plan (a base-only scan) its order is that plan's order for every candidate: the
plan is sorted once and every quantile is one index into it.

The values are those of ``Dvh.metric`` with ``search.constraint_dvh`` on the same samples: order
statistics and counts are the same numbers; sums (Dmean, gEUD, the cc of Vx) agree to float
rounding (~1e-13 relative, well inside the constraint check's 1e-9). That needs equal sample
volumes (``sample_structure`` makes them equal) and non-negative doses (so EQD2 keeps the order);
anything else is evaluated through ``Dvh`` as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from isotox.dose.dvh import StructureSamples, parse_metric

FloatArray = NDArray[np.float64]


def _transform(dose: FloatArray | float, constraint: dict[str, Any], fractions: int) -> Any:
    """Physical total dose to the constraint's terms, elementwise (the arithmetic of ``Dvh.scaled``/``Dvh.eqd2``)."""
    if constraint.get("scope") == "per_fraction":
        return dose * (1.0 / fractions)
    if constraint.get("dose_type") == "eqd2":
        ab = float(constraint["alpha_beta_gy"])
        return dose * (dose / fractions + ab) / (2.0 + ab)
    return dose


def _combine(weights: tuple[float, ...], doses: list[FloatArray]) -> FloatArray:
    """sum_p w_p dose_p left to right, zero weights skipped: the arithmetic of ``StructureSamples.dvh``,
    so the values are the same numbers, and monotone in every weight for non-negative doses."""
    active = [(w, d) for w, d in zip(weights, doses) if w]
    if not active:
        return np.zeros(doses[0].size if doses else 0)
    total = active[0][0] * active[0][1]
    for w, d in active[1:]:
        total += w * d
    return total


class StructureMetrics:
    """One structure's samples prepared for many candidates (held in ``StructureSamples.cache``).

    A scan's candidates form a *family* (``hint``): for non-negative doses every sample's dose lies
    between its dose at the family's lowest and highest weights. Samples above a Vx threshold at the
    lowest weights count for every candidate, samples below it at the highest count for none, and
    only the rest (the shell that crosses the threshold inside the scan) is summed per candidate;
    likewise only samples that reach the k-th largest dose of the lowest weights can be among the k
    hottest of any candidate. The answers are those of the whole array, on a fraction of it."""

    def __init__(self, samples: StructureSamples) -> None:
        self.samples = samples
        volume = samples.volume_cc
        self.n = int(volume.size)
        shared = samples.cache.setdefault(("volume", id(volume)), {})
        assert isinstance(shared, dict)
        if shared.get("array") is not volume:
            shared.clear()
            shared.update(array=volume, total=float(volume.sum()), uniform=bool(self.n) and bool(np.all(volume == volume[0])))
        self._volume = shared
        self.total_cc = float(shared["total"])
        self.per_sample_cc = float(volume[0]) if self.n else 0.0
        # equal volumes: the cumulative volume of the k hottest samples does not depend on which they are
        self.exact = bool(shared["uniform"]) and all(self._nonnegative(d) for d in samples.doses)
        self._dose_key: tuple[Any, ...] | None = None
        self._dose: FloatArray | None = None
        self._dose_sorted = False
        self._families: list[tuple[tuple[float, ...], tuple[float, ...]]] = []
        self._subsets: dict[tuple[Any, ...], tuple[int, list[FloatArray]]] = {}
        self._plan_sums: list[float] | None = None

    def _nonnegative(self, dose: FloatArray) -> bool:
        key = ("nonnegative", id(dose))
        hit = self.samples.cache.get(key)
        if hit is None or hit[0] is not dose:  # type: ignore[index]
            hit = (dose, not dose.size or float(dose.min()) >= 0.0)
            self.samples.cache[key] = hit
        return bool(hit[1])  # type: ignore[index]

    @property
    def cumulative(self) -> FloatArray:
        if "cumulative" not in self._volume:
            self._volume["cumulative"] = np.cumsum(self._volume["array"])
        return self._volume["cumulative"]  # type: ignore[no-any-return]

    def hint(self, family: list[tuple[float, ...]]) -> None:
        """The weights of a scan about to be evaluated (plan sums of two or more plans only)."""
        if family and any(sum(1 for w in f if w) > 1 for f in family) and all(min(f) >= 0 for f in family):
            bounds = (tuple(min(f[p] for f in family) for p in range(len(family[0]))), tuple(max(f[p] for f in family) for p in range(len(family[0]))))
            if bounds not in self._families:
                self._families.append(bounds)

    def _family(self, weights: tuple[float, ...]) -> int | None:
        for index, (lo, hi) in enumerate(self._families):
            if len(lo) == len(weights) and all(a <= w <= b for a, w, b in zip(lo, weights, hi)):
                return index
        return None

    def _sorted_plan(self, plan: FloatArray) -> FloatArray:
        """The plan's samples sorted descending, once per array (shared by every view of the samples)."""
        key = ("sorted", id(plan))
        hit = self.samples.cache.get(key)
        if hit is None or hit[0] is not plan:  # type: ignore[index]
            hit = (plan, -np.sort(-plan, kind="stable"))
            self.samples.cache[key] = hit
        return hit[1]  # type: ignore[index]

    def _single_plan(self, weights: tuple[float, ...]) -> bool:
        active = [w for w in weights if w]
        return len(active) <= 1 and all(w > 0 for w in active)

    def _candidate_dose(self, weights: tuple[float, ...]) -> tuple[FloatArray, bool]:
        """The whole plan sum (kept for the structure's next constraint) and whether it is sorted."""
        key = tuple((w, id(d)) for w, d in zip(weights, self.samples.doses) if w)
        if key != self._dose_key:
            if self._single_plan(weights):
                plan = next((d for w, d in zip(weights, self.samples.doses) if w), None)
                w = next((w for w in weights if w), 0.0)
                self._dose = w * self._sorted_plan(plan) if plan is not None else np.zeros(self.n)
                self._dose_sorted = True
            else:
                self._dose, self._dose_sorted = _combine(weights, self.samples.doses), False
            self._dose_key = key
        assert self._dose is not None
        return self._dose, self._dose_sorted

    def _subset(self, family: int, kind: tuple[Any, ...], constraint: dict[str, Any], fractions: int) -> tuple[int, list[FloatArray]]:
        """(samples always counted, the undecided samples' plan doses) for a family and a threshold
        (``("V", x)``) or a rank from the top (``("rank", r)``)."""
        key = (family, kind, constraint.get("scope"), constraint.get("dose_type"), constraint.get("alpha_beta_gy"), fractions)
        if key not in self._subsets:
            lo, hi = self._families[family]
            low, high = _combine(lo, self.samples.doses), _combine(hi, self.samples.doses)
            if kind[0] == "V":
                low, high = _transform(low, constraint, fractions), _transform(high, constraint, fractions)
                undecided = (low < kind[1]) & (high >= kind[1])
                always = int(np.count_nonzero(low >= kind[1]))
            else:  # physical dose, transformed after picking (monotone)
                rank = kind[1]
                floor = np.partition(low, self.n - 1 - rank)[self.n - 1 - rank]
                undecided, always = high >= floor, 0
            index = np.flatnonzero(undecided)
            self._subsets[key] = (always, [d[index] for d in self.samples.doses])
        return self._subsets[key]

    def _kth_largest(self, dose: FloatArray, is_sorted: bool, rank: int) -> float:
        return float(dose[rank]) if is_sorted else float(np.partition(dose, dose.size - 1 - rank)[dose.size - 1 - rank])

    def value(self, constraint: dict[str, Any], weights: tuple[float, ...], fractions: int) -> float:
        """The constraint's metric for the plan sum with ``weights`` over ``fractions`` (memoised)."""
        plans = tuple((w, id(d)) for w, d in zip(weights, self.samples.doses) if w)  # the same sum in any view is one entry
        key = ("value", plans, fractions, constraint["metric"], constraint.get("scope"), constraint.get("dose_type"), constraint.get("alpha_beta_gy"))
        cached = self.samples.cache.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        value = self._compute(constraint, weights, fractions)
        self.samples.cache[key] = value
        return value

    def _compute(self, constraint: dict[str, Any], weights: tuple[float, ...], fractions: int) -> float:
        if not self.n:
            return float("nan")
        named, d_val, d_cc, v_val, v_cc, a = parse_metric(constraint["metric"])
        family = None if self._single_plan(weights) else self._family(weights)
        physical = constraint.get("scope") != "per_fraction" and constraint.get("dose_type") != "eqd2"
        if named in ("Dmax", "Dmin") or d_val is not None:  # order statistics: pick, then transform (monotone for dose >= 0)
            if named == "Dmin":
                rank = self.n - 1
            elif named == "Dmax":
                rank = 0
            else:
                volume = float(d_val) if d_cc else float(d_val) / 100.0 * self.total_cc  # type: ignore[arg-type]
                rank = min(int(np.searchsorted(self.cumulative, min(volume, self.total_cc) - 1e-12)), self.n - 1)
            if family is not None and rank < self.n // 2:
                _, doses = self._subset(family, ("rank", rank), constraint, fractions)
                picked = self._kth_largest(_combine(weights, doses), False, rank)
            else:
                dose, is_sorted = self._candidate_dose(weights)
                picked = float(dose.max()) if rank == 0 and not is_sorted else float(dose.min()) if rank == self.n - 1 and not is_sorted \
                    else self._kth_largest(dose, is_sorted, rank)
            return float(_transform(picked, constraint, fractions))
        if v_val is not None:
            threshold = float(v_val)
            if family is not None:
                always, doses = self._subset(family, ("V", threshold), constraint, fractions)
                count = always + int(np.count_nonzero(_transform(_combine(weights, doses), constraint, fractions) >= threshold))
            else:
                count = int(np.count_nonzero(_transform(self._candidate_dose(weights)[0], constraint, fractions) >= threshold))
            cc = count * self.per_sample_cc
            return cc if v_cc else 100.0 * cc / self.total_cc
        if named in ("Dmean", "MLD") and physical and not self._single_plan(weights):  # linear: per-plan sums (rounding-level difference)
            if self._plan_sums is None:
                self._plan_sums = [float(d.sum()) for d in self.samples.doses]
            return float(sum(w * t for w, t in zip(weights, self._plan_sums) if w) * self.per_sample_cc / self.total_cc)
        values = _transform(self._candidate_dose(weights)[0], constraint, fractions)
        if named in ("Dmean", "MLD"):
            return float(values.sum() * self.per_sample_cc / self.total_cc)
        exponent = float(a)  # type: ignore[arg-type]
        return float(np.mean(np.maximum(values, 0.0) ** exponent) ** (1.0 / exponent))


def structure_metrics(samples: StructureSamples) -> StructureMetrics:
    """The structure's evaluator, built once per samples object."""
    key = ("metrics", tuple(id(d) for d in samples.doses))  # views of other plans share the cache, not the evaluator
    hit = samples.cache.get(key)
    if not isinstance(hit, StructureMetrics) or len(hit.samples.doses) != len(samples.doses) \
            or any(a is not b for a, b in zip(hit.samples.doses, samples.doses)):
        hit = StructureMetrics(samples)
        samples.cache[key] = hit
    return hit
