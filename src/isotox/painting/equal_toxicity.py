"""Every escalated strategy of one patient at the same normal-tissue toxicity.

The isotoxic search stops each strategy where its first constraint binds *or at its ceiling*
(86.4 Gy boost ceiling, 66 Gy + 20 % for the hypoxia boost), so the strategies of a patient end at
different toxicities and their TCPs are not comparable. Here a common level of one toxicity
measure is chosen per patient, the lowest of the escalated strategies' values at their own
isotoxic/ceiling limit, and each strategy's component (boost or painted increment, on the same
base_total x base plan) is scaled back to that level:

    increment* = max { s in [0, own increment] : measure(base_total x base + s x component) <= level }

Every strategy can reach the level (its measure is continuous and non-decreasing in s for a
non-negative component, from the shared base plan's value at s = 0 to its own limit value >= the
level), and keeps every constraint and its ceiling there: each DVH metric of a non-negative dose
sum is non-decreasing in s and increment* <= the strategy's own increment, where they all held.
The measure is found by bisection on s (the metric recomputed from the samples at each step, as the
exact search does); for the mean lung dose, which is affine in s, the bisection lands on the
affine solution to float rounding.

Measures (``config/painting.yaml`` ``equal_toxicity.measure``): ``mld_gy`` (default: the mean dose
to LUNGS_MINUS_GTV, physical, the lung limit both trial protocols state) or ``ntcp_pneumonitis``
(the protocol's LKB pneumonitis model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from isotox.dose.dvh import StructureSamples
from isotox.dose.radiobiology import model_ntcp
from isotox.dose.search import Candidate, constraint_value

MEASURES = ("mld_gy", "ntcp_pneumonitis")
LUNG = "LUNGS_MINUS_GTV"
_MLD = {"id": "equal_toxicity_mld", "structure": LUNG, "metric": "Dmean", "dose_type": "physical", "scope": "total"}
#: bisection stops when the increment interval is this narrow (Gy): the measure is then within
#: ~1e-9 of the level (MLD per Gy of increment is < 1 Gy/Gy)
INCREMENT_TOLERANCE_GY = 1e-7


def measure_function(samples: dict[str, StructureSamples], protocol: dict[str, Any], measure: str) -> Callable[[Candidate], float]:
    """The toxicity measure of a candidate on ``samples`` (doses[0] base, doses[1] the component if any)."""
    if measure not in MEASURES:
        raise ValueError(f"equal-toxicity measure {measure!r}: one of {', '.join(MEASURES)}")
    if LUNG not in samples:
        raise ValueError(f"the equal-toxicity measure {measure} needs the structure {LUNG}")
    if measure == "mld_gy":
        return lambda cand: constraint_value(samples, _MLD, cand)
    model = next((m for m in protocol.get("ntcp", {}).values() if m.get("toxicity") == "pneumonitis"), None)
    if model is None or model["structure"] not in samples:
        raise ValueError("the equal-toxicity measure ntcp_pneumonitis needs a pneumonitis NTCP model in the protocol")
    lung = samples[model["structure"]]

    def ntcp(cand: Candidate) -> float:
        weights = (cand.total_gy, cand.boost_increment_gy) if len(lung.doses) > 1 else (cand.total_gy,)
        return model_ntcp(lung.dvh(weights), model, cand.fractions)

    return ntcp


@dataclass(frozen=True)
class LevelPoint:
    """One strategy scaled to the common level."""

    increment_gy: float  # the component's increment at the level (<= the strategy's own)
    value: float  # the measure there
    iterations: int


def common_level(own_values: dict[str, float]) -> tuple[float, str]:
    """The lowest measure among the escalated strategies' own limits, and the strategy that sets it."""
    finite = {n: v for n, v in own_values.items() if np.isfinite(v)}
    if not finite:
        raise ValueError("no escalated strategy with a finite toxicity measure")
    setter = min(finite, key=lambda n: (finite[n], n))
    return finite[setter], setter


def scale_to_level(measure: Callable[[Candidate], float], base_total_gy: float, fractions: int, own_increment_gy: float,
                   level: float, tolerance_gy: float = INCREMENT_TOLERANCE_GY) -> LevelPoint:
    """The largest increment in [0, own] whose measure is <= ``level`` (bisection; the measure is
    non-decreasing in the increment). At own (the strategy sets the level or its measure is flat
    there) the strategy's own point is returned unchanged."""
    at = lambda s: measure(Candidate(base_total_gy, fractions, float(s)))  # noqa: E731
    own_value = at(own_increment_gy)
    if own_value <= level:
        return LevelPoint(own_increment_gy, own_value, 0)
    lo, hi, value_lo, iterations = 0.0, own_increment_gy, at(0.0), 0
    if value_lo > level:  # cannot happen when the level is one of the strategies' own values on the same base
        raise ValueError(f"the common level {level:.6g} is below the base plan's own value {value_lo:.6g}")
    while hi - lo > tolerance_gy and iterations < 200:
        mid = 0.5 * (lo + hi)
        value = at(mid)
        if value <= level:
            lo, value_lo = mid, value
        else:
            hi = mid
        iterations += 1
    return LevelPoint(lo, value_lo, iterations)
