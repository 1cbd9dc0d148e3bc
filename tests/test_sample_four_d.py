"""The sample's 4D planning CT (patient 4): ten phases, a MIP and the average that the plan uses.

The phases are read here with pydicom alone (sorted by ImagePositionPatient, rescaled by hand),
not with isotox's readers, and the tumour is found by a threshold in HU, so the generator's
breathing model is checked against what its DICOM shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from isotox.dicomio.discovery import index_folder
from isotox.dicomio.roles import assign_roles
from isotox.sample.patient import write_sample_patient

SEED = 20240601
INDEX = 4  # isotox.sample.four_d.has_four_d: patients 4, 16, ...
AVERAGE = "Planning CT thorax 4D AVE-IP (contrast)"


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("four_d") / "SAMPLE004"
    write_sample_patient(out, INDEX, SEED)
    return out


@pytest.fixture(scope="module")
def series(patient: Path) -> dict[str, list[pydicom.Dataset]]:
    """SeriesDescription -> slices sorted by z, for the planning study's CTs (the 4D export)."""
    out: dict[str, list[pydicom.Dataset]] = {}
    for f in (patient / "dicom").rglob("*"):
        if f.is_file():
            ds = pydicom.dcmread(f)
            if ds.Modality == "CT" and "4D" in ds.SeriesDescription:
                out.setdefault(str(ds.SeriesDescription), []).append(ds)
    return {k: sorted(v, key=lambda d: float(d.ImagePositionPatient[2])) for k, v in out.items()}


def _volume(slices: list[pydicom.Dataset]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU (k, j, i), the first voxel's LPS position and the (x, y, z) spacing."""
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices]).astype(float)
    origin = np.array([float(v) for v in slices[0].ImagePositionPatient])
    dz = float(slices[1].ImagePositionPatient[2]) - float(slices[0].ImagePositionPatient[2])
    spacing = np.array([float(slices[0].PixelSpacing[1]), float(slices[0].PixelSpacing[0]), dz])
    return hu, origin, spacing


def _tumour_centroid(hu: np.ndarray, origin: np.ndarray, spacing: np.ndarray, near_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Centroid (LPS mm) of the soft-tissue blob (> -400 HU, lung is ~ -850) that holds the voxel
    nearest ``near_mm``, weighted by its HU above lung so partial-volume edge voxels count by how
    much tumour they hold; the search is limited to a sphere of ``radius_mm`` around ``near_mm``."""
    kk, jj, ii = np.indices(hu.shape)
    xyz = np.stack([ii, jj, kk], axis=-1) * spacing + origin
    inside = np.linalg.norm(xyz - near_mm, axis=-1) < radius_mm
    labels, _ = ndimage.label((hu > -400) & inside)
    seed = tuple(np.round((near_mm - origin) / spacing).astype(int)[::-1])
    blob = ndimage.binary_dilation(labels == labels[seed], iterations=1) & inside
    weight = np.clip(hu + 850.0, 0.0, None) * blob
    return (xyz * weight[..., None]).sum(axis=(0, 1, 2)) / weight.sum()


def test_ingest_plans_on_the_average_not_on_a_phase_or_the_mip(patient: Path) -> None:
    """Nearest wrong answers: a phase (the 0 % phase has as many slices and the same frame of
    reference) or the MIP as the planning CT; both would put the tumour off its contours."""
    index = index_folder(patient / "dicom", "SAMPLE004")
    roles = assign_roles(index, {}, "SAMPLE004")
    described = {s.uid: s.description for s in index.series.values()}
    assert "AVE-IP" in described[roles.roles["planning_ct"]]
    phases = [uid for uid, text in described.items() if "4D" in text and "%" in text]
    assert len(phases) == 10
    assert all(roles.reasons[uid].startswith("unused: 4D CT phase") for uid in phases)
    mip = next(uid for uid, text in described.items() if "MIP" in text)
    assert "projection" in roles.reasons[mip]


def test_phases_move_the_tumour_by_the_recorded_motion_around_the_contoured_position(patient: Path, series: dict[str, list[pydicom.Dataset]]) -> None:
    """The 0 % and 50 % phases (peak inspiration and expiration) show the tumour the recorded
    peak-to-peak distance apart, inspiration caudal, and the average shows it at the contoured
    (mid-)position.

    Tolerance 1.5 mm (centroids on 4 mm voxels, partial volume and 10 HU noise: ~0.5 mm). Nearest
    wrong answers: phases that do not move (0 mm; the drawn motion is >= 5 mm), the recorded
    amplitude being the peak (half the peak-to-peak: >= 2.5 mm off), and an average that is
    one phase (the 0 % phase's centroid is half the motion, >= 2.5 mm, from the mid-position).
    """
    truth = json.loads((patient / "ground_truth.json").read_text())
    four_d = truth["planning_ct"]
    motion = four_d["tumour_peak_to_peak_mm"]
    assert 5.0 <= motion <= 15.5
    assert motion / 2 > 1.5 + 1.0  # the wrong answers are outside the tolerances below
    centre = np.asarray(truth["tumour"]["centre_mm"])
    reach = truth["tumour"]["equivalent_radius_mm"] * 1.6 + motion
    found = {}
    for name in ("Thorax 4D 0% (contrast)", "Thorax 4D 50% (contrast)"):
        found[name] = _tumour_centroid(*_volume(series[name]), centre, reach)
    inhale, exhale = found["Thorax 4D 0% (contrast)"], found["Thorax 4D 50% (contrast)"]
    assert abs(float(np.linalg.norm(inhale - exhale)) - motion) < 1.5
    assert inhale[2] < exhale[2]  # inspiration: the diaphragm descends, the tumour moves caudally
    average_planning = _tumour_centroid(*_volume(series[AVERAGE]), centre, reach)
    assert np.linalg.norm(average_planning - centre) < 1.0
    assert np.linalg.norm(inhale - centre) > 2.0


def test_the_average_is_the_mean_of_the_phases_and_the_mip_their_maximum(series: dict[str, list[pydicom.Dataset]]) -> None:
    """Each series is stored in whole HU, so the mean of ten rounded phases differs from the
    rounded mean by <= 1 HU. Nearest wrong answers: an average taken before the phases' noise
    (it differs by the noise, ~10 HU sd) and a MIP that is a phase (it is below the maximum
    wherever the tumour moves)."""
    phases = np.stack([_volume(series[f"Thorax 4D {p}% (contrast)"])[0] for p in range(0, 100, 10)])
    average = _volume(series[AVERAGE])[0]
    assert np.abs(average - phases.mean(axis=0)).max() <= 1.0
    assert np.array_equal(_volume(series["Thorax 4D MIP (contrast)"])[0], phases.max(axis=0))


def test_bony_stage_finds_the_right_vertebral_level_after_a_half_level_breathing_shift(patient: Path, tmp_path: Path) -> None:
    """SAMPLE004's 4 h HX4 session breathes 14 mm at the tumour, about half the ~26 mm repeat of
    the spine and ribs, so the whole-body step (it follows the lungs and diaphragm) leaves the
    bone refinement half a level off. Bound: 1.5 mm at the three vertebral-body landmarks (the
    README's bony errors are <= 1.2 mm). Nearest wrong answer: one bone refinement from the
    whole-body result (``bone_z_starts_mm: [0]``, the stage before the fix), which stalled 9.6 mm
    off; the test asserts that it still fails here, so the case keeps testing the starts."""
    import SimpleITK as sitk
    from dataclasses import replace

    from isotox.images import body_mask, read_image
    from isotox.ingest import ingest_patient
    from isotox.registration.rigid import RegistrationSettings, register_bony
    from isotox.resources import ROI_NAMES, default_file

    ingest_patient(patient / "dicom", tmp_path / "SAMPLE004", roi_names=str(default_file(ROI_NAMES)))
    truth = json.loads((patient / "ground_truth.json").read_text())
    planning = read_image(tmp_path / "SAMPLE004" / "ingest" / "planning_ct.nii.gz")
    ct = read_image(tmp_path / "SAMPLE004" / "ingest" / "hx4_4h_ct.nii.gz")
    landmarks = list(zip(truth["spine_landmarks_mm"], truth["sessions"]["hx4_4h"]["spine_landmarks_session_mm"], strict=True))

    def spine_error(transform: sitk.Transform) -> float:
        return max(float(np.linalg.norm(np.asarray(transform.TransformPoint(tuple(p))) - np.asarray(q))) for p, q in landmarks)

    settings = RegistrationSettings()
    bodies = body_mask(planning), body_mask(ct)
    assert spine_error(register_bony(planning, ct, settings, *bodies).transform) < 1.5
    assert spine_error(register_bony(planning, ct, replace(settings, bone_z_starts_mm=(0.0,)), *bodies).transform) > 5.0
