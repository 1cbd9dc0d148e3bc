"""Prescription maps: the dose a voxel should get, drawn from an image inside the GTV.

Every painted strategy is written as a *shape* phi(v) in [0, 1] (0 outside the GTV) and a dose
range: D(v) = D_low + (D_high - D_low) phi(v). D_low is the base prescription (the PTV dose),
D_high the top of the painted range, which the isotoxic search chooses. Why the split: the plan
is base + (D_high - D_low) x painted unit plan, linear in the one number the search scales.

* by numbers (voxel level, Bentzen 2005; seed 003): phi = (I - I_low) / (I_high - I_low) clipped to [0, 1];
* by contours (nested iso-levels, "often about 5", seed 003): phi rounded to L equally spaced
  levels, each an iso-intensity volume nested in the one below;
* sub-volume boost (hypoxia, TBR >= 1.4, seed 002): phi = 1 where I >= threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from isotox.painting.settings import Strategy

FloatArray = NDArray[np.floating]


def linear_shape(image: FloatArray, target: NDArray[np.bool_], i_low: float, i_high: float) -> NDArray[np.float64]:
    """phi = (I - I_low) / (I_high - I_low) clipped to [0, 1] inside ``target``, 0 outside."""
    if not i_high > i_low:
        raise ValueError(f"the painting range needs I_high > I_low (got {i_low:g} .. {i_high:g})")
    phi = np.clip((np.asarray(image, float) - i_low) / (i_high - i_low), 0.0, 1.0)
    return np.where(target, phi, 0.0)


def prescription_by_numbers(image: FloatArray, target: NDArray[np.bool_], i_low: float, i_high: float,
                            d_low: float, d_high: float) -> NDArray[np.float64]:
    """D(v) = D_low + (D_high - D_low) (I(v) - I_low) / (I_high - I_low), clipped to [D_low, D_high]
    inside ``target``; D_low elsewhere (the base prescription of the surrounding PTV)."""
    return d_low + (d_high - d_low) * linear_shape(image, target, i_low, i_high)


def contour_shape(image: FloatArray, target: NDArray[np.bool_], i_low: float, i_high: float, levels: int) -> NDArray[np.float64]:
    """The linear shape rounded to ``levels`` values 0, 1/(L-1), ..., 1: nested iso-intensity volumes."""
    if levels < 2:
        raise ValueError("dose painting by contours needs at least 2 levels")
    steps = levels - 1
    return np.where(target, np.round(linear_shape(image, target, i_low, i_high) * steps) / steps, 0.0)


def subvolume_shape(image: FloatArray, target: NDArray[np.bool_], threshold: float) -> NDArray[np.float64]:
    """1 in the sub-volume (I >= threshold inside ``target``), 0 elsewhere."""
    return (target & (np.asarray(image) >= threshold)).astype(float)


@dataclass(frozen=True)
class PaintingMap:
    """A strategy's prescription shape on the planning CT grid and the image levels it used."""

    strategy: str
    shape: NDArray[np.float64]  # (k, j, i), phi in [0, 1]
    i_low: float
    i_high: float
    levels: int  # nested levels (contours), 2 for a sub-volume, 0 for a continuous map
    image_max: float

    def dose(self, d_low: float, d_high: float) -> NDArray[np.float64]:
        return d_low + (d_high - d_low) * self.shape

    def level_masks(self, target: NDArray[np.bool_], bins: int = 5) -> dict[int, NDArray[np.bool_]]:
        """Nested volumes of the map (percent of the painted range -> mask) for the RTSTRUCT: the
        strategy's own levels, or ``bins`` equal steps of a continuous map. Level 0 is the target."""
        steps = self.levels - 1 if self.levels >= 2 else bins
        out = {0: target.copy()}
        for k in range(1, steps + 1):
            mask = target & (self.shape >= (k - 0.5) / steps if self.levels >= 2 else self.shape >= k / (steps + 1))
            if mask.any():
                out[round(100 * k / steps) if self.levels >= 2 else round(100 * k / (steps + 1))] = mask
        return out


def strategy_map(strategy: Strategy, image: FloatArray, target: NDArray[np.bool_]) -> PaintingMap:
    """The strategy's shape from its image (SUV or TBR on the planning CT grid) inside ``target``.
    Levels in percent are of the image maximum inside ``target``."""
    if not target.any():
        raise ValueError(f"{strategy.name}: the target (GTV) is empty")
    image_max = float(np.max(np.asarray(image)[target]))
    if strategy.kind == "subvolume":
        t = strategy.threshold.resolve(image_max)  # type: ignore[union-attr]
        return PaintingMap(strategy.name, subvolume_shape(image, target, t), t, t, 2, image_max)
    lo, hi = strategy.low.resolve(image_max), strategy.high.resolve(image_max)  # type: ignore[union-attr]
    if hi <= lo:  # e.g. a tumour whose TBR never rises above the low level: nothing to paint
        return PaintingMap(strategy.name, np.zeros(target.shape), lo, hi, 0, image_max)
    if strategy.kind == "contours":
        return PaintingMap(strategy.name, contour_shape(image, target, lo, hi, strategy.levels), lo, hi, strategy.levels, image_max)
    return PaintingMap(strategy.name, linear_shape(image, target, lo, hi), lo, hi, 0, image_max)
