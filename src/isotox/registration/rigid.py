"""Rigid (and optional B-spline) CT-to-CT registration with Mattes mutual information.

Why CT-to-CT: a PET/CT's PET and CT share the scanner's frame, so the PET is carried onto the
planning CT by the transform found between the two CTs (anatomy registers far better than
tracer uptake). Mutual information rather than mean squares because the low-dose PET/CT and
the contrast-enhanced planning CT differ in noise and in vessel HU.

Convention: the returned transform maps *fixed* (planning CT) points to *moving* (session)
points, which is what ``sitk.Resample`` needs to bring the moving image onto the fixed grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from isotox.images import mask_image


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

    @classmethod
    def from_config(cls, section: dict[str, Any] | None, threads: int = 1) -> "RegistrationSettings":
        section = dict(section or {})
        qc = section.pop("qc", {})
        for key in ("shrink_factors", "smoothing_sigmas_mm"):
            if key in section:
                section[key] = tuple(section[key])
        if len(section.get("shrink_factors", cls.shrink_factors)) != len(section.get("smoothing_sigmas_mm", cls.smoothing_sigmas_mm)):
            raise ValueError("registration.shrink_factors and registration.smoothing_sigmas_mm need one entry per level")
        return cls(**section, max_inverse_consistency_mm=qc.get("max_inverse_consistency_mm", cls.max_inverse_consistency_mm),
                   min_lung_dice=qc.get("min_lung_dice", cls.min_lung_dice), threads=threads)


@dataclass
class RigidResult:
    transform: sitk.Transform
    metric: float
    iterations: int
    stop: str
    levels: list[float] = field(default_factory=list)


def _method(settings: RegistrationSettings, fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(settings.sampling_percentage, settings.seed)
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


def register_rigid(fixed: sitk.Image, moving: sitk.Image, settings: RegistrationSettings,
                   fixed_mask: NDArray[np.bool_] | None = None, moving_mask: NDArray[np.bool_] | None = None,
                   initial: sitk.Transform | None = None) -> RigidResult:
    """Rigid Euler transform fixed -> moving, multi-resolution, restricted to the body masks.

    The centre of rotation is the fixed mask's centroid (rotations then barely move the
    tumour region, which keeps the optimiser's scales balanced).
    """
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, settings.threads))
    fixed, fixed_mask = working_resolution(fixed, fixed_mask, settings.working_spacing_mm)
    moving, moving_mask = working_resolution(moving, moving_mask, settings.working_spacing_mm)
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    fm = mask_image(fixed, fixed_mask) if fixed_mask is not None else None
    mm = mask_image(moving, moving_mask) if moving_mask is not None else None
    tx = sitk.Euler3DTransform()
    if fixed_mask is not None:
        kji = np.argwhere(fixed_mask).mean(axis=0)
        tx.SetCenter(fixed.TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]]))
    if initial is not None:  # same mapping, re-expressed about our centre: t = T(c) - c
        start = sitk.Euler3DTransform(initial)
        tx.SetRotation(start.GetAngleX(), start.GetAngleY(), start.GetAngleZ())
        tx.SetTranslation(tuple(np.asarray(initial.TransformPoint(tx.GetCenter())) - np.asarray(tx.GetCenter())))
    reg = _method(settings, fm, mm)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=settings.iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(tx, inPlace=True)
    levels: list[float] = []
    reg.AddCommand(sitk.sitkMultiResolutionIterationEvent, lambda: levels.append(reg.GetMetricValue()))
    reg.Execute(fixed_f, moving_f)
    return RigidResult(tx, float(reg.GetMetricValue()), int(reg.GetOptimizerIteration()), reg.GetOptimizerStopConditionDescription(), levels)


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
    reg.Execute(fixed_f, moving_f)
    composite = sitk.CompositeTransform([rigid, bspline])
    return composite, float(reg.GetMetricValue())
