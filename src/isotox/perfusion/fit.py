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
``ve`` and ``vp`` as fractions, ``delay`` in seconds; plus ``r2`` and ``rmse`` per voxel, a
``failed`` mask (non-finite fits, whose parameters are NaN) and an ``at_bound`` mask (a
parameter clipped to the edge of its range: kept in the maps, excluded from summaries).

Linear models are solved by linear least squares on their integral forms (Patlak; Murase 2004
for Tofts / extended Tofts), one small normal-equation system per voxel and delay, in closed form. 2CXM is fitted
by a batched Levenberg-Marquardt on its exact bi-exponential impulse response, started from its
own linear least-squares solution (Flouri et al. 2016), so no multi-start search is needed.
``delay="fit"`` searches an arterial delay on a grid and keeps, per voxel, the delay with the
smallest residual.
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
    #: voxels with a parameter at (clipped to) the edge of its allowed range: a limit, not a measurement
    at_bound: NDArray[np.bool_] | None = None

    def __getitem__(self, name: str) -> NDArray[np.float64]:
        return self.params[name]


def _cumtrapz(y: NDArray[np.float64], t: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.zeros_like(y)
    out[..., 1:] = np.cumsum(0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(t), axis=-1)
    return out


def _shift(aif: NDArray[np.float64], t: NDArray[np.float64], delay_s: float) -> NDArray[np.float64]:
    """AIF arriving ``delay_s`` later: aif(t - delay), zero before the start."""
    return np.interp(t - delay_s, t, aif, left=0.0)


def _solve_batched(columns: list[NDArray[np.float64]], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Least squares per voxel by batched normal equations: the design's P columns, each (N, T) or
    (T,) (shared by every voxel), and y (N, T) -> (N, P).

    Why columns, not an (N, T, P) design: the Gram matrix is built from P (P + 1) / 2 row-wise dot
    products of contiguous rows; the single ``einsum('ntp,ntq->npq')`` on a stacked design (plus
    the stack itself) was 5.6x slower and 45 % of the realistic patient's perfusion stage."""
    n, p = y.shape[0], len(columns)
    rows = [np.broadcast_to(col, y.shape) for col in columns]
    gram, rhs = np.empty((n, p, p)), np.empty((n, p))
    for a in range(p):
        rhs[:, a] = np.einsum("nt,nt->n", rows[a], y)
        for b in range(a, p):
            gram[:, a, b] = gram[:, b, a] = np.einsum("nt,nt->n", rows[a], rows[b])
    scale = np.sqrt(np.einsum("npp->np", gram)) + 1e-30  # column scaling for conditioning
    gram_s = gram / scale[:, :, None] / scale[:, None, :]
    solved = np.linalg.solve(gram_s + 1e-12 * np.eye(p), (rhs / scale)[..., None])[..., 0]
    return solved / scale


def _solve_small(gram: list[list[NDArray[np.float64]]], rhs: list[NDArray[np.float64]]) -> list[NDArray[np.float64]]:
    """``_solve_batched``'s solve (column scaling, 1e-12 ridge) for P = 2 or 3 in closed form (Cramer),
    on Gram entries given as broadcastable arrays, e.g. (voxels, 1) and (delays,) -> (voxels, delays).

    Why: in the delay search each entry is one (voxels, delays) array built from shared products;
    a batched ``np.linalg.solve`` would first stack them into (voxels * delays, P, P) systems."""
    p = len(rhs)
    scale = [np.sqrt(gram[a][a]) + 1e-30 for a in range(p)]
    g = [[gram[a][b] / (scale[a] * scale[b]) + (1e-12 if a == b else 0.0) for b in range(p)] for a in range(p)]
    r = [rhs[a] / scale[a] for a in range(p)]
    if p == 2:
        det = g[0][0] * g[1][1] - g[0][1] * g[1][0]
        x = [(r[0] * g[1][1] - g[0][1] * r[1]) / det, (g[0][0] * r[1] - r[0] * g[1][0]) / det]
    else:
        cof = [[g[(a + 1) % 3][(b + 1) % 3] * g[(a + 2) % 3][(b + 2) % 3] - g[(a + 1) % 3][(b + 2) % 3] * g[(a + 2) % 3][(b + 1) % 3]
                for b in range(3)] for a in range(3)]  # cofactors of the symmetric matrix (its adjugate)
        det = g[0][0] * cof[0][0] + g[0][1] * cof[0][1] + g[0][2] * cof[0][2]
        x = [(cof[a][0] * r[0] + cof[a][1] * r[1] + cof[a][2] * r[2]) / det for a in range(3)]
    return [x[a] / scale[a] for a in range(p)]


def _linear_delays(model: str, t: NDArray[np.float64], c: NDArray[np.float64], shifted: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """Linear least squares for every voxel (rows of ``c``, (N, T)) and every delayed AIF (rows of
    ``shifted``, (D, T)) at once, on the models' integral forms (Patlak; Murase 2004 for Tofts /
    extended Tofts): parameters as (N, D) arrays. Where noise makes the full solution unphysical
    the fit falls back to the nested model (Sourbron & Buckley's hierarchy), marked in ``reduced``:

    * Patlak: non-negative least squares for (Ktrans, vp): where the free solution has a negative
      component the optimum is on an edge (Ktrans = 0: blood only; or vp = 0: uptake only), the
      edge with the smaller residual is kept and flagged ``at_bound``. A tissue without uptake
      (half of whose noisy fits want Ktrans < 0) thus gets Ktrans = 0 and its vp, not a failure;
    * extended Tofts with vp < 0 -> Tofts (vp = 0);
    * no identifiable washout (kep <= 0, or ve > 1) -> Patlak (extended Tofts; Ktrans and vp stay
      valid) or C = Ktrans integral(cp), Ktrans >= 0 (Tofts); ve is NaN.

    Why (N, D) at once, not one solve per (voxel, delay) row: the design columns from the AIF (cp_d, its integral)
    are shared by all voxels and the tissue's (c, its integral) by all delays, so every Gram
    entry is a scalar per delay (AIF x AIF), a matrix product (N, T) @ (T, D) (tissue x AIF) or
    a scalar per voxel (tissue x tissue): no tiled (N * D, T) rows, no per-row dot products.
    The edge residuals of the non-negative Patlak fit follow from the same entries
    (|c|^2 - 2 b rhs + b^2 g, one column each)."""
    icp_s = _cumtrapz(shifted, t)
    cp_m, icp_m = shifted.T, icp_s.T  # (T, D)
    n = c.shape[0]
    zeros = np.zeros((n, shifted.shape[0]))
    c_cp, c_icp = c @ cp_m, c @ icp_m
    cp_cp, icp_icp, cp_icp = np.einsum("dt,dt->d", shifted, shifted), np.einsum("dt,dt->d", icp_s, icp_s), np.einsum("dt,dt->d", shifted, icp_s)
    cc = np.einsum("nt,nt->n", c, c)[:, None]

    # Patlak, non-negative: columns (icp, cp)
    free_k, free_v = _solve_small([[icp_icp, cp_icp], [cp_icp, cp_cp]], [c_icp, c_cp])
    bound = (free_k < 0) | (free_v < 0)
    vp_only = np.maximum(c_cp / cp_cp, 0.0)
    uptake_only = np.maximum(c_icp / icp_icp, 0.0)
    sse_vp = cc - 2.0 * vp_only * c_cp + vp_only ** 2 * cp_cp
    sse_uptake = cc - 2.0 * uptake_only * c_icp + uptake_only ** 2 * icp_icp
    vp_edge = sse_vp <= sse_uptake
    patlak_k = np.where(bound, np.where(vp_edge, 0.0, uptake_only), free_k)
    patlak_v = np.where(bound, np.where(vp_edge, vp_only, 0.0), free_v)
    if model == "patlak":  # the forward model is this linear form (trapezoid integral): its residual from the normal equations
        sse = cc - 2.0 * (patlak_k * c_icp + patlak_v * c_cp) + patlak_k ** 2 * icp_icp + 2.0 * patlak_k * patlak_v * cp_icp + patlak_v ** 2 * cp_cp
        return {"ktrans": patlak_k * 60.0, "vp": patlak_v, "reduced": zeros, "at_bound": bound.astype(float), "sse": sse}

    ic = _cumtrapz(c, t)
    ic_cp, ic_icp = ic @ cp_m, ic @ icp_m
    c_ic, icic = np.einsum("nt,nt->n", c, ic)[:, None], np.einsum("nt,nt->n", ic, ic)[:, None]
    # Tofts: columns (icp, -ic)
    tk, tkep = _solve_small([[icp_icp, -ic_icp], [-ic_icp, icic]], [c_icp, -c_ic])
    est = {"ktrans": tk, "kep": tkep, "vp": zeros}
    reduced = zeros
    if model == "etofts":  # columns (icp, -ic, cp)
        b0, b1, b2 = _solve_small([[icp_icp, -ic_icp, cp_icp], [-ic_icp, icic, -ic_cp], [cp_icp, -ic_cp, cp_cp]], [c_icp, -c_ic, c_cp])
        full = {"kep": b1, "vp": b2, "ktrans": b0 - b1 * b2}
        use_tofts = full["vp"] < 0
        est = {k: np.where(use_tofts, est[k], full[k]) for k in full}
        reduced = use_tofts.astype(float)
    ve = est["ktrans"] / est["kep"]
    no_washout = ~(est["kep"] > 0) | ~(ve <= 1.0) | ~(est["ktrans"] > 0)
    if model == "tofts":
        slope = c_icp / icp_icp
        fallback_k, fallback_v, fallback_bound = np.maximum(slope, 0.0), zeros, ~(slope > 0)
    else:
        fallback_k, fallback_v, fallback_bound = patlak_k, patlak_v, bound
    out = {"ktrans": np.where(no_washout, fallback_k, est["ktrans"]) * 60.0, "ve": np.where(no_washout, np.nan, ve),
           "reduced": np.maximum(reduced, no_washout.astype(float)), "at_bound": (no_washout & fallback_bound).astype(float)}
    if model == "etofts":
        out["vp"] = np.where(no_washout, fallback_v, est["vp"])
    return out


def _best_linear_delay(model: str, t: NDArray[np.float64], c: NDArray[np.float64],
                       shifted: NDArray[np.float64]) -> tuple[dict[str, NDArray[np.float64]], NDArray[np.intp]]:
    """Linear model, every voxel at its best delay: parameters and flags at the chosen delay, (N,),
    and the chosen delay's index, (N,).

    The criterion is the residual of the solution reported for that delay: the forward model's
    (``_forward``, after the fallbacks and the clipping to ``BOUNDS``). For Patlak that is the
    normal-equation residual of the reported (Ktrans, vp) (the forward model is the same
    trapezoid integral), recomputed from the curve only where ``_forward`` clips; for Tofts the
    forward model is the exact convolution, whose residual differs from the integral form's
    (its regressor, the tissue integral, is noisy), so it is evaluated, once per delay on the
    shared AIF. Near-ties (~1e-12 relative) may pick another delay than a direct residual."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # flat curves: NaN, flagged as failed by fit()
        params = _linear_delays(model, t, c, shifted)
        sse = params.pop("sse", None)
        if sse is None:
            direct = np.ones((c.shape[0], shifted.shape[0]), dtype=bool)
            sse = np.empty(direct.shape)
        else:  # outside BOUNDS (or NaN), _forward evaluates the clipped parameters: their residual, from the curve
            direct = ~np.all([(params[k] >= BOUNDS[k][0]) & (params[k] <= BOUNDS[k][1]) for k in ("ktrans", "vp")], axis=0)
        for d, cp in enumerate(shifted):
            rows = np.flatnonzero(direct[:, d])
            if rows.size == 0:
                continue
            fitted = _forward(model, t, cp, {k: v[rows, d] for k, v in params.items()})
            sse[rows, d] = np.sum((c[rows] - fitted) ** 2, axis=1)
    sse = np.where(np.isfinite(sse), sse, np.inf)
    pick = np.argmin(sse, axis=1)
    chosen = np.arange(c.shape[0])
    return {k: v[chosen, pick] for k, v in params.items()}, pick


def _biexponential(fp: NDArray[np.float64], ps: NDArray[np.float64], vp: NDArray[np.float64], ve: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """2CXM impulse response ``c1 exp(-r1 t) + c2 exp(-r2 t)`` (rates /s, r1 <= r2) from its
    parameters (fp ml/100 ml/min, ps /min, vp and ve fractions), all shapes (voxels,).

    r1, r2 are minus the eigenvalues l1, l2 of the plasma / interstitium exchange matrix and
    c_i = Fp (-Fp/vp - l_j) / (l_i - l_j).
    """
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
    return c1, c2, -l1, -l2


def _stacked_convolution(t: NDArray[np.float64], cp: NDArray[np.float64], rates: list[NDArray[np.float64]]) -> list[NDArray[np.float64]]:
    """``exp_convolution`` for several rate vectors in one batch (one pass over the frames)."""
    n = rates[0].shape[0]
    cps = cp if cp.ndim == 1 else np.concatenate([cp] * len(rates))
    out = exp_convolution(t, cps, np.concatenate(rates))
    return [out[i * n:(i + 1) * n] for i in range(len(rates))]


def two_compartment_exchange(t: ArrayLike, cp: ArrayLike, fp: ArrayLike, ps: ArrayLike, vp: ArrayLike, ve: ArrayLike) -> NDArray[np.float64]:
    """2CXM tissue curves (voxels, T): fp in ml/100 ml/min, ps in /min, vp and ve fractions, t in s.

    The impulse response is bi-exponential with the eigenvalues l1, l2 of the plasma /
    interstitium exchange matrix: C = sum_i Fp (-Fp/vp - l_j) / (l_i - l_j) (cp * exp(l_i t)).
    ``cp`` is (T,) or one input per voxel, (voxels, T).
    """
    c1, c2, r1, r2 = _biexponential(np.asarray(fp, dtype=float), np.asarray(ps, dtype=float), np.asarray(vp, dtype=float), np.asarray(ve, dtype=float))
    e1, e2 = _stacked_convolution(np.asarray(t, dtype=float), np.asarray(cp, dtype=float), [r1, r2])
    return c1[:, None] * e1 + c2[:, None] * e2


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
    a, b, f, g = _solve_batched([-ic, -iic, icp, iicp], c).T
    with np.errstate(divide="ignore", invalid="ignore"):
        v = g / b
        vp = f / (a - b * v / f)
        ve = v - vp
        ps = b * vp * ve / f
    est = np.stack([f * 6000.0, ps * 60.0, vp, ve], axis=-1)
    est[~np.all(np.isfinite(est) & (est > 0), axis=1)] = np.nan
    return est


#: 2CXM Levenberg-Marquardt: a voxel stops once an accepted step lowers its residual sum of squares by
#: less than this fraction of the residual variance (SSE / T): the parameters then sit within a few
#: hundredths of a standard error of the optimum.
_LM_TOL_VARIANCE = 1e-3
#: Delay search, after _PRUNE_AFTER iterations: a candidate delay stops once its residual is behind
#: its voxel's best by more than _PRUNE_FACTOR times its own last gain (it cannot catch up).
_PRUNE_FACTOR, _PRUNE_AFTER = 20.0, 3
#: A log-parameter within this distance of the box edge is "at the bound" (0.1 %).
_AT_BOUND_LOG = 1e-3


def _lm_2cxm(t: NDArray[np.float64], c: NDArray[np.float64], cp: NDArray[np.float64], start: NDArray[np.float64], iterations: int,
             group_size: int = 1) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Batched Levenberg-Marquardt in log-parameters (keeps all four positive). Returns (params, sse, fitted, at_bound).

    Every voxel carries its own damping; a step is kept only where it lowers that voxel's
    residual, so the iteration is monotone per voxel; converged voxels leave the batch. The
    Jacobian is analytic in structure: the model is c1 E(r1) + c2 E(r2) with E the exponential
    convolution, so only dE/d(log r) needs a second convolution (a forward difference on the
    two rates, in the same batched call as the trial curve); the derivatives of the four cheap
    scalars c1, c2, r1, r2 with respect to the parameters are forward differences. Per
    iteration that is one call of 4 convolutions per voxel, instead of 10 convolutions for a
    finite-difference Jacobian of the whole model.

    ``group_size`` > 1: consecutive rows are one voxel's candidate arterial delays. After
    ``_PRUNE_AFTER`` iterations a row whose residual is behind its voxel's best by more than
    ``_PRUNE_FACTOR`` times its last improvement stops iterating: the delay search only needs
    the winner, and the wrong delays converge slowly and would otherwise set the run time.
    """
    theta = np.log(start)
    n = c.shape[0]
    lam = np.full(n, 1e-2)
    lo, hi = np.log(_LOG_BOX[0]), np.log(_LOG_BOX[1])
    eye = np.eye(4)
    cp_rows = (lambda idx: cp) if cp.ndim == 1 else (lambda idx: cp[idx])

    def scalars(th: NDArray[np.float64]) -> NDArray[np.float64]:
        c1, c2, r1, r2 = _biexponential(*np.exp(th).T)
        return np.stack([c1, c2, np.log(np.maximum(r1, 1e-300)), np.log(np.maximum(r2, 1e-300))], axis=1)

    eps = 1e-6

    def curves(sc: NDArray[np.float64], idx: NDArray[np.intp]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Model curves and their basis d model / d (c1, c2, log r1, log r2), (m, 4, T), from one
        batched convolution at the rates and at the rates x exp(eps): the derivative for the
        next iteration's Jacobian comes with the trial evaluation, one pass over the frames."""
        r1, r2 = np.exp(sc[:, 2]), np.exp(sc[:, 3])
        e1, e2, g1, g2 = _stacked_convolution(t, cp_rows(idx), [r1, r2, r1 * np.exp(eps), r2 * np.exp(eps)])
        basis = np.empty((sc.shape[0], 4, t.size))
        basis[:, 0], basis[:, 1] = e1, e2
        np.multiply(sc[:, 0:1], (g1 - e1) / eps, out=basis[:, 2])
        np.multiply(sc[:, 1:2], (g2 - e2) / eps, out=basis[:, 3])
        return sc[:, 0:1] * e1 + sc[:, 1:2] * e2, basis

    sc_all = scalars(theta)
    fitted, basis_all = curves(sc_all, np.arange(n))
    sse = np.sum((c - fitted) ** 2, axis=1)
    gain = np.full(n, np.inf)
    active = np.flatnonzero(np.isfinite(sse))  # a NaN curve cannot be fitted: left as started, failed by the caller
    for iteration in range(iterations):
        if active.size == 0:
            break
        th, sc, basis = theta[active], sc_all[active], basis_all[active]
        resid = c[active] - fitted[active]
        d_sc = np.stack([(scalars(th + eps * eye[k]) - sc) / eps for k in range(4)], axis=2)  # (m, 4 scalars, 4 params)
        # J = basis^T d_sc, so J^T J = d_sc^T (basis basis^T) d_sc: 4 x 4 products, no (voxels, T, 4) Jacobian
        d_sc_t = d_sc.transpose(0, 2, 1)
        gram = d_sc_t @ (basis @ basis.transpose(0, 2, 1)) @ d_sc
        grad = (d_sc_t @ (basis @ resid[..., None]))[..., 0]
        damped = gram + lam[active, None, None] * np.einsum("npp->np", gram)[:, :, None] * eye
        delta = np.linalg.solve(damped + 1e-18 * eye, grad[..., None])[..., 0]
        trial = np.clip(th + delta, lo, hi)
        trial_sc = scalars(trial)
        trial_fit, trial_basis = curves(trial_sc, active)
        trial_sse = np.sum((c[active] - trial_fit) ** 2, axis=1)
        better = trial_sse < sse[active]
        improvement = sse[active] - trial_sse
        done = (better & (improvement <= _LM_TOL_VARIANCE * sse[active] / t.size)) | (lam[active] > 1e8)
        take = active[better]
        gain[take] = improvement[better]
        theta[take], sc_all[take], fitted[take], basis_all[take] = trial[better], trial_sc[better], trial_fit[better], trial_basis[better]
        sse[take] = trial_sse[better]
        lam[active] = np.where(better, lam[active] / 3.0, lam[active] * 4.0)
        if group_size > 1 and iteration >= _PRUNE_AFTER:
            group_best = sse.reshape(-1, group_size).min(axis=1)
            done |= sse[active] - group_best[active // group_size] > _PRUNE_FACTOR * gain[active]
        active = active[~done]
    at_bound = np.any((theta - lo < _AT_BOUND_LOG) | (hi - theta < _AT_BOUND_LOG), axis=1)
    return np.exp(theta), sse, fitted, at_bound


def _two_cxm(t: NDArray[np.float64], c: NDArray[np.float64], cp: NDArray[np.float64], group_size: int = 1,
             iterations: int = 60) -> tuple[dict[str, NDArray[np.float64]], NDArray[np.float64]]:
    """Linear estimate as the start (a typical start where it is not physical), LM refinement.
    Returns the parameters (with an ``at_bound`` flag per voxel) and the fitted curves."""
    start = _two_cxm_linear(t, c, cp)
    typical = np.array([40.0, 0.1, 0.05, 0.2])
    start = np.where(np.isfinite(start), start, typical)
    start = np.clip(start, _LOG_BOX[0], _LOG_BOX[1])
    best_p, _, fitted, at_bound = _lm_2cxm(t, c, cp, start, iterations, group_size)
    return {"fp": best_p[:, 0], "ps": best_p[:, 1], "vp": best_p[:, 2], "ve": best_p[:, 3], "at_bound": at_bound.astype(float)}, fitted


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


def _fit_once(t: NDArray[np.float64], c: NDArray[np.float64], cp: NDArray[np.float64],
              group_size: int = 1) -> tuple[dict[str, NDArray[np.float64]], NDArray[np.float64]]:
    """2CXM, one fit per row of ``c``; ``cp`` is shared, (T,), or one input per row, (rows, T);
    ``group_size`` consecutive rows are one voxel's candidate delays."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # flat curves: NaN, flagged as failed by fit()
        return _two_cxm(t, c, cp, group_size)


#: Rows x frames per batch: bounds the memory of the batched solvers (a few 100 MB at most).
_BATCH_ELEMENTS = 2_600_000


def fit(t: ArrayLike, tissue: ArrayLike, aif: ArrayLike, model: str, *, delay: float | str = 0.0,
        delay_range_s: tuple[float, float] = (0.0, 10.0), delay_step_s: float = 0.5) -> FitResult:
    """Fit ``model`` to every tissue curve (see module docstring for units and outputs).

    ``delay``: a fixed arterial delay in seconds (the AIF is shifted later by it), or ``"fit"``
    to search ``delay_range_s`` in steps of ``delay_step_s`` per voxel; each voxel keeps the delay
    with the smallest residual of the solution reported there. Linear models solve all
    (voxel, delay) pairs at once from products shared across voxels and delays
    (``_linear_delays``); for 2CXM every (voxel, delay) pair is one row of the same batched fit
    (so a single curve's whole delay search is one vectorised solve).

    Parameters outside their physical range (``BOUNDS``; for 2CXM, the search box) are clipped
    to it and flagged in ``at_bound``: such a value is a limit of the fit, not a measurement,
    and summaries must leave it out. Only non-finite fits are ``failed`` (NaN parameters).
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    t = np.asarray(t, dtype=float)
    c = np.atleast_2d(np.asarray(tissue, dtype=float))
    cp = np.asarray(aif, dtype=float)
    if c.shape[1] != t.size or cp.shape != t.shape:
        raise ValueError(f"shapes do not match: t {t.shape}, tissue {c.shape}, aif {cp.shape}")
    delays = np.arange(delay_range_s[0], delay_range_s[1] + 1e-9, delay_step_s) if delay == "fit" else np.array([float(delay)])
    shifted = np.stack([_shift(cp, t, d) for d in delays])
    names = PARAMETERS[model]
    n = c.shape[0]
    out = {k: np.full(n, np.nan) for k in (*names, "delay")}
    flags = {"reduced": np.zeros(n), "at_bound": np.zeros(n)}
    fitted_all = np.zeros_like(c)
    best = np.full(n, np.inf)
    linear = model != "2cxm"
    # linear models hold (voxels, delays) arrays, nonlinear ones (voxels * delays, frames) rows
    per_chunk = max(1, min(_BATCH_ELEMENTS // t.size, _BATCH_ELEMENTS // (8 * delays.size)) if linear else _BATCH_ELEMENTS // (t.size * delays.size))
    for start in range(0, n, per_chunk):
        sl = slice(start, min(n, start + per_chunk))
        m = sl.stop - sl.start
        if linear:
            chosen_params, pick = _best_linear_delay(model, t, c[sl], shifted)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                fitted_all[sl] = _forward(model, t, shifted[pick], chosen_params)
            sse_best = np.sum((c[sl] - fitted_all[sl]) ** 2, axis=1)  # from the curve: no cancellation in the reported residual
            best[sl] = np.where(np.isfinite(sse_best), sse_best, np.inf)
        else:
            rows = np.repeat(c[sl], delays.size, axis=0)  # voxel-major: row v * D + d
            cp_rows = shifted[0] if delays.size == 1 else np.tile(shifted, (m, 1))
            params, fitted = _fit_once(t, rows, cp_rows, delays.size)
            sse = np.sum((rows - fitted) ** 2, axis=1).reshape(m, delays.size)
            sse = np.where(np.isfinite(sse), sse, np.inf)
            pick = np.argmin(sse, axis=1)
            chosen = np.arange(m) * delays.size + pick
            best[sl] = sse[np.arange(m), pick]
            chosen_params = {k: v[chosen] for k, v in params.items()}
            fitted_all[sl] = fitted[chosen]
        for k in names:
            out[k][sl] = chosen_params[k]
        out["delay"][sl] = delays[pick]
        for k in flags:
            flags[k][sl] = chosen_params.get(k, np.zeros(m))
    failed = ~np.isfinite(best)
    reduced_b = flags["reduced"] > 0
    at_bound = flags["at_bound"] > 0
    for k in names:
        lo, hi = BOUNDS[k]
        failed |= ~np.isfinite(out[k]) & ~(reduced_b & (k == "ve"))  # ve is NaN by design where the fit fell back
        outside = (out[k] < lo) | (out[k] > hi)
        at_bound |= outside
        out[k] = np.where(outside, np.clip(out[k], lo, hi), out[k])
    for k in names:
        out[k][failed] = np.nan
    ss_tot = np.sum((c - c.mean(axis=1, keepdims=True)) ** 2, axis=1)
    r2 = 1.0 - best / np.where(ss_tot > 0, ss_tot, np.nan)
    rmse = np.sqrt(best / t.size)
    return FitResult(model, out, r2, rmse, failed, fitted_all, reduced_b & ~failed, at_bound & ~failed)
