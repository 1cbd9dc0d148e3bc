"""Voxel-wise perfusion fitting speed and accuracy, against an independent scipy reference.

Curves with known parameters (tumour-like ranges, Gaussian noise) are made by the reference's own
code (Parker 2006 AIF written out below, textbook model convolutions; the delayed 2CXM curve by
an ODE solution) -- never by isotox's forward models -- and fitted by
``isotox.perfusion.fit`` (vectorised) and by scipy ``curve_fit`` in a Python loop over voxels.
The reference's forward models are the textbook equations implemented here, *not* isotox's
functions: the AIF is interpolated onto a fine uniform grid and convolved (``fftconvolve``,
trapezoid weights) with each model's impulse response -- Patlak a step, Tofts an
exponential, 2CXM the bi-exponential of Sourbron & Buckley (MRM 2011;66:735, eq. 10-11).
Both sides are checked against a third, separate solution of the 2CXM equations by
``scipy.integrate.solve_ivp`` (printed as the model error of each).

Printed figures, per model and frame schedule:

* voxels/s of isotox on ``--voxels`` (linear models) or ``--nonlinear-voxels`` (2CXM) curves,
  voxels/s of the curve_fit loop on ``--subset`` of them, their ratio, and the median absolute
  relative error of Ktrans (Fp for 2CXM) of both on the same voxels;
* schedules: the sample cohort's 26 frames over 150 s, and 600 frames at 0.5 s (OSIPI's);
* one 2CXM curve with a 5 s arterial delay, ``delay="fit"``: milliseconds per fit (median of
  ``--repeats``), and the recovered delay.

CPU seconds (``time.process_time``) are reported beside wall seconds: on a shared machine the
wall clock measures the neighbours too.

Usage: python benchmarks/perfusion_fit.py [--voxels N] [--nonlinear-voxels N] [--subset 100] [--noise-hu 4]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings
from collections.abc import Callable

import numpy as np
from scipy.integrate import cumulative_trapezoid, solve_ivp
from scipy.optimize import curve_fit
from scipy.signal import fftconvolve

from isotox.perfusion import fit
from isotox.perfusion.fit import two_compartment_exchange

SCHEDULES = {
    "26 frames": np.concatenate([[0.0, 3.0, 6.0, 9.0], np.arange(12.0, 61.0, 3.0), [75.0, 90.0, 105.0, 120.0, 150.0]]),
    "600 frames": np.arange(600) * 0.5 + 0.25,
}
HU_PER_MM = 40.0
FINE_S = 0.1  # reference convolution grid


# -- the independent reference: textbook models, own code ---------------------------------------------------------
def _convolve(t: np.ndarray, cp: np.ndarray, irf: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """C(t) = ∫ cp(u) irf(t - u) du on a uniform FINE_S grid (trapezoid weights), sampled at ``t``."""
    grid = np.arange(0.0, t[-1] + FINE_S, FINE_S)
    a = np.interp(grid, t, cp, left=0.0)
    h = irf(grid)
    full = fftconvolve(a, h)[: grid.size] * FINE_S - 0.5 * FINE_S * (a * h[0] + a[0] * h)  # trapezoid end corrections
    return np.interp(t, grid, full)


def ref_patlak(t: np.ndarray, cp: np.ndarray, ktrans: float, vp: float) -> np.ndarray:
    return vp * cp + ktrans / 60.0 * cumulative_trapezoid(cp, t, initial=0.0)


def ref_tofts(t: np.ndarray, cp: np.ndarray, ktrans: float, ve: float, vp: float = 0.0) -> np.ndarray:
    kt, kep = ktrans / 60.0, ktrans / 60.0 / ve
    return vp * cp + _convolve(t, cp, lambda s: kt * np.exp(-kep * s))


def ref_2cxm(t: np.ndarray, cp: np.ndarray, fp: float, ps: float, vp: float, ve: float) -> np.ndarray:
    """Sourbron & Buckley 2011: R(t) = E exp(-K+ t) + (1 - E) exp(-K- t), C = Fp (cp * R)."""
    f, p = fp / 6000.0, ps / 60.0
    tp, te, tb = vp / (f + p), ve / p, vp / f
    s = 1.0 / tp + 1.0 / te
    root = np.sqrt(max(s * s - 4.0 / (te * tb), 0.0))
    kplus, kminus = 0.5 * (s + root), 0.5 * (s - root)
    e = (1.0 / tb - kminus) / (kplus - kminus)  # R(0) = 1 and R'(0) = -1/Tb (all tracer starts in the plasma)
    return _convolve(t, cp, lambda u: f * (e * np.exp(-kplus * u) + (1.0 - e) * np.exp(-kminus * u)))


def ode_2cxm(t: np.ndarray, cp: np.ndarray, fp: float, ps: float, vp: float, ve: float) -> np.ndarray:
    """The 2CXM as its two mass-balance ODEs, solved by scipy (cp linear between frames)."""
    f, p = fp / 6000.0, ps / 60.0

    def rhs(s: float, y: np.ndarray) -> list[float]:
        ca = np.interp(s, t, cp, left=0.0)
        return [(f * (ca - y[0]) + p * (y[1] - y[0])) / vp, p * (y[0] - y[1]) / ve]

    sol = solve_ivp(rhs, (0.0, t[-1]), [0.0, 0.0], t_eval=t, method="LSODA", rtol=1e-9, atol=1e-12, max_step=0.25)
    return vp * sol.y[0] + ve * sol.y[1]


REFERENCE = {
    "patlak": (lambda t, cp, *p: ref_patlak(t, cp, *p), [0.1, 0.05], ([0, 0], [5, 1])),
    "tofts": (lambda t, cp, *p: ref_tofts(t, cp, *p), [0.1, 0.3], ([0, 1e-3], [5, 1])),
    "etofts": (lambda t, cp, *p: ref_tofts(t, cp, *p), [0.1, 0.3, 0.05], ([0, 1e-3, 0], [5, 1, 1])),
    "2cxm": (lambda t, cp, *p: ref_2cxm(t, cp, *p), [50, 0.1, 0.05, 0.2], ([0.1, 1e-4, 1e-3, 1e-3], [500, 5, 1, 1])),
}


def _reference_fit(model: str, t: np.ndarray, curves: np.ndarray, cp: np.ndarray) -> np.ndarray:
    """scipy curve_fit per voxel (bounded trust-region) on the reference model; Ktrans (Fp for 2CXM)."""
    f, p0, bounds = REFERENCE[model]
    out = np.full(len(curves), np.nan)
    for i, c in enumerate(curves):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, _ = curve_fit(lambda tt, *q: f(tt, cp, *q), t, c, p0=p0, bounds=bounds, maxfev=2000)
            out[i] = p[0]
        except (RuntimeError, ValueError):
            pass
    return out


# -- test curves: the reference's own AIF and textbook models (isotox's models and AIF never make them) -------------
def textbook_parker_aif_mM(t_s: np.ndarray, delay_s: float = 10.0) -> np.ndarray:
    """Parker et al. 2006 population blood AIF (mM), its published parameters, written out here."""
    t = np.clip((t_s - delay_s) / 60.0, 0.0, None)  # minutes after arrival
    a1, a2, t1, t2, s1, s2 = 0.809, 0.330, 0.17046, 0.365, 0.0563, 0.132
    alpha, beta, s, tau = 1.050, 0.1685, 38.078, 0.483
    gauss = a1 / (s1 * np.sqrt(2 * np.pi)) * np.exp(-((t - t1) ** 2) / (2 * s1**2)) + a2 / (s2 * np.sqrt(2 * np.pi)) * np.exp(-((t - t2) ** 2) / (2 * s2**2))
    return np.where(t_s >= delay_s, gauss + alpha * np.exp(-beta * t) / (1 + np.exp(-s * (t - tau))), 0.0)


def _plasma_hu(t: np.ndarray) -> np.ndarray:
    return HU_PER_MM * textbook_parker_aif_mM(t) / 0.55


#: Distinct noiseless curves per model; a batch draws from them (each with its own noise), so
#: millions of test voxels need only this many reference convolutions.
POOL = 2000


def _curves(model: str, t: np.ndarray, n: int, rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    cp = _plasma_hu(t)
    m = min(n, POOL)
    if model == "2cxm":
        pool = {"fp": rng.uniform(20, 120, m), "ps": rng.uniform(0.05, 0.4, m), "vp": rng.uniform(0.02, 0.1, m), "ve": rng.uniform(0.1, 0.4, m)}
        clean = np.stack([ref_2cxm(t, cp, pool["fp"][i], pool["ps"][i], pool["vp"][i], pool["ve"][i]) for i in range(m)])
    else:
        pool = {"ktrans": rng.uniform(0.05, 0.4, m), "ve": rng.uniform(0.2, 0.5, m), "vp": rng.uniform(0.01, 0.08, m)}
        if model == "patlak":
            clean = np.stack([ref_patlak(t, cp, pool["ktrans"][i], pool["vp"][i]) for i in range(m)])
        else:
            if model == "tofts":
                pool["vp"] = np.zeros(m)
            clean = np.stack([ref_tofts(t, cp, pool["ktrans"][i], pool["ve"][i], pool["vp"][i]) for i in range(m)])
    pick = rng.integers(0, m, n)
    return clean[pick] + rng.normal(0.0, noise, (n, t.size)), cp, {k: v[pick] for k, v in pool.items()}


def _error(got: np.ndarray, want: np.ndarray) -> str:
    rel = np.abs(got - want) / want
    return f"median |rel err| {np.nanmedian(rel):.3f}, failed {np.mean(~np.isfinite(got)):.3f}"


def _timed(f: Callable[[], object]) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = f()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _model_check(t: np.ndarray) -> None:
    """Max |model - ODE| / peak for one 2CXM tissue: isotox's exact convolution and the reference's."""
    cp = textbook_parker_aif_mM(t)
    args = (60.0, 0.2, 0.05, 0.25)
    ode = ode_2cxm(t, cp, *args)
    ours = two_compartment_exchange(t, cp, *[[a] for a in args])[0]
    ref = ref_2cxm(t, cp, *args)
    print(f"  2CXM model vs ODE solution: isotox {np.abs(ours - ode).max() / ode.max():.1e}, reference {np.abs(ref - ode).max() / ode.max():.1e} (of peak)")


def _delayed_single(t: np.ndarray, repeats: int, rng: np.random.Generator, noise: float) -> None:
    cp = _plasma_hu(t)
    tissue = ode_2cxm(t, np.interp(t - 5.0, t, cp, left=0.0), 60.0, 0.2, 0.05, 0.25)
    tissue = tissue + rng.normal(0.0, noise, t.size)
    fit(t, tissue, cp, "2cxm", delay="fit")  # warm-up
    runs = [_timed(lambda: fit(t, tissue, cp, "2cxm", delay="fit")) for _ in range(repeats)]
    result = runs[0][0]
    wall, cpu = np.median([r[1] for r in runs]) * 1e3, np.median([r[2] for r in runs]) * 1e3
    print(f"  2CXM single curve, 5 s delay, delay='fit' (0-10 s, 0.5 s grid): {wall:.1f} ms wall, {cpu:.1f} ms CPU per fit "
          f"(median of {repeats}); delay {result['delay'][0]:.1f} s, Fp {result['fp'][0]:.1f} (true 60)")  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=512 * 512 * 16, help="curves for the linear models (default: the realistic slab)")
    parser.add_argument("--nonlinear-voxels", type=int, default=20_000, help="curves for the vectorised 2CXM")
    parser.add_argument("--subset", type=int, default=100, help="curves for the curve_fit loop")
    parser.add_argument("--noise-hu", type=float, default=4.0, help="noise SD (HU) after the stage's 5 mm smoothing")
    parser.add_argument("--repeats", type=int, default=20, help="runs of the single delayed fit")
    parser.add_argument("--models", nargs="+", default=["patlak", "tofts", "etofts", "2cxm"])
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    for label, t in SCHEDULES.items():
        print(f"{label} over {t[-1]:.0f} s, noise {args.noise_hu} HU")
        _model_check(t)
        for model in args.models:
            n = args.nonlinear_voxels if model == "2cxm" else args.voxels
            if t.size > 100 and model != "2cxm":
                n = max(args.subset, n // 20)  # 23x the frames: keep the run (and memory) comparable
            curves, cp, truth = _curves(model, t, n, rng, args.noise_hu)
            key = "fp" if model == "2cxm" else "ktrans"
            result, wall, cpu = _timed(lambda c=curves: fit(t, c, cp, model))
            sub = slice(0, args.subset)
            ref, ref_wall, ref_cpu = _timed(lambda c=curves: _reference_fit(model, t, c[sub], cp))
            ours_rate, ref_rate = n / cpu, args.subset / ref_cpu
            print(f"  {model:7s} isotox: {n} voxels in {wall:.1f} s wall / {cpu:.1f} s CPU = {ours_rate:,.0f} voxels/CPU-s; "
                  f"{key}: {_error(result[key], truth[key])}")  # type: ignore[index]
            print(f"  {model:7s} curve_fit loop: {args.subset} voxels in {ref_wall:.1f} s wall / {ref_cpu:.1f} s CPU = {ref_rate:,.1f} voxels/CPU-s; "
                  f"{key}: {_error(ref, truth[key][sub])} (isotox on the same voxels: {_error(result[key][sub], truth[key][sub])})")  # type: ignore[index]
            print(f"  {model:7s} speed-up isotox / curve_fit loop: {ours_rate / ref_rate:,.1f}x")
            del curves, result
        if "2cxm" in args.models:
            _delayed_single(t, args.repeats, rng, args.noise_hu)
    print(f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
