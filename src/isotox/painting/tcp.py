"""Tumour control probability: Poisson linear-quadratic per voxel, with hypoxia from HX4.

    TCP = exp( - sum_v N_v exp(-alpha_v D_v - beta_v d_v D_v) ),   d_v = D_v / n   (per voxel)

N_v clonogens in voxel v (density x volume, uniform or proportional to FDG SUV), D_v the total
physical dose, n the fractions: the LQ fractionation correction is per voxel, so a painted plan's
hot voxels get their own dose per fraction (the EQD2 of a voxel is D_v (d_v + a/b)/(2 + a/b)).
Hypoxia: an oxygen modification factor OMF(pO2) = m (pO2 + K) / (m pO2 + K) (Alper &
Howard-Flanders form, 1 when oxic, m when anoxic) divides alpha and, squared, beta; pO2 comes
from HX4 TBR through an assumed inverse Michaelis-Menten curve (``po2_from_tbr``, see the YAML).
With alpha_sd > 0 the TCP is averaged over a normal population spread of alpha (Webb & Nahum
1993), alpha/beta fixed; alpha_sd = 0 gives the closed form above.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from isotox.painting.settings import TcpParameters

FloatArray = NDArray[np.floating]
_QUADRATURE_NODES = 40


def po2_from_tbr(tbr: FloatArray, params: TcpParameters) -> NDArray[np.float64]:
    """pO2 (mmHg) from TBR: TBR = 1 + (TBR_max - 1) K / (pO2 + K) solved for pO2, clipped to
    [0, po2_max] (TBR <= 1: oxic; TBR >= TBR_max: anoxic). An assumption, stated in the YAML."""
    t = np.asarray(tbr, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        po2 = params.tbr_k_mmhg * (params.tbr_max - t) / (t - 1.0)
    po2 = np.where(t <= 1.0, params.po2_max_mmhg, po2)
    return np.clip(po2, 0.0, params.po2_max_mmhg)


def oxygen_modification(po2_mmhg: FloatArray, m: float, k_mmhg: float) -> NDArray[np.float64]:
    """OMF = m (pO2 + K) / (m pO2 + K): the factor by which hypoxia divides alpha (1 .. m)."""
    p = np.asarray(po2_mmhg, float)
    return m * (p + k_mmhg) / (m * p + k_mmhg)


def clonogens(uptake: FloatArray, volume_cc: float, density_per_cc: float) -> NDArray[np.float64]:
    """Clonogens per voxel (``volume_cc`` each) proportional to ``uptake`` with the total of a
    uniform density: np.ones(n) gives the uniform case, an FDG SUV map the FDG-scaled one."""
    u = np.maximum(np.asarray(uptake, float), 0.0)
    if not np.any(u > 0):
        raise ValueError("clonogen density from an uptake map needs some uptake > 0 in the target")
    return density_per_cc * volume_cc * u * (u.size / u.sum())


def tcp(dose_gy: FloatArray, fractions: int, n_clonogens: FloatArray, params: TcpParameters,
        omf: FloatArray | None = None) -> float:
    """Poisson LQ TCP of voxel doses ``dose_gy`` (total, physical) in ``fractions`` fractions.
    ``omf``: per-voxel oxygen modification factor (None: oxic everywhere)."""
    d_total = np.asarray(dose_gy, float)
    n = np.asarray(n_clonogens, float)
    omf = np.ones_like(d_total) if omf is None else np.asarray(omf, float)
    if fractions < 1:
        raise ValueError("fractions must be >= 1")
    per_fraction = d_total / fractions
    if params.alpha_sd_gy > 0:
        x, w = np.polynomial.hermite.hermgauss(_QUADRATURE_NODES)
        alphas, weights = np.maximum(params.alpha_gy + np.sqrt(2.0) * params.alpha_sd_gy * x, 0.0), w / np.sqrt(np.pi)
    else:
        alphas, weights = np.array([params.alpha_gy]), np.array([1.0])
    log_n = np.log(np.maximum(n, 1e-300))
    total = 0.0
    for alpha, weight in zip(alphas, weights):
        a_v = alpha / omf
        b_v = alpha / params.alpha_beta_gy / omf**2
        surviving = np.exp(log_n - a_v * d_total - b_v * per_fraction * d_total).sum()
        total += weight * np.exp(-surviving)
    return float(total)
