"""Beam weights by non-negative least squares, and the normalisation of a plan to its target.

Weights minimise  sum_t c_t (D_t - 1)^2 + sum_o c_o D_o^2  over target voxels t and organ-at-risk
voxels o outside the target, with w >= 0 (scipy's Lawson-Hanson NNLS). Target rows are then
re-weighted where the dose falls below 95 % or above 107 % of the prescription and the problem is
solved again (a few passes), which pulls the distribution into the ICRU 50/62 window
(D95 >= 95 %, Dmax <= 107 %) as far as the beam directions allow. The result is normalised so the
target's median dose is the prescription (ICRU 83 reporting), and raised if D95 is then below 95 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import nnls

FloatArray = NDArray[np.float64]

COVERAGE_D95 = 0.95
HOTSPOT_DMAX = 1.07


@dataclass
class WeightResult:
    weights: FloatArray  # per beam, relative (the plan dose is sum_b w_b D_b)
    d95: float  # of the target, relative to the prescription, after normalisation
    d50: float
    d2: float
    dmax: float
    passes: int
    notes: list[str] = field(default_factory=list)

    @property
    def meets_coverage(self) -> bool:
        return self.d95 >= COVERAGE_D95 - 1e-6

    @property
    def meets_hotspot(self) -> bool:
        return self.dmax <= HOTSPOT_DMAX + 1e-6

    def as_dict(self) -> dict[str, object]:
        return {"weights": [float(w) for w in self.weights], "target_d95_percent": 100 * self.d95, "target_d50_percent": 100 * self.d50,
                "target_d2_percent": 100 * self.d2, "target_dmax_percent": 100 * self.dmax, "meets_d95_95": self.meets_coverage,
                "meets_dmax_107": self.meets_hotspot, "passes": self.passes, "notes": self.notes}


def _percentile_dose(dose: FloatArray, volume_percent: float) -> float:
    """D_x: minimum dose of the hottest x % (equal-volume samples)."""
    return float(np.percentile(dose, 100.0 - volume_percent)) if dose.size else float("nan")


def optimise_weights(target: FloatArray, organs: FloatArray | None = None, organ_weight: float = 0.3, passes: int = 6) -> WeightResult:
    """``target``: (n_target_samples, n_beams) unit-weight beam doses; ``organs``: (n_organ_samples, n_beams)."""
    n_t, n_b = target.shape
    if n_t == 0:
        raise ValueError("the target has no voxels in the dose grid")
    organs = np.zeros((0, n_b)) if organs is None else organs
    organ_scale = organ_weight * np.sqrt(n_t / max(len(organs), 1))
    row_weight = np.ones(n_t)
    weights = np.ones(n_b)
    notes: list[str] = []
    for _ in range(passes):
        a = np.vstack([target * row_weight[:, None], organs * organ_scale])
        b = np.concatenate([row_weight, np.zeros(len(organs))])
        weights, _ = nnls(a, b, maxiter=50 * n_b)
        dose = target @ weights
        if not np.any(dose > 0):
            break
        dose = dose / np.median(dose)
        cold, hot = dose < COVERAGE_D95, dose > HOTSPOT_DMAX
        if not cold.any() and not hot.any():
            break
        row_weight = row_weight * np.where(cold | hot, 1.5, 1.0)
    dose = target @ weights
    if not np.any(dose > 0):
        raise ValueError("no beam reaches the target (check the isocentre and the target mask)")
    scale = 1.0 / float(np.median(dose))
    if _percentile_dose(dose * scale, 95.0) < COVERAGE_D95:
        notes.append("normalised to D95 = 95 % (the median normalisation left the target under-covered)")
        scale = COVERAGE_D95 / _percentile_dose(dose, 95.0)
    weights = weights * scale
    final = target @ weights
    return WeightResult(weights, _percentile_dose(final, 95.0), float(np.median(final)), _percentile_dose(final, 2.0), float(final.max()), passes, notes)
