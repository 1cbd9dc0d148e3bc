"""Voxel-wise tracer-kinetic fitting, vectorised over voxels.

Public API::

    fit(t, tissue, aif, model, **options) -> FitResult

* ``t``: frame times in seconds, shape (T,);
* ``tissue``: tissue concentration, (T,) or (voxels, T), any linear unit (mM, or enhancement
  in HU: the unit cancels against the AIF's);
* ``aif``: *plasma* arterial input in the same unit, (T,) (blood / (1 - Hct) for a blood curve);
* ``model``: ``patlak`` (vp, ktrans), ``tofts`` (ktrans, ve), ``etofts`` (ktrans, ve, vp) or
  ``2cxm`` (fp, ps, vp, ve).

Returned parameters, as OSIPI reports them: ``ktrans`` and ``ps`` in /min, ``fp`` in ml/100 ml/min,
``ve`` and ``vp`` as fractions, ``delay`` in seconds; plus ``r2`` and ``rmse`` per voxel and a
``failed`` mask (non-finite or out-of-bounds fits, whose parameters are NaN).

Linear models are solved by linear least squares on their integral forms (Patlak; Murase 2004
for Tofts / extended Tofts), one small normal-equation system per voxel, batched. 2CXM is fitted
by a batched Levenberg-Marquardt on its exact bi-exponential impulse response, started from its
own linear least-squares solution (Flouri et al. 2016), so no multi-start search is needed. ``delay="fit"`` searches an arterial delay on a grid and keeps, per voxel, the
delay with the smallest residual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from isotox.perfusion.kinetics import exp_convolution, extended_tofts, patlak

MODELS = ("patlak", "tofts", "etofts", "2cxm")
PARAMETERS = {"patlak": ("ktrans", "vp"), "tofts": ("ktrans", "ve"), "etofts": ("ktrans", "ve", "vp"), "2cxm": ("fp", "ps", "vp", "ve")}
BOUNDS = {"ktrans": (0.0, 5.0), "ve": (1e-4, 1.0), "vp": (0.0, 1.0), "fp": (0.0, 500.0), "ps": (0.0, 5.0)}
#: Box for the 2CXM search, in (fp, ps, vp, ve) order; the solver works on log-parameters inside it.
_LOG_BOX = (np.array([1e-2, 1e-4, 1e-4, 1e-3]), np.array([500.0, 5.0, 1.0, 1.0]))
_CHUNK = 100_000


@dataclass
class FitResult:
    """Parameter maps (one value per voxel) and fit quality."""

    model: str
    params: dict[str, NDArray[np.float64]]
    r2: NDArray[np.float64]
    rmse: NDArray[np.float64]
    failed: NDArray[np.bool_]
    fitted: NDArray[np.float64] = field(repr=False)
    #: voxels fitted with the nested model (Tofts -> Patlak/Ktrans only; extended Tofts -> Tofts or Patlak)
    reduced: NDArray[np.bool_] | None = None

    def __getitem__(self, name: str) -> NDArray[np.float64]:
        return self.params[name]


def _cumtrapz(y: NDArray[np.float64], t: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.zeros_like(y)
    out[..., 1:] = np.cumsum(0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(t), axis=-1)
    return out


def _shift(aif: NDArray[np.float64], t: NDArray[np.float64], delay_s: float) -> NDArray[np.float64]:
    """AIF arriving ``delay_s`` later: aif(t - delay), zero before the start."""
    return np.interp(t - delay_s, t, aif, left=0.0)


def _solve_batched(design: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Least squares per voxel: design (N, T, P), y (N, T) -> (N, P) via batched normal equations."""
    gram = np.einsum("ntp,ntq->npq", design, design)
    rhs = np.einsum("ntp,nt->np", design, y)
    scale = np.sqrt(np.einsum("npp->np", gram)) + 1e-30  # column scaling for conditioning
    gram_s = gram / scale[:, :, None] / scale[:, None, :]
    solved = np.linalg.solve(gram_s + 1e-12 * np.eye(gram.shape[1]), (rhs / scale)[..., None])[..., 0]
    return solved / scale


def _linear(model: str, t: NDArray[np.float64], c: NDArray[np.float64], cp: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """Linear least squares; Tofts models fall back to their nested models where noise makes the
    full solution unphysical (Sourbron & Buckley's nested-model hierarchy):

    * extended Tofts with vp < 0 -> Tofts (vp = 0);
    * no identifiable washout (kep <= 0, or ve > 1) -> Patlak: Ktrans and vp stay valid, ve is NaN.

    The voxels that fell back are marked in ``reduced`` (1.0), so a map never mixes them silently.
    """
    icp = _cumtrapz(cp, t)
    n = c.shape[0]
    patlak_b = _solve_batched(np.ascontiguousarray(np.broadcast_to(np.stack([icp, cp], axis=-1), (n, t.size, 2))), c)
    if model == "patlak":
        return {"ktrans": patlak_b[:, 0] * 60.0, "vp": patlak_b[:, 1], "reduced": np.zeros(n)}
    ic = _cumtrapz(c, t)
    tofts_b = _solve_batched(np.stack([np.broadcast_to(icp, c.shape), -ic], axis=-1), c)
    tofts = {"ktrans": tofts_b[:, 0], "kep": tofts_b[:, 1], "vp": np.zeros(n)}
    if model == "etofts":
        b = _solve_batched(np.stack([np.broadcast_to(icp, c.shape), -ic, np.broadcast_to(cp, c.shape)], axis=-1), c)
        full = {"kep": b[:, 1], "vp": b[:, 2], "ktrans": b[:, 0] - b[:, 1] * b[:, 2]}
        use_tofts = full["vp"] < 0
        est = {k: np.where(use_tofts, tofts[k], full[k]) for k in full}
        reduced = use_tofts.astype(float)
    else:
        est, reduced = tofts, np.zeros(n)
    ve = est["ktrans"] / est["kep"]
    no_washout = ~(est["kep"] > 0) | ~(ve <= 1.0)
    if model == "tofts":  # nested without vp: C = Ktrans * integral(cp)
        slope = (icp @ c.T) / float(icp @ icp) if np.any(icp) else np.full(n, np.nan)
        fallback = {"ktrans": slope, "vp": np.zeros(n)}
    else:
        fallback = {"ktrans": patlak_b[:, 0], "vp": patlak_b[:, 1]}
    ktrans = np.where(no_washout, fallback["ktrans"], est["ktrans"])
    vp = np.where(no_washout, fallback["vp"], est["vp"])
    out = {"ktrans": ktrans * 60.0, "ve": np.where(no_washout, np.nan, ve), "reduced": np.maximum(reduced, no_washout.astype(float))}
    if model == "etofts":
        out["vp"] = vp
    return out


def two_compartment_exchange(t: ArrayLike, cp: ArrayLike, fp: ArrayLike, ps: ArrayLike, vp: ArrayLike, ve: ArrayLike) -> NDArray[np.float64]:
    """2CXM tissue curves (voxels, T): fp in ml/100 ml/min, ps in /min, vp and ve fractions, t in s.

    The impulse response is bi-exponential with the eigenvalues l1, l2 of the plasma /
    interstitium exchange matrix: C = sum_i Fp (-Fp/vp - l_j) / (l_i - l_j) (cp * exp(l_i t)).
    """
    t = np.asarray(t, dtype=float)
    f = np.atleast_1d(np.asarray(fp, dtype=float)) / 6000.0  # ml/100 ml/min -> /s
    p = np.atleast_1d(np.asarray(ps, dtype=float)) / 60.0  # /min -> /s
    vp = np.maximum(np.atleast_1d(np.asarray(vp, dtype=float)), 1e-6)
    ve = np.maximum(np.atleast_1d(np.asarray(ve, dtype=float)), 1e-6)
    a, d = -(f + p) / vp, -p / ve
    tr, det = a + d, a * d - (p / vp) * (p / ve)
    disc = np.sqrt(np.maximum(tr * tr - 4.0 * det, 0.0))
    l1, l2 = (tr + disc) / 2.0, (tr - disc) / 2.0
    gap = np.where(np.abs(l1 - l2) < 1e-12, 1e-12, l1 - l2)
    c1 = f * (-f / vp - l2) / gap
    c2 = f * (-f / vp - l1) / (-gap)
    cp_arr = np.asarray(cp, dtype=float)
    return c1[:, None] * exp_convolution(t, cp_arr, -l1) + c2[:, None] * exp_convolution(t, cp_arr, -l2)


def _two_cxm_linear(t: NDArray[np.float64], c: NDArray[np.float64], cp: NDArray[np.float64]) -> NDArray[np.float64]:
    """Closed-form 2CXM estimate by linear least squares (Flouri et al., MRM 2016;76:998).

    The model is the ODE C'' + a C' + b C = Fp cp' + g cp (zero initial state); integrated
    twice it is linear in (a, b, Fp, g): C = -a IC - b IIC + Fp Icp + g IIcp. Then
    vp + ve = g / b, vp = Fp / (a - b (vp + ve) / Fp), PS = b vp ve / Fp (all rates per second).
    Returns (voxels, 4) = fp [ml/100 ml/min], ps [/min], vp, ve, NaN where not physical.
    """
    ic = _cumtrapz(c, t)
    iic = _cumtrapz(ic, t)
    icp = _cumtrapz(cp, t)
    iicp = _cumtrapz(icp, t)
    design = np.stack([-ic, -iic, np.broadcast_to(icp, c.shape), np.broadcast_to(iicp, c.shape)], axis=-1)
    a, b, f, g = _solve_batched(design, c).T
    with np.errstate(divide="ignore", invalid="ignore"):
        v = g / b
        vp = f / (a - b * v / f)
        ve = v - vp
        ps = b * vp * ve / f
    est = np.stack([f * 6000.0, ps * 60.0, vp, ve], axis=-1)
    est[~np.all(np.isfinite(est) & (est > 0), axis=1)] = np.nan
    return est


def _lm_2cxm(t: NDArray[np.float64], c: NDArray[np.float64], cp: NDArray[np.float64], start: NDArray[np.float64], iterations: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Batched Levenberg-Marquardt in log-parameters (keeps all four positive). Returns (params, sse).

    Every voxel carries its own damping; a step is kept only where it lowers that voxel's
    residual, so the iteration is monotone per voxel. Jacobian by forward differences.
    """
    theta = np.log(start)
    lam = np.full(c.shape[0], 1e-2)
    lo, hi = np.log(_LOG_BOX[0]), np.log(_LOG_BOX[1])

    def model(th: NDArray[np.float64]) -> NDArray[np.float64]:
        e = np.exp(th)
        return two_compartment_exchange(t, cp, e[:, 0], e[:, 1], e[:, 2], e[:, 3])

    current = model(theta)
    resid = c - current
    sse = np.sum(resid**2, axis=1)
    eye = np.eye(4)
    for _ in range(iterations):
        jac = np.empty(c.shape + (4,))
        for k in range(4):
            jac[..., k] = (model(theta + 1e-5 * eye[k]) - current) / 1e-5
        gram = np.einsum("ntp,ntq->npq", jac, jac)
        grad = np.einsum("ntp,nt->np", jac, resid)
        damped = gram + lam[:, None, None] * np.einsum("npp->np", gram)[:, :, None] * eye
        delta = np.linalg.solve(damped + 1e-18 * eye, grad[..., None])[..., 0]
        trial = np.clip(theta + delta, lo, hi)
        trial_fit = model(trial)
        trial_resid = c - trial_fit
        trial_sse = np.sum(trial_resid**2, axis=1)
        better = trial_sse < sse
        theta = np.where(better[:, None], trial, theta)
        current = np.where(better[:, None], trial_fit, current)
        resid = c - current
        sse = np.where(better, trial_sse, sse)
        lam = np.where(better, lam / 3.0, lam * 4.0)
        if np.all(lam > 1e8):
            break
    return np.exp(theta), sse


def _two_cxm(t: NDArray[np.float64], c: NDArray[np.float64], cp: NDArray[np.float64], iterations: int = 40) -> dict[str, NDArray[np.float64]]:
    """Linear estimate as the start (a typical start where it is not physical), LM refinement."""
    start = _two_cxm_linear(t, c, cp)
    typical = np.array([40.0, 0.1, 0.05, 0.2])
    start = np.where(np.isfinite(start), start, typical)
    start = np.clip(start, _LOG_BOX[0], _LOG_BOX[1])
    best_p, _ = _lm_2cxm(t, c, cp, start, iterations)
    return {"fp": best_p[:, 0], "ps": best_p[:, 1], "vp": best_p[:, 2], "ve": best_p[:, 3]}


def _forward(model: str, t: NDArray[np.float64], cp: NDArray[np.float64], p: dict[str, NDArray[np.float64]]) -> NDArray[np.float64]:
    safe = {k: np.clip(np.nan_to_num(v), *BOUNDS[k]) for k, v in p.items() if k in BOUNDS}  # failed fits: keep the forward model finite
    if "ve" in p:  # ve NaN where the fit fell back to Patlak: no washout, i.e. ve -> infinity
        safe["ve"] = np.where(np.isnan(p["ve"]), 1e6, safe["ve"])
    if model == "patlak":
        return patlak(t, cp, safe["ktrans"], safe["vp"])
    if model == "tofts":
        return extended_tofts(t, cp, safe["ktrans"], np.maximum(safe["ve"], 1e-6), np.zeros_like(safe["ktrans"]))
    if model == "etofts":
        return extended_tofts(t, cp, safe["ktrans"], np.maximum(safe["ve"], 1e-6), safe["vp"])
    return two_compartment_exchange(t, cp, safe["fp"], safe["ps"], safe["vp"], safe["ve"])


def _fit_once(model: str, t: NDArray[np.float64], c: NDArray[np.float64], cp: NDArray[np.float64]) -> tuple[dict[str, NDArray[np.float64]], NDArray[np.float64]]:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # flat curves: NaN, flagged as failed below
        params = _two_cxm(t, c, cp) if model == "2cxm" else _linear(model, t, c, cp)
    fitted = _forward(model, t, cp, params)
    return params, fitted


def fit(t: ArrayLike, tissue: ArrayLike, aif: ArrayLike, model: str, *, delay: float | str = 0.0,
        delay_range_s: tuple[float, float] = (0.0, 10.0), delay_step_s: float = 0.5) -> FitResult:
    """Fit ``model`` to every tissue curve (see module docstring for units and outputs).

    ``delay``: a fixed arterial delay in seconds (the AIF is shifted later by it), or ``"fit"``
    to search ``delay_range_s`` in steps of ``delay_step_s`` per voxel.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    t = np.asarray(t, dtype=float)
    c = np.atleast_2d(np.asarray(tissue, dtype=float))
    cp = np.asarray(aif, dtype=float)
    if c.shape[1] != t.size or cp.shape != t.shape:
        raise ValueError(f"shapes do not match: t {t.shape}, tissue {c.shape}, aif {cp.shape}")
    delays = np.arange(delay_range_s[0], delay_range_s[1] + 1e-9, delay_step_s) if delay == "fit" else np.array([float(delay)])
    names = PARAMETERS[model]
    out = {k: np.full(c.shape[0], np.nan) for k in (*names, "delay")}
    reduced = np.zeros(c.shape[0])
    fitted_all = np.zeros_like(c)
    best = np.full(c.shape[0], np.inf)
    for start in range(0, c.shape[0], _CHUNK):
        sl = slice(start, start + _CHUNK)
        for d in delays:
            cp_d = _shift(cp, t, d)
            params, fitted = _fit_once(model, t, c[sl], cp_d)
            sse = np.sum((c[sl] - fitted) ** 2, axis=1)
            take = sse < best[sl]
            best[sl] = np.where(take, sse, best[sl])
            for k in names:
                out[k][sl] = np.where(take, params[k], out[k][sl])
            out["delay"][sl] = np.where(take, d, out["delay"][sl])
            reduced[sl] = np.where(take, params.get("reduced", 0.0), reduced[sl])
            fitted_all[sl] = np.where(take[:, None], fitted, fitted_all[sl])
    failed = ~np.isfinite(best)
    reduced_b = reduced > 0
    for k in names:
        lo, hi = BOUNDS[k]
        missing = ~np.isfinite(out[k]) & ~(reduced_b & (k == "ve"))  # ve is NaN by design where the fit fell back
        failed |= missing | (out[k] < lo - 1e-9) | (out[k] > hi)
    for k in names:
        out[k][failed] = np.nan
    ss_tot = np.sum((c - c.mean(axis=1, keepdims=True)) ** 2, axis=1)
    r2 = 1.0 - best / np.where(ss_tot > 0, ss_tot, np.nan)
    rmse = np.sqrt(best / t.size)
    return FitResult(model, out, r2, rmse, failed, fitted_all, reduced_b & ~failed)
