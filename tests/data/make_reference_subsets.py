"""Rebuild the vendored reference data in tests/data from the full sets in ../shared/data.

Run once by a developer who has ../shared/data (the tests never need it):
    python tests/data/make_reference_subsets.py
What is kept and why is in each folder's README.md; values are copied, never recomputed.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import contextmanager
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sequence import Sequence

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data"
#: ROIs of the clinical example kept: what the tests measure (Heart: dicompyler-core's reference;
#: Tumor Bed: the CLI test), one large organ (Lt Lung) and the empty ROI (Areola).
KEPT_ROIS = ("Heart", "Tumor Bed", "Lt Lung", "Areola")
DOSE_MARGIN_MM = 10.0


@contextmanager
def _gzip_open(path: Path) -> Iterator[gzip.GzipFile]:
    """A gzip writer with a fixed timestamp, so rebuilding gives the same bytes."""
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
        yield gz


def _gzip_dataset(ds: pydicom.Dataset, out: Path) -> None:
    tmp = out.with_suffix("")
    ds.save_as(tmp, enforce_file_format=True)
    with tmp.open("rb") as src, _gzip_open(out) as dst:
        shutil.copyfileobj(src, dst)
    tmp.unlink()


def rt_breast_example() -> None:
    src, out = SHARED / "rt_breast_example", HERE / "rt_breast_example"
    rs = pydicom.dcmread(src / "rtss.dcm")
    numbers = {int(r.ROINumber) for r in rs.StructureSetROISequence if str(r.ROIName) in KEPT_ROIS}
    rs.StructureSetROISequence = Sequence([r for r in rs.StructureSetROISequence if int(r.ROINumber) in numbers])
    rs.ROIContourSequence = Sequence([r for r in rs.ROIContourSequence if int(r.ReferencedROINumber) in numbers])
    rs.RTROIObservationsSequence = Sequence([r for r in rs.RTROIObservationsSequence if int(r.ReferencedROINumber) in numbers])
    points = np.vstack([np.asarray(c.ContourData, float).reshape(-1, 3) for r in rs.ROIContourSequence for c in r.get("ContourSequence", [])])
    _gzip_dataset(rs, out / "rtss.dcm.gz")

    rd = pydicom.dcmread(src / "rtdose.dcm")
    origin = np.asarray(rd.ImagePositionPatient, float)
    spacing = np.array([float(rd.PixelSpacing[1]), float(rd.PixelSpacing[0])])
    offsets = np.asarray(rd.GridFrameOffsetVector, float)
    lo, hi = points.min(0) - DOSE_MARGIN_MM, points.max(0) + DOSE_MARGIN_MM
    i0, j0 = np.maximum(np.floor((lo[:2] - origin[:2]) / spacing).astype(int), 0)
    i1, j1 = np.minimum(np.ceil((hi[:2] - origin[:2]) / spacing).astype(int) + 1, [int(rd.Columns), int(rd.Rows)])
    z = origin[2] + offsets
    ks = np.flatnonzero((z >= lo[2]) & (z <= hi[2]))
    k0, k1 = int(ks[0]), int(ks[-1]) + 1
    pixels = rd.pixel_array[k0:k1, j0:j1, i0:i1]
    rd.ImagePositionPatient = [f"{v:.4f}" for v in (origin[0] + i0 * spacing[0], origin[1] + j0 * spacing[1], z[k0])]
    rd.GridFrameOffsetVector = [f"{v - offsets[k0]:g}" for v in offsets[k0:k1]]
    rd.Rows, rd.Columns, rd.NumberOfFrames = pixels.shape[1], pixels.shape[2], pixels.shape[0]
    rd.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    if "DVHSequence" in rd:  # its DVHs refer to ROIs removed above
        del rd.DVHSequence
    _gzip_dataset(rd, out / "rtdose.dcm.gz")
    for name in ("rtplan.dcm", "ct.0.dcm"):
        with (src / name).open("rb") as s, _gzip_open(out / f"{name}.gz") as d:
            shutil.copyfileobj(s, d)
    shutil.copy(src / "LICENSE.dicompyler-core", out / "LICENSE.dicompyler-core")
    print(f"rt_breast_example: ROIs {KEPT_ROIS}; dose cropped to i {i0}:{i1}, j {j0}:{j1}, k {k0}:{k1} -> {pixels.shape}")


def dce_reference() -> None:
    src, out = SHARED / "dce_reference", HERE / "dce_reference"
    for csv in sorted(src.glob("*.csv")):
        with csv.open("rb") as s, _gzip_open(out / f"{csv.name}.gz") as d:
            shutil.copyfileobj(s, d)
    shutil.copy(src / "LICENSE.Apache-2.0", out / "LICENSE.Apache-2.0")


def suv_dro() -> None:
    src, out = SHARED / "suv_dro" / "DRO", HERE / "suv_dro"
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        with tarfile.open(out / f"{folder.name}.tar.gz", "w:gz") as tar:
            for part in ("PT", "mask"):
                for f in sorted((folder / part).rglob("*")):
                    info = tar.gettarinfo(str(f), arcname=f"{folder.name}/{f.relative_to(folder)}")
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    if f.is_file():
                        with f.open("rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        tar.addfile(info)


if __name__ == "__main__":
    rt_breast_example()
    dce_reference()
    suv_dro()
