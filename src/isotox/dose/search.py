"""The isotoxic prescription search: the highest prescription that keeps every constraint of the protocol.

Plans enter as per-structure dose samples of *unit* plans (``StructureSamples``): plan 0 is the
base plan normalised to 1 Gy total prescription to the PTV, plan 1 (optional) the boost plan
normalised to 1 Gy to the boost PTV. A candidate prescription is a total base dose, a number of
fractions and a boost increment; its dose is base x total + boost x increment, voxel by voxel.

Exact search: every candidate the protocol's fractionation rule allows is evaluated (each DVH
metric recomputed from the samples, never extrapolated linearly, so non-linear metrics such as
Vx and EQD2 are honoured), and the highest one where all constraints hold is chosen. The
evaluation sorts nothing per candidate (``candidate_metrics``: counts, sums, one partial sort for a
quantile, one sort per plan for a base-only scan) and remembers each value, so the scan table and
the PET-boost rule's repeated escalations reuse the search's numbers instead of recomputing them. The result
names the limiting constraint (the one that fails at the next candidate up), each constraint's
value and margin at the chosen dose, and the lowest candidate dose at which each constraint
would fail ("binds at").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from isotox.dose.candidate_metrics import structure_metrics
from isotox.dose.dvh import Dvh, StructureSamples
from isotox.settings.protocol import boost_ceiling_gy


@dataclass(frozen=True)
class Candidate:
    total_gy: float  # base prescription to the PTV (physical, total)
    fractions: int
    boost_increment_gy: float = 0.0  # extra total dose to the boost target (integrated boost)

    @property
    def dose_per_fraction_gy(self) -> float:
        return self.total_gy / self.fractions


def candidates(protocol: dict[str, Any], max_total_gy: float | None = None) -> list[Candidate]:
    """Every prescription the fractionation rule allows within total_dose_gy, ascending."""
    rule = protocol["fractionation"]
    lo, hi = protocol["total_dose_gy"]["min"], protocol["total_dose_gy"]["max"]
    hi = min(hi, max_total_gy) if max_total_gy is not None else hi
    out: list[Candidate] = []
    if rule["rule"] == "fixed_dose_per_fraction":
        d = float(rule["dose_per_fraction_gy"])
        fr = rule["fractions"]
        lo_n, hi_n = (fr, fr) if isinstance(fr, int) else (fr["min"], fr["max"])
        out = [Candidate(round(n * d, 6), n) for n in range(lo_n, hi_n + 1)]
    else:
        n = int(rule["fractions"])
        dpf = rule["dose_per_fraction_gy"]
        if isinstance(dpf, dict):
            step = dpf.get("step", 0.05)
            values = np.arange(dpf["min"], dpf["max"] + step / 2, step)
        else:
            values = np.array([float(dpf)])
        out = [Candidate(round(float(v) * n, 6), n) for v in values]
    return [c for c in out if lo - 1e-9 <= c.total_gy <= hi + 1e-9]


def constraint_dvh(dvh: Dvh, constraint: dict[str, Any], fractions: int) -> Dvh:
    """A physical total-dose DVH in the constraint's terms: per fraction, or EQD2 with its alpha/beta."""
    if constraint.get("scope") == "per_fraction":
        return dvh.scaled(1.0 / fractions)
    if constraint.get("dose_type") == "eqd2":
        return dvh.eqd2(fractions, float(constraint["alpha_beta_gy"]))
    return dvh


def _weights(samples: StructureSamples, cand: Candidate) -> tuple[float, ...]:
    return (cand.total_gy, cand.boost_increment_gy) if len(samples.doses) > 1 else (cand.total_gy,)


def _candidate_dvh(samples: StructureSamples, cand: Candidate) -> Dvh:
    """Physical total-dose DVH of one structure for a candidate (base plan, plus boost when sampled)."""
    return samples.dvh(_weights(samples, cand))


def constraint_value(samples: dict[str, StructureSamples], constraint: dict[str, Any], cand: Candidate,
                     physical: Dvh | None = None) -> float:
    """The constraint's metric for a candidate (physical or EQD2, total or per fraction).
    ``physical``: the structure's DVH for this candidate when the caller already has it.

    Without it the value comes from ``candidate_metrics`` (no sort per candidate, memoised per
    structure), or from a sorted ``Dvh`` when the samples do not allow that (unequal volumes,
    negative doses)."""
    name = constraint["structure"]
    if name not in samples:
        return float("nan")
    if physical is None:
        metrics = structure_metrics(samples[name])
        if metrics.exact:
            return metrics.value(constraint, _weights(samples[name], cand), cand.fractions)
        physical = _candidate_dvh(samples[name], cand)
    return constraint_dvh(physical, constraint, cand.fractions).metric(constraint["metric"])


@dataclass
class Evaluation:
    candidate: Candidate
    values: dict[str, float]
    violated: list[str]

    @property
    def feasible(self) -> bool:
        return not self.violated


def evaluate(samples: dict[str, StructureSamples], constraints: list[dict[str, Any]], cand: Candidate) -> Evaluation:
    values, violated = {}, []
    physical: dict[str, Dvh] = {}  # one DVH per structure and candidate where a sorted DVH is needed
    for c in constraints:
        name = c["structure"]
        if name in samples and name not in physical and not structure_metrics(samples[name]).exact:
            physical[name] = _candidate_dvh(samples[name], cand)
        v = constraint_value(samples, c, cand, physical.get(name))
        values[c["id"]] = v
        if np.isfinite(v) and v > c["limit"] + 1e-9:
            violated.append(c["id"])
    return Evaluation(cand, values, violated)


@dataclass
class SearchResult:
    chosen: Evaluation | None
    evaluations: list[Evaluation]
    limiting: list[str]
    binds_at_gy: dict[str, float | None]
    missing_structures: list[str] = field(default_factory=list)
    not_prescribable: str | None = None  # why no dose may be prescribed at all (a required structure is absent)

    @property
    def feasible(self) -> bool:
        return self.chosen is not None

    def as_dict(self, constraints: list[dict[str, Any]]) -> dict[str, Any]:
        limits = {c["id"]: c["limit"] for c in constraints}
        chosen = self.chosen
        return {
            "feasible": self.feasible,
            "total_gy": chosen.candidate.total_gy if chosen else None,
            "fractions": chosen.candidate.fractions if chosen else None,
            "dose_per_fraction_gy": chosen.candidate.dose_per_fraction_gy if chosen else None,
            "boost_increment_gy": chosen.candidate.boost_increment_gy if chosen else None,
            "limiting_constraints": self.limiting,
            "constraints": {cid: {"value": (chosen.values.get(cid) if chosen else None), "limit": limits[cid],
                                  "margin": (limits[cid] - chosen.values[cid]) if chosen and np.isfinite(chosen.values.get(cid, np.nan)) else None,
                                  "binds_at_gy": self.binds_at_gy.get(cid)} for cid in limits},
            "violated_at_lowest": (self.evaluations[0].violated if self.evaluations and not chosen else []),
            "missing_structures": self.missing_structures,
            "not_prescribable": self.not_prescribable,
        }


def missing_required(samples: dict[str, StructureSamples], constraints: list[dict[str, Any]]) -> tuple[list[str], str | None]:
    """Structures of the constraints that are absent, and the reason the patient cannot be prescribed
    when any of them belongs to a constraint not marked ``optional: true``.

    Why: an organ that is not contoured is not an organ that receives no dose; escalating as if its
    constraint held would prescribe blind to it."""
    missing = sorted({c["structure"] for c in constraints if c["structure"] not in samples})
    required = sorted({c["structure"] for c in constraints if c["structure"] not in samples and not c.get("optional", False)})
    if not required:
        return missing, None
    ids = ", ".join(c["id"] for c in constraints if c["structure"] in required)
    return missing, (f"structure {', '.join(required)} absent, so constraint {ids} cannot be evaluated: contour it in the RTSTRUCT, "
                     f"or map the clinic's ROI name to it in roi_names.yaml (or mark the constraint optional in the protocol)")


def search(samples: dict[str, StructureSamples], constraints: list[dict[str, Any]], cands: list[Candidate]) -> SearchResult:
    """Evaluate every candidate (ascending) and keep the highest feasible one."""
    missing, refusal = missing_required(samples, constraints)
    if refusal:
        return SearchResult(None, [], [], {c["id"]: None for c in constraints}, missing, refusal)
    for name in {c["structure"] for c in constraints if c["structure"] in samples}:  # the scan's weights: each structure narrows its samples once
        metrics = structure_metrics(samples[name])
        if metrics.exact:
            metrics.hint([_weights(samples[name], c) for c in cands])
    evaluations = [evaluate(samples, constraints, c) for c in cands]
    feasible = [i for i, e in enumerate(evaluations) if e.feasible]
    chosen_index = feasible[-1] if feasible else None
    limiting: list[str] = []
    if chosen_index is not None and chosen_index + 1 < len(evaluations):
        limiting = evaluations[chosen_index + 1].violated
    binds: dict[str, float | None] = {}
    for c in constraints:
        first = next((e for e in evaluations if c["id"] in e.violated), None)
        binds[c["id"]] = first.candidate.total_gy + first.candidate.boost_increment_gy if first else None
    return SearchResult(evaluations[chosen_index] if chosen_index is not None else None, evaluations, limiting, binds, missing)


def boost_candidates(base: Candidate, protocol: dict[str, Any], start_gy: float) -> list[Candidate]:
    """Integrated-boost prescriptions from ``start_gy`` to the protocol's ceiling, in its step, on a fixed base."""
    boost = protocol["boost"]
    step = float(boost.get("step_gy", 0.5))
    ceiling = boost_ceiling_gy(protocol)
    tops = [float(t) for t in np.arange(start_gy, ceiling + 1e-9, step)]
    if ceiling - tops[-1] > 1e-6:  # a per-fraction ceiling (3.6 Gy x 24 = 86.4 Gy) off the step grid is itself a candidate
        tops.append(ceiling)
    return [Candidate(base.total_gy, base.fractions, round(t - base.total_gy, 6)) for t in tops]


def not_randomized_search(samples: dict[str, StructureSamples], protocol: dict[str, Any]) -> dict[str, Any]:
    """The PET-boost rule for a patient who is not randomized: the highest isotoxic base dose
    <= ``boost.base_total_gy``, no boost. Shared by the 72 Gy test failing and by a cohort sheet
    that records the patient as not randomized (the plan follows the trial's record)."""
    constraints = protocol["constraints"]
    result = search(samples, constraints, candidates(protocol, max_total_gy=float(protocol["boost"]["base_total_gy"])))
    return {"randomized": False, "arm": "not_randomized", "boost_target": None, **result.as_dict(constraints),
            "boost_total_gy": None, "boost_dose_per_fraction_gy": None, "boost_stopped_by": None}


def pet_boost_search(samples_arm: dict[str, dict[str, StructureSamples]], protocol: dict[str, Any], arm: str) -> dict[str, Any]:
    """The PET-boost rule. ``samples_arm['A'|'B']``: structure samples of (base, boost-to-that-arm's target).

    1. test the whole-tumour boost (arm A plan) at ``boost.test_total_gy`` on the base prescription;
    2. feasible: the patient is randomizable; escalate the allocated arm's boost from the test
       dose to the protocol ceiling (``boost_ceiling_gy``) as far as the constraints allow;
    3. not feasible: not randomized; the highest isotoxic base dose <= base_total_gy, no boost.
    """
    boost = protocol["boost"]
    constraints = protocol["constraints"]
    n = int(protocol["fractionation"]["fractions"])
    base = Candidate(float(boost["base_total_gy"]), n)
    missing, refusal = missing_required(samples_arm["A"], constraints)
    if refusal:
        return {"whole_tumour_boost_test": {"total_gy": boost["test_total_gy"], "feasible": False, "violated": [], "values": {}},
                "randomized": False, "arm": "not_prescribable", "boost_target": None, "boost_total_gy": None, "boost_stopped_by": None,
                **SearchResult(None, [], [], {c["id"]: None for c in constraints}, missing, refusal).as_dict(constraints)}
    test = evaluate(samples_arm["A"], constraints, Candidate(base.total_gy, n, float(boost["test_total_gy"]) - base.total_gy))
    out: dict[str, Any] = {"whole_tumour_boost_test": {"total_gy": boost["test_total_gy"], "feasible": test.feasible, "violated": test.violated,
                                                       "values": test.values}}
    if test.feasible:
        result = search(samples_arm[arm], constraints, boost_candidates(base, protocol, float(boost["test_total_gy"])))
        out.update({"randomized": True, "arm": arm, "boost_target": boost["arms"][arm]["target"], **result.as_dict(constraints)})
        out["boost_total_gy"] = base.total_gy + result.chosen.candidate.boost_increment_gy if result.chosen else None
        out["boost_dose_per_fraction_gy"] = out["boost_total_gy"] / n if out["boost_total_gy"] else None
        ceiling = boost_ceiling_gy(protocol)
        out["boost_ceiling_gy"] = ceiling
        # what stopped the escalation: the next step's violated constraints, or the protocol's ceiling
        out["boost_stopped_by"] = ",".join(result.limiting) if result.limiting else (
            f"protocol ceiling ({ceiling:g} Gy)" if result.chosen is not None and result.chosen is result.evaluations[-1] else None)
    else:
        out.update(not_randomized_search(samples_arm["A"], protocol))
    return out
