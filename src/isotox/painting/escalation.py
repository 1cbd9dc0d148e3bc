"""Isotoxic escalation of one strategy: the base PTV plan at the protocol's base prescription plus
one component (a boost plan or a painted plan) scaled by the exact search of ``isotox.dose.search``.

Candidates are base_total x base + increment x component for increments 0, step, ... up to the
strategy's ceiling; ``dose.search.search`` recomputes every constraint at every candidate and keeps
the highest feasible one, so the component is raised until the first constraint binds. A patient
whose base prescription alone breaks a constraint gets no escalation: the strategy is reported
infeasible, with the highest isotoxic uniform dose <= the base prescription as its plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from isotox.dose.dvh import StructureSamples
from isotox.dose.search import Candidate, candidates, search


def component_view(samples: dict[str, StructureSamples], index: int | None) -> dict[str, StructureSamples]:
    """The samples of (base, component ``index``) - or the base alone when ``index`` is None."""
    keep = [0] if index is None else [0, index]
    return {n: StructureSamples(n, [s.doses[i] for i in keep], s.volume_cc, s.outside_fraction) for n, s in samples.items()}


@dataclass
class Escalation:
    """The chosen candidate of one strategy and why the escalation stopped."""

    feasible: bool  # the strategy's own rule holds (base prescription kept, every constraint met)
    candidate: Candidate | None  # the plan delivered (None: not even the lowest uniform dose is feasible)
    with_component: bool  # the candidate includes the component (False: uniform fallback)
    limiting: str  # constraint id(s) that fail at the next step, 'ceiling (x Gy)' or ''
    values: dict[str, float]  # every constraint's value at the candidate
    note: str = ""

    def weights(self) -> tuple[float, ...]:
        c = self.candidate
        if c is None:
            return ()
        return (c.total_gy, c.boost_increment_gy) if self.with_component else (c.total_gy,)


def escalate(samples: dict[str, StructureSamples], protocol: dict[str, Any], component: int | None, base_total_gy: float,
             fractions: int, max_increment_gy: float, step_gy: float) -> Escalation:
    """Scale component ``component`` of ``samples`` (doses[0] = base unit plan) on top of
    ``base_total_gy`` x base, from 0 to ``max_increment_gy`` in ``step_gy``, isotoxically."""
    constraints = protocol["constraints"]
    tops = [] if component is None else list(np.arange(step_gy, max_increment_gy + 1e-9, step_gy))
    if component is not None and max_increment_gy - (tops[-1] if tops else 0.0) > 1e-6:
        tops.append(max_increment_gy)  # the ceiling itself is a candidate even when off the step grid
    cands = [Candidate(base_total_gy, fractions, 0.0)] + [Candidate(base_total_gy, fractions, round(float(t), 6)) for t in tops]
    view = component_view(samples, component)
    result = search(view, constraints, cands)
    if result.not_prescribable:
        return Escalation(False, None, False, "", {}, result.not_prescribable)
    if result.chosen is not None:
        chosen = result.chosen
        limiting = ",".join(result.limiting) if result.limiting else (
            f"ceiling ({base_total_gy + cands[-1].boost_increment_gy:g} Gy)" if component is not None else "")
        return Escalation(True, chosen.candidate, component is not None, limiting, chosen.values)
    # the base prescription alone breaks a constraint: the highest isotoxic uniform dose instead
    fallback = search(component_view(samples, None), constraints, candidates(protocol, max_total_gy=base_total_gy))
    violated = ",".join(result.evaluations[0].violated)
    if fallback.chosen is None:
        return Escalation(False, None, False, violated, {}, f"no dose of the protocol keeps every constraint (violated at the lowest: {violated})")
    # limiting: what binds at the dose shown (the uniform search's limiting constraints), not
    # everything the base prescription breaks (that list is in the note)
    binding = ",".join(fallback.limiting) if fallback.limiting else violated
    return Escalation(False, fallback.chosen.candidate, False, binding, fallback.chosen.values,
                      f"the base {base_total_gy:g} Gy breaks {violated}: no escalation, isotoxic uniform {fallback.chosen.candidate.total_gy:g} Gy shown")
