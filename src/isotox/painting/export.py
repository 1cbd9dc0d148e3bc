"""A painted strategy's prescription map for a planning system: NIfTI (Gy, planning CT grid), a
DICOM RTDOSE holding the prescription map (how TPSs import "dose prescription maps" for
dose-painting optimisation: a dose object used as an objective, not a computed dose), and an
RTSTRUCT of its nested levels on the planning CT.

Reuses the plan export's DICOM writers and identity (``planning.export``): same patient, study and
frame of reference as the planning CT, deterministic UIDs per (patient, strategy, top dose)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from isotox.dicomio.contours import contours_from_field
from isotox.dicomio.modules import SeriesInfo
from isotox.dicomio.rtdose import DoseGrid, write_rtdose
from isotox.dicomio.rtstruct_writer import ReferencedImages, RoiContours, write_rtstruct
from isotox.dicomio.uids import stable_uid
from isotox.dicomio.volume import to_image
from isotox.geometry import ImageGrid
from isotox.planning.export import ExportError, patient_study

#: colours of the nested levels, low to high
_LEVEL_COLOURS = [(0, 0, 255), (0, 160, 255), (0, 220, 120), (255, 200, 0), (255, 100, 0), (255, 0, 0)]


def write_map_nifti(path: Path, ct_grid: ImageGrid, dose_map_gy: NDArray[np.floating]) -> None:
    sitk.WriteImage(to_image(ct_grid, dose_map_gy.astype(np.float32)), str(path), useCompression=True)


def export_map(folder: Path, reference: dict[str, Any] | None, ct_grid: ImageGrid, dose_map_gy: NDArray[np.floating],
               levels: dict[int, NDArray[np.bool_]], key: tuple[str, ...]) -> dict[str, Any]:
    """Write ``RD_map.dcm`` (the prescription map on the planning CT grid, DoseType PHYSICAL,
    summation PLAN) and ``RS_levels.dcm`` (one ROI per nested level) into ``folder``."""
    if not reference or not reference.get("slice_sop_uids") or len(reference["slice_sop_uids"]) != ct_grid.size[2]:
        raise ExportError("no planning-CT DICOM identity with one SOP instance per slice (see the plan stage's export)")
    who = patient_study(reference)
    today = date.today().strftime("%Y%m%d")
    frame = reference["frame_of_reference_uid"]
    folder.mkdir(parents=True, exist_ok=True)
    strategy = key[1]
    rd_series = SeriesInfo("RTDOSE", stable_uid(*key, "map-series"), 911, f"isotox prescription map {strategy}"[:64], today, "120000.000000", frame)
    write_rtdose(folder / "RD_map.dcm", DoseGrid(ct_grid, np.asarray(dose_map_gy, np.float64), "PLAN", "PHYSICAL", frame, None), who, rd_series,
                 sop_instance_uid=stable_uid(*key, "map"))
    rois = [RoiContours(f"{strategy[:8].upper()}_L{pct:03d}", "GTV" if pct == 0 else "CONTROL", _LEVEL_COLOURS[min(n, len(_LEVEL_COLOURS) - 1)],
                        contours_from_field(ct_grid, mask)) for n, (pct, mask) in enumerate(sorted(levels.items()))]
    images = ReferencedImages(reference["study_uid"], reference["series_uid"], frame, reference["sop_class_uid"], list(reference["slice_sop_uids"]))
    rs_series = SeriesInfo("RTSTRUCT", stable_uid(*key, "levels-series"), 912, f"isotox painting levels {strategy}"[:64], today, "120000.000000", frame)
    write_rtstruct(folder / "RS_levels.dcm", who, rs_series, images, rois, sop_instance_uid=stable_uid(*key, "levels"), label="isotox")
    return {"rtdose_map": str(folder / "RD_map.dcm"), "rtstruct_levels": str(folder / "RS_levels.dcm"), "levels": [r.name for r in rois]}
