"""PET tumour volumes: GTV_PET by threshold inside a search region, and the 50 % SUVmax boost volume.

Every threshold acts only inside a *search region* (the CT GTV grown by a margin, or a box
given for the patient), so physiological uptake (heart, bladder-like hot organs, brown fat)
never enters. Methods, as used in the PET-boost and dose-painting literature:

* ``percent``: SUV >= p % of the region's SUVmax (40 % and 50 % by default);
* ``absolute``: SUV >= a fixed value (2.5);
* ``adaptive``: SUV >= B + f (SUVmax - B), B the median SUV of a 10-20 mm shell around the
  region inside the body (background-subtracted threshold; f = 0.5 by default).

Holes are filled (a necrotic core inside the rim belongs to the tumour) and specks smaller
than ``min_component_cc`` are dropped. A volume that reaches the border of the search region is
flagged: the uptake continues beyond it (an adjacent node or organ, or a margin too small).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from isotox.segmentation.margins import expand


@dataclass
class Threshold:
    mask: NDArray[np.bool_]
    threshold_suv: float
    suvmax: float
    flags: list[str] = field(default_factory=list)


def search_region(gtv: NDArray[np.bool_] | None, box_ijk: tuple[slice, slice, slice] | None, spacing_xyz: tuple[float, float, float],
                  margin_mm: float, body: NDArray[np.bool_], exclude: NDArray[np.bool_] | None = None) -> NDArray[np.bool_]:
    """The CT GTV grown by ``margin_mm`` (preferred), else the given box, inside the body.

    ``exclude``: organs with physiological uptake (heart, aorta) taken out of the region,
    except where they overlap the GTV itself.
    """
    if gtv is not None and gtv.any():
        region = expand(gtv, spacing_xyz, margin_mm, clip=body)
    elif box_ijk is None:
        raise ValueError("a search region needs a CT GTV or a box")
    else:
        region = np.zeros_like(body)
        region[box_ijk] = True
        region &= body
    if exclude is not None:
        region &= ~(exclude & ~(gtv if gtv is not None else np.zeros_like(region)))
    return region


def background_suv(suv: NDArray[np.floating], region: NDArray[np.bool_], body: NDArray[np.bool_], spacing_xyz: tuple[float, float, float]) -> float:
    """Median SUV in the shell 10-20 mm outside the search region, inside the body."""
    shell = expand(region, spacing_xyz, 20.0, clip=body) & ~expand(region, spacing_xyz, 10.0)
    return float(np.median(suv[shell])) if shell.any() else 0.0


def _clean(mask: NDArray[np.bool_], voxel_cc: float, min_component_cc: float) -> NDArray[np.bool_]:
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel()) * voxel_cc
        sizes[0] = 0
        mask = np.isin(labels, np.flatnonzero(sizes >= min_component_cc))
    return ndimage.binary_fill_holes(mask)


def threshold_volume(suv: NDArray[np.floating], region: NDArray[np.bool_], spacing_xyz: tuple[float, float, float], method: str,
                     level: float, body: NDArray[np.bool_] | None = None, min_component_cc: float = 0.1,
                     core: NDArray[np.bool_] | None = None, excluded: NDArray[np.bool_] | None = None) -> Threshold:
    """Threshold ``suv`` inside ``region``; ``level`` is the percent, the SUV, or the adaptive fraction.

    ``core`` (the CT GTV, when there is one) is where the tumour certainly is: SUVmax is taken
    there, and only threshold components that reach into it are kept, so a hot neighbour inside
    the search margin (myocardium next to a tumour) sets neither the threshold nor the volume.
    ``excluded``: the organs taken out of the region; touching them is flagged separately.
    """
    values = np.asarray(suv, dtype=float)
    core = core & region if core is not None and (core & region).any() else region
    suvmax = float(values[core].max()) if core.any() else 0.0
    if method == "percent":
        cut = level / 100.0 * suvmax
    elif method == "absolute":
        cut = float(level)
    elif method == "adaptive":
        bg = background_suv(values, region, body if body is not None else np.ones_like(region), spacing_xyz)
        cut = bg + level * (suvmax - bg)
    else:
        raise ValueError(f"unknown threshold method {method!r} (percent, absolute, adaptive)")
    voxel_cc = float(np.prod(spacing_xyz)) / 1000.0
    mask = _clean(region & (values >= cut), voxel_cc, min_component_cc) & region
    labels, n = ndimage.label(mask)
    if n:
        mask = np.isin(labels, np.setdiff1d(np.unique(labels[core & mask]), [0]))
    flags = []
    if mask.any():
        outer = region | excluded if excluded is not None else region
        border = region & ~ndimage.binary_erosion(outer)
        if (mask & border).any():
            flags.append(f"{method} {level:g}: the volume reaches the border of the search region ({int((mask & border).sum())} voxels)")
        if excluded is not None and (ndimage.binary_dilation(mask) & excluded).any():
            flags.append(f"{method} {level:g}: the volume touches an organ excluded from the search (physiological uptake next to the tumour)")
    return Threshold(mask, float(cut), suvmax, flags)


def boost_volume(suv: NDArray[np.floating], gtv: NDArray[np.bool_], percent: float = 50.0) -> tuple[NDArray[np.bool_], float]:
    """Arm B boost region: voxels >= ``percent`` of the GTV's SUVmax inside the primary GTV."""
    if not gtv.any():
        return np.zeros_like(gtv), float("nan")
    cut = percent / 100.0 * float(np.asarray(suv)[gtv].max())
    return gtv & (np.asarray(suv) >= cut), cut
