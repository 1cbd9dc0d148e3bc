"""Plan quality against a voxel prescription: the quality factor Q and the quality-volume histogram.

QF(v) = D_plan(v) / D_prescribed(v) per target voxel; Q = mean |QF - 1| over the target
(Vanderstraeten et al., IJROBP 2006;64:1254; 0 = the plan is the map). The QVH is the cumulative
histogram of QF: the percentage of the target with QF >= q (a step at q = 1 for a perfect plan).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray


def quality_ratio(plan_gy: NDArray[np.floating], prescribed_gy: NDArray[np.floating], target: NDArray[np.bool_]) -> NDArray[np.float64]:
    """QF = D_plan / D_prescribed at the target voxels (all arrays on the same grid)."""
    presc = np.asarray(prescribed_gy, float)[target]
    if presc.size == 0:
        raise ValueError("the target is empty: no quality factor")
    if np.any(presc <= 0):
        raise ValueError("the prescription map must be > 0 Gy everywhere in the target")
    return np.asarray(plan_gy, float)[target] / presc


def quality_factor(plan_gy: NDArray[np.floating], prescribed_gy: NDArray[np.floating], target: NDArray[np.bool_]) -> float:
    """Q = mean |D_plan / D_prescribed - 1| over the target."""
    return float(np.mean(np.abs(quality_ratio(plan_gy, prescribed_gy, target) - 1.0)))


def qvh(plan_gy: NDArray[np.floating], prescribed_gy: NDArray[np.floating], target: NDArray[np.bool_],
        q: NDArray[np.float64] | None = None) -> pd.DataFrame:
    """The QVH: q and the percentage of target voxels with QF >= q (default q = 0.70 .. 1.30)."""
    q = np.round(np.arange(0.70, 1.3001, 0.005), 4) if q is None else np.asarray(q, float)
    ratio = np.sort(quality_ratio(plan_gy, prescribed_gy, target))
    at_least = ratio.size - np.searchsorted(ratio, q, side="left")
    return pd.DataFrame({"q": q, "volume_percent": 100.0 * at_least / ratio.size})
