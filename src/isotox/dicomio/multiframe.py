"""Enhanced (multi-frame) CT and PET: one file holding every slice, geometry per frame.

Why flatten: the Enhanced CT / Enhanced PET IODs (and their Legacy Converted forms) keep what a
single-frame slice carries at its top level (ImagePositionPatient, PixelSpacing, RescaleSlope,
AcquisitionTime...) in functional-group macros, shared by all frames or given per frame. Turning
each frame into a classic slice header lets the same geometry rules (sort along the normal,
spacing, tilt) and the same SUV rules apply to both forms, so there is one code path to test.

Only the header is built here; the pixels of frame ``k`` are attached by :func:`frame_datasets`.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from isotox.dicomio.dicom_time import parse_dt

#: Top-level elements that belong to the multi-frame container, not to a frame.
_CONTAINER = {"PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "PixelData", "NumberOfFrames",
              "FrameIncrementPointer", "DimensionIndexSequence", "DimensionOrganizationSequence"}
#: Units codes of a Real World Value Mapping -> the classic PET Units (0054,1001) term.
_UCUM_UNITS = {"bq/ml": "BQML", "{suvbw}g/ml": "GML", "g/ml{suvbw}": "GML", "cm2/ml": "CM2ML", "{counts}": "CNTS"}


def is_multiframe_image(ds: Dataset) -> bool:
    """An image whose frames carry their geometry in functional groups (enhanced or legacy converted)."""
    return "PerFrameFunctionalGroupsSequence" in ds


def _copy_macro_items(target: Dataset, group: Dataset) -> None:
    """Copy the attributes inside each macro of a functional group to the frame (a later group,
    the per-frame one, overrides an earlier, the shared one)."""
    for element in group:
        target[element.tag] = element  # the macro itself (e.g. RealWorldValueMappingSequence) ...
        if element.VR == "SQ" and len(element.value) >= 1:
            for inner in element.value[0]:  # ... and its content at frame level, as a classic slice has it
                target[inner.tag] = inner


def _classic_times(frame: Dataset) -> None:
    """FrameContent times -> the classic AcquisitionDate/Time, ActualFrameDuration (ms)."""
    stamp = frame.get("FrameAcquisitionDateTime") or frame.get("FrameReferenceDateTime")
    if stamp:
        when = parse_dt(str(stamp))
        frame.AcquisitionDate = when.strftime("%Y%m%d")
        frame.AcquisitionTime = when.strftime("%H%M%S.%f")
        frame.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    if "FrameAcquisitionDuration" in frame and "ActualFrameDuration" not in frame:
        frame.ActualFrameDuration = int(round(float(frame.FrameAcquisitionDuration)))


def _classic_pet_terms(frame: Dataset) -> None:
    """Enhanced PET states units and decay correction differently; give them their classic terms."""
    if "Units" not in frame:
        units = None
        for mapping in frame.get("RealWorldValueMappingSequence", []):
            for code in mapping.get("MeasurementUnitsCodeSequence", []):
                units = _UCUM_UNITS.get(str(code.get("CodeValue", "")).lower())
        rescale_type = str(frame.get("RescaleType", "")).upper()
        if units is None and rescale_type in {"BQML", "GML", "CNTS", "CM2ML"}:
            units = rescale_type
        if units:
            frame.Units = units
        if "RescaleSlope" not in frame:
            for mapping in frame.get("RealWorldValueMappingSequence", []):
                if "RealWorldValueSlope" in mapping:
                    frame.RescaleSlope = mapping.RealWorldValueSlope
                    frame.RescaleIntercept = mapping.get("RealWorldValueIntercept", 0)
    if "DecayCorrection" not in frame and "DecayCorrected" in frame:
        frame.DecayCorrection = "START" if str(frame.DecayCorrected).upper() == "YES" else "NONE"


def frame_headers(ds: Dataset) -> list[Dataset]:
    """One classic slice header per frame (no pixel data), in frame order."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.PerFrameFunctionalGroupsSequence
    out = []
    for k, frame_group in enumerate(per_frame):
        frame = Dataset()
        for element in ds:
            if element.keyword not in _CONTAINER:
                frame[element.tag] = element
        if shared:
            _copy_macro_items(frame, shared[0])
        _copy_macro_items(frame, frame_group)
        _classic_times(frame)
        if str(ds.get("Modality", "")) == "PT":
            _classic_pet_terms(frame)
        frame.InstanceNumber = k + 1
        out.append(frame)
    return out


def frame_datasets(ds: Dataset) -> list[Dataset]:
    """Each frame as a single-frame dataset with its own pixel data (decoded once for the file)."""
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    frames = frame_headers(ds)
    for frame, plane in zip(frames, pixels):
        plane = np.ascontiguousarray(plane)
        frame.BitsAllocated = plane.dtype.itemsize * 8
        frame.BitsStored = frame.BitsAllocated
        frame.HighBit = frame.BitsAllocated - 1
        frame.PixelRepresentation = 1 if plane.dtype.kind == "i" else 0
        frame.SamplesPerPixel = 1
        frame.PhotometricInterpretation = "MONOCHROME2"
        frame.file_meta = FileMetaDataset()
        frame.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        frame.PixelData = plane.astype(plane.dtype.newbyteorder("<")).tobytes()
    return frames
