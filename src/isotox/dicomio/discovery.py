"""Find every DICOM file of a patient (any nesting, any names) and group them into series.

Headers only are read here (``stop_before_pixels``), so indexing a patient of thousands of files
is fast. Files that are not DICOM, or are unreadable, are listed with the reason and skipped; a
folder holding two patients is an error (mixing patients is never a guess worth making).

* Directory links are followed (a patient assembled from an archive as links to series folders),
  each real folder once, so a link back up the tree cannot loop.
* Files without preamble/file meta are read as raw datasets (:mod:`isotox.dicomio.reading`) and
  counted per series, so the metadata says which files had no meta header.
* An enhanced (multi-frame) image becomes one header per frame (:mod:`isotox.dicomio.multiframe`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import os

import numpy as np
from pydicom.dataset import Dataset

from isotox.dicomio.multiframe import frame_datasets, frame_headers, is_multiframe_image
from isotox.dicomio.reading import NO_FILE_META, NotDicomError, read_dicom
from isotox.errors import InputDataError

#: Header fields kept per file (everything classification and grouping need).
_SKIPPED_SUFFIXES = {".txt", ".csv", ".json", ".xml", ".pdf", ".jpg", ".png", ".nii", ".gz", ".md"}


@dataclass
class Series:
    """One series: its files (paths and headers) and what discovery noticed about it."""

    uid: str
    modality: str
    files: list[Path]  # one entry per header: a multi-frame file appears once per frame
    headers: list[Dataset]
    warnings: list[str] = field(default_factory=list)
    frames: list[int | None] = field(default_factory=list)  # frame index in a multi-frame file, None for a single-frame file
    no_file_meta: int = 0  # files of the series read without preamble/file meta header
    conflicts: list[tuple[str, Path, Path]] = field(default_factory=list)  # (SOP instance, file, other file) with different pixels: unusable

    def __post_init__(self) -> None:
        if not self.frames:
            self.frames = [None] * len(self.files)

    @property
    def multiframe(self) -> bool:
        return any(f is not None for f in self.frames)

    @property
    def n_files(self) -> int:
        return len(set(self.files))

    @property
    def first(self) -> Dataset:
        return self.headers[0]

    @property
    def description(self) -> str:
        return str(self.first.get("SeriesDescription", ""))

    @property
    def frame_of_reference(self) -> str:
        return str(self.first.get("FrameOfReferenceUID", ""))

    def repeated_positions(self) -> float:
        """Files per distinct ImagePositionPatient (1 for a static volume, frames for a dynamic series)."""
        positions = [tuple(np.round(np.asarray(h.ImagePositionPatient, dtype=float), 2)) for h in self.headers if "ImagePositionPatient" in h]
        return len(positions) / max(1, len(set(positions)))


@dataclass
class PatientIndex:
    """All series of one patient folder, plus the files that were skipped and why."""

    patient_id: str
    series: dict[str, Series]
    skipped: list[tuple[str, str]]


def _walk_files(folder: Path) -> list[Path]:
    """Every file below ``folder``, following directory links, each real directory visited once."""
    seen: set[tuple[int, int]] = set()
    files: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:  # a link back into the tree: do not descend again
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        files.extend(Path(root) / n for n in names if os.path.isfile(os.path.join(root, n)))
    return sorted(files)


def index_folder(folder: str | Path, patient: str) -> PatientIndex:
    """Read every file's header under ``folder``; group by SeriesInstanceUID."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(patient, folder, "DICOM folder not found", "check dicom_dir in the cohort sheet")
    skipped: list[tuple[str, str]] = []
    grouped: dict[str, list[tuple[Path, Dataset, int | None, bool]]] = defaultdict(list)
    files = _walk_files(folder)
    for path in files:
        if path.suffix.lower() in _SKIPPED_SUFFIXES or path.name.startswith("."):
            skipped.append((str(path), "not DICOM (file type)"))
            continue
        try:
            read = read_dicom(path, stop_before_pixels=True)
        except NotDicomError as exc:
            skipped.append((str(path), str(exc)))
            continue
        except Exception as exc:  # truncated or corrupt files raise many different errors
            skipped.append((str(path), f"unreadable DICOM: {type(exc).__name__}: {exc}"))
            continue
        header = read.dataset
        uid = header.get("SeriesInstanceUID")
        if not uid or "SOPClassUID" not in header:
            skipped.append((str(path), "DICOM without SeriesInstanceUID or SOPClassUID"))
            continue
        if is_multiframe_image(header):
            for k, frame in enumerate(frame_headers(header)):
                grouped[str(uid)].append((path, frame, k, read.no_file_meta))
        else:
            grouped[str(uid)].append((path, header, None, read.no_file_meta))
    if not grouped:
        reasons = Counter(r.split(" (")[0].split(":")[0] for _, r in skipped)
        found = f"{len(files)} file(s) found" + (f" ({', '.join(f'{n} {r}' for r, n in reasons.most_common())})" if reasons else "")
        raise InputDataError(patient, folder, f"the folder holds no readable DICOM: {found}",
                             "point dicom_dir at the folder holding the patient's DICOM files (links to series folders are followed)")
    ids = Counter(str(h.get("PatientID", "")) for items in grouped.values() for _, h, _, _ in items)
    if len(ids) > 1:
        listing = ", ".join(f"{pid or '(empty)'} ({n} files)" for pid, n in ids.most_common())
        raise InputDataError(patient, folder, f"the folder holds more than one patient: {listing}", "give each patient a folder of their own")
    series = {}
    for uid, items in grouped.items():
        modalities = Counter(str(h.get("Modality", "")) for _, h, _, _ in items)
        keep: dict[tuple[str, int | None], tuple[Path, Dataset, int | None, bool]] = {}
        conflicts: list[tuple[str, Path, Path]] = []
        for item in items:  # the same instance reached twice (a copy, or two links to one folder): one kept
            first = keep.setdefault((str(item[1].SOPInstanceUID), item[2]), item)
            if first is not item and not _same_instance(first[0], item[0]):
                conflicts.append((str(item[1].SOPInstanceUID), first[0], item[0]))
        unique = list(keep.values())
        s = Series(uid, modalities.most_common(1)[0][0], [p for p, *_ in unique], [h for _, h, _, _ in unique],
                   frames=[k for _, _, k, _ in unique], no_file_meta=len({p for p, _, _, raw in unique if raw}))
        s.conflicts = conflicts
        if len(modalities) > 1:
            s.warnings.append(f"mixed modalities in one series: {dict(modalities)}")
        duplicated = len(items) - len(unique)
        if conflicts:
            s.warnings.append(f"{len(conflicts)} SOP instance(s) stored twice with different pixel data: the series cannot be used")
        elif duplicated:
            s.warnings.append(f"{duplicated} SOP instance(s) present more than once: one copy kept")
        if s.no_file_meta:
            s.warnings.append(f"{s.no_file_meta} file(s) with {NO_FILE_META}")
        if s.multiframe:
            s.warnings.append(f"enhanced multi-frame image: {len(s.headers)} frames in {s.n_files} file(s)")
        series[uid] = s
    return PatientIndex(next(iter(ids)), series, skipped)


def _same_instance(a: Path, b: Path) -> bool:
    """Two files of one SOP instance: the same copy if the bytes, or at least the pixel data, agree
    (a copy re-saved by another tool keeps the pixels); different pixels are two images under one UID."""
    if os.path.samefile(a, b) or a.read_bytes() == b.read_bytes():
        return True
    try:
        return bool(read_dicom(a).dataset.get("PixelData") == read_dicom(b).dataset.get("PixelData"))
    except Exception:  # noqa: BLE001 - an unreadable copy cannot be shown to be the same image
        return False


def load_pixels(series: Series, patient: str) -> list[Dataset]:
    """Read the full datasets (with pixel data) of a series, one per header (a multi-frame file's
    frames as single-frame datasets); a truncated file is an error naming it, and so is one SOP
    instance stored twice with different pixels (which of the two is the image is not ours to guess)."""
    if series.conflicts:
        uid, first, other = series.conflicts[0]
        more = f" ({len(series.conflicts) - 1} more SOP instance(s) like it)" if len(series.conflicts) > 1 else ""
        raise InputDataError(patient, first, f"SOPInstanceUID {uid} is also in {other} with different pixel data{more}",
                             "remove the wrong copy (two exports of one image with different pixels), or re-export the series")
    full: list[Dataset] = []
    frames_of: dict[Path, list[Dataset]] = {}
    for path, frame in zip(series.files, series.frames):
        try:
            if frame is None:
                ds = read_dicom(path).dataset
                _ = ds.pixel_array
                full.append(ds)
                continue
            if path not in frames_of:
                frames_of[path] = frame_datasets(read_dicom(path).dataset)
            full.append(frames_of[path][frame])
        except Exception as exc:
            raise InputDataError(patient, path, f"pixel data cannot be read ({type(exc).__name__}: {exc})",
                                 "the file is truncated or corrupt: export it again") from exc
    return full
