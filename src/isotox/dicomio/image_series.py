"""Write CT and PET image series (one file per slice) with exact geometry.

Geometry comes from an :class:`~isotox.geometry.ImageGrid`: ImagePositionPatient is the centre of
the first voxel of each slice, ImageOrientationPatient the first two direction columns, so a
reader that sorts along the slice normal recovers the grid exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from isotox.dicomio.modules import PatientStudy, SeriesInfo, fill_patient_study, fill_series, new_dataset
from isotox.dicomio.uids import stable_uid
from isotox.geometry import ImageGrid

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
PET_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.128")

#: CT stored as unsigned 16 bit with RescaleIntercept -1024 (the common scanner convention).
CT_INTERCEPT = -1024.0


def _ds(value: float) -> str:
    """Decimal String of at most 16 characters (DICOM DS limit)."""
    text = f"{value:.6g}"
    if len(text) > 16:
        text = f"{value:.8e}"[:16]
    return text


def _file_name(sop_uid: str) -> str:
    """Opaque file name: readers must never rely on names for slice order."""
    return hashlib.sha1(sop_uid.encode()).hexdigest()[:12] + ".dcm"


def _image_plane(ds: Dataset, grid: ImageGrid, k: int) -> None:
    """Image Plane and Image Pixel modules for slice ``k`` of ``grid``."""
    direction = grid.direction_matrix
    position = grid.slice_positions()[k]
    ds.PixelSpacing = [_ds(grid.spacing[1]), _ds(grid.spacing[0])]  # row spacing (j), column spacing (i)
    ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceThickness = _ds(grid.spacing[2])
    ds.SliceLocation = _ds(float(np.dot(position, direction[:, 2])))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = grid.size[1]
    ds.Columns = grid.size[0]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15


@dataclass(frozen=True)
class CtFrame:
    """One time frame of a CT series: HU array (k, j, i) and its acquisition time (HHMMSS.ffffff)."""

    hu: NDArray[np.floating]
    acquisition_time: str


def write_ct_series(
    out_dir: Path,
    grid: ImageGrid,
    frames: list[CtFrame],
    who: PatientStudy,
    series: SeriesInfo,
    *,
    uid_key: tuple[object, ...],
    kvp: float = 120.0,
    patient_position: str = "HFS",
) -> list[Dataset]:
    """Write one file per slice and frame; return the datasets (for RTSTRUCT references).

    Several frames (DCE-CT) share positions and differ by AcquisitionNumber and AcquisitionTime.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Dataset] = []
    instance = 0
    for f, frame in enumerate(frames):
        stored = np.clip(np.rint(frame.hu - CT_INTERCEPT), 0, 65535).astype(np.uint16)
        for k in range(grid.size[2]):
            instance += 1
            sop_uid = stable_uid(*uid_key, "sop", f, k)
            ds = new_dataset(CT_IMAGE_STORAGE, sop_uid)
            fill_patient_study(ds, who)
            fill_series(ds, series)
            ds.PatientPosition = patient_position
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.InstanceNumber = instance
            ds.AcquisitionNumber = f + 1
            ds.AcquisitionDate = series.date
            ds.AcquisitionTime = frame.acquisition_time
            ds.ContentDate = series.date
            ds.ContentTime = frame.acquisition_time
            ds.KVP = _ds(kvp)
            _image_plane(ds, grid, k)
            ds.PixelRepresentation = 0
            ds.RescaleIntercept = _ds(CT_INTERCEPT)
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            ds.PixelData = stored[k].tobytes()
            ds.save_as(out_dir / _file_name(sop_uid), enforce_file_format=True)
            written.append(ds)
    return written


#: The Philips variant's count calibration (Bq/ml per stored count, before RescaleSlope).
PHILIPS_BQML_PER_COUNT = 7.5


@dataclass(frozen=True)
class PetAcquisition:
    """Radiopharmaceutical and timing of a PET series (the tags SUV conversion needs)."""

    radiopharmaceutical: str
    injected_dose_bq: float
    half_life_s: float
    injection_datetime: str  # YYYYMMDDHHMMSS.ffffff
    weight_kg: float
    height_m: float
    frame_duration_ms: float
    decay_correction: str = "START"
    positron_fraction: float = 0.9673  # F-18
    attenuation_corrected: bool = True  # False: a NAC series (CorrectedImage without ATTN)
    #: how the vendor encodes the timing and units: "standard" (BQML, SeriesTime = scan start),
    #: "ge" (SeriesTime = reconstruction time, after the scan; the scan start in GE's private
    #: (0009,100D)), "philips" (Units CNTS with the SUV factor in Philips' private (7053,1000))
    vendor: str = "standard"
    reconstruction_time: str = ""  # HHMMSS.ffffff, the SeriesTime a GE scanner writes
    scan_datetime: str = ""  # YYYYMMDDHHMMSS.ffffff, GE's private scan start
    suv_per_bqml: float = 0.0  # Philips: SUV per Bq/ml, for the SUV factor


def write_pet_series(
    out_dir: Path,
    grid: ImageGrid,
    activity_bqml: NDArray[np.floating],
    who: PatientStudy,
    series: SeriesInfo,
    acq: PetAcquisition,
    *,
    uid_key: tuple[object, ...],
) -> list[Dataset]:
    """Write a static PET series in Bq/ml (Units BQML), one RescaleSlope per slice.

    Each slice is scaled to the full int16 range on its own, as scanners do, so readers must
    apply the slope per slice (a classic bug when a volume reader uses the first slice's slope).
    ``acq.vendor`` writes the GE or Philips encodings instead (see :class:`PetAcquisition`); for
    Philips the stored values are counts (``PHILIPS_BQML_PER_COUNT`` Bq/ml each) and (7053,1000)
    is the SUV per count.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Dataset] = []
    nk = grid.size[2]
    for k in range(nk):
        sop_uid = stable_uid(*uid_key, "sop", k)
        ds = new_dataset(PET_IMAGE_STORAGE, sop_uid)
        fill_patient_study(ds, who)
        fill_series(ds, series)
        # NM/PET Patient Orientation module replaces PatientPosition for PET (dciodvfy enforces it)
        ds.PatientWeight = _ds(acq.weight_kg)
        ds.PatientSize = _ds(acq.height_m)
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.InstanceNumber = k + 1
        ds.ImageIndex = k + 1
        ds.AcquisitionDate = series.date
        ds.AcquisitionTime = series.time
        ds.ContentDate = series.date
        ds.ContentTime = series.time
        # PET Series module
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.Units = "CNTS" if acq.vendor == "philips" else "BQML"
        ds.CountsSource = "EMISSION"
        ds.NumberOfSlices = nk
        ds.DecayCorrection = acq.decay_correction
        ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"] if acq.attenuation_corrected else ["DECY", "DTIM", "RAN", "NORM"]
        ds.RandomsCorrectionMethod = "DLYD"
        if acq.attenuation_corrected:
            ds.AttenuationCorrectionMethod = "CT"
        ds.ReconstructionMethod = "OSEM 3i21s PSF"
        ds.CollimatorType = "NONE"
        ds.AxialAcceptance = "54"
        ds.FrameReferenceTime = _ds(acq.frame_duration_ms / 2.0)
        ds.ActualFrameDuration = int(acq.frame_duration_ms)
        ds.DecayFactor = "1"
        ds.PatientOrientationCodeSequence = Sequence()
        ds.PatientGantryRelationshipCodeSequence = Sequence()
        # PET Isotope module
        nuclide = Dataset()
        nuclide.CodeValue = "77004003"
        nuclide.CodingSchemeDesignator = "SCT"
        nuclide.CodeMeaning = "^18^Fluorine"
        info = Dataset()
        info.RadionuclideCodeSequence = Sequence([nuclide])
        info.Radiopharmaceutical = acq.radiopharmaceutical
        info.RadiopharmaceuticalStartTime = acq.injection_datetime[8:]
        info.RadiopharmaceuticalStartDateTime = acq.injection_datetime
        info.RadionuclideTotalDose = _ds(acq.injected_dose_bq)
        info.RadionuclideHalfLife = _ds(acq.half_life_s)
        info.RadionuclidePositronFraction = _ds(acq.positron_fraction)
        ds.RadiopharmaceuticalInformationSequence = Sequence([info])
        if acq.vendor == "ge":
            ds.SeriesTime = acq.reconstruction_time
            ds.add_new(0x00090010, "LO", "GEMS_PETD_01")
            ds.add_new(0x0009100D, "DT", acq.scan_datetime)
        _image_plane(ds, grid, k)
        plane = np.asarray(activity_bqml[k], dtype=float)
        if acq.vendor == "philips":
            plane = plane / PHILIPS_BQML_PER_COUNT
            ds.add_new(0x70530010, "LO", "Philips PET Private Group")
            ds.add_new(0x70531000, "DS", _ds(acq.suv_per_bqml * PHILIPS_BQML_PER_COUNT))
        peak = float(plane.max())
        slope = peak / 32000.0 if peak > 0 else 1.0
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = _ds(slope)
        slope_written = float(ds.RescaleSlope)
        ds.PixelData = np.clip(np.rint(plane / slope_written), -32768, 32767).astype(np.int16).tobytes()
        ds.save_as(out_dir / _file_name(sop_uid), enforce_file_format=True)
        written.append(ds)
    return written
