"""RT Dose: read a TPS dose grid into Gy, and write one for export to a TPS.

Reading honours DoseGridScaling, GridFrameOffsetVector (relative to the first frame when it
starts at 0, absolute positions otherwise, as PS3.3 C.8.8.3.2 allows), DoseUnits and
DoseSummationType (PLAN, FRACTION, BEAM...), which the caller needs to scale a plan correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from isotox.dicomio.modules import PatientStudy, SeriesInfo, new_series_instance
from isotox.errors import InputDataError
from isotox.geometry import ImageGrid

RT_DOSE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.2")
RT_PLAN_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.5")


@dataclass
class DoseGrid:
    """Dose in Gy on a grid, with what the file says the dose is (summation, units)."""

    grid: ImageGrid
    dose_gy: NDArray[np.float64]
    summation_type: str
    dose_type: str
    frame_of_reference: str
    referenced_plan: str | None


def read_rtdose(ds: Dataset, patient: str, path: str | Path) -> DoseGrid:
    if str(ds.get("DoseUnits", "GY")).upper() != "GY":
        raise InputDataError(patient, path, f"DoseUnits {ds.DoseUnits} is not GY (relative dose cannot be scaled)", "export the dose in Gy")
    raw_scaling = ds.get("DoseGridScaling")
    try:
        scaling = float(raw_scaling) if raw_scaling not in (None, "") else float("nan")
    except (TypeError, ValueError):
        scaling = float("nan")
    if not np.isfinite(scaling) or scaling <= 0:
        # without it the stored integers are not Gy: taking 1 turns a 66 Gy plan into tens of thousands of Gy
        raise InputDataError(patient, path, f"DoseGridScaling (3004,000E) is {'missing' if raw_scaling in (None, '') else repr(str(raw_scaling))}: "
                             "the stored values cannot be converted to Gy", "export the RTDOSE again from the TPS")
    pixels = ds.pixel_array.astype(np.float64)  # scaled in place below: one full-size float copy, not two
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1 and pixels.ndim == 2:
        pixels = pixels[None]
    offsets = np.asarray([float(v) for v in ds.get("GridFrameOffsetVector", [0.0])])
    if len(offsets) != pixels.shape[0]:
        raise InputDataError(patient, path, f"GridFrameOffsetVector has {len(offsets)} values for {pixels.shape[0]} frames", "re-export the dose")
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
    if offsets[0] != 0.0:  # absolute form: offsets are positions along the normal
        offsets = offsets - float(origin @ normal)
    order = np.argsort(offsets)
    if np.any(np.diff(order) != 1):  # frames stored out of order (a copy only then)
        offsets, pixels = offsets[order], pixels[order]
    steps = np.diff(offsets)
    if steps.size and np.ptp(steps) > 1e-3:
        raise InputDataError(patient, path, "RTDOSE frames are not evenly spaced", "re-export the dose on a regular grid")
    spacing_k = float(steps[0]) if steps.size else float(ds.get("SliceThickness") or 1.0)
    origin = origin + offsets[0] * normal
    grid = ImageGrid((int(ds.Columns), int(ds.Rows), pixels.shape[0]), (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]), spacing_k),
                     tuple(origin), tuple(np.column_stack([row, col, normal]).ravel()))  # type: ignore[arg-type]
    plan = None
    refs = ds.get("ReferencedRTPlanSequence")
    if refs:
        plan = str(refs[0].ReferencedSOPInstanceUID)
    pixels *= scaling
    return DoseGrid(grid, pixels, str(ds.get("DoseSummationType", "")), str(ds.get("DoseType", "PHYSICAL")), str(ds.get("FrameOfReferenceUID", "")), plan)


def write_rtdose(path: Path, dose: DoseGrid, who: PatientStudy, series: SeriesInfo, *, sop_instance_uid: str, plan_sop_uid: str | None = None) -> Dataset:
    """Write ``dose`` (Gy) as a multi-frame RTDOSE with 16-bit unsigned pixels and DoseGridScaling.

    16 bits: the dose quantum is peak / 65 000 (about 1 mGy for an 80 Gy plan), far below anything
    clinical. 32-bit files are valid DICOM as well, but the dicom3tools validator (dciodvfy) of
    Debian aborts on any 32-bit RTDOSE (an assertion in its OW encoding; the clinical example in
    ../shared/data aborts it too), so files isotox writes could not be checked by it."""
    if not np.allclose(dose.grid.direction_matrix[:, 2], np.cross(dose.grid.direction_matrix[:, 0], dose.grid.direction_matrix[:, 1]), atol=1e-6):
        raise ValueError("RTDOSE needs a right-handed grid (slice direction = row x column)")
    ds = new_series_instance(RT_DOSE_STORAGE, sop_instance_uid, who, series)
    ds.ContentDate, ds.ContentTime = series.date, series.time
    grid = dose.grid
    d = grid.direction_matrix
    ds.ImagePositionPatient = [f"{v:.4f}" for v in grid.origin]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])]
    ds.PixelSpacing = [f"{grid.spacing[1]:.4f}", f"{grid.spacing[0]:.4f}"]
    ds.SliceThickness = f"{grid.spacing[2]:.4f}"
    ds.FrameIncrementPointer = 0x3004000C
    ds.GridFrameOffsetVector = [f"{k * grid.spacing[2]:.4f}" for k in range(grid.size[2])]
    ds.NumberOfFrames = grid.size[2]
    ds.Rows, ds.Columns = grid.size[1], grid.size[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    peak = float(np.max(dose.dose_gy)) if dose.dose_gy.size else 0.0
    scaling = peak / 65000.0 if peak > 0 else 1.0
    ds.DoseGridScaling = f"{scaling:.10e}"[:16]
    scaling = float(ds.DoseGridScaling)
    ds.DoseUnits = "GY"
    ds.DoseType = dose.dose_type or "PHYSICAL"
    ds.DoseSummationType = dose.summation_type or "PLAN"
    if plan_sop_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_PLAN_STORAGE
        ref.ReferencedSOPInstanceUID = plan_sop_uid
        ds.ReferencedRTPlanSequence = Sequence([ref])
    ds.PixelData = np.clip(np.rint(dose.dose_gy / scaling), 0, 2**16 - 1).astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
