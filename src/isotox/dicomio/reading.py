"""Read one DICOM file the way clinical archives deliver them.

Why not a bare ``pydicom.dcmread``: many TPS and PACS exports are valid datasets without the
128-byte preamble and the file meta header (the DICOM "raw dataset" form, often implicit VR
little endian), and pydicom refuses those unless told to ``force``. Forcing on every file would
turn any binary file into a garbage dataset, so the forced read is a retry that must yield a
dataset with the identifying attributes of a composite instance (SOP Class, SOP Instance). The
transfer syntax such a file was parsed with is written into the in-memory file meta so pixel
data decodes; the file itself is never touched. Deflated explicit VR little endian is read by
pydicom from the file meta header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

#: What a file without file meta is marked with (metadata and notes say it in these words).
NO_FILE_META = "no DICOM preamble/file meta header (read as a raw dataset)"


class NotDicomError(Exception):
    """The file is not a DICOM dataset, even when read without its preamble."""


@dataclass
class DicomFile:
    """A dataset and how it was stored (``no_file_meta``: read by the forced retry)."""

    dataset: Dataset
    no_file_meta: bool
    transfer_syntax: str


def _mark_encoding(ds: Dataset) -> str:
    """Give a forced read the transfer syntax it was parsed with (kept in memory only)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return str(meta.TransferSyntaxUID)
    implicit, little = ds.original_encoding
    if implicit is None:  # an empty dataset: nothing was parsed
        implicit, little = True, True
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    return str(uid)


def read_dicom(path: str | Path, *, stop_before_pixels: bool = False) -> DicomFile:
    """Read ``path``; retry without preamble/meta; raise :class:`NotDicomError` if it is not DICOM.

    Other errors (a truncated or corrupt DICOM file) propagate for the caller to name the file."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
        return DicomFile(ds, False, str(ds.file_meta.get("TransferSyntaxUID", "")))
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, force=True)
        ok = "SOPClassUID" in ds and "SOPInstanceUID" in ds
    except Exception as exc:  # a forced parse of a non-DICOM file fails in many ways
        raise NotDicomError(f"not DICOM (no preamble, and no dataset could be parsed: {type(exc).__name__})") from exc
    if not ok:
        raise NotDicomError("not DICOM (no DICM preamble, and no SOP Class/Instance UID when read as a raw dataset)")
    return DicomFile(ds, True, _mark_encoding(ds))


def read_dataset(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """:func:`read_dicom`, the dataset only (for callers that need no provenance)."""
    return read_dicom(path, stop_before_pixels=stop_before_pixels).dataset
