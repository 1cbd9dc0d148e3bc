"""The protocol's prescription for one patient from its unit plans: the isotoxic search (or the
PET-boost rule), then the prescribed plan's DVH metrics, NTCP and the EQD2 of the prescription."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from isotox.dose.dvh import Dvh, StructureSamples
from isotox.dose.radiobiology import eqd2_of_prescription, model_ntcp
from isotox.dose.search import Candidate, boost_candidates, candidates, evaluate, not_randomized_search, pet_boost_search, search
from isotox.planning.allocation import ARMS, NOT_RANDOMIZED

#: plan order inside StructureSamples.doses
PLAN_INDEX = {"base": 0, "boost_A": 1, "boost_B": 2}


def plans_view(samples: dict[str, StructureSamples], plans: list[str]) -> dict[str, StructureSamples]:
    """The same sample points restricted to some plans (e.g. base + boost_B for arm B)."""
    index = [PLAN_INDEX[p] for p in plans]
    return {name: StructureSamples(name, [s.doses[i] for i in index], s.volume_cc, s.outside_fraction) for name, s in samples.items()}


def has_boost(protocol: dict[str, Any]) -> bool:
    return "boost" in protocol


@dataclass
class Prescription:
    """The chosen prescription and the search that led to it."""

    result: dict[str, Any]  # search / PET-boost rule output (JSON-ready)
    candidate: Candidate | None  # None when infeasible even at the lowest dose
    plans: list[str]  # the unit plans it combines
    scan: pd.DataFrame  # every evaluated candidate: dose and each constraint's value
    arm: str | None  # the boost arm whose plan is prescribed


def _scan_table(samples: dict[str, StructureSamples], constraints: list[dict[str, Any]], cands: list[Candidate], label: str) -> pd.DataFrame:
    rows = []
    for cand in cands:
        ev = evaluate(samples, constraints, cand)
        rows.append({"scan": label, "total_gy": cand.total_gy, "fractions": cand.fractions, "boost_increment_gy": cand.boost_increment_gy,
                     "target_gy": cand.total_gy + cand.boost_increment_gy, "feasible": ev.feasible, "violated": ",".join(ev.violated),
                     **{cid: ev.values[cid] for cid in ev.values}})
    return pd.DataFrame(rows)


def prescribe(samples: dict[str, StructureSamples], protocol: dict[str, Any], arm: str | None) -> Prescription:
    """Run the protocol's rule. PET-boost protocols need samples with base, boost_A and boost_B.

    ``arm`` is the cohort sheet's record (``planning.allocation``): 'A'/'B' is applied only when the
    whole-tumour test boost is feasible; 'not_randomized' is followed even when isotox's test passes
    (the outcome tables count the patient as not randomized, so the plan must too; the disagreement
    is reported); None (before randomisation) prescribes nothing for a randomizable patient."""
    constraints = protocol["constraints"]
    if not has_boost(protocol):
        cands = candidates(protocol)
        base = plans_view(samples, ["base"])
        result = search(base, constraints, cands)
        out = result.as_dict(constraints)
        chosen = result.chosen.candidate if result.chosen else None
        scan = pd.DataFrame() if result.not_prescribable else _scan_table(base, constraints, cands, "isotoxic")
        return Prescription(out, chosen, ["base"], scan, None)

    allocated = arm if arm in ARMS else None
    by_arm = {a: plans_view(samples, ["base", f"boost_{a}"]) for a in ("A", "B")}
    shown = allocated or "A"
    out = pet_boost_search(by_arm, protocol, shown)
    out["arm_recorded"] = arm
    out["arm_allocated"] = allocated is not None
    if out.get("not_prescribable"):
        return Prescription(out, None, ["base"], pd.DataFrame(), None)
    escalation = {a: pet_boost_search(by_arm, protocol, a) for a in ("A", "B")} if out["randomized"] else {}
    out["escalation_by_arm"] = {a: {"boost_total_gy": r["boost_total_gy"], "boost_dose_per_fraction_gy": r.get("boost_dose_per_fraction_gy"),
                                    "stopped_by": r.get("boost_stopped_by"), "limiting_constraints": r["limiting_constraints"]}
                                for a, r in escalation.items()}
    n = int(protocol["fractionation"]["fractions"])
    base_total = float(protocol["boost"]["base_total_gy"])
    test_gy = float(protocol["boost"]["test_total_gy"])
    if out["randomized"] and arm == NOT_RANDOMIZED:
        out.update(not_randomized_search(by_arm["A"], protocol))
        out["allocation_note"] = (f"the cohort sheet records the patient as not randomized although the whole-tumour {test_gy:g} Gy boost keeps "
                                  f"every constraint in this plan: the plan follows the record (<= {base_total:g} Gy, no boost); compare with the clinic's initial plan")
    elif allocated and not out["randomized"]:
        out["allocation_note"] = (f"allocated arm {allocated} not applied: the whole-tumour {test_gy:g} Gy boost breaks "
                                  f"{', '.join(out['whole_tumour_boost_test']['violated'])} in this plan, so the patient is not randomized "
                                  "(the protocol applies the allocation only when that boost is feasible); if the trial randomized this patient, "
                                  "compare with the clinic's initial plan")
    if out["randomized"] and not allocated:
        # randomizable but not allocated: no prescription yet, so nothing is exported as if prescribed
        out.update({"arm": "not_allocated", "feasible": False, "awaiting_randomisation": True, "total_gy": None, "fractions": None,
                    "dose_per_fraction_gy": None, "boost_increment_gy": None, "boost_total_gy": None, "boost_stopped_by": None,
                    "note": "randomizable (the 72 Gy whole-tumour boost is feasible) but no arm allocated (cohort sheet or --arm): "
                            "no plan is prescribed or exported; both arms' escalations are in escalation_by_arm"})
        test = Candidate(base_total, n, test_gy - base_total)
        return Prescription(out, None, ["base"], _scan_table(by_arm["A"], constraints, [test], "72 Gy whole-tumour test"), None)
    if out["randomized"]:
        plans = ["base", f"boost_{shown}"]
        cands = boost_candidates(Candidate(base_total, n), protocol, test_gy)  # up to the ceiling
        scan = _scan_table(by_arm[shown], constraints, cands, f"boost arm {shown}")
        chosen = Candidate(out["total_gy"], out["fractions"], out["boost_increment_gy"]) if out["feasible"] else None
    else:
        plans = ["base"]
        cands = candidates(protocol, max_total_gy=base_total)
        scan = _scan_table(plans_view(samples, ["base"]), constraints, cands, "isotoxic (not randomized)")
        chosen = Candidate(out["total_gy"], out["fractions"]) if out["feasible"] else None
    test = Candidate(base_total, n, test_gy - base_total)
    scan = pd.concat([_scan_table(by_arm["A"], constraints, [test], "72 Gy whole-tumour test"), scan], ignore_index=True)
    return Prescription(out, chosen, plans, scan, shown if out["randomized"] else None)


def prescribed_weights(prescription: Prescription) -> tuple[float, ...]:
    c = prescription.candidate
    if c is None:
        return ()
    return (c.total_gy, c.boost_increment_gy) if len(prescription.plans) > 1 else (c.total_gy,)


def prescribed_dvhs(samples: dict[str, StructureSamples], prescription: Prescription) -> dict[str, Dvh]:
    weights = prescribed_weights(prescription)
    if not weights:
        return {}
    view = plans_view(samples, prescription.plans)
    return {name: s.dvh(weights) for name, s in view.items()}


def prescribed_dose(unit_doses: dict[str, NDArray[np.float32]], prescription: Prescription) -> NDArray[np.float32] | None:
    weights = prescribed_weights(prescription)
    if not weights:
        return None
    return sum((w * unit_doses[p] for w, p in zip(weights, prescription.plans)), start=np.zeros_like(unit_doses["base"]))


def radiobiology(dvhs: dict[str, Dvh], protocol: dict[str, Any], prescription: Prescription, tumour_alpha_beta_gy: float) -> dict[str, Any]:
    """NTCP of every protocol model and the EQD2 of the prescription (PTV dose, boost dose)."""
    c = prescription.candidate
    if c is None:
        return {"ntcp": {}, "eqd2_prescription_gy": None, "eqd2_boost_gy": None}
    ntcp = {}
    for name, model in protocol.get("ntcp", {}).items():
        dvh = dvhs.get(model["structure"])
        ntcp[name] = {"value": model_ntcp(dvh, model, c.fractions) if dvh is not None and dvh.total_cc else None,
                      "structure": model["structure"], "source": model.get("source", "")}
    boost_total = c.total_gy + c.boost_increment_gy
    return {"ntcp": ntcp, "tumour_alpha_beta_gy": tumour_alpha_beta_gy,
            "eqd2_prescription_gy": eqd2_of_prescription(c.total_gy, c.fractions, tumour_alpha_beta_gy),
            "eqd2_boost_gy": eqd2_of_prescription(boost_total, c.fractions, tumour_alpha_beta_gy) if c.boost_increment_gy else None}

