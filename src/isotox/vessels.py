"""The descending aorta found by anatomy, on a planning CT or in a DCE-CT slab.

Two stages need the descending aorta: segmentation (the HX4 blood activity, when the RTSTRUCT
has no AORTA) and perfusion (the arterial input). Brightness alone does not identify it: on an
arterial-phase CT the aorta (150-400 HU) overlaps the vertebral body (200-450 HU), and in a DCE
series the superior vena cava, the right heart and the pulmonary artery enhance *earlier and
higher* than the aorta, because the contrast reaches them first. What identifies it is anatomy:
the descending aorta is a round vessel of 1.5-12 cm2 just left of the spine, level with or in
front of the vertebral body's anterior edge, and it runs straight through many slices.

So, per axial slice: the spine is located from bone (the bright pixels within 15 mm of the
body's midline in the posterior half of the body; its anterior edge and its centre line), the
candidate vessels are round, vessel-sized regions of the caller's candidate mask whose centre
is 5-60 mm to the patient's left (LPS +x) of the spine and from 35 mm in front of to 25 mm
behind its anterior edge; the aorta is the longest chain of such candidates through the slices
(centres moving < 8 mm between neighbours). Positions are physical (LPS mm), so the rule holds
for any patient orientation the image direction describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.measure import label, regionprops
from skimage.segmentation import watershed

#: Where the descending aorta's centre may lie relative to the spine (mm; +x patient left,
#: +y posterior): left of the spine's centre line, near the vertebral body's anterior edge.
LEFT_OF_SPINE_MM = (5.0, 60.0)
BEHIND_VERTEBRA_FRONT_MM = (-35.0, 25.0)
AREA_CM2 = (1.5, 12.0)


@dataclass
class AortaFinding:
    """The chosen vessel and what it was chosen by, for the QC record."""

    mask: NDArray[np.bool_]  # (k, j, i) of the searched image
    slices: int
    length_mm: float
    mean_area_cm2: float
    offset_from_spine_mm: tuple[float, float]  # mean (left of the spine centre line, behind the vertebral front)
    spine_found_slices: int
    candidates_per_slice: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"slices": self.slices, "length_mm": self.length_mm, "mean_area_cm2": self.mean_area_cm2,
                "left_of_spine_mm": self.offset_from_spine_mm[0], "behind_vertebral_front_mm": self.offset_from_spine_mm[1],
                "spine_found_slices": self.spine_found_slices}


def _slice_coordinates(image: sitk.Image, k: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Physical x and y (LPS mm) of every pixel (j, i) of slice k."""
    nx, ny = image.GetSize()[:2]
    sx, sy, sz = image.GetSpacing()
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([ii * sx, jj * sy, np.full_like(ii, k, dtype=float) * sz], axis=0).reshape(3, -1)
    pts = np.asarray(image.GetOrigin())[:, None] + d @ idx
    return pts[0].reshape(ny, nx), pts[1].reshape(ny, nx)


def _split_touching(mask: NDArray[np.bool_], pixel_mm: float) -> NDArray[np.int32]:
    """Labels of ``mask`` with touching round blobs separated (watershed on the distance map).

    An enhanced aorta often touches the vertebral body at CT resolution; one marker per local
    maximum of the distance to the background, at least 6 mm apart, cuts them at the neck.
    """
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = ndimage.distance_transform_edt(mask)
    components = label(mask)
    peaks = peak_local_max(dist, min_distance=max(1, int(round(6.0 / pixel_mm))), labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=mask).astype(np.int32)


def _smoothed_spine(spines: list[tuple[float, float] | None], half_window: int = 4) -> list[tuple[float, float] | None]:
    """Per-slice spine positions replaced by the median over +-``half_window`` slices.

    The spine is nearly straight over a few centimetres; the median removes the slices where the
    vertebral body is absent (an intervertebral disc, ~85 HU, leaves only the posterior elements,
    whose front lies 40 mm further back)."""
    out: list[tuple[float, float] | None] = []
    for k in range(len(spines)):
        near = [s for s in spines[max(0, k - half_window): k + half_window + 1] if s is not None]
        out.append((float(np.median([s[0] for s in near])), float(np.median([s[1] for s in near]))) if near else None)
    return out


def _spine(bone: NDArray[np.bool_], body: NDArray[np.bool_], x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[float, float] | None:
    """(centre-line x, anterior-edge y) of the spine on one slice, or None when no bone is found."""
    if not body.any():
        return None
    x_mid, y_mid = float(x[body].mean()), float(y[body].mean())
    window = bone & body & (np.abs(x - x_mid) < 15.0) & (y > y_mid)
    if window.sum() < 4:
        return None
    labels, n = ndimage.label(window)
    largest = 1 + int(np.argmax(ndimage.sum(window, labels, range(1, n + 1))))
    spine = labels == largest
    return float(x[spine].mean()), float(y[spine].min())


def find_descending_aorta(candidates: NDArray[np.bool_], bone: NDArray[np.bool_], body: NDArray[np.bool_], image: sitk.Image,
                          min_length_mm: float = 40.0) -> AortaFinding:
    """The descending aorta among ``candidates`` (k, j, i), located relative to the spine in ``bone``.

    Returns an empty mask (``slices == 0``) when no chain of at least ``min_length_mm`` exists;
    the caller reports that rather than guessing.
    """
    sx, sy, sz = image.GetSpacing()
    pixel_cm2 = sx * sy / 100.0
    coords = [_slice_coordinates(image, k) for k in range(candidates.shape[0])]
    spines = _smoothed_spine([_spine(bone[k], body[k], *coords[k]) for k in range(candidates.shape[0])])
    spine_found = sum(s is not None for s in spines)
    per_slice: list[list[tuple[NDArray[np.float64], NDArray[np.bool_], float, tuple[float, float]]]] = []
    counts = []
    for k in range(candidates.shape[0]):
        found: list[tuple[NDArray[np.float64], NDArray[np.bool_], float, tuple[float, float]]] = []
        x, y = coords[k]
        spine = spines[k]
        if spine is not None:
            for region in regionprops(_split_touching(candidates[k] & body[k], min(sx, sy))):
                area = region.area * pixel_cm2
                if not AREA_CM2[0] <= area <= AREA_CM2[1] or region.solidity < 0.85 or region.eccentricity > 0.8:
                    continue
                rr, cc = region.coords.T
                cx, cy = float(x[rr, cc].mean()), float(y[rr, cc].mean())
                offset = (cx - spine[0], cy - spine[1])
                if not (LEFT_OF_SPINE_MM[0] <= offset[0] <= LEFT_OF_SPINE_MM[1] and BEHIND_VERTEBRA_FRONT_MM[0] <= offset[1] <= BEHIND_VERTEBRA_FRONT_MM[1]):
                    continue
                mask = np.zeros(candidates.shape[1:], bool)
                mask[rr, cc] = True
                found.append((np.array([cx, cy]), mask, area, offset))
        per_slice.append(found)
        counts.append(len(found))
    # longest chain of slice-to-slice neighbours (dynamic programming over slices)
    best: list[list[int]] = []
    back: list[list[tuple[int, int] | None]] = []
    for k, found in enumerate(per_slice):
        lengths, links = [], []
        for centre, *_ in found:
            length, link = 1, None
            for step in (1, 2):  # a neighbour one slice back, or two (one slice missed: a disc, noise)
                if k - step < 0:
                    continue
                for j, (prev, *_) in enumerate(per_slice[k - step]):
                    if np.linalg.norm(centre - prev) < 8.0 * step and best[k - step][j] + step > length:
                        length, link = best[k - step][j] + step, (step, j)
            lengths.append(length)
            links.append(link)
        best.append(lengths)
        back.append(links)
    out = np.zeros(candidates.shape, bool)
    ends = [(length, k, i) for k, lengths in enumerate(best) for i, length in enumerate(lengths)]
    empty = AortaFinding(out, 0, 0.0, float("nan"), (float("nan"), float("nan")), spine_found, counts)
    if not ends:
        return empty
    length, k, i = max(ends)  # the chain ends at candidate i of slice k
    if length * sz < min_length_mm:
        return empty
    areas, offsets = [], []
    while True:
        _, mask, area, offset = per_slice[k][i]
        out[k] |= mask
        areas.append(area)
        offsets.append(offset)
        link = back[k][i]
        if link is None:
            break
        step, i = link
        if step == 2:  # the bridged slice: the vessel lies where its two neighbours overlap
            out[k - 1] |= mask & per_slice[k - 2][i][1]
        k -= step
    mean_offset = tuple(float(v) for v in np.mean(offsets, axis=0))
    return AortaFinding(out, length, float(length * sz), float(np.mean(areas)), mean_offset, spine_found, counts)  # type: ignore[arg-type]
