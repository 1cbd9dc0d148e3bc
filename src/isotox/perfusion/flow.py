"""Blood flow by the maximum-slope method (Miles 1991): BF = max dC_tissue/dt / max C_artery.

Valid while no contrast has left the tissue yet (the first pass), which is why the slope is
taken only up to the AIF's peak. Uses the *blood* AIF. Result in ml/100 ml/min.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def max_slope_flow(t_s: NDArray[np.float64], tissue: NDArray[np.float64], aif_blood: NDArray[np.float64]) -> NDArray[np.float64]:
    """``tissue`` (voxels, T) and ``aif_blood`` (T,) in the same enhancement unit -> BF per voxel."""
    t = np.asarray(t_s, dtype=float)
    peak = int(np.argmax(aif_blood))
    stop = min(len(t) - 1, peak + 1)
    slopes = np.diff(tissue[:, : stop + 1], axis=1) / np.diff(t[: stop + 1])
    return np.maximum(slopes.max(axis=1), 0.0) / float(np.max(aif_blood)) * 6000.0
