"""Voxel-wise perfusion fitting speed and accuracy on a realistic DCE-CT slab size.

A slab of the realistic preset (512 x 512 x 16 voxels, 26 frames over 150 s, the sample
cohort's timeline) is filled with extended-Tofts / Patlak curves from tumour-like parameter
ranges plus Gaussian noise, so every voxel's truth is known. For each model it prints the
voxels per second of ``isotox.perfusion.fit`` (linear models on the whole slab, 2CXM on a
subset), the process's peak memory, and the same fit through scipy ``curve_fit`` in a Python
loop on a subset, with the median absolute relative Ktrans (Fp for 2CXM) error of both.

Usage: python benchmarks/perfusion_fit.py [--voxels N] [--subset 400] [--noise-hu 4]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np
from scipy.optimize import curve_fit

from isotox.perfusion import fit
from isotox.perfusion.aif import parker_aif
from isotox.perfusion.fit import two_compartment_exchange
from isotox.perfusion.kinetics import extended_tofts, patlak

FRAMES_S = np.concatenate([[0.0, 3.0, 6.0, 9.0], np.arange(12.0, 61.0, 3.0), [75.0, 90.0, 105.0, 120.0, 150.0]])
HU_PER_MM = 40.0


def _curves(model: str, n: int, rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    cp = HU_PER_MM * parker_aif(FRAMES_S / 60.0, delay_min=10.0 / 60.0) / 0.55
    truth = {"ktrans": rng.uniform(0.05, 0.4, n), "ve": rng.uniform(0.2, 0.5, n), "vp": rng.uniform(0.01, 0.08, n)}
    if model == "patlak":
        clean = patlak(FRAMES_S, cp, truth["ktrans"], truth["vp"])
    elif model == "2cxm":
        truth = {"fp": rng.uniform(20, 120, n), "ps": rng.uniform(0.05, 0.4, n), "vp": rng.uniform(0.02, 0.1, n), "ve": rng.uniform(0.1, 0.4, n)}
        clean = two_compartment_exchange(FRAMES_S, cp, truth["fp"], truth["ps"], truth["vp"], truth["ve"])
    else:
        vp = truth["vp"] if model == "etofts" else np.zeros(n)
        clean = extended_tofts(FRAMES_S, cp, truth["ktrans"], truth["ve"], vp)
    return clean + rng.normal(0.0, noise, clean.shape), cp, truth


def _reference(model: str, curves: np.ndarray, cp: np.ndarray) -> np.ndarray:
    """scipy curve_fit per voxel (bounded trust-region); returns Ktrans (Fp for 2CXM) per voxel."""
    def f(t: np.ndarray, *p: float) -> np.ndarray:
        if model == "patlak":
            return patlak(t, cp, [p[0]], [p[1]])[0]
        if model == "tofts":
            return extended_tofts(t, cp, [p[0]], [p[1]], [0.0])[0]
        if model == "etofts":
            return extended_tofts(t, cp, [p[0]], [p[1]], [p[2]])[0]
        return two_compartment_exchange(t, cp, [p[0]], [p[1]], [p[2]], [p[3]])[0]
    start = {"patlak": ([0.1, 0.05], ([0, 0], [5, 1])), "tofts": ([0.1, 0.3], ([0, 1e-3], [5, 1])),
             "etofts": ([0.1, 0.3, 0.05], ([0, 1e-3, 0], [5, 1, 1])), "2cxm": ([50, 0.1, 0.05, 0.2], ([0.1, 1e-4, 1e-3, 1e-3], [500, 5, 1, 1]))}[model]
    out = np.full(len(curves), np.nan)
    for i, c in enumerate(curves):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, _ = curve_fit(f, FRAMES_S, c, p0=start[0], bounds=start[1], maxfev=2000)
            out[i] = p[0]
        except RuntimeError:
            pass
    return out


def _error(got: np.ndarray, want: np.ndarray) -> str:
    rel = np.abs(got - want) / want
    return f"median |rel err| {np.nanmedian(rel):.3f}, failed {np.mean(~np.isfinite(got)):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voxels", type=int, default=512 * 512 * 16, help="slab voxels for the linear models (default the realistic slab)")
    parser.add_argument("--nonlinear-voxels", type=int, default=20_000, help="voxels for the vectorised 2CXM")
    parser.add_argument("--subset", type=int, default=400, help="voxels for the curve_fit loop")
    parser.add_argument("--noise-hu", type=float, default=4.0, help="noise SD (HU) after the stage's 5 mm smoothing")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    print(f"frames={FRAMES_S.size} over {FRAMES_S[-1]:.0f} s, noise {args.noise_hu} HU")
    for model in ("patlak", "tofts", "etofts", "2cxm"):
        n = args.nonlinear_voxels if model == "2cxm" else args.voxels
        curves, cp, truth = _curves(model, n, rng, args.noise_hu)
        key = "fp" if model == "2cxm" else "ktrans"
        start = time.perf_counter()
        result = fit(FRAMES_S, curves, cp, model)
        seconds = time.perf_counter() - start
        print(f"{model:7s} isotox: {n} voxels in {seconds:.1f} s = {n / seconds:,.0f} voxels/s; {key}: {_error(result[key], truth[key])}")
        sub = slice(0, args.subset)
        start = time.perf_counter()
        ref = _reference(model, curves[sub], cp)
        seconds_ref = time.perf_counter() - start
        print(f"{model:7s} curve_fit loop: {args.subset} voxels in {seconds_ref:.1f} s = {args.subset / seconds_ref:,.0f} voxels/s; "
              f"{key}: {_error(ref, truth[key][sub])} (isotox on the same voxels: {_error(result[key][sub], truth[key][sub])})")
        del curves, result
    print(f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
