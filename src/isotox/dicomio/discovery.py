"""Find every DICOM file of a patient (any nesting, any names) and group them into series.

Headers only are read here (``stop_before_pixels``), so indexing a patient of thousands of files
is fast. Files that are not DICOM, or are unreadable, are listed with the reason and skipped; a
folder holding two patients is an error (mixing patients is never a guess worth making).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from isotox.errors import InputDataError

#: Header fields kept per file (everything classification and grouping need).
_SKIPPED_SUFFIXES = {".txt", ".csv", ".json", ".xml", ".pdf", ".jpg", ".png", ".nii", ".gz", ".md"}


@dataclass
class Series:
    """One series: its files (paths and headers) and what discovery noticed about it."""

    uid: str
    modality: str
    files: list[Path]
    headers: list[Dataset]
    warnings: list[str] = field(default_factory=list)

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


def index_folder(folder: str | Path, patient: str) -> PatientIndex:
    """Read every file's header under ``folder``; group by SeriesInstanceUID."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(patient, folder, "DICOM folder not found", "check dicom_dir in the cohort sheet")
    skipped: list[tuple[str, str]] = []
    grouped: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() in _SKIPPED_SUFFIXES or path.name.startswith("."):
            skipped.append((str(path), "not DICOM (file type)"))
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped.append((str(path), "not DICOM (no DICM preamble)"))
            continue
        except Exception as exc:  # truncated or corrupt files raise many different errors
            skipped.append((str(path), f"unreadable DICOM: {type(exc).__name__}: {exc}"))
            continue
        uid = header.get("SeriesInstanceUID")
        if not uid or "SOPClassUID" not in header:
            skipped.append((str(path), "DICOM without SeriesInstanceUID or SOPClassUID"))
            continue
        grouped[str(uid)].append((path, header))
    if not grouped:
        raise InputDataError(patient, folder, "no DICOM series found", "point dicom_dir at the folder holding the patient's DICOM files")
    ids = Counter(str(h.get("PatientID", "")) for items in grouped.values() for _, h in items)
    if len(ids) > 1:
        listing = ", ".join(f"{pid or '(empty)'} ({n} files)" for pid, n in ids.most_common())
        raise InputDataError(patient, folder, f"the folder holds more than one patient: {listing}", "give each patient a folder of their own")
    series = {}
    for uid, items in grouped.items():
        modalities = Counter(str(h.get("Modality", "")) for _, h in items)
        s = Series(uid, modalities.most_common(1)[0][0], [p for p, _ in items], [h for _, h in items])
        if len(modalities) > 1:
            s.warnings.append(f"mixed modalities in one series: {dict(modalities)}")
        sops = Counter(str(h.SOPInstanceUID) for h in s.headers)
        duplicated = [sop for sop, n in sops.items() if n > 1]
        if duplicated:
            keep = {}
            for path, header in zip(s.files, s.headers):
                keep.setdefault(str(header.SOPInstanceUID), (path, header))
            s.files, s.headers = [p for p, _ in keep.values()], [h for _, h in keep.values()]
            s.warnings.append(f"{len(duplicated)} SOP instance(s) present more than once: one copy kept")
        series[uid] = s
    return PatientIndex(next(iter(ids)), series, skipped)


def load_pixels(series: Series, patient: str) -> list[Dataset]:
    """Read the full datasets (with pixel data) of a series; a truncated file is an error naming it."""
    full = []
    for path in series.files:
        try:
            ds = pydicom.dcmread(path)
            _ = ds.pixel_array
        except Exception as exc:
            raise InputDataError(patient, path, f"pixel data cannot be read ({type(exc).__name__}: {exc})",
                                 "the file is truncated or corrupt: export it again") from exc
        full.append(ds)
    return full
