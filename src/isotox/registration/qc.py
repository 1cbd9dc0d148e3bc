"""Landmark-free registration quality: inverse consistency and lung overlap.

Neither needs ground truth, so both run on every clinical patient:

* inverse consistency: register the other way round and measure how far a point travels
  through forward and backward transforms (mean over body points of the planning CT); a
  well-posed rigid registration returns within a fraction of a voxel;
* lung Dice: lungs segmented on both CTs (air inside the body); after a good registration they
  overlap with Dice > 0.9 (breathing-phase differences keep it below 1). Computed where both
  scans have data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from isotox.images import dice, inside_image, lung_mask, mask_image, resample_to, sample_points
from isotox.registration.rigid import RegistrationSettings, register_bony


@dataclass
class RegistrationQc:
    metric: float
    iterations: int
    inverse_consistency_mm: float | None
    lung_dice: float | None
    fov_overlap: float
    flags: list[str]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def probe_points(centre_mm: NDArray[np.float64], n: int = 200, radius_mm: float = 100.0, seed: int = 0) -> NDArray[np.float64]:
    """The centre and ``n`` points spread over a sphere of ``radius_mm`` around it."""
    v = np.random.default_rng(seed).normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.vstack([centre_mm, np.asarray(centre_mm) + radius_mm * v])


def registration_error_mm(transform: sitk.Transform, true_affine: list[list[float]] | NDArray[np.float64], centre_mm: list[float] | NDArray[np.float64]) -> float:
    """Accuracy against a known pose (sample cohort, phantoms): the mean distance between where
    the true 4x4 affine and ``transform`` send the tumour centre and a 10 cm sphere of points."""
    pts = probe_points(np.asarray(centre_mm, dtype=float))
    a = np.asarray(true_affine, dtype=float)
    truth = pts @ a[:3, :3].T + a[:3, 3]
    got = np.array([transform.TransformPoint(tuple(p)) for p in pts])
    return float(np.linalg.norm(got - truth, axis=1).mean())


def inverse_consistency_mm(fixed: sitk.Image, moving: sitk.Image, forward: sitk.Transform, settings: RegistrationSettings,
                           fixed_body: NDArray[np.bool_], moving_body: NDArray[np.bool_], n_points: int = 2000,
                           moving_bone: NDArray[np.bool_] | None = None) -> float:
    """Mean |B(F(x)) - x| over body points x of the fixed image, B registered independently by the
    same global stage the other way round (bone found on the same, moving = non-contrast, CT;
    ``moving_bone``: that bone region when the forward stage already found it)."""
    backward = register_bony(moving, fixed, settings, moving_body, fixed_body, bone_on="fixed", bone=moving_bone).transform
    points = sample_points(fixed, fixed_body, n_points, settings.seed)
    round_trip = np.array([backward.TransformPoint(forward.TransformPoint(tuple(p))) for p in points])
    return float(np.linalg.norm(round_trip - points, axis=1).mean())


def lung_overlap(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, fixed_lungs: NDArray[np.bool_],
                 moving_body: NDArray[np.bool_], common: NDArray[np.bool_]) -> float | None:
    """Dice of CT lungs after registration, inside ``common`` (the fixed voxels the moving scan covers);
    None if no lungs there."""
    moving_lungs = mask_image(moving, lung_mask(moving, moving_body))
    carried = sitk.GetArrayFromImage(resample_to(moving_lungs, fixed, transform, sitk.sitkNearestNeighbor)) > 0
    if not (fixed_lungs & common).any():
        return None
    return dice(fixed_lungs & common, carried & common)


def assess(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, metric: float, iterations: int,
           settings: RegistrationSettings, fixed_body: NDArray[np.bool_], moving_body: NDArray[np.bool_],
           target: NDArray[np.bool_] | None = None, fixed_lungs: NDArray[np.bool_] | None = None,
           moving_bone: NDArray[np.bool_] | None = None) -> RegistrationQc:
    """All QC figures and the flags they raise (thresholds from the config's registration.qc).

    ``fixed_lungs``: the planning CT's lungs, when the caller assesses several sessions against it;
    ``moving_bone``: the moving CT's bone region found by the forward bony stage (reused by the
    inverse-consistency check).
    """
    flags: list[str] = []
    common = inside_image(moving, fixed, transform)
    fov = float((common & fixed_body).sum() / max(1, fixed_body.sum()))
    if target is not None and target.any() and not common[target].all():
        share = float(common[target].mean())
        flags.append(f"the moving scan covers only {100 * share:.0f} % of the target (GTV) after registration")
    if fov < 0.2:
        flags.append(f"the moving scan overlaps only {100 * fov:.0f} % of the planning CT body after registration")
    ice = inverse_consistency_mm(fixed, moving, transform, settings, fixed_body, moving_body, moving_bone=moving_bone) if settings.inverse_consistency else None
    if ice is not None and ice > settings.max_inverse_consistency_mm:
        flags.append(f"inverse-consistency error {ice:.1f} mm > {settings.max_inverse_consistency_mm} mm")
    fixed_lungs = lung_mask(fixed, fixed_body) if fixed_lungs is None else fixed_lungs
    lungs = lung_overlap(fixed, moving, transform, fixed_lungs, moving_body, common)
    if lungs is not None and lungs < settings.min_lung_dice:
        flags.append(f"lung Dice {lungs:.2f} < {settings.min_lung_dice} after registration")
    return RegistrationQc(metric, iterations, ice, lungs, fov, flags)
