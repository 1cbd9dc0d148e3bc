"""Population arterial input function (Parker et al., Magn Reson Med 2006;56:993-1000).

Available to users who lack a measured AIF, and to the tests as a textbook input curve (the
sample generator has its own copy of the formula: it must not share the analysis code it referees). Values are *blood* concentration in mM for a standard Gd dose;
isotox rescales it to Hounsfield units for CT (enhancement is linear in iodine concentration).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Population-average parameters of Parker et al. 2006, Table 1 (times in minutes).
PARKER_2006 = {
    "A1": 0.809, "sigma1": 0.0563, "T1": 0.17046,
    "A2": 0.330, "sigma2": 0.132, "T2": 0.365,
    "alpha": 1.050, "beta": 0.1685, "s": 38.078, "tau": 0.483,
}


def parker_aif(t_min: ArrayLike, delay_min: float = 0.0, params: dict[str, float] | None = None) -> NDArray[np.float64]:
    """Parker blood AIF (mM) at times ``t_min`` (minutes), shifted later by ``delay_min``.

    Two Gaussians (first and recirculation pass) plus an exponential washout modulated by a
    sigmoid, exactly as the paper's equation 1.
    """
    p = PARKER_2006 if params is None else params
    t = np.asarray(t_min, dtype=float) - delay_min
    gauss = sum(
        p[f"A{n}"] / (p[f"sigma{n}"] * np.sqrt(2 * np.pi)) * np.exp(-((t - p[f"T{n}"]) ** 2) / (2 * p[f"sigma{n}"] ** 2))
        for n in (1, 2)
    )
    washout = p["alpha"] * np.exp(-p["beta"] * t) / (1.0 + np.exp(-p["s"] * (t - p["tau"])))
    return np.asarray(gauss + washout, dtype=float)
