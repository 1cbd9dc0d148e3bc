"""The descending aorta from a contrast-enhanced planning CT, for the HX4 blood activity.

Used when the RTSTRUCT has no AORTA. Per axial slice, candidate vessel cross-sections are
connected regions of blood-like enhancement (> 100 HU after a 3 x 3 median, region mean
120-205 HU, so the vertebral body, ~230 HU, and non-enhanced tissue drop out) that are round
(solidity >= 0.85, eccentricity <= 0.8) and vessel-sized (1.5-12 cm2: radius 7-20 mm). The
descending aorta is the longest chain of such cross-sections whose centres move less than
8 mm between neighbouring slices: heart chambers are too large and short, pulmonary vessels
too small. Returns an empty mask when nothing qualifies (e.g. a CT without contrast): the
caller flags it rather than guessing.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import label, regionprops


def find_descending_aorta(ct: sitk.Image, body: NDArray[np.bool_], min_length_mm: float = 40.0) -> NDArray[np.bool_]:
    hu = ndimage.median_filter(sitk.GetArrayFromImage(ct).astype(np.float32), size=(1, 3, 3))
    sx, sy, sz = ct.GetSpacing()
    pixel_cm2 = sx * sy / 100.0
    candidates: list[list[tuple[NDArray[np.float64], NDArray[np.bool_]]]] = []
    for k in range(hu.shape[0]):
        blood = ndimage.binary_opening((hu[k] > 100) & (hu[k] < 260) & body[k])
        found = []
        for region in regionprops(label(blood), intensity_image=hu[k]):
            area = region.area * pixel_cm2
            if not 1.5 <= area <= 12.0 or region.solidity < 0.85 or region.eccentricity > 0.8:
                continue
            if not 120.0 <= region.intensity_mean <= 205.0:
                continue
            mask = np.zeros(blood.shape, bool)
            mask[tuple(region.coords.T)] = True
            found.append((np.asarray(region.centroid) * (sy, sx), mask))
        candidates.append(found)
    # longest chain of slice-to-slice neighbours (dynamic programming over slices)
    best_len: list[list[int]] = []
    back: list[list[int | None]] = []
    for k, found in enumerate(candidates):
        lengths, links = [], []
        for centre, _ in found:
            length, link = 1, None
            if k > 0:
                for j, (prev_centre, _) in enumerate(candidates[k - 1]):
                    if np.linalg.norm(centre - prev_centre) < 8.0 and best_len[k - 1][j] + 1 > length:
                        length, link = best_len[k - 1][j] + 1, j
            lengths.append(length)
            links.append(link)
        best_len.append(lengths)
        back.append(links)
    out = np.zeros(hu.shape, bool)
    ends = [(length, k, i) for k, lengths in enumerate(best_len) for i, length in enumerate(lengths)]
    if not ends:
        return out
    length, k, i = max(ends)
    if length * sz < min_length_mm:
        return out
    node: int | None = i
    while node is not None and k >= 0:
        out[k] |= candidates[k][node][1]
        node = back[k][node]
        k -= 1
    return out
