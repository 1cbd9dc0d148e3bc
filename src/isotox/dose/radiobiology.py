"""Radiobiology used by the protocols: EQD2 (linear-quadratic) and the LKB NTCP model.

EQD2 = D (d + alpha/beta) / (2 + alpha/beta) with d = D / n the dose per fraction (per voxel).
LKB: NTCP = Phi((gEUD - TD50) / (m TD50)), gEUD with a = 1/n (Lyman 1985, Kutcher & Burman 1989).
"""

from __future__ import annotations

from scipy.stats import norm

from isotox.dose.dvh import Dvh


def eqd2_of_prescription(total_gy: float, fractions: int, alpha_beta_gy: float) -> float:
    d = total_gy / fractions
    return total_gy * (d + alpha_beta_gy) / (2.0 + alpha_beta_gy)


def lkb_ntcp(dvh: Dvh, td50_gy: float, m: float, n: float) -> float:
    eud = dvh.geud(1.0 / n)
    return float(norm.cdf((eud - td50_gy) / (m * td50_gy)))


def model_ntcp(dvh_physical: Dvh, model: dict, fractions: int) -> float:
    """NTCP of a protocol model entry (td50_gy, m, n, dose_type, alpha_beta_gy) on a physical-dose DVH."""
    dvh = dvh_physical.eqd2(fractions, model["alpha_beta_gy"]) if model.get("dose_type") == "eqd2" else dvh_physical
    return lkb_ntcp(dvh, model["td50_gy"], model["m"], model["n"])
