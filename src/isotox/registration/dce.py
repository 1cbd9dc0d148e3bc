"""DCE-CT: rigid motion correction of every frame to the first, then the slab onto the planning CT.

Frames are registered with mutual information, not mean squares, because contrast changes
the HU of vessels and enhancing tissue from frame to frame. The slab (a few cm) is the
*fixed* image when it goes onto the planning CT: every sample then lies inside both scans,
which would not hold the other way round. The resulting transform is inverted, so the saved
transform follows the stage's convention (planning points -> DCE points).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import SimpleITK as sitk
from numpy.typing import NDArray

from isotox.images import body_mask, mask_image, resample_to, sample_points
from isotox.registration.rigid import RegistrationSettings, RigidResult, register_bony, register_rigid, register_tumour


def frames_of(dce: sitk.Image) -> list[sitk.Image]:
    """The 3-D frames of a 4-D DCE image, as float32 (ingest stores whole-HU series as int16)."""
    size = list(dce.GetSize())
    return [sitk.Cast(sitk.Extract(dce, size[:3] + [0], [0, 0, 0, t]), sitk.sitkFloat32) for t in range(size[3])]


def slab_settings(settings: RegistrationSettings, slab: sitk.Image) -> RegistrationSettings:
    """Pyramid for a thin slab: never shrink the slice axis below 4 slices. Levels that the cap makes
    equal are run once (with the smaller smoothing of the two): an 8-slice slab turned (4, 2, 1) into
    (2, 2, 1), and the repeated level cost a third of the motion correction for nothing."""
    max_shrink = max(1, slab.GetSize()[2] // 4)
    levels: dict[int, float] = {}
    for shrink, sigma in zip(settings.shrink_factors, settings.smoothing_sigmas_mm, strict=True):
        capped = min(shrink, max_shrink)
        levels[capped] = min(sigma, levels.get(capped, sigma))
    return replace(settings, shrink_factors=tuple(levels), smoothing_sigmas_mm=tuple(levels.values()))


@dataclass
class MotionCorrection:
    frames: list[sitk.Image]
    table: pd.DataFrame  # per frame: displacement (mm) of the body points, metric


def motion_correct(frames: list[sitk.Image], settings: RegistrationSettings) -> MotionCorrection:
    """Each frame onto frame 0; frame 0 stays as it is.

    Each frame starts from the previous frame's result: breathing and drift change little
    from one frame to the next, so the optimiser starts next to the answer and stops after a
    few steps per level instead of searching from the scanner frame.
    """
    reference = frames[0]
    body = body_mask(reference)
    sl = slab_settings(settings, reference)
    points = sample_points(reference, body, 2000)
    corrected, rows = [reference], [{"frame": 0, "mean_displacement_mm": 0.0, "max_displacement_mm": 0.0, "metric": np.nan}]
    previous: sitk.Transform | None = None
    for n, frame in enumerate(frames[1:], start=1):
        result = register_rigid(reference, frame, sl, body, None, initial=previous)
        previous = result.transform
        moved = np.array([result.transform.TransformPoint(tuple(p)) for p in points])
        shift = np.linalg.norm(moved - points, axis=1)
        corrected.append(resample_to(frame, reference, result.transform, sitk.sitkLinear, -1000.0))
        rows.append({"frame": n, "mean_displacement_mm": float(shift.mean()), "max_displacement_mm": float(shift.max()), "metric": result.metric})
    return MotionCorrection(corrected, pd.DataFrame(rows))


def slab_to_planning(slab: sitk.Image, planning: sitk.Image, settings: RegistrationSettings,
                     planning_body: NDArray[np.bool_], baseline: sitk.Image | None = None) -> RigidResult:
    """The global (bony) stage, slab points -> planning points (invert it for the stage's convention),
    by registering the planning CT onto the slab; bone is found on ``baseline`` (a pre-contrast
    frame on the slab's grid) or on the slab itself."""
    slab_body = body_mask(slab)
    return register_bony(slab, planning, slab_settings(settings, slab), slab_body, planning_body, bone_on="fixed", bone_image=baseline)


def tumour_to_planning(slab: sitk.Image, planning: sitk.Image, settings: RegistrationSettings, planning_body: NDArray[np.bool_],
                       focus: NDArray[np.bool_], global_slab_to_planning: sitk.Transform) -> RigidResult | None:
    """The tumour-focused stage for the slab (slab points -> planning points): the planning tumour
    region carried onto the slab by the global result is the fixed mask (the slab is fixed, so
    every sample lies in both scans). None when the region misses the slab."""
    carried = sitk.Resample(mask_image(planning, focus), slab, global_slab_to_planning, sitk.sitkNearestNeighbor, 0)
    region = (sitk.GetArrayFromImage(carried) > 0) & body_mask(slab)
    if region.sum() < 64:
        return None
    return register_tumour(slab, planning, slab_settings(settings, slab), region, planning_body, global_slab_to_planning)


def stack(frames: list[sitk.Image]) -> sitk.Image:
    return sitk.JoinSeries([sitk.Cast(f, sitk.sitkFloat32) for f in frames])


def mean_frame(frames: list[sitk.Image]) -> sitk.Image:
    total = sitk.Cast(frames[0], sitk.sitkFloat32)
    for f in frames[1:]:
        total = total + sitk.Cast(f, sitk.sitkFloat32)
    return total / float(len(frames))
