"""Slice geometry on the acquisitions clinics produce: HFS, FFS, HFP, oblique, shuffled files,
duplicate and missing slices, gantry tilt.

Each case writes a CT series of a sphere at a known physical centre, ingests it, and checks:
* origin / spacing / direction equal an independent computation from ImagePositionPatient and
  ImageOrientationPatient (tests/sample_dicom.py, straight from the DICOM rules) to 1e-3 mm;
* the sphere's centroid in physical space is where it was written (the array orientation is
  right, not only the header): within 0.2 mm for regular grids (partial-volume rounding of a
  binary sphere), 0.5 mm after resampling a tilted or gappy stack (linear interpolation).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from isotox.dicomio.discovery import Series, load_pixels
from isotox.dicomio.image_series import CtFrame, write_ct_series
from isotox.dicomio.modules import PatientStudy, SeriesInfo
from isotox.dicomio.suv import rescaled
from isotox.dicomio.volume import slice_geometry, stack, to_image
from isotox.errors import InputDataError
from isotox.geometry import ImageGrid, RigidTransform
from tests.sample_dicom import geometry as tag_geometry

CENTRE = np.array([12.0, -7.5, 20.0])
RADIUS = 18.0
WHO = PatientStudy("GEO", "Geo^Test", "19600101", "O", "1.2.3.4", "20250101", "080000")


def _sphere(points: np.ndarray) -> np.ndarray:
    return np.where(np.linalg.norm(points - CENTRE, axis=-1) <= RADIUS, 1000.0, 0.0)


def _write(folder: Path, grid: ImageGrid, position: str = "HFS") -> list[Path]:
    kk, jj, ii = np.meshgrid(*(np.arange(n, dtype=float) for n in grid.shape), indexing="ij")
    pts = grid.index_to_physical(np.stack([ii, jj, kk], -1).reshape(-1, 3)).reshape(grid.shape + (3,))
    series = SeriesInfo("CT", "1.2.3.4.5", 1, "geo", "20250101", "080000", "1.2.3.4.6")
    write_ct_series(folder, grid, [CtFrame(_sphere(pts), "080000")], WHO, series, uid_key=("geo", str(folder)), patient_position=position)
    return sorted(folder.glob("*.dcm"))


def _ingest(files: list[Path], policy: str = "resample"):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    series = Series("1.2.3.4.5", "CT", files, headers)
    datasets = load_pixels(series, "GEO")
    geo = slice_geometry(datasets, [str(p) for p in files], "GEO", policy)  # type: ignore[arg-type]
    image = to_image(geo.grid, stack(geo, [rescaled(datasets[i]) for i in geo.order]))
    return geo, image


def _centroid_mm(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayFromImage(image)
    k, j, i = np.nonzero(arr > 500)
    weights = arr[k, j, i]
    idx = [float(np.average(v, weights=weights)) for v in (i, j, k)]
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(idx))


def _grid(direction: np.ndarray, size=(48, 40, 30), spacing=(1.9, 2.1, 2.5)) -> ImageGrid:
    centre_index = (np.asarray(size) - 1) / 2.0
    origin = CENTRE + np.array([3.0, -2.0, 1.5]) - direction @ (centre_index * np.asarray(spacing))
    return ImageGrid(size, spacing, tuple(origin), tuple(direction.ravel()))


ORIENTATIONS = {
    "HFS": np.eye(3),
    "FFS": np.diag([-1.0, 1.0, -1.0]),
    "HFP": np.diag([-1.0, -1.0, 1.0]),
    "oblique": RigidTransform((np.radians(20), np.radians(10), np.radians(30))).matrix,
}


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_orientations_and_shuffled_files(name: str, tmp_path: Path) -> None:
    grid = _grid(ORIENTATIONS[name])
    files = _write(tmp_path, grid, position="HFP" if name == "HFP" else ("FFS" if name == "FFS" else "HFS"))
    random.Random(7).shuffle(files)
    for n, path in enumerate(files):  # InstanceNumber must not matter either
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = (n * 7919) % 1000 + 1
        ds.save_as(path)
    geo, image = _ingest(files)
    tags = tag_geometry([(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in files])
    np.testing.assert_allclose(image.GetOrigin(), tags["origin"], atol=1e-3)
    np.testing.assert_allclose(image.GetSpacing(), tags["spacing"], atol=1e-3)
    np.testing.assert_allclose(np.asarray(image.GetDirection()).reshape(3, 3), tags["direction"], atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), grid.origin, atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), grid.direction, atol=1e-6)
    assert geo.regular and not geo.warnings
    np.testing.assert_allclose(_centroid_mm(image), CENTRE, atol=0.2)


def test_missing_slice_is_reported_and_resampled_or_refused(tmp_path: Path) -> None:
    grid = _grid(np.eye(3))
    files = _write(tmp_path, grid)
    along = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files}
    ordered = sorted(files, key=along.get)
    ordered[12].unlink()
    remaining = [p for p in ordered if p.exists()]
    geo, image = _ingest(remaining)
    assert not geo.regular and any("1 missing slice" in w for w in geo.warnings)
    assert image.GetSize() == grid.size  # the gap is filled on the regular grid
    np.testing.assert_allclose(image.GetOrigin(), grid.origin, atol=1e-3)
    np.testing.assert_allclose(_centroid_mm(image), CENTRE, atol=0.5)
    with pytest.raises(InputDataError, match="missing slice"):
        _ingest(remaining, policy="refuse")


def test_gantry_tilt_is_reported_and_resampled(tmp_path: Path) -> None:
    """A 15 degree tilt: slice origins step along the column direction by tan(15) x spacing."""
    grid = _grid(np.eye(3))
    files = _write(tmp_path, grid)
    tilt = np.radians(15.0)
    for path in files:
        ds = pydicom.dcmread(path)
        k = round((float(ds.ImagePositionPatient[2]) - grid.origin[2]) / grid.spacing[2])
        origin = np.asarray(grid.origin) + np.array([0.0, k * grid.spacing[2] * np.tan(tilt), k * grid.spacing[2]])
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin]
        jj, ii = np.meshgrid(np.arange(grid.size[1]), np.arange(grid.size[0]), indexing="ij")
        pts = origin + np.stack([ii * grid.spacing[0], jj * grid.spacing[1], np.zeros_like(ii, dtype=float)], -1)
        ds.PixelData = (np.rint(_sphere(pts) + 1024)).astype(np.uint16).tobytes()
        ds.save_as(path)
    geo, image = _ingest(files)
    assert geo.tilt_deg == pytest.approx(15.0, abs=0.01)
    assert any("gantry tilt 15.00" in w for w in geo.warnings)
    np.testing.assert_allclose(np.asarray(image.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-9)
    np.testing.assert_allclose(_centroid_mm(image), CENTRE, atol=0.5)
    with pytest.raises(InputDataError, match="gantry tilt"):
        _ingest(files, policy="refuse")


def test_duplicate_slices_identical_dropped_different_refused(tmp_path: Path) -> None:
    files = _write(tmp_path, _grid(np.eye(3)))
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = ds.SOPInstanceUID[:-2] + ".9"
    copy = tmp_path / "copy.dcm"
    ds.save_as(copy)
    geo, _ = _ingest([*files, copy])
    assert any("duplicate slice dropped" in w for w in geo.warnings) and len(geo.order) == len(files)
    ds.PixelData = (np.frombuffer(ds.PixelData, dtype=np.uint16) + 1).astype(np.uint16).tobytes()
    ds.save_as(copy)
    with pytest.raises(InputDataError, match="two different slices at the same position"):
        _ingest([*files, copy])


def test_missing_position_tag_names_the_file(tmp_path: Path) -> None:
    files = _write(tmp_path, _grid(np.eye(3)))
    ds = pydicom.dcmread(files[3])
    del ds.ImagePositionPatient
    ds.save_as(files[3])
    with pytest.raises(InputDataError, match="ImagePositionPatient") as err:
        _ingest(files)
    assert files[3].name in str(err.value)
