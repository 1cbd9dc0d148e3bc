"""Simon's two-stage designs (Simon, Controlled Clinical Trials 1989;10:1-10), by exact binomial search.

A design (r1/n1, r/n): enrol n1; stop if <= r1 "responses"; otherwise enrol to n and call the
treatment promising if > r responses in all. In the isotoxic trial a "response" is a patient
free of serious toxicity (p0 unacceptable, p1 hoped for). For each candidate (n, n1, r1) the
smallest r with type I error <= alpha is taken, and the design is admissible when its power is
>= 1 - beta. Optimal = smallest expected size under p0 (EN0); minimax = smallest n, then EN0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binom


@dataclass(frozen=True)
class Design:
    r1: int
    n1: int
    r: int
    n: int
    alpha: float  # P(promising | p0)
    power: float  # P(promising | p1)
    pet0: float  # probability of early termination under p0
    en0: float  # expected sample size under p0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def characteristics(r1: int, n1: int, r: int, n: int, p: float) -> tuple[float, float, float]:
    """(P(promising), PET, expected size) of design r1/n1, r/n at response rate p."""
    x1 = np.arange(r1 + 1, n1 + 1)
    tail2 = binom.sf(r - x1, n - n1, p)  # P(X2 > r - x1)
    promising = float(np.sum(binom.pmf(x1, n1, p) * tail2))
    pet = float(binom.cdf(r1, n1, p))
    return promising, pet, n1 + (1.0 - pet) * (n - n1)


def _rejection_table(n1: int, n: int, p: float) -> np.ndarray:
    """T[r1, r] = P(X1 > r1 and X1 + X2 > r) for all r1 in 0..n1, r in 0..n."""
    x1 = np.arange(n1 + 1)
    r = np.arange(n + 1)
    tail2 = binom.sf(r[None, :] - x1[:, None], n - n1, p)  # P(X2 > r - x1)
    joint = binom.pmf(x1, n1, p)[:, None] * tail2
    # sum over x1 > r1: reverse cumulative sum, shifted by one
    rev = np.cumsum(joint[::-1], axis=0)[::-1]
    return np.vstack([rev[1:], np.zeros((1, n + 1))])


def admissible_designs(p0: float, p1: float, alpha: float, power: float, n_max: int = 100) -> list[Design]:
    """Every (n1, r1, n) with its smallest valid r, meeting alpha and power, for n <= n_max."""
    if not 0 < p0 < p1 < 1:
        raise ValueError("Simon designs need 0 < p0 < p1 < 1")
    out: list[Design] = []
    for n in range(2, n_max + 1):
        for n1 in range(1, n):
            t0, t1 = _rejection_table(n1, n, p0), _rejection_table(n1, n, p1)
            for r1 in range(0, n1):
                ok = np.flatnonzero((t0[r1] <= alpha) & (np.arange(n + 1) >= r1))
                if ok.size == 0:
                    continue
                r = int(ok[0])
                if t1[r1, r] < power:
                    continue
                pet0 = float(binom.cdf(r1, n1, p0))
                out.append(Design(r1, n1, r, n, float(t0[r1, r]), float(t1[r1, r]), pet0, n1 + (1 - pet0) * (n - n1)))
        if out and n > min(d.n for d in out) + 25:
            break  # optimal designs are never this much larger than the minimax n
    return out


def optimal_and_minimax(p0: float, p1: float, alpha: float, power: float, n_max: int = 100) -> tuple[Design, Design]:
    designs = admissible_designs(p0, p1, alpha, power, n_max)
    if not designs:
        raise ValueError(f"no two-stage design with n <= {n_max} for p0={p0}, p1={p1}, alpha={alpha}, power={power}")
    optimal = min(designs, key=lambda d: (round(d.en0, 9), d.n))
    minimax = min(designs, key=lambda d: (d.n, round(d.en0, 9)))
    return optimal, minimax


def evaluate(r1: int, n1: int, r: int, n: int, p0: float, p1: float) -> Design:
    a, pet0, en0 = characteristics(r1, n1, r, n, p0)
    pw, _, _ = characteristics(r1, n1, r, n, p1)
    return Design(r1, n1, r, n, a, pw, pet0, en0)


def smallest_r(r1: int, n1: int, n: int, p0: float, alpha: float) -> int:
    """The protocol gives r1/n1 and n: the final cut-off r that keeps type I error <= alpha."""
    table = _rejection_table(n1, n, p0)
    ok = np.flatnonzero((table[r1] <= alpha) & (np.arange(n + 1) >= r1))
    if ok.size == 0:
        raise ValueError(f"no final cut-off keeps alpha <= {alpha} for r1/n1 = {r1}/{n1}, n = {n}")
    return int(ok[0])


def monitor(responses_stage1: int, enrolled: int, r1: int, n1: int) -> str:
    """The decision after the first stage: 'continue', 'stop' or 'wait' (fewer than n1 evaluable).

    Decided as soon as it is certain, either way: responses only accumulate, so more than r1
    already means 'continue' (isotox used to wait for all n1 even then).
    """
    if responses_stage1 > r1:
        return "continue"
    if enrolled < n1:
        # stop already certain if even all remaining patients responding cannot exceed r1
        return "stop" if responses_stage1 + (n1 - enrolled) <= r1 else "wait"
    return "stop" if responses_stage1 <= r1 else "continue"


def final_decision(responses: int, evaluable: int, r: int, n: int) -> str:
    """The decision on all n patients: 'promising' (more than r responses), 'not promising', or
    'wait'. Decided early when the remaining patients can no longer change it."""
    if responses > r:
        return "promising"  # responses only accumulate
    if responses + (n - evaluable) <= r:
        return "not promising"
    return "wait"


def _rule(d: Design) -> str:
    return f"{d.r1}/{d.n1}, {d.r}/{d.n}"


def assess_protocol_design(s: dict[str, Any]) -> dict[str, Any]:
    """The protocol's own Simon rule, its operating characteristics, and whether it is the design it claims.

    ``s`` is the protocol's ``safety.simon`` section. The final cut-off ``r`` is taken from it when
    stated, else the smallest r keeping the type I error within ``alpha`` (said so in the flags).
    ``flags`` are sentences for the report: every way the rule falls short of what the protocol
    says of it (alpha, power, optimality, the sidedness of alpha), none when it is what it claims;
    ``notes`` say what isotox filled in (a final cut-off the protocol does not state).
    """
    p0, p1, alpha, power = s["p0"], s["p1"], s["alpha"], s["power"]
    optimal, minimax = optimal_and_minimax(p0, p1, alpha, power)
    r = s.get("r", smallest_r(s["r1"], s["n1"], s["n"], p0, alpha))
    own = evaluate(s["r1"], s["n1"], r, s["n"], p0, p1)
    flags: list[str] = []
    notes: list[str] = []
    if "r" not in s:
        notes.append(f"The protocol states no final cut-off; isotox takes r = {r}, the smallest that keeps the type I error within {alpha:g}.")
    if own.alpha > alpha + 1e-12:
        flags.append(f"Type I error of {_rule(own)} is {own.alpha:.3f}, above the stated {alpha:g}.")
    if own.power < power - 1e-12:
        flags.append(f"Power of {_rule(own)} is {own.power:.3f} at p1 = {p1:g}, below the stated {power:g}.")
        meets = [k for k in range(s["r1"], s["n"] + 1) if (d := evaluate(s["r1"], s["n1"], k, s["n"], p0, p1)).alpha <= alpha + 1e-12 and d.power >= power - 1e-12]
        if not meets:
            flags.append(f"No final cut-off r with {s['r1']}/{s['n1']} and n = {s['n']} meets both alpha <= {alpha:g} and power >= {power:g}.")
    is_optimal = (own.r1, own.n1, own.r, own.n) == (optimal.r1, optimal.n1, optimal.r, optimal.n)
    is_minimax = (own.r1, own.n1, own.r, own.n) == (minimax.r1, minimax.n1, minimax.r, minimax.n)
    claimed = s.get("claimed_design")
    if claimed == "optimal" and not is_optimal:
        flags.append(f"The protocol calls its rule Simon's optimal design; for p0 = {p0:g}, p1 = {p1:g}, alpha = {alpha:g}, power = {power:g} "
                     f"the optimal design is {_rule(optimal)} (EN0 {optimal.en0:.1f}), not {_rule(own)} (EN0 {own.en0:.1f}).")
    if claimed == "minimax" and not is_minimax:
        flags.append(f"The protocol calls its rule Simon's minimax design; the minimax design is {_rule(minimax)}, not {_rule(own)}.")
    one_sided = None
    if s.get("alpha_stated_as") == "two-sided":
        half = alpha / 2.0
        try:
            r_half = smallest_r(s["r1"], s["n1"], s["n"], p0, half)
            one_sided = evaluate(s["r1"], s["n1"], r_half, s["n"], p0, p1)
            flags.append(f"The protocol states alpha {alpha:g} as two-sided; Simon designs are one-sided and isotox uses {alpha:g} as the one-sided error. "
                         f"Read as one-sided {half:g}, the final cut-off would be {r_half}/{s['n']} with power {one_sided.power:.3f}.")
        except ValueError as exc:
            flags.append(f"The protocol states alpha {alpha:g} as two-sided; read as one-sided {half:g}: {exc}.")
    return {"p0": p0, "p1": p1, "alpha": alpha, "power": power, "claimed_design": claimed,
            "protocol_design": own.as_dict(), "protocol_design_meets_alpha": own.alpha <= alpha + 1e-12,
            "protocol_design_meets_power": own.power >= power - 1e-12, "protocol_design_is_optimal": is_optimal,
            "protocol_design_is_minimax": is_minimax, "protocol_design_if_alpha_two_sided": one_sided.as_dict() if one_sided else None,
            "optimal": optimal.as_dict(), "minimax": minimax.as_dict(), "flags": flags, "notes": notes}
