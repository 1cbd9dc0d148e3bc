"""Forward tracer-kinetic models: tissue concentration from a plasma input.

Times in seconds, Ktrans in /min, volume fractions (ve, vp) dimensionless, as OSIPI reports them.
The convolution with the exponential residue function is computed exactly for a plasma curve
that is piecewise linear between samples (a recursive update, vectorised over voxels and frames), so it
is accurate on the irregular frame times of clinical DCE-CT.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: Rate x interval below which the segment weights use their series (see ``_segment_coefficients``).
SERIES_BELOW = 0.05


def _segment_coefficients(k: NDArray[np.float64], dt: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """Per rate (rows, 1) and frame interval (n,): the decay ``exp(-k dt)`` and the weights of a
    segment's start and end values in its exact integral against the kernel.

    ``∫_0^dt (a + (b - a) u / dt) exp(-k (dt - u)) du = wa a + wb b``. The closed form loses
    digits as ``x = k dt`` falls (its numerator is ~x^2/2: at x = 1e-6 only 4 digits are left), so
    below x = 0.05 the weights come from their Taylor series,
    ``wa = dt Σ (-x)^n / (n! (n + 2))`` and ``wb = dt Σ (-x)^n / (n! (n + 1) (n + 2))``; eight terms
    leave < 1e-13 relative there, and the closed form keeps > 12 digits above it.
    """
    kd = k * dt
    decay = np.exp(-kd)
    small = kd < SERIES_BELOW
    kk = np.where(small, 1.0, k)
    tail = (1.0 - decay * (1.0 + kd)) / (kk * kk * dt)
    wa = np.where(small, 0.0, tail)
    wb = np.where(small, 0.0, (1.0 - decay) / kk - tail)
    if np.any(small):
        x = np.where(small, kd, 0.0)
        term = np.ones_like(x)  # (-x)^n / n!
        sa = np.zeros_like(x)
        sb = np.zeros_like(x)
        for n in range(8):
            sa += term / (n + 2)
            sb += term / ((n + 1) * (n + 2))
            term = term * (-x) / (n + 1)
        wa = np.where(small, dt * sa, wa)
        wb = np.where(small, dt * sb, wb)
    return decay, wa, wb


def _scan(decay: NDArray[np.float64], source: NDArray[np.float64]) -> NDArray[np.float64]:
    """``y[i + 1] = decay[i] y[i] + source[i]``, ``y[0] = 0``, for every row at once.

    Hillis-Steele prefix scan over frames: ceil(log2 T) whole-array steps instead of a Python
    loop over T frames. Stable for any rate: only products of decays (all in [0, 1]) appear.
    """
    d, s = decay.copy(), source.copy()
    offset = 1
    while offset < s.shape[1]:
        s[:, offset:] += d[:, offset:] * s[:, :-offset]
        if offset * 2 < s.shape[1]:
            d[:, offset:] *= d[:, :-offset].copy()
        offset *= 2
    out = np.zeros((s.shape[0], s.shape[1] + 1))
    out[:, 1:] = s
    return out


def _recurse(decay: NDArray[np.float64], wa: NDArray[np.float64], wb: NDArray[np.float64], which: NDArray[np.intp],
             cp: NDArray[np.float64]) -> NDArray[np.float64]:
    """The same recursion as ``_scan`` as a loop over frames, each step one whole-batch update:
    cheaper than the scan's log2(T) passes once a batch has many rows. Works frames-major
    (coefficients per distinct interval, (steps, rows); cp as (frames, rows)), so every step
    reads contiguous memory and no (rows, frames) coefficient array is ever built."""
    d = decay.T.copy()
    c = np.ascontiguousarray(cp.T)
    source = wa.T[which] * c[:-1] + wb.T[which] * c[1:]  # (frames - 1, rows), in whole-array passes
    out = np.zeros((c.shape[0], source.shape[1]))
    for i, w in enumerate(which):
        np.multiply(d[w], out[i], out=out[i + 1])
        out[i + 1] += source[i]
    return out.T


#: Batches with at least this many rows run the frame loop (``_recurse``), smaller ones the scan.
_LOOP_ROWS = 128


def exp_convolution(t_s: ArrayLike, cp: ArrayLike, rate_per_s: ArrayLike) -> NDArray[np.float64]:
    """``∫_0^t cp(u) exp(-rate (t - u)) du`` for every voxel's rate; returns (voxels, time).

    ``cp`` has shape (time,) or (voxels, time); ``rate_per_s`` has shape (voxels,) or is scalar.
    Exact for ``cp`` piecewise linear between samples. The exponentials are computed once per
    distinct frame interval (a DCE protocol has a few); the recursion over frames runs as a
    prefix scan for small batches (a single curve costs log2(T) array steps, not T Python
    steps) and as one whole-batch update per frame for large ones.
    """
    t = np.asarray(t_s, dtype=float)
    cp = np.atleast_2d(np.asarray(cp, dtype=float))
    k = np.atleast_1d(np.asarray(rate_per_s, dtype=float))[:, None]
    n_vox = max(cp.shape[0], k.shape[0])
    if t.size < 2:
        return np.zeros((n_vox, t.size))
    steps, which = np.unique(np.diff(t), return_inverse=True)
    coefficients = _segment_coefficients(k, steps)
    if n_vox >= _LOOP_ROWS:
        return _recurse(*coefficients, which, cp)
    decay, wa, wb = (np.broadcast_to(w[:, which], (n_vox, t.size - 1)) for w in coefficients)
    return _scan(decay, wa * cp[:, :-1] + wb * cp[:, 1:])


def extended_tofts(t_s: ArrayLike, cp: ArrayLike, ktrans_per_min: ArrayLike, ve: ArrayLike, vp: ArrayLike) -> NDArray[np.float64]:
    """Extended Tofts: ``C = vp cp + Ktrans ∫ cp exp(-kep (t-u)) du``, kep = Ktrans / ve. (voxels, time)."""
    ktrans = np.atleast_1d(np.asarray(ktrans_per_min, dtype=float)) / 60.0
    ve = np.atleast_1d(np.asarray(ve, dtype=float))
    vp = np.atleast_1d(np.asarray(vp, dtype=float))
    cp_arr = np.atleast_2d(np.asarray(cp, dtype=float))
    conv = exp_convolution(t_s, cp_arr, ktrans / ve)
    return vp[:, None] * cp_arr + ktrans[:, None] * conv


def patlak(t_s: ArrayLike, cp: ArrayLike, ktrans_per_min: ArrayLike, vp: ArrayLike) -> NDArray[np.float64]:
    """Patlak (irreversible uptake): ``C = vp cp + Ktrans ∫ cp du``. (voxels, time)."""
    ktrans = np.atleast_1d(np.asarray(ktrans_per_min, dtype=float)) / 60.0
    vp = np.atleast_1d(np.asarray(vp, dtype=float))
    cp_arr = np.atleast_2d(np.asarray(cp, dtype=float))
    conv = exp_convolution(t_s, cp_arr, np.zeros_like(ktrans))
    return vp[:, None] * cp_arr + ktrans[:, None] * conv
