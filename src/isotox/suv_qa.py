"""SUV quality assurance on any folder of PET files: ``isotox suv DICOM_DIR OUT_DIR``.

Why a command of its own: vendors' support cases and public QA sets are a PET series alone (often
one slice or a few), with no planning CT, so the ingest stage refuses them. A physicist checking a
scanner's SUV wants each series converted by the same rules the pipeline uses, and for the series
that cannot be converted, the reason. One slice is a valid series.

Writes ``OUT_DIR/<SeriesInstanceUID>.nii.gz`` (SUVbw) per convertible PET series and
``OUT_DIR/suv.json``: series UID -> the conversion record (units, decay correction, reference
time, weight, dose, factor...) or ``{"error": ...}``. Outputs are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from isotox.atomic import atomic_path
from isotox.dicomio.discovery import Series, index_folder
from isotox.dicomio.roles import attenuation_corrected
from isotox.dicomio.volume import IrregularPolicy
from isotox.errors import InputDataError
from isotox.ingest import pet_suv_image

PET_MODALITY = "PT"


def _convert(series: Series, patient: str, policy: IrregularPolicy) -> tuple[sitk.Image, dict[str, Any]]:
    """The ingest stage's PET conversion (the same rules), plus what a QA reader wants beside it."""
    image, geometry, record = pet_suv_image(series, patient, policy)
    record.update(factor=record["factors"], slices=len(geometry.order), suv_max=float(sitk.GetArrayViewFromImage(image).max()),
                  description=series.description, attenuation_corrected=attenuation_corrected(series), geometry=geometry.summary())
    return image, record


def suv_folder(dicom_dir: str | Path, out_dir: str | Path, *, irregular: IrregularPolicy = "resample") -> dict[str, dict[str, Any]]:
    """Convert every PET series under ``dicom_dir``; return the per-series records (also ``suv.json``).

    Raises :class:`InputDataError` when the folder holds no PET series at all."""
    dicom_dir, out_dir = Path(dicom_dir), Path(out_dir)
    index = index_folder(dicom_dir, patient=dicom_dir.name)
    pets = {uid: s for uid, s in index.series.items() if s.modality == PET_MODALITY}
    if not pets:
        found = ", ".join(sorted({s.modality for s in index.series.values()}))
        raise InputDataError(dicom_dir.name, dicom_dir, f"no PET series in the folder (found: {found})", "point at a folder holding PET (PT) files")
    out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    for uid, series in sorted(pets.items()):
        try:
            image, record = _convert(series, index.patient_id or dicom_dir.name, irregular)
        except InputDataError as exc:
            records[uid] = {"error": str(exc), "description": series.description, "files": series.n_files}
            continue
        with atomic_path(out_dir / f"{uid}.nii.gz") as staged:
            sitk.WriteImage(image, str(staged), useCompression=True)
        record["warnings"] = list(record.get("warnings", [])) + list(series.warnings)
        records[uid] = record
    with atomic_path(out_dir / "suv.json") as staged:
        staged.write_text(json.dumps(records, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return records

