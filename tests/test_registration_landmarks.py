"""Registration error where it matters, against the sample's known poses: at the tumour and at bony landmarks.

The sample sessions are scanned in other poses (rotations up to 5 degrees, shifts up to 20 mm)
with the field of view not centred on the planning point (up to 25 mm in-plane, 20 mm axially),
so a registration without a sensible initialiser or an identity fallback shows.

Bound: 2 mm at the tumour centre and at each of three vertebral-body centres (z = -60, 0, 60 mm),
for every PET/CT session. Nearest wrong answers, both rejected (asserted): the identity transform
(what a failed or skipped registration leaves) and the true transform shifted by 2 mm along the
worst axis (a registration off by half a planning voxel in every direction would be this).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tests.conftest import sample_patients

SESSIONS = ("fdg", "hx4_2h", "hx4_4h")
BOUND_MM = 2.0


def _apply_affine(affine: list[list[float]], points: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, dtype=float)
    return points @ a[:3, :3].T + a[:3, 3]


def _errors(tx: sitk.Transform, affine: list[list[float]], points: np.ndarray) -> np.ndarray:
    recovered = np.array([tx.TransformPoint(tuple(map(float, p))) for p in points])
    return np.linalg.norm(recovered - _apply_affine(affine, points), axis=1)


def test_registration_error_at_tumour_and_spine_landmarks(sample_run: Path) -> None:
    checked = 0
    for truth, patient in sample_patients(sample_run):
        points = np.array([truth["tumour"]["centre_mm"], *truth["spine_landmarks_mm"]], dtype=float)
        for session in SESSIONS:
            s = truth["sessions"][session]
            affine = s["planning_to_session"]["affine"]
            tx = sitk.ReadTransform(str(patient / "register" / f"{session}.tfm"))
            err = _errors(tx, affine, points)
            assert err.max() < BOUND_MM, (truth["patient_id"], session, err.round(2).tolist())
            # the landmarks recorded in session coordinates are where the true pose sends them
            np.testing.assert_allclose(_apply_affine(affine, points[1:]), s["spine_landmarks_session_mm"], atol=1e-6)
            identity = _errors(sitk.Transform(3, sitk.sitkIdentity), affine, points)
            assert identity.max() > BOUND_MM, (truth["patient_id"], session, identity.round(2).tolist())
            shifted = sitk.TranslationTransform(3, (BOUND_MM, 0.0, 0.0))
            true_tx = sitk.AffineTransform(3)
            a = np.asarray(affine, float)
            true_tx.SetMatrix(a[:3, :3].ravel().tolist())
            true_tx.SetTranslation(a[:3, 3].tolist())
            off = sitk.CompositeTransform([true_tx, shifted])
            assert _errors(off, affine, points).min() >= BOUND_MM - 1e-6
            checked += 1
    assert checked >= 6
