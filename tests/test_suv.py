"""SUVbw against the oncoray SUV digital reference objects (CC BY 4.0).

Truth for every DRO: inside its mask SUV min / median / max = 0.20 / 1.00 / 4.00.
Tolerance 0.002 absolute: the DROs store values quantised by their RescaleSlope (down to 0.001
in SUV-like units), so a correct conversion lands within half a quantum times the factor.
DRO_2_3 (CM2ML) stores values so coarsely that Du Bois BSA gives 0.19 / 0.98 / 3.98 (see the data
README): 0.025 there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from isotox.dicomio.suv import rescaled, suv_conversion
from isotox.errors import InputDataError

from tests.reference_data import ALL_DROS, unpack_dro


def _suv_stats(folder: Path) -> tuple[float, float, float]:
    slices = [pydicom.dcmread(p) for p in (folder / "PT").glob("*.dcm")]
    slices.sort(key=lambda ds: float(np.dot(np.cross(np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)), np.asarray(ds.ImagePositionPatient, float))))
    conversion = suv_conversion(slices, "DRO", folder)
    suv = np.stack([rescaled(ds) * f for ds, f in zip(slices, conversion.factors)])
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(next((folder / "mask").glob("*.nii*"))))) > 0
    values = suv[mask]
    return float(values.min()), float(np.median(values)), float(values.max())


def _check(name: str, stats: tuple[float, float, float]) -> None:
    tolerance = 0.025 if name == "DRO_2_3" else 0.002
    np.testing.assert_allclose(stats, (0.20, 1.00, 4.00), atol=tolerance, err_msg=name)


@pytest.mark.parametrize("name", ALL_DROS)
def test_all_seventeen_dros(name: str, tmp_path: Path) -> None:
    """Every DRO (vendored in tests/data/suv_dro) within 0.002 SUV of 0.20 / 1.00 / 4.00 (0.025 for DRO_2_3,
    whose stored values are quantised: see the data README). Nearest wrong answers rejected: no decay
    correction (x ~1.4 for FDG at 1 h), dose read as Bq when it is MBq, SUVlbm left un-normalised."""
    _check(name, _suv_stats(unpack_dro(name, tmp_path)))


def _dro_slices(tmp_path: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted((unpack_dro("DRO_3_2", tmp_path) / "PT").glob("*.dcm"))]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda ds: setattr(ds, "Units", "CPS"), "Units CPS cannot be converted"),
    (lambda ds: setattr(ds, "PatientWeight", 0), "PatientWeight"),
    (lambda ds: delattr(ds, "PatientWeight"), "PatientWeight"),
    (lambda ds: delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose"), "RadionuclideTotalDose"),
    (lambda ds: delattr(ds, "RadiopharmaceuticalInformationSequence"), "RadiopharmaceuticalInformationSequence"),
    (lambda ds: (delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartDateTime"),
                 delattr(ds.RadiopharmaceuticalInformationSequence[0], "RadiopharmaceuticalStartTime")), "no injection time"),
])
def test_unconvertible_pet_names_series_and_tag(tmp_path: Path, edit, message: str) -> None:
    slices = _dro_slices(tmp_path)
    for ds in slices:
        edit(ds)
    with pytest.raises(InputDataError, match=message) as err:
        suv_conversion(slices, "P7", "pet/first.dcm")
    assert "patient P7" in str(err.value) and "pet/first.dcm" in str(err.value) and "->" in str(err.value)


def test_conversion_reports_its_sources(tmp_path: Path) -> None:
    conversion = suv_conversion(_dro_slices(tmp_path), "P", "x").as_dict()
    assert conversion["reference_source"].startswith("back-computed")
    assert {"units", "weight", "dose", "half_life", "injection"} <= set(conversion["sources"])
    # injection 10:00, true start 11:00; the back-computation recovers it to < 1 s (1e-4 relative in decay)
    assert conversion["decay_factor"] == pytest.approx(2 ** (-3600 / 6586.2), rel=1e-4)
