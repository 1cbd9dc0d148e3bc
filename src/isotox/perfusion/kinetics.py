"""Forward tracer-kinetic models: tissue concentration from a plasma input.

Times in seconds, Ktrans in /min, volume fractions (ve, vp) dimensionless, as OSIPI reports them.
The convolution with the exponential residue function is computed exactly for a plasma curve
that is piecewise linear between samples (a recursive update, vectorised over voxels), so it
is accurate on the irregular frame times of clinical DCE-CT.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def exp_convolution(t_s: ArrayLike, cp: ArrayLike, rate_per_s: ArrayLike) -> NDArray[np.float64]:
    """``∫_0^t cp(u) exp(-rate (t - u)) du`` for every voxel's rate; returns (voxels, time).

    ``cp`` has shape (time,) or (voxels, time); ``rate_per_s`` has shape (voxels,) or is scalar.
    """
    t = np.asarray(t_s, dtype=float)
    cp = np.atleast_2d(np.asarray(cp, dtype=float))
    k = np.atleast_1d(np.asarray(rate_per_s, dtype=float))[:, None]
    n_vox = max(cp.shape[0], k.shape[0])
    out = np.zeros((n_vox, t.size))
    for i in range(t.size - 1):
        dt = t[i + 1] - t[i]
        a, b = cp[:, i : i + 1], cp[:, i + 1 : i + 2]
        kd = k * dt
        decay = np.exp(-kd)
        small = kd < 1e-6
        kk = np.where(small, 1.0, k)
        # exact integral of the linear segment against the exponential kernel (series for tiny k*dt)
        full = b * (1 - decay) / kk - (b - a) / dt * (1 - decay * (1 + kd)) / kk**2
        series = dt * (a + b) / 2 - k * dt**2 * (a + 2 * b) / 6
        segment = np.where(small, series, full)
        out[:, i + 1] = (out[:, i : i + 1] * decay + segment)[:, 0]
    return out


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
