"""How well one tissue curve determines each fitted parameter.

A least-squares fit always returns numbers; whether the curve pins them down is a separate
question. For a tumour's ROI-mean curve the 2CXM plasma flow is the weak one: with a fitted
arterial delay and a tumour input that is dispersed (0-3 s) on its way from the aorta, a short
plasma transit time looks like a slightly later, smoother input, so Fp trades off against the
delay and the residual hardly changes between Fp = 30 and Fp = 300 ml/100 ml/min (sample patients
SAMPLE002 and SAMPLE004: fitted 307 and 432 for true 23-61 and 16-37). Reporting such an Fp as a
measurement would be wrong; reporting it with its uncertainty, and leaving it out of summaries
when the uncertainty is large, is what a careful analyst does.

Method: the linearised (Gauss-Newton) covariance of the fit at its optimum, as ``curve_fit``
reports it: ``cov = s^2 (J^T J)^-1`` with ``J`` the Jacobian of the model curve in the
log-parameters (and in the delay, in seconds, when the delay was fitted) by central differences,
and ``s^2 = SSE / (frames - parameters)``. The 95 % interval of a parameter is then the factor
``exp(1.96 SE(log p))`` either way; a parameter is *determined* when that factor is at most 2.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from isotox.perfusion.fit import PARAMETERS, _forward, _shift

#: A parameter whose 95 % interval spans more than this factor either way is not determined.
MAX_CI_FACTOR = 2.0
_Z95 = 1.959964
_LOG_STEP = 1e-3
_DELAY_STEP_S = 0.25


def ci95_factors(t: NDArray[np.float64], tissue: NDArray[np.float64], plasma: NDArray[np.float64], model: str,
                 params: dict[str, float], delay_s: float, delay_fitted: bool) -> dict[str, float]:
    """Per parameter of ``model``, the factor f of its 95 % interval [p / f, p * f]; inf where the
    curve does not constrain it at all (singular information) and NaN for a parameter at 0."""
    t = np.asarray(t, dtype=float)
    y = np.asarray(tissue, dtype=float)
    names = [n for n in PARAMETERS[model] if np.isfinite(params.get(n, np.nan)) and params[n] > 0]
    base = {n: float(params[n]) for n in PARAMETERS[model] if np.isfinite(params.get(n, np.nan))}

    def curve(log_values: dict[str, float], delay: float) -> NDArray[np.float64]:
        p = {**base, **{n: float(np.exp(v)) for n, v in log_values.items()}}
        return _forward(model, t, _shift(plasma, t, delay), {k: np.array([v]) for k, v in p.items()})[0]

    logs = {n: float(np.log(base[n])) for n in names}
    columns = []
    for n in names:
        up, down = dict(logs), dict(logs)
        up[n] += _LOG_STEP
        down[n] -= _LOG_STEP
        columns.append((curve(up, delay_s) - curve(down, delay_s)) / (2 * _LOG_STEP))
    if delay_fitted:
        columns.append((curve(logs, delay_s + _DELAY_STEP_S) - curve(logs, max(0.0, delay_s - _DELAY_STEP_S)))
                       / (delay_s + _DELAY_STEP_S - max(0.0, delay_s - _DELAY_STEP_S)))
    jac = np.stack(columns, axis=1)
    dof = t.size - jac.shape[1]
    resid = y - curve(logs, delay_s)
    s2 = float(resid @ resid) / max(dof, 1)
    info = jac.T @ jac
    out = {n: float("nan") for n in PARAMETERS[model]}
    try:
        cov = s2 * np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return {**out, **{n: float("inf") for n in names}}
    if np.linalg.cond(info) > 1e14:
        return {**out, **{n: float("inf") for n in names}}
    for i, n in enumerate(names):
        var = cov[i, i]
        out[n] = float(np.exp(_Z95 * np.sqrt(var))) if var >= 0 else float("inf")
    return out


def undetermined(factors: dict[str, float]) -> list[str]:
    """The parameters whose 95 % interval spans more than ``MAX_CI_FACTOR`` either way."""
    return [n for n, f in factors.items() if not (np.isfinite(f) and f <= MAX_CI_FACTOR) and not np.isnan(f)]

