"""Image volumes from DICOM slices with exact geometry.

Slices are ordered by their position along the slice normal ``n = row x col`` (never by file name
or InstanceNumber). The volume's direction columns are (row, col, n), so head-first, feet-first,
prone and oblique acquisitions keep their true orientation. Problems are detected and reported:

* duplicate positions: identical pixel data is dropped (warning), different data is an error;
* non-uniform spacing and missing slices (a gap of >= 1.5 x the typical step);
* gantry tilt: consecutive slice positions not along the normal (angle in degrees);
* two reconstructions under one SeriesInstanceUID (different SliceThickness, or a large part of
  the stack at a wider step): refused, never interpolated as if slices were missing;
* a non-axial series (coronal, sagittal, oblique) is kept as acquired (:func:`non_axial_note`).

Irregular series are resampled onto a regular, orthogonal grid (linear interpolation between the
acquired slices, in physical space) or refused, by the ``irregular`` policy; never silently wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from numpy.typing import DTypeLike, NDArray
from pydicom.dataset import Dataset

from isotox.errors import InputDataError
from isotox.geometry import ImageGrid

IrregularPolicy = Literal["resample", "refuse"]
SPACING_TOLERANCE_MM = 0.01
TILT_TOLERANCE_DEG = 0.05
#: more than this fraction of wide steps is two series under one UID, not missing slices
MIXED_SERIES_GAP_FRACTION = 0.25
#: |normal . z| below this (about 8 degrees off the axial plane) is reported as a non-axial series
AXIAL_COSINE = 0.99


@dataclass
class SliceGeometry:
    """Geometry of a sorted slice stack, and what was found wrong with it."""

    grid: ImageGrid
    order: list[int]  # indices into the input list, sorted along the normal (duplicates removed)
    positions: NDArray[np.float64]  # (k, 3) ImagePositionPatient of the kept slices
    steps_mm: NDArray[np.float64]
    tilt_deg: float
    warnings: list[str] = field(default_factory=list)
    regular: bool = True

    def summary(self) -> dict[str, object]:
        return {
            "size": list(self.grid.size), "spacing_mm": list(self.grid.spacing), "origin_mm": list(self.grid.origin),
            "direction": list(self.grid.direction), "tilt_deg": self.tilt_deg, "regular": self.regular,
            "slice_step_min_mm": float(self.steps_mm.min()) if self.steps_mm.size else None,
            "slice_step_max_mm": float(self.steps_mm.max()) if self.steps_mm.size else None,
            "warnings": list(self.warnings),
        }


def _vec(ds: Dataset, keyword: str, n: int, patient: str, path: str) -> NDArray[np.float64]:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        raise InputDataError(patient, path, f"{keyword} is missing or malformed", "the image cannot be placed in space; re-export the series")
    return np.asarray([float(v) for v in value])


def slice_geometry(slices: list[Dataset], paths: list[str], patient: str, policy: IrregularPolicy = "resample") -> SliceGeometry:
    """Sort ``slices`` along their normal and describe the stack; raise on what cannot be fixed."""
    first_path = paths[0]
    iops = [_vec(ds, "ImageOrientationPatient", 6, patient, p) for ds, p in zip(slices, paths)]
    if any(np.abs(iop - iops[0]).max() > 1e-4 for iop in iops):
        raise InputDataError(patient, first_path, "slices of one series have different ImageOrientationPatient (mixed series)",
                             "split the series or name the right one in the cohort sheet (series_roles)")
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in slices}
    if len(shapes) > 1:
        raise InputDataError(patient, first_path, f"slices of one series have different matrix sizes {sorted(shapes)}", "split the series")
    row, col = iops[0][:3], iops[0][3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    positions = np.array([_vec(ds, "ImagePositionPatient", 3, patient, p) for ds, p in zip(slices, paths)])
    along = positions @ normal
    order = list(np.argsort(along, kind="stable"))
    warnings: list[str] = []

    kept: list[int] = [order[0]]
    for idx in order[1:]:
        if abs(along[idx] - along[kept[-1]]) < SPACING_TOLERANCE_MM:
            same = np.array_equal(slices[idx].pixel_array, slices[kept[-1]].pixel_array)
            if not same:
                raise InputDataError(patient, paths[idx], f"two different slices at the same position ({along[idx]:.2f} mm along the normal) in one series",
                                     "the series mixes acquisitions (e.g. dynamic frames): split it, or check for duplicates")
            warnings.append(f"duplicate slice dropped: {Path(paths[idx]).name} repeats {Path(paths[kept[-1]]).name}")
            continue
        kept.append(idx)
    pos = positions[kept]
    pixel = slices[kept[0]].get("PixelSpacing")
    if pixel is None or len(pixel) != 2:
        raise InputDataError(patient, first_path, "PixelSpacing (0028,0030) is missing or malformed", "re-export the series with its pixel spacing")
    spacing_ij = (float(pixel[1]), float(pixel[0]))
    if min(spacing_ij) <= 0:
        raise InputDataError(patient, first_path, f"PixelSpacing (0028,0030) is {list(pixel)}: a pixel must have a size", "re-export the series")
    other = sorted({tuple(round(float(v), 4) for v in (ds.get("PixelSpacing") or ())) for ds in slices} - {(round(spacing_ij[1], 4), round(spacing_ij[0], 4))})
    if other:
        # one series with two pixel sizes is two reconstructions under one UID: stacking them would misplace voxels
        raise InputDataError(patient, first_path, f"slices of one series have different PixelSpacing ({list(pixel)} and {', '.join(map(str, other))})",
                             "split the series, or name the right one in the cohort sheet (series_roles)")

    thicknesses = sorted({round(float(ds.SliceThickness), 3) for ds in slices if ds.get("SliceThickness") not in (None, "")})
    if len(thicknesses) > 1:
        # a thin and a thick reconstruction exported under one SeriesInstanceUID: interleaving them misplaces anatomy
        raise InputDataError(patient, first_path, f"slices of one series have different SliceThickness ({', '.join(f'{t:g}' for t in thicknesses)} mm): "
                             "two reconstructions mixed under one SeriesInstanceUID",
                             "split the series by SliceThickness, or name the right one in the cohort sheet (series_roles)")
    steps = np.diff(pos @ normal)
    tilt = 0.0
    if len(kept) > 1:
        displacement = pos[-1] - pos[0]
        tilt = float(np.degrees(np.arccos(np.clip(abs(displacement @ normal) / np.linalg.norm(displacement), -1, 1))))
    regular = True
    if steps.size:
        typical = float(np.median(steps))
        if typical <= 0:
            raise InputDataError(patient, first_path, "slice spacing is zero", "the series holds one position only")
        gaps = np.flatnonzero(steps > 1.5 * typical)
        if gaps.size >= 3 and gaps.size > MIXED_SERIES_GAP_FRACTION * steps.size:
            # missing slices are a few holes; a quarter of the stack at a wider step is another series under the same UID
            raise InputDataError(patient, first_path, f"{gaps.size} of {steps.size} slice steps are wider than the typical {typical:.3f} mm "
                                 f"({steps.min():.3f}-{steps.max():.3f} mm): two series mixed under one SeriesInstanceUID, not missing slices",
                                 "split the series (one slice spacing each), or name the right one in the cohort sheet (series_roles)")
        if gaps.size:
            regular = False
            warnings.append(f"{int(np.sum(np.rint(steps[gaps] / typical) - 1))} missing slice(s) at {', '.join(f'{(pos[g] @ normal):.1f}' for g in gaps)} mm along the normal")
        if np.ptp(steps) > SPACING_TOLERANCE_MM and not gaps.size:
            regular = False
            warnings.append(f"non-uniform slice spacing ({steps.min():.3f}-{steps.max():.3f} mm)")
        if tilt > TILT_TOLERANCE_DEG:
            regular = False
            warnings.append(f"gantry tilt {tilt:.2f} degrees")
        spacing_k = typical
    else:
        spacing_k = float(slices[kept[0]].get("SliceThickness") or 1.0)
    if not regular and policy == "refuse":
        raise InputDataError(patient, first_path, "irregular slice stack: " + "; ".join(warnings),
                             "set ingest.irregular: resample in the config to resample onto a regular grid")
    if not regular:
        span = float((pos[-1] - pos[0]) @ normal)
        n_k = int(round(span / spacing_k)) + 1
        warnings.append(f"resampled onto a regular orthogonal grid of {n_k} slices at {spacing_k:.3f} mm")
    else:
        n_k = len(kept)
    direction = np.column_stack([row, col, normal])
    grid = ImageGrid((int(slices[0].Columns), int(slices[0].Rows), n_k), (spacing_ij[0], spacing_ij[1], spacing_k),
                     tuple(float(v) for v in pos[0]), tuple(float(v) for v in direction.ravel()))  # type: ignore[arg-type]
    return SliceGeometry(grid, [int(i) for i in kept], pos, steps, tilt, warnings, regular)


def non_axial_note(grid: ImageGrid) -> str | None:
    """A note for a series whose slices are not axial (coronal, sagittal, oblique beyond ~8 degrees):
    the volume keeps its acquired orientation, which later stages and a reader should know."""
    normal = grid.direction_matrix[:, 2]
    if abs(normal[2]) >= AXIAL_COSINE:
        return None
    return f"slices are not axial (slice normal {', '.join(f'{v + 0.0:.3f}' for v in np.round(normal, 3))} in LPS): kept in their acquired orientation"


def _cast(values: NDArray[np.floating], dtype: np.dtype) -> NDArray:
    """``values`` as ``dtype``: integers rounded to nearest and clipped to the type's range (HU in int16)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.rint(values).clip(info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def stack(geometry: SliceGeometry, planes: Iterable[NDArray[np.floating]], dtype: DTypeLike = np.float64) -> NDArray:
    """(k, j, i) array of ``dtype`` on ``geometry.grid`` from the kept slices' planes (in the order of
    ``geometry.order``); an integer ``dtype`` is rounded to nearest and clipped to its range.

    Regular stacks are filled plane by plane into one array of ``dtype``: with ``planes`` a
    generator, a 512 x 512 x 120 CT never exists in float64 (one plane at a time does), so the
    stage holds the int16 volume and SimpleITK's copy of it, not several 250 MB float64 copies.
    Irregular ones are interpolated linearly (in float64), in physical space, from the two acquired
    slices around each target point (handles gaps and tilt).
    """
    dtype = np.dtype(dtype)
    grid = geometry.grid
    if geometry.regular:
        out = np.empty(grid.shape, dtype=dtype)
        count = 0
        for count, plane in enumerate(planes, start=1):
            out[count - 1] = _cast(plane, dtype)
        if count != grid.shape[0]:
            raise ValueError(f"{count} planes for a stack of {grid.shape[0]} slices")
        return out
    from scipy import ndimage  # irregular stacks only: scipy costs every ingest ~0.2 s of import otherwise

    volume = np.stack(list(planes)).astype(np.float64, copy=False)
    d = grid.direction_matrix
    normal = d[:, 2]
    along = geometry.positions @ normal
    kk, jj, ii = np.meshgrid(*(np.arange(n, dtype=float) for n in grid.shape), indexing="ij")
    points = grid.index_to_physical(np.stack([ii, jj, kk], axis=-1).reshape(-1, 3))
    # continuous index of the acquired slice at each point's height along the normal
    t = np.interp(points @ normal, along, np.arange(len(along)))
    lower = np.clip(np.floor(t).astype(int), 0, len(along) - 1)
    upper = np.clip(lower + 1, 0, len(along) - 1)
    frac = t - lower
    origin_t = geometry.positions[lower] * (1 - frac)[:, None] + geometry.positions[upper] * frac[:, None]
    rel = points - origin_t
    ci = rel @ d[:, 0] / grid.spacing[0]
    cj = rel @ d[:, 1] / grid.spacing[1]
    out = ndimage.map_coordinates(volume, [t, cj, ci], order=1, mode="nearest")
    return _cast(out.reshape(grid.shape), dtype)


def to_image(grid: ImageGrid, array: NDArray, pixel_type: int | None = None) -> sitk.Image:
    """SimpleITK image with the grid's geometry (optionally cast, e.g. sitk.sitkInt16)."""
    image = grid.to_sitk(array)
    return sitk.Cast(image, pixel_type) if pixel_type is not None else image
