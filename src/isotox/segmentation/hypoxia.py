"""HX4 hypoxia: tumour-to-blood ratio maps and the hypoxic volume (TBR >= 1.4).

Blood activity is the mean SUV inside the aorta ROI eroded by ~1 PET FWHM (6 mm), so partial volume with
the vessel wall and the PET blur of the surrounding tissue does not dilute it (Zegers et al.
2013-2015 used the aortic arch / descending aorta the same way). The threshold 1.4 is the
HX4 literature's; it is configurable.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from isotox.segmentation.margins import shrink


def blood_roi(aorta: NDArray[np.bool_], spacing_xyz: tuple[float, float, float], erode_mm: float = 6.0) -> NDArray[np.bool_]:
    """The aorta ROI eroded by ``erode_mm`` (the whole ROI if erosion leaves fewer than 10 voxels)."""
    core = shrink(aorta, spacing_xyz, erode_mm)
    return core if core.sum() >= 10 else aorta


def blood_suv(suv: NDArray[np.floating], aorta: NDArray[np.bool_], spacing_xyz: tuple[float, float, float], erode_mm: float = 6.0) -> float:
    """Mean SUV of the eroded aorta ROI; NaN voxels (outside the PET's field of view) do not count."""
    values = np.asarray(suv, dtype=float)[blood_roi(aorta, spacing_xyz, erode_mm)]
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def hypoxia_metrics(tbr: NDArray[np.floating], tumour: NDArray[np.bool_], voxel_cc: float, threshold: float) -> tuple[NDArray[np.bool_], dict[str, float]]:
    """Hypoxic sub-volume of ``tumour`` and its figures: HV (cm3), FHV, TBRmax, TBRmean."""
    hypoxic = tumour & (np.asarray(tbr) >= threshold)
    values = np.asarray(tbr, dtype=float)[tumour]
    hv = float(hypoxic.sum()) * voxel_cc
    tv = float(tumour.sum()) * voxel_cc
    return hypoxic, {"hv_cc": hv, "fhv": hv / tv if tv else float("nan"),
                     "tbrmax": float(values.max()) if values.size else float("nan"),
                     "tbrmean": float(values.mean()) if values.size else float("nan")}
