"""Write an RT Structure Set that references an image series (planning CT) slice by slice.

Used by the sample generator and by the planning stage to send GTV/boost/CTV/PTV contours back
to a treatment planning system. Every contour points at the CT slice it lies on, and the set
references the CT's frame of reference, study and series, as TPS importers require.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID
from skimage.measure import approximate_polygon

from isotox.dicomio.contours import Contour
from isotox.dicomio.modules import PatientStudy, SeriesInfo, new_series_instance

RT_STRUCTURE_SET_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.3")
#: Detached Study Management SOP Class, the conventional class of RTReferencedStudySequence items.
STUDY_COMPONENT_CLASS = UID("1.2.840.10008.3.1.2.3.1")


@dataclass(frozen=True)
class ReferencedImages:
    """The image series the contours are drawn on: UIDs per slice index k and their SOP class."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    slice_sop_uids: list[str]


@dataclass
class RoiContours:
    """One ROI: name, RT ROI interpreted type (ORGAN, GTV, CTV, PTV, EXTERNAL...), colour, contours."""

    name: str
    interpreted_type: str
    color: tuple[int, int, int]
    contours: list[Contour] = field(default_factory=list)


#: ContourData is a DS list; in explicit VR a value longer than 64 KiB cannot be written as DS.
_MAX_CONTOUR_BYTES = 65534


def _ds_list(points: np.ndarray) -> list[str]:
    """ContourData strings (0.001 mm); very long outlines are simplified until they fit one DS element.

    Douglas-Peucker simplification (scikit-image ``approximate_polygon``) with a tolerance that grows
    from 0.05 mm keeps the outline within that tolerance, far below any clinical significance.
    """
    values = [f"{v:.3f}" for v in points.ravel()]
    tolerance = 0.05
    while sum(len(v) + 1 for v in values) > _MAX_CONTOUR_BYTES:
        closed = np.vstack([points, points[:1]])
        kept = approximate_polygon(closed[:, :2], tolerance=tolerance)[:-1]
        simplified = np.column_stack([kept, np.full(len(kept), points[0, 2])])
        values = [f"{v:.3f}" for v in simplified.ravel()]
        tolerance *= 2
    return values


CONTOUR_DATA = Tag(0x3006, 0x0050)


def _contour_data(values: list[str]) -> RawDataElement:
    """ContourData as the bytes pydicom would write for these DS strings (joined by backslashes,
    padded to even length with a space).

    Why raw: assigning the list makes pydicom build and regex-validate one DS object per number,
    2.9 of the 26 CPU seconds of a small sample patient (394 000 numbers); the strings are
    already formatted (``_ds_list``) and the file's bytes are the same. The item must declare the
    file's encoding (explicit VR little endian) as its own, or the writer decodes the element to
    re-encode it. Reading the element from the returned dataset converts it as usual.
    """
    raw = "\\".join(values).encode("ascii")
    if len(raw) % 2:
        raw += b" "
    return RawDataElement(CONTOUR_DATA, "DS", len(raw), raw, 0, False, True)


def write_rtstruct(
    path: Path,
    who: PatientStudy,
    series: SeriesInfo,
    images: ReferencedImages,
    rois: list[RoiContours],
    *,
    sop_instance_uid: str,
    label: str = "isotox",
) -> Dataset:
    """Write the structure set to ``path`` and return it. ROIs without contours are kept (empty)."""
    ds = new_series_instance(RT_STRUCTURE_SET_STORAGE, sop_instance_uid, who, series)
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate = series.date
    ds.StructureSetTime = series.time

    contour_images = Sequence()
    for sop in images.slice_sop_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = images.sop_class_uid
        item.ReferencedSOPInstanceUID = sop
        contour_images.append(item)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = images.series_uid
    ref_series.ContourImageSequence = contour_images
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = STUDY_COMPONENT_CLASS
    ref_study.ReferencedSOPInstanceUID = images.study_uid
    ref_study.RTReferencedSeriesSequence = Sequence([ref_series])
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = images.frame_of_reference_uid
    ref_for.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_for])

    roi_seq, contour_seq, obs_seq = Sequence(), Sequence(), Sequence()
    for number, roi in enumerate(rois, start=1):
        entry = Dataset()
        entry.ROINumber = number
        entry.ReferencedFrameOfReferenceUID = images.frame_of_reference_uid
        entry.ROIName = roi.name
        entry.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_seq.append(entry)

        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = list(roi.color)
        contours = Sequence()
        for k, points in roi.contours:
            image_ref = Dataset()
            image_ref.ReferencedSOPClassUID = images.sop_class_uid
            image_ref.ReferencedSOPInstanceUID = images.slice_sop_uids[k]
            c = Dataset()
            c.ContourImageSequence = Sequence([image_ref])
            c.ContourGeometricType = "CLOSED_PLANAR"
            data = _ds_list(points)
            c.NumberOfContourPoints = len(data) // 3
            c.ContourNumber = len(contours) + 1
            c[CONTOUR_DATA] = _contour_data(data)
            c.set_original_encoding(False, True, default_encoding)  # the file's encoding: the raw bytes are written as they are
            contours.append(c)
        if len(contours):
            rc.ContourSequence = contours
        contour_seq.append(rc)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = roi.interpreted_type
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = roi_seq
    ds.ROIContourSequence = contour_seq
    ds.RTROIObservationsSequence = obs_seq
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
