"""Rigid (and optional B-spline) CT-to-CT registration with Mattes mutual information.

Why CT-to-CT: a PET/CT's PET and CT share the scanner's frame, so the PET is carried onto the
planning CT by the transform found between the two CTs (anatomy registers far better than
tracer uptake). Mutual information rather than mean squares because the low-dose PET/CT and
the contrast-enhanced planning CT differ in noise and in vessel HU.

Two rigid stages, as clinics register for target definition:

1. **global (bony)**: the whole scan, with the metric restricted to the session CT's bone (+ a
   margin): spine, ribs and sternum do not breathe, so this stage finds the patient's pose on
   the table. A whole-body metric would instead follow the lungs, heart and diaphragm, which
   sit at the session's own breathing state (5-15 mm cranio-caudal), and land between bone and
   tumour (``global_region: body`` keeps that behaviour).
2. **tumour-focused**: from the global result, the metric restricted to the planning GTV grown
   by ``tumour_margin_mm``: it follows the tumour and its surroundings to their breathing state,
   and is the transform the PET is mapped with (the global one is kept for the bony anatomy).

Convention: the returned transform maps *fixed* (planning CT) points to *moving* (session)
points, which is what ``sitk.Resample`` needs to bring the moving image onto the fixed grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from isotox.images import centroid_mm, mask_image
from isotox.segmentation.margins import expand


@dataclass(frozen=True)
class RegistrationSettings:
    """The ``registration`` section of the config (defaults are the documented ones)."""

    histogram_bins: int = 50
    sampling_percentage: float = 0.25
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_mm: tuple[float, ...] = (4.0, 2.0, 0.0)
    iterations: int = 200
    deformable: bool = False
    bspline_mesh_mm: float = 60.0
    bspline_iterations: int = 50
    inverse_consistency: bool = True
    working_spacing_mm: float = 2.0
    max_inverse_consistency_mm: float = 2.0
    min_lung_dice: float = 0.8
    seed: int = 20240101
    threads: int = 1
    #: metric samples per pyramid level at most (a fixed count, not a share of a 512 x 512 CT)
    max_samples: int = 50_000
    #: global stage: 'bone' (the session CT's bone + bone_margin_mm: the patient's pose) or 'body' (whole body)
    global_region: str = "bone"
    bone_hu: float = 150.0
    bone_margin_mm: float = 10.0
    #: cranio-caudal starts of the bone refinement around the whole-body result (mm): see register_bony
    bone_z_starts_mm: tuple[float, ...] = (-12.0, 0.0, 12.0)
    #: tumour-focused stage: on by default; the planning GTV grown by this margin is its metric region
    tumour_focus: bool = True
    tumour_margin_mm: float = 15.0
    #: flag a session when the two stages' transforms differ by more than this at the tumour centre
    max_tumour_discrepancy_mm: float = 20.0

    @classmethod
    def from_config(cls, section: dict[str, Any] | None, threads: int = 1) -> "RegistrationSettings":
        section = dict(section or {})
        qc = section.pop("qc", {})
        for key in ("shrink_factors", "smoothing_sigmas_mm", "bone_z_starts_mm"):
            if key in section:
                section[key] = tuple(section[key])
        if len(section.get("shrink_factors", cls.shrink_factors)) != len(section.get("smoothing_sigmas_mm", cls.smoothing_sigmas_mm)):
            raise ValueError("registration.shrink_factors and registration.smoothing_sigmas_mm need one entry per level")
        if section.get("global_region", cls.global_region) not in ("bone", "body"):
            raise ValueError("registration.global_region must be 'bone' or 'body'")
        return cls(**section, max_inverse_consistency_mm=qc.get("max_inverse_consistency_mm", cls.max_inverse_consistency_mm),
                   min_lung_dice=qc.get("min_lung_dice", cls.min_lung_dice),
                   max_tumour_discrepancy_mm=qc.get("max_tumour_discrepancy_mm", cls.max_tumour_discrepancy_mm), threads=threads)


@dataclass
class RigidResult:
    transform: sitk.Transform
    metric: float
    iterations: int
    stop: str
    levels: list[float] = field(default_factory=list)
    #: the bony stage's bone region on the non-contrast CT's own grid (None for other stages), so the
    #: inverse-consistency check, which registers the other way round on the same CT, need not find it again
    bone: NDArray[np.bool_] | None = None


def _method(settings: RegistrationSettings, fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None,
            percentage: float | None = None) -> sitk.ImageRegistrationMethod:
    """Mattes MI with a seeded random sample, run on one thread.

    One thread because the metric's multi-threaded reduction sums per-thread histograms in
    an order that varies from run to run: with two threads, two runs on the same input
    differed by ~1e-9 in the transform (issue 18); see ``_execute_single_threaded``.
    Everything around the optimiser (pyramid, smoothing, resampling) is per voxel and stays
    multi-threaded, which is deterministic.
    """
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(1)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(settings.sampling_percentage if percentage is None else percentage, settings.seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    reg.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def working_resolution(image: sitk.Image, mask: NDArray[np.bool_] | None, spacing_mm: float) -> tuple[sitk.Image, NDArray[np.bool_] | None]:
    """Block-average ``image`` (integer factors per axis) until its voxels are >= ``spacing_mm``.

    A rigid transform has six parameters: sub-millimetre in-plane voxels add hours of metric
    evaluations and no accuracy (the finest pyramid level of a 512 x 512 CT would otherwise run
    at 1 mm). Averaging (not subsampling) keeps the noise down and avoids aliasing; the mask is
    subsampled with the same factors.
    """
    factors = [max(1, int(spacing_mm // s)) for s in image.GetSpacing()]
    if all(f == 1 for f in factors):
        return image, mask
    small = sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors)
    if mask is None:
        return small, None
    shrunk = sitk.BinShrink(sitk.Cast(mask_image(image, mask), sitk.sitkFloat32), factors)
    return small, sitk.GetArrayFromImage(shrunk) >= 0.5


def _execute_single_threaded(reg: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, threads: int) -> None:
    """``reg.Execute`` with every ITK object it creates on one thread (see ``_method``): the
    metric and its helpers take the *global* default thread count, not the method's, so the
    global default is 1 for the duration and ``threads`` again afterwards."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        reg.Execute(fixed, moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))


def _block_average(image: sitk.Image, mask: NDArray[np.bool_] | None, factor: int, sigma_mm: float) -> tuple[sitk.Image, sitk.Image | None, int]:
    """One pyramid level: ``image`` block-averaged by ``factor`` per axis (never below 4 voxels
    on an axis: thin DCE slabs), smoothed by ``sigma_mm`` on the small grid; the mask
    subsampled alike. Returns (image, mask image, mask voxels)."""
    factors = [max(1, min(factor, n // 4)) for n in image.GetSize()]
    shrink = any(f > 1 for f in factors)
    small = sitk.BinShrink(image, factors) if shrink else image
    if sigma_mm > 0:
        small = sitk.SmoothingRecursiveGaussian(small, sigma_mm)
    if mask is None:
        return small, None, int(np.prod(small.GetSize()))
    mask_f = sitk.Cast(mask_image(image, mask), sitk.sitkFloat32)
    shrunk = sitk.BinShrink(mask_f, factors) if shrink else mask_f
    small_mask = sitk.GetArrayFromImage(shrunk) >= 0.5
    return small, mask_image(small, small_mask), int(small_mask.sum())


#: a pyramid level whose fixed mask has fewer voxels is skipped (not the finest level)
MIN_LEVEL_VOXELS = 64
#: metric samples per level at least: below this, a level of a small image may sample no mask voxel
MIN_SAMPLES = 200


def bone_region(ct: sitk.Image, body: NDArray[np.bool_], hu: float = 150.0, margin_mm: float = 10.0, min_cc: float = 1.0) -> NDArray[np.bool_]:
    """Bone of a CT grown by ``margin_mm``, inside the body: the bony registration's metric region.

    Bone = the CT smoothed (sigma 1.5 mm, so low-dose noise does not cross the threshold) above
    ``hu``, in connected pieces of at least ``min_cc``. Meant for non-contrast CTs (a PET/CT's
    low-dose CT, a DCE baseline frame): on a contrast-enhanced CT the enhancing vessels and heart
    chambers would join the bone.
    """
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.Cast(ct, sitk.sitkFloat32), 1.5))
    bone = (smooth > hu) & body
    labels, n = ndimage.label(bone)
    if n:
        sizes = np.bincount(labels.ravel())[1:] * float(np.prod(ct.GetSpacing())) / 1000.0
        bone = np.isin(labels, 1 + np.flatnonzero(sizes >= min_cc))
    if not bone.any():
        return body
    # grown on the bone's bounding box (+ the margin) only: exact, and the distance transform of the
    # whole 512 x 512 x 120 grid was a fifth of a realistic PET/CT session's registration
    return expand(bone, ct.GetSpacing(), margin_mm, clip=body)


def centred_start(fixed: sitk.Image, moving: sitk.Image, fixed_mask: NDArray[np.bool_], moving_mask: NDArray[np.bool_]) -> sitk.Euler3DTransform:
    """The start without an initialiser: the (body) masks' centroids aligned in-plane (x, y; the
    cranio-caudal centroid depends on each scan's field of view, so z starts from the scanners' frames)."""
    tx = sitk.Euler3DTransform()
    if fixed_mask.any() and moving_mask.any():
        shift = centroid_mm(moving, moving_mask) - centroid_mm(fixed, fixed_mask)
        tx.SetTranslation((float(shift[0]), float(shift[1]), 0.0))
    return tx


#: iterations per level of the bone refinement at most: it starts within a few mm, and past ~80 steps the
#: optimiser only oscillates below 0.1 mm (it ran into the 200 cap on the sample at an unchanged error)
BONE_ITERATIONS = 80


def coarse_settings(settings: RegistrationSettings) -> RegistrationSettings:
    """The whole-body step of the bony stage without its finest pyramid level: the bone refinement
    that follows starts again at the 2x level, so a full-resolution body level costs ~1.3 s per
    session and changes nothing the refinement keeps (registration error equal within 0.1 mm)."""
    if len(settings.shrink_factors) < 2:
        return settings
    return replace(settings, shrink_factors=settings.shrink_factors[:-1], smoothing_sigmas_mm=settings.smoothing_sigmas_mm[:-1])


def register_bony(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings,
                  fixed_body: NDArray[np.bool_], moving_body: NDArray[np.bool_], bone_on: str = "moving",
                  bone_image: sitk.Image | None = None, bone: NDArray[np.bool_] | None = None) -> RigidResult:
    """The global stage. ``global_region: body``: whole body, started from the body centroids.
    ``bone`` (default): that whole-body result (within the breathing amplitude of the pose), then
    refined (pyramid levels 2 and 1 only: it starts within a few mm) with
    the fixed mask = the bone region (:func:`bone_region`) of the non-contrast CT: the moving one
    (``bone_on='moving'``, carried onto the fixed grid by the whole-body result) or the fixed one
    (``'fixed'``); ``bone_image`` replaces that CT for finding bone (same grid: a DCE baseline
    frame). A fixed-side mask keeps the sample set fixed while the transform moves; a moving mask
    lets the optimiser trade samples for a degenerate overlap (it ran 90 mm away on the sample).
    ``bone``: that CT's bone region when already known (:attr:`RigidResult.bone` of an earlier run
    on the same CT). Iterations: both steps."""
    start = centred_start(fixed, moving, fixed_body, moving_body)
    if settings.global_region == "body":
        return register_rigid(fixed, moving, settings, fixed_body, moving_body, initial=start)
    body = register_rigid(fixed, moving, coarse_settings(settings), fixed_body, moving_body, initial=start)
    if bone_on == "fixed":
        region = on_fixed = bone if bone is not None else bone_region(bone_image or fixed, fixed_body, settings.bone_hu, settings.bone_margin_mm)
    else:
        region = bone if bone is not None else bone_region(bone_image or moving, moving_body, settings.bone_hu, settings.bone_margin_mm)
        carried = sitk.Resample(mask_image(moving, region), fixed, body.transform, sitk.sitkNearestNeighbor, 0)
        on_fixed = (sitk.GetArrayFromImage(carried) > 0) & fixed_body
    if not on_fixed.any():  # no bone inside the fixed scan: finish the whole-body registration instead
        return register_rigid(fixed, moving, settings, fixed_body, moving_body, initial=body.transform)
    # every voxel of the (small) bone region up to 20 000 per level: at 25 % the 2x level of a small
    # CT keeps < 1000 samples and the noisy metric stopped 8 mm off on the sample (SAMPLE001 hx4_2h)
    fine = replace(settings, shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, 0.0), sampling_percentage=1.0,
                   max_samples=min(settings.max_samples, 20_000), iterations=min(settings.iterations, BONE_ITERATIONS))
    bony = _best_of_z_starts(fixed, moving, fine, on_fixed, moving_body, body.transform, settings.bone_z_starts_mm)
    bony.iterations += body.iterations
    bony.bone = region
    return bony


def _shifted_z(transform: sitk.Transform, dz_mm: float) -> sitk.Euler3DTransform:
    start = sitk.Euler3DTransform(transform)
    x, y, z = start.GetTranslation()
    start.SetTranslation((x, y, z + dz_mm))
    return start


def _best_of_z_starts(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings, fixed_mask: NDArray[np.bool_],
                      moving_mask: NDArray[np.bool_], body: sitk.Transform, z_starts_mm: tuple[float, ...]) -> RigidResult:
    """The bone refinement's coarse level from the whole-body result shifted cranio-caudally by each of
    ``z_starts_mm``; the lowest metric wins (ties: the start nearest the whole-body result), and only
    the winner runs the finer levels.

    Why: the whole-body result follows the breathing lungs and diaphragm, so at the spine it can be
    5-15 mm off cranio-caudally, and the spine and ribs repeat every ~26 mm: from half a level
    off, one bone refinement stalls between two levels or locks onto the neighbour (SAMPLE004
    hx4_4h, a 14 mm breathing shift: 9.6 mm off at the spine, flagged only by the inverse-
    consistency check). Every start uses the same fixed mask and seeded samples, so the metrics
    compare like for like; on that session the 2x level scored -1.161 at the right level against
    -1.135 one level off and -0.65 stalled between (the full level agreed: -1.015, -0.989, -0.46).
    The winner's result equals a full refinement from its start (the same levels, the same samples)."""
    coarse = replace(settings, shrink_factors=settings.shrink_factors[:1], smoothing_sigmas_mm=settings.smoothing_sigmas_mm[:1])
    # every start and the winner's finer levels use the same working-resolution images: shrink them
    # once here (register_rigid's own shrink is then a no-op: the voxels are already >= the spacing)
    fixed, shrunk_fixed_mask = working_resolution(fixed, fixed_mask, settings.working_spacing_mm)
    moving, shrunk_moving_mask = working_resolution(moving, moving_mask, settings.working_spacing_mm)
    assert shrunk_fixed_mask is not None and shrunk_moving_mask is not None
    fixed_mask, moving_mask = shrunk_fixed_mask, shrunk_moving_mask
    best: tuple[float, RigidResult] | None = None
    iterations = 0
    for dz in sorted(z_starts_mm, key=abs):
        result = register_rigid(fixed, moving, coarse, fixed_mask, moving_mask, initial=_shifted_z(body, dz))
        iterations += result.iterations
        if best is None or result.metric < best[0]:
            best = (result.metric, result)
    assert best is not None, "registration.bone_z_starts_mm needs at least one start"
    if len(settings.shrink_factors) == 1:
        best[1].iterations = iterations
        return best[1]
    rest = replace(settings, shrink_factors=settings.shrink_factors[1:], smoothing_sigmas_mm=settings.smoothing_sigmas_mm[1:])
    final = register_rigid(fixed, moving, rest, fixed_mask, moving_mask, initial=best[1].transform)
    final.iterations += iterations
    final.levels = best[1].levels + final.levels
    return final


def tumour_region(fixed: sitk.Image, target: NDArray[np.bool_], body: NDArray[np.bool_], margin_mm: float) -> NDArray[np.bool_]:
    """The planning GTV grown by ``margin_mm`` (Euclidean, in mm), inside the body.

    Through ``margins.expand`` (the transform on the GTV's box grown by the margin): the distance
    transform of the whole planning CT took 7 s CPU and ~2 GB on a 512 x 512 x 120 CT."""
    return expand(target, fixed.GetSpacing(), margin_mm, clip=body)


def tumour_settings(settings: RegistrationSettings) -> RegistrationSettings:
    """The tumour-focused stage's pyramid: it starts next to the answer (the global result), so two
    levels (2 and 1, sigma 2 and 0 mm) and every voxel of the small region as a sample (up to max_samples)."""
    return replace(settings, shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, 0.0), sampling_percentage=1.0)


def register_tumour(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings, region: NDArray[np.bool_],
                    moving_body: NDArray[np.bool_] | None, initial: sitk.Transform) -> RigidResult:
    """The tumour-focused stage: rigid, fixed mask = ``region`` (see :func:`tumour_region`), from ``initial``;
    the centre of rotation is the region's centroid, so its translation is the tumour's displacement."""
    return register_rigid(fixed, moving, tumour_settings(settings), region, moving_body, initial=initial)


def point_distance_mm(a: sitk.Transform, b: sitk.Transform, point_mm: NDArray[np.float64] | list[float]) -> float:
    """|a(p) - b(p)|: how far two transforms send the same point apart."""
    p = tuple(float(v) for v in point_mm)
    return float(np.linalg.norm(np.asarray(a.TransformPoint(p)) - np.asarray(b.TransformPoint(p))))


def register_rigid(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings,
                   fixed_mask: NDArray[np.bool_] | None = None, moving_mask: NDArray[np.bool_] | None = None,
                   initial: sitk.Transform | None = None) -> RigidResult:
    """Rigid Euler transform fixed -> moving, multi-resolution, restricted to the body masks.

    The centre of rotation is the fixed mask's centroid (rotations then barely move the
    tumour region, which keeps the optimiser's scales balanced). Without ``initial``, the
    start is centred: the body masks' centroids are aligned in-plane (x, y; the cranio-caudal
    centroid depends on each scan's field of view, so z starts from the scanners' frames).

    The pyramid is built here by block averaging (float32) at each level's factor and
    smoothing the small image, so no level ever smooths the full-resolution scan, and each
    level's metric uses at most ``settings.max_samples`` random samples (a share of a CT's
    body would be ~10^6 per evaluation at the finest level, where 5 x 10^4 pin down six
    parameters). Each level starts from the previous level's result.
    """
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, settings.threads))
    fixed, fixed_mask = working_resolution(fixed, fixed_mask, settings.working_spacing_mm)
    moving, moving_mask = working_resolution(moving, moving_mask, settings.working_spacing_mm)
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    tx = sitk.Euler3DTransform()
    if fixed_mask is not None:
        tx.SetCenter(tuple(centroid_mm(fixed, fixed_mask)))
    if initial is not None:  # same mapping, re-expressed about our centre: t = T(c) - c
        start = sitk.Euler3DTransform(initial)
        tx.SetRotation(start.GetAngleX(), start.GetAngleY(), start.GetAngleZ())
        tx.SetTranslation(tuple(np.asarray(initial.TransformPoint(tx.GetCenter())) - np.asarray(tx.GetCenter())))
    elif fixed_mask is not None and moving_mask is not None and fixed_mask.any() and moving_mask.any():
        shift = centroid_mm(moving, moving_mask) - centroid_mm(fixed, fixed_mask)
        tx.SetTranslation((float(shift[0]), float(shift[1]), 0.0))
    levels: list[float] = []
    iterations = 0
    reg = None
    schedule = list(zip(settings.shrink_factors, settings.smoothing_sigmas_mm, strict=True))
    for number, (factor, sigma) in enumerate(schedule, start=1):
        f_level, fm_level, count = _block_average(fixed_f, fixed_mask, factor, sigma)
        if count < MIN_LEVEL_VOXELS and number < len(schedule):
            continue  # a small image (a phantom, a thin slab) has no coarse level worth the name
        if count == 0:
            raise ValueError("the fixed image's mask is empty at full resolution: nothing to register")
        m_level, mm_level, _ = _block_average(moving_f, moving_mask, factor, sigma)
        # the share of the level's voxels the metric samples: at most max_samples, at least MIN_SAMPLES
        # (ITK refuses a level whose random sample holds no point inside the fixed mask)
        share = min(1.0, max(min(settings.sampling_percentage, settings.max_samples / count), MIN_SAMPLES / count))
        reg = _method(settings, fm_level, mm_level, share)
        reg.SetShrinkFactorsPerLevel([1])
        reg.SetSmoothingSigmasPerLevel([0.0])
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=settings.iterations,
                                                     relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(tx, inPlace=True)
        _execute_single_threaded(reg, f_level, m_level, settings.threads)
        levels.append(float(reg.GetMetricValue()))
        iterations += int(reg.GetOptimizerIteration())
    assert reg is not None, "registration needs at least one pyramid level"
    return RigidResult(tx, levels[-1], iterations, reg.GetOptimizerStopConditionDescription(), levels)


def refine_bspline(fixed: sitk.Image, moving: sitk.Image, rigid: sitk.Transform, settings: RegistrationSettings,
                   fixed_mask: NDArray[np.bool_] | None = None) -> tuple[sitk.Transform, float]:
    """Deformable refinement on top of the rigid result: a B-spline grid of ``bspline_mesh_mm`` knots.

    Returns a composite transform (rigid, then B-spline) and the final metric.
    """
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    extent = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())
    mesh = [max(1, int(round(e / settings.bspline_mesh_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed_f, mesh, order=3)
    reg = _method(settings, mask_image(fixed, fixed_mask) if fixed_mask is not None else None, None)
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 0.0])
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=settings.bspline_iterations)
    reg.SetMovingInitialTransform(rigid)
    reg.SetInitialTransform(bspline, inPlace=True)
    _execute_single_threaded(reg, fixed_f, moving_f, settings.threads)
    composite = sitk.CompositeTransform([rigid, bspline])
    return composite, float(reg.GetMetricValue())
