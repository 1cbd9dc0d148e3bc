"""DVHs straight from a clinic's RTSTRUCT + RTDOSE (``isotox dvh``), no CT needed.

The structures are rasterised on their own grid: the contour planes in z (the slice positions
the contours were drawn on) and half the dose-grid spacing in-plane, over the extent of all
contours; each voxel is then sampled 2 x 2 x 2 in the dose. The structure volume therefore
depends on the contours only, not on the dose grid's extent or resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from isotox.dicomio.reading import NotDicomError, read_dataset
from isotox.dicomio.rtdose import read_rtdose
from isotox.dicomio.rtstruct_reader import read_structure_set
from isotox.dose.dvh import Dvh, dvh_from_mask, dvh_table
from isotox.errors import InputDataError
from isotox.geometry import ImageGrid
from isotox.settings.roi_names import RoiNameMap


def contour_grid(rs: pydicom.Dataset, dose_grid: ImageGrid, inplane_factor: int = 2, margin_mm: float = 5.0, roi_numbers: set[int] | None = None) -> ImageGrid:
    """Axial grid on the contour planes, ``1/inplane_factor`` of the dose spacing in-plane, covering every
    contour (of the ROIs in ``roi_numbers``, when given)."""
    points = [np.asarray(c.ContourData, dtype=float).reshape(-1, 3) for roi in rs.get("ROIContourSequence", [])
              if roi_numbers is None or int(roi.ReferencedROINumber) in roi_numbers for c in roi.get("ContourSequence", [])]
    if not points:
        raise ValueError("the RTSTRUCT has no contours")
    allp = np.vstack(points)
    planes = np.unique(np.round(allp[:, 2], 3))
    dz = float(np.median(np.diff(planes))) if planes.size > 1 else dose_grid.spacing[2]
    sx, sy = dose_grid.spacing[0] / inplane_factor, dose_grid.spacing[1] / inplane_factor
    lo, hi = allp[:, :2].min(axis=0) - margin_mm, allp[:, :2].max(axis=0) + margin_mm
    size = (int(np.ceil((hi[0] - lo[0]) / sx)) + 1, int(np.ceil((hi[1] - lo[1]) / sy)) + 1, int(round((planes[-1] - planes[0]) / dz)) + 1)
    return ImageGrid(size, (sx, sy, dz), (float(lo[0]), float(lo[1]), float(planes[0])))


def _read(path: str | Path, what: str) -> pydicom.Dataset:
    """Clinical exports often lack the preamble/file meta: read those too; name the file otherwise."""
    try:
        return read_dataset(path)
    except NotDicomError as exc:
        raise InputDataError("dvh", path, f"{exc}", f"give the {what} file") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise InputDataError("dvh", path, f"cannot be read ({type(exc).__name__}: {exc})", "export the file again") from exc


def rt_dvhs(rtstruct: str | Path, rtdose: str | Path, roi_names: str | Path, only: list[str] | None = None) -> tuple[list[Dvh], list[str]]:
    """DVHs of the RTSTRUCT's ROIs (or those named in ``only``, clinic or canonical names) in the RTDOSE."""
    rs = _read(rtstruct, "RTSTRUCT")
    dose = read_rtdose(_read(rtdose, "RTDOSE"), "dvh", rtdose)
    if dose.summation_type not in ("PLAN", "FRACTION", "MULTI_PLAN", "BEAM", "BRACHY", "CONTROL_POINT", "RECORD"):
        raise InputDataError("dvh", rtdose, f"unknown DoseSummationType {dose.summation_type}")
    frames = {str(f.FrameOfReferenceUID) for f in rs.get("ReferencedFrameOfReferenceSequence", [])}
    frame = dose.frame_of_reference if dose.frame_of_reference in frames else (next(iter(frames)) if frames else dose.frame_of_reference)
    names = RoiNameMap.from_yaml(roi_names)
    numbers = None
    if only:  # rasterise only the requested ROIs, on a grid covering only them
        wanted = {w.lower() for w in only}
        numbers = {int(r.ROINumber) for r in rs.get("StructureSetROISequence", [])
                   if str(r.ROIName).lower() in wanted or (names.canonical(str(r.ROIName)) or "").lower() in wanted}
        if not numbers:
            raise InputDataError("dvh", rtstruct, f"no ROI named {', '.join(only)}", "list the ROIs with `isotox dvh` without --roi")
    grid = contour_grid(rs, dose.grid, roi_numbers=numbers)
    structures = read_structure_set(rs, grid, frame, names, rtstruct, roi_numbers=numbers)
    dvhs = [dvh_from_mask(roi.name, roi.mask, grid, dose.dose_gy, dose.grid) for roi in structures.rois]
    notes = list(structures.warnings) + [f"dose summation type {dose.summation_type}: doses are as stored (a FRACTION dose is per fraction)"]
    return dvhs, notes


def rt_dvh_table(rtstruct: str | Path, rtdose: str | Path, roi_names: str | Path, only: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    dvhs, notes = rt_dvhs(rtstruct, rtdose, roi_names, only)
    return dvh_table(dvhs), notes
