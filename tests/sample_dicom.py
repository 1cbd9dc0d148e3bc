"""Independent readers for the sample-DICOM tests (no isotox code: they check isotox's writer).

Geometry follows the DICOM standard directly: slices sorted along the normal
``cross(row, col) . ImagePositionPatient``; SUV from the PET tags with the body-weight formula.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines of David Clunie's dciodvfy on ``path`` (a missing tool fails in CI, skips elsewhere)."""
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy missing in CI: .ci/run must apt-get install dicom3tools")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools); CI runs this check")
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    if proc.returncode < 0 or proc.returncode > 1 or "Assertion" in output:  # a crash is not a pass
        errors.append(f"dciodvfy did not finish (exit {proc.returncode}): {output.strip().splitlines()[-1] if output.strip() else ''}")
    return errors


def read_all(folder: Path) -> list[tuple[Path, Dataset]]:
    """Every file under ``folder``, read strictly (``force=False``)."""
    return [(p, pydicom.dcmread(p)) for p in sorted(folder.rglob("*")) if p.is_file()]


def by_series(datasets: list[tuple[Path, Dataset]]) -> dict[str, list[tuple[Path, Dataset]]]:
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in datasets:
        series[str(ds.SeriesInstanceUID)].append((path, ds))
    return dict(series)


def normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.cross(iop[:3], iop[3:])


def sorted_slices(items: list[tuple[Path, Dataset]]) -> list[tuple[Path, Dataset]]:
    n = normal(items[0][1])
    return sorted(items, key=lambda it: float(np.dot(n, np.asarray(it[1].ImagePositionPatient, dtype=float))))


def geometry(items: list[tuple[Path, Dataset]]) -> dict[str, np.ndarray]:
    """origin, spacing (i, j, k) and direction (3x3, columns i, j, k) from the tags alone."""
    slices = sorted_slices(items)
    first = slices[0][1]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in slices])
    steps = np.diff(positions @ normal(first))
    return {
        "origin": positions[0],
        "spacing": np.array([float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), float(np.median(steps))]),
        "direction": np.column_stack([iop[:3], iop[3:], normal(first)]),
        "steps": steps,
    }


def volume(items: list[tuple[Path, Dataset]]) -> np.ndarray:
    """(k, j, i) array in rescaled units, slope/intercept applied per slice."""
    return np.stack([
        ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for _, ds in sorted_slices(items)
    ])


def _dt(text: str) -> datetime:
    return datetime.strptime(text.split(".")[0][:14], "%Y%m%d%H%M%S")


def suv_factor(ds: Dataset) -> float:
    """SUVbw factor per stored (rescaled) value, DecayCorrection START: weight[g] / (dose decayed to the scan start).

    The scan start is SeriesTime, or for the GE variant (SeriesTime rewritten at reconstruction) the
    private (0009,100D); Philips CNTS series carry the factor itself in (7053,1000).
    """
    assert ds.DecayCorrection == "START"
    if ds.Units == "CNTS":
        return float(ds[0x70531000].value)
    assert ds.Units == "BQML"
    info = ds.RadiopharmaceuticalInformationSequence[0]
    injection = _dt(info.RadiopharmaceuticalStartDateTime)
    start = _dt(str(ds[0x0009100D].value)) if (0x0009, 0x100D) in ds else _dt(ds.SeriesDate + ds.SeriesTime)
    decayed = float(info.RadionuclideTotalDose) * math.exp(-math.log(2) * (start - injection).total_seconds() / float(info.RadionuclideHalfLife))
    return float(ds.PatientWeight) * 1000.0 / decayed
