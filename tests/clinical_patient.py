"""A small clinical-looking patient for the DICOM tests: builders, and the rewrites clinics apply.

Planning CT of a sphere phantom, an FDG PET/CT (optionally with its non-attenuation-corrected
series), an RTSTRUCT and a TPS RTDOSE, with real-looking headers; then the file forms archives
deliver (raw dataset without preamble/meta, deflated transfer syntax).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from isotox.dicomio.contours import contours_from_field
from isotox.dicomio.image_series import CT_IMAGE_STORAGE, CtFrame, PetAcquisition, write_ct_series, write_pet_series
from isotox.dicomio.modules import PatientStudy, SeriesInfo
from isotox.dicomio.rtdose import DoseGrid, write_rtdose
from isotox.dicomio.rtstruct_writer import ReferencedImages, RoiContours, write_rtstruct
from isotox.geometry import ImageGrid

REPO = Path(__file__).resolve().parents[1]
ROI_NAMES = REPO / "config" / "roi_names.yaml"
WHO = PatientStudy("CLIN01", "Clinic^Test", "19550101", "M", "1.2.826.0.1.77.1", "20250301", "080000")
PLANNING_FOR, PET_FOR = "1.2.826.0.1.77.2", "1.2.826.0.1.77.3"
CT_GRID = ImageGrid((40, 36, 24), (2.5, 2.5, 3.0), (-48.75, -43.75, -34.5))
PET_GRID = ImageGrid((20, 18, 12), (5.0, 5.0, 6.0), (-47.5, -42.5, -33.0))
CENTRE, RADIUS = np.array([4.0, -3.0, 2.0]), 15.0
ACQ = PetAcquisition("Fludeoxyglucose F^18^", 3.2e8, 6586.2, "20250301090000.000000", 74.0, 1.78, 180000.0)


def grid_points(grid: ImageGrid) -> np.ndarray:
    kk, jj, ii = np.meshgrid(*(np.arange(n, dtype=float) for n in grid.shape), indexing="ij")
    return grid.index_to_physical(np.stack([ii, jj, kk], -1).reshape(-1, 3)).reshape(grid.shape + (3,))


def sphere(grid: ImageGrid) -> np.ndarray:
    return np.linalg.norm(grid_points(grid) - CENTRE, axis=-1) <= RADIUS


def write_ct(folder: Path, uid: str, description: str, frame: str, grid: ImageGrid = CT_GRID, time: str = "081000",
              **tags: object) -> list[Dataset]:
    hu = np.where(sphere(grid), 40.0, -800.0)
    written = write_ct_series(folder, grid, [CtFrame(hu, time)], WHO, SeriesInfo("CT", uid, 2, description, "20250301", time, frame),
                              uid_key=("clin", uid))
    for path in folder.glob("*.dcm"):  # extra tags (contrast agent, image type) on every slice
        if tags:
            ds = pydicom.dcmread(path)
            for key, value in tags.items():
                setattr(ds, key, value)
            ds.save_as(path, enforce_file_format=True)
    return written


def write_pet(folder: Path, uid: str, description: str, *, corrected: bool = True) -> None:
    activity = np.where(sphere(PET_GRID), 40000.0, 4000.0)
    write_pet_series(folder, PET_GRID, activity, WHO, SeriesInfo("PT", uid, 3, description, "20250301", "100000", PET_FOR), ACQ,
                     uid_key=("clin", uid))
    if not corrected:
        for path in folder.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            ds.CorrectedImage = ["DECY", "SCAT", "DTIM", "RAN", "NORM"]
            ds.AttenuationCorrectionMethod = ""
            ds.save_as(path, enforce_file_format=True)


def write_structures(path: Path, ct: list[Dataset], ct_uid: str) -> None:
    refs = ReferencedImages(WHO.study_uid, ct_uid, PLANNING_FOR, str(CT_IMAGE_STORAGE), [str(ds.SOPInstanceUID) for ds in ct])
    rois = [RoiContours("GTV", "GTV", (255, 0, 0), contours_from_field(CT_GRID, sphere(CT_GRID))),
            RoiContours("Lung_L", "ORGAN", (0, 0, 255), contours_from_field(CT_GRID, grid_points(CT_GRID)[..., 0] > 10.0))]
    write_rtstruct(path, WHO, SeriesInfo("RTSTRUCT", "1.2.826.0.1.77.40", 40, "structures", "20250301", "090000", PLANNING_FOR),
                   refs, rois, sop_instance_uid="1.2.826.0.1.77.41")


def dose_values(grid: ImageGrid) -> np.ndarray:
    return 2.0 * np.exp(-np.sum((grid_points(grid) - CENTRE) ** 2, axis=-1) / (2 * 30.0**2))


def write_tps_dose(path: Path, *, grid: ImageGrid = CT_GRID, summation: str = "PLAN", dose_type: str = "PHYSICAL",
                  frame: str = PLANNING_FOR) -> None:
    write_rtdose(path, DoseGrid(grid, dose_values(grid), summation, dose_type, frame, None), WHO,
                 SeriesInfo("RTDOSE", "1.2.826.0.1.77.50", 50, "TPS dose", "20250301", "093000", frame), sop_instance_uid="1.2.826.0.1.77.51")


def build_patient(root: Path, *, nac: bool = False, dose: bool = True) -> Path:
    """A patient folder: planning CT + RTSTRUCT + RTDOSE, FDG PET/CT (and optionally its NAC series)."""
    ct = write_ct(root / "ct", "1.2.826.0.1.77.10", "Thorax planning", PLANNING_FOR)
    write_ct(root / "petct_ct", "1.2.826.0.1.77.20", "PET/CT low dose", PET_FOR, time="095500")
    write_pet(root / "pet_ac", "1.2.826.0.1.77.30", "PET WB AC")
    if nac:
        write_pet(root / "pet_nac", "1.2.826.0.1.77.31", "PET WB NAC", corrected=False)
    (root / "rt").mkdir(parents=True)
    write_structures(root / "rt" / "rs.dcm", ct, "1.2.826.0.1.77.10")
    if dose:
        write_tps_dose(root / "rt" / "rd.dcm")
    return root


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def rewrite_raw(path: Path) -> None:
    """The TPS 'raw dataset' export: no preamble, no file meta, implicit VR little endian."""
    ds = pydicom.dcmread(path)
    raw = Dataset(ds)
    pydicom.dcmwrite(path, raw, implicit_vr=True, little_endian=True, enforce_file_format=False)


def rewrite_deflated(path: Path) -> None:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
