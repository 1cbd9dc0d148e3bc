"""Helpers the fault builders share: copy a good input, edit DICOM files in place in the copy."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset


def copy_input(good: Path, out: Path) -> Path:
    """A copy of ``good`` (file or folder) at ``out``; the builders break the copy, never the original."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if good.is_dir():
        shutil.copytree(good, out)
    else:
        shutil.copy2(good, out)
    return out


def dicom_files(folder: Path) -> list[Path]:
    """The .dcm files of one series folder, in slice order (lowest position along z first)."""
    files = sorted(folder.glob("*.dcm"))
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def edit(paths: list[Path], change: Callable[[Dataset], None]) -> None:
    """Apply ``change`` to every file of ``paths`` and save it back (a valid DICOM file again)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=True)


def set_pixels(ds: Dataset, array: np.ndarray) -> None:
    """Replace a dataset's pixel data by ``array`` (same dtype as stored), updating Rows/Columns."""
    stored = ds.pixel_array
    array = np.ascontiguousarray(array.astype(stored.dtype))
    ds.Rows, ds.Columns = int(array.shape[0]), int(array.shape[1])
    ds.PixelData = array.tobytes()


def truncate(path: Path, keep_fraction: float) -> None:
    """Cut a file to ``keep_fraction`` of its bytes (an interrupted copy or transfer)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
