"""PET features of a volume of interest, as the literature defines them (Boellaard 2015, EANM).

* SUVmax: the hottest voxel; SUVmean: mean over the VOI; MTV: VOI volume (cm3);
  TLG = SUVmean x MTV;
* SUVpeak: the highest mean SUV in a 1 cm3 sphere (radius 6.2 mm) centred on a voxel of the
  VOI (the sphere may reach outside the VOI), which is far less sensitive to noise than SUVmax.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

PEAK_RADIUS_MM = (3.0 / (4.0 * np.pi)) ** (1.0 / 3.0) * 10.0  # 1 cm3 sphere: 6.20 mm


def sphere_kernel(spacing_xyz: tuple[float, float, float], radius_mm: float) -> NDArray[np.float64]:
    """Voxels whose centre lies within ``radius_mm`` of the central voxel, normalised to sum 1."""
    half = [int(np.floor(radius_mm / s)) for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
    kk, jj, ii = np.meshgrid(*(np.arange(-h, h + 1) for h in half), indexing="ij")
    inside = (kk * spacing_xyz[2]) ** 2 + (jj * spacing_xyz[1]) ** 2 + (ii * spacing_xyz[0]) ** 2 <= radius_mm**2
    return inside / inside.sum()


def suv_peak(suv: NDArray[np.floating], voi: NDArray[np.bool_], spacing_xyz: tuple[float, float, float]) -> float:
    kernel = sphere_kernel(spacing_xyz, PEAK_RADIUS_MM)
    idx = np.argwhere(voi)
    pad = np.array(kernel.shape) // 2 + 1
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, voi.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    local = ndimage.convolve(np.asarray(suv[box], dtype=float), kernel, mode="nearest")
    return float(local[voi[box]].max())


def pet_features(suv: NDArray[np.floating], voi: NDArray[np.bool_], spacing_xyz: tuple[float, float, float], prefix: str = "") -> dict[str, float]:
    """SUVmax, SUVpeak, SUVmean, MTV (cm3) and TLG of ``voi`` (NaN for an empty VOI)."""
    names = ("suvmax", "suvpeak", "suvmean", "mtv_cc", "tlg")
    if not voi.any():
        return {prefix + n: float("nan") for n in names}
    values = np.asarray(suv, dtype=float)[voi]
    mtv = float(voi.sum()) * float(np.prod(spacing_xyz)) / 1000.0
    mean = float(values.mean())
    return dict(zip((prefix + n for n in names), (float(values.max()), suv_peak(suv, voi, spacing_xyz), mean, mtv, mean * mtv)))
