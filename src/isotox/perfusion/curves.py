"""From DCE-CT frames to concentration curves: baseline, enhancement, the arterial input.

CT enhancement (HU over the pre-contrast baseline) is proportional to iodine concentration,
so enhancement curves are used directly as concentrations: the HU-per-mg factor cancels
between tissue and AIF in every model. The AIF measured in a vessel is *blood*; the models
need *plasma*: Cp = Cb / (1 - Hct).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from isotox.vessels import find_descending_aorta

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


#: Enhancing blood: peak enhancement above this (HU) and above this fraction of the slab's
#: robust maximum. Low enough for the aorta when the venous side peaks twice as high.
BLOOD_ENHANCEMENT_HU = 80.0
BLOOD_FRACTION_OF_MAX = 0.25
BONE_HU = 150.0


@dataclass
class AifChoice:
    """The arterial-input ROI and the record of why it was chosen (perfusion.json 'aif_qc')."""

    mask: NDArray[np.bool_]
    qc: dict[str, object]
    flags: list[str]


def find_aif_roi(enh: NDArray[np.float64], t_s: NDArray[np.float64], body: NDArray[np.bool_], baseline_hu: NDArray[np.float64],
                 image: sitk.Image, min_volume_mm3: float = 200.0) -> AifChoice:
    """The descending aorta of the slab, found by anatomy, as the arterial input.

    Not the earliest or brightest vessel: contrast from an arm vein reaches the superior vena
    cava, the right heart and the pulmonary artery first, and they peak higher than the aorta.
    Enhancing blood (peak enhancement >= 80 HU and >= 25 % of the slab's robust maximum) gives the
    candidates; :func:`isotox.vessels.find_descending_aorta` picks the round vessel left of the
    spine (bone from the pre-contrast frames) that runs through the slab. Inside it, the voxels
    above 80 % of its own peak are the ROI (the lumen without the partial-volume rim).

    QC: every other enhancing vessel of at least ``min_volume_mm3`` is listed with its time to
    peak; a vessel that peaks more than 2 s *after* the chosen one with at least half its
    enhancement means the choice may be venous or pulmonary, and is flagged.
    """
    peak = enh.max(axis=0)
    ttp = t_s[np.argmax(enh, axis=0)]
    robust = float(np.percentile(peak[body], 99.9)) if body.any() else 0.0
    blood = body & (peak >= max(BLOOD_ENHANCEMENT_HU, BLOOD_FRACTION_OF_MAX * robust))
    blood = np.stack([ndimage.binary_opening(b) for b in blood])
    slab_mm = enh.shape[1] * image.GetSpacing()[2]
    found = find_descending_aorta(blood, baseline_hu > BONE_HU, body, image, min_length_mm=min(40.0, 0.6 * slab_mm))
    flags: list[str] = []
    qc: dict[str, object] = {"method": "descending aorta by anatomy (isotox.vessels)", **found.as_dict()}
    if not found.mask.any():
        return AifChoice(found.mask, qc, flags)
    vessel = found.mask
    roi = vessel & (peak >= 0.8 * float(np.percentile(peak[vessel], 95)))
    chosen_ttp = float(np.median(ttp[roi]))
    chosen_peak = float(np.median(peak[roi]))
    labels, n = ndimage.label(blood & ~ndimage.binary_dilation(vessel, iterations=2))
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    others = []
    for lab in range(1, n + 1):
        region = labels == lab
        if region.sum() * voxel_mm3 < min_volume_mm3:
            continue
        others.append({"voxels": int(region.sum()), "time_to_peak_s": float(np.median(ttp[region])), "peak_hu": float(np.median(peak[region]))})
    qc.update(time_to_peak_s=chosen_ttp, peak_enhancement_hu=chosen_peak, other_vessels=others)
    later = [o for o in others if o["time_to_peak_s"] > chosen_ttp + 2.0 and o["peak_hu"] >= 0.5 * chosen_peak]
    if later:
        flags.append(f"AIF check: another enhancing vessel peaks {max(o['time_to_peak_s'] for o in later) - chosen_ttp:.1f} s after the chosen "
                     "aorta; the choice may be venous or pulmonary: look at qc/aif.png, or set perfusion.aif: structure")
    return AifChoice(roi, qc, flags)


def arterial_input(enh: NDArray[np.float64], t_s: NDArray[np.float64], mask: NDArray[np.bool_], source: str) -> ArterialInput:
    blood = enh[:, mask].mean(axis=1)
    return ArterialInput(mask, blood, source, float(blood.max()), float(t_s[int(np.argmax(blood))]))
