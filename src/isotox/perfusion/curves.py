"""From DCE-CT frames to concentration curves: baseline, enhancement, the arterial input.

CT enhancement (HU over the pre-contrast baseline) is proportional to iodine concentration,
so enhancement curves are used directly as concentrations: the HU-per-mg factor cancels
between tissue and AIF in every model. The AIF measured in a vessel is *blood*; the models
need *plasma*: Cp = Cb / (1 - Hct).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

#: The bolus has arrived once the AIF exceeds its baseline by this fraction of its peak rise.
ARRIVAL_FRACTION = 0.05


def bolus_arrival_s(t_s: NDArray[np.float64], aif_hu: NDArray[np.float64], n_baseline: int) -> float:
    """First time the AIF rises above baseline + 5 % of its peak enhancement (linear between frames)."""
    base = float(np.mean(aif_hu[:n_baseline]))
    rise = aif_hu - base
    level = ARRIVAL_FRACTION * float(rise.max())
    above = np.flatnonzero(rise >= level)
    first = int(above[0]) if above.size else 0
    if first == 0:
        return float(t_s[0])
    a, b = rise[first - 1], rise[first]
    return float(t_s[first - 1] + (level - a) / (b - a) * (t_s[first] - t_s[first - 1]))


def detect_baseline_frames(t_s: NDArray[np.float64], aif_hu: NDArray[np.float64], minimum: int = 2) -> int:
    """Frames before the bolus: those acquired before its arrival (at least ``minimum``).

    Iterative: start from the first two frames as baseline, find the arrival, take every frame
    before it, and repeat until the count is stable (the baseline mean moves with the count).
    """
    n = minimum
    for _ in range(5):
        arrival = bolus_arrival_s(t_s, aif_hu, n)
        new = max(minimum, int(np.sum(t_s < arrival)))
        if new == n:
            break
        n = new
    return n


def enhancement(frames: NDArray[np.floating], n_baseline: int) -> NDArray[np.floating]:
    """(T, ...) frames in HU -> enhancement over the mean of the first ``n_baseline`` frames (dtype kept)."""
    frames = np.asarray(frames)
    return frames - frames[:n_baseline].mean(axis=0, dtype=np.float64).astype(frames.dtype)


@dataclass
class ArterialInput:
    mask: NDArray[np.bool_]  # on the DCE grid (k, j, i)
    blood_hu: NDArray[np.float64]  # mean enhancement of the ROI per frame
    source: str
    peak_hu: float
    time_to_peak_s: float


def find_aif_roi(enh: NDArray[np.float64], t_s: NDArray[np.float64], body: NDArray[np.bool_], voxel_mm3: float,
                 min_volume_mm3: float = 200.0) -> NDArray[np.bool_]:
    """The earliest, highest-enhancing vessel in the slab.

    Candidates are body voxels whose peak enhancement is >= 60 % of the slab's robust maximum
    (the 99.9th percentile); they fall into connected vessels (aorta, pulmonary artery, heart
    chambers). Each vessel of at least ``min_volume_mm3`` is scored by its mean time to peak,
    and the earliest wins; its voxels above 80 % of its own peak are the ROI (the lumen
    without the partial-volume rim).
    """
    peak = enh.max(axis=0)
    ttp = t_s[np.argmax(enh, axis=0)]
    robust = float(np.percentile(peak[body], 99.9))
    candidates = body & (peak >= 0.6 * robust)
    candidates = ndimage.binary_opening(candidates)
    labels, n = ndimage.label(candidates)
    best, best_key = 0, (np.inf, 0.0)
    for lab in range(1, n + 1):
        region = labels == lab
        if region.sum() * voxel_mm3 < min_volume_mm3:
            continue
        key = (round(float(np.median(ttp[region])), 1), -float(np.median(peak[region])))
        if key < best_key:
            best, best_key = lab, key
    if best == 0:
        return np.zeros_like(body)
    vessel = labels == best
    return vessel & (peak >= 0.8 * float(np.percentile(peak[vessel], 95)))


def arterial_input(enh: NDArray[np.float64], t_s: NDArray[np.float64], mask: NDArray[np.bool_], source: str) -> ArterialInput:
    blood = enh[:, mask].mean(axis=1)
    return ArterialInput(mask, blood, source, float(blood.max()), float(t_s[int(np.argmax(blood))]))
