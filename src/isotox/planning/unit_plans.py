"""Unit plans: dose distributions normalised to 1 Gy (median) on their target, ready to be scaled.

A base plan covers the PTV; a boost plan covers a boost PTV (arm A: GTV + margin, arm B: the
50 % SUVmax volume + margin). The search combines them voxel by voxel (total x base +
increment x boost), so every plan here is linear in its prescription by construction.
Sources: the clinic's RTDOSE (a TPS plan, renormalised to its PTV median) or the built-in engine
(coplanar conformal beams, weights by NNLS; ``isotox.dose.photon_engine``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from isotox.dose.beam_model import BeamModel
from isotox.dose.beams import BeamGeometry, conformal_aperture
from isotox.dose.density import relative_electron_density
from isotox.dose.photon_engine import DensityVolume, beam_dose_on_grid
from isotox.dose.weights import WeightResult, optimise_weights
from isotox.geometry import ImageGrid
from isotox.images import array
from isotox.planning.settings import PlanningSettings

log = logging.getLogger(__name__)

#: organ samples used as NNLS rows (random, seeded): enough to steer 7 weights, cheap to solve.
MAX_ORGAN_ROWS = 20000


@dataclass
class UnitPlan:
    name: str  # base | boost_A | boost_B
    target: str  # the mask it is normalised on
    dose: NDArray[np.float32]  # (k, j, i) on the dose grid, Gy per Gy of prescription
    source: str  # engine | tps
    beams: list[dict[str, Any]] = field(default_factory=list)
    weights: WeightResult | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "source": self.source, "seconds": round(self.seconds, 2), "beams": self.beams}
        if self.weights is not None:
            out["optimisation"] = self.weights.as_dict()
        return out


def dose_grid_for(ct_grid: ImageGrid, body: NDArray[np.bool_], spacing_mm: float) -> ImageGrid:
    """A grid of ``spacing_mm`` voxels, aligned with the CT axes, covering the body's bounding box
    (+ one voxel); dose outside the body is zero by definition, so no larger grid is needed."""
    kji = np.argwhere(body)
    lo, hi = kji.min(axis=0)[::-1].astype(float) - 0.5, kji.max(axis=0)[::-1].astype(float) + 0.5  # (i, j, k) edges
    extent_mm = (hi - lo) * np.asarray(ct_grid.spacing)
    size = tuple(int(np.ceil(e / spacing_mm)) + 2 for e in extent_mm)
    first_centre_index = lo - spacing_mm / np.asarray(ct_grid.spacing) * 0.5  # one dose voxel beyond the edge, centred
    origin = ct_grid.index_to_physical(first_centre_index[None, :])[0]
    return ImageGrid(size, (spacing_mm,) * 3, tuple(float(v) for v in origin), ct_grid.direction)  # type: ignore[arg-type]


def mask_on_grid(mask: NDArray[np.bool_], mask_grid: ImageGrid, grid: ImageGrid) -> NDArray[np.bool_]:
    """Nearest-neighbour resampling of a mask onto another grid (for NNLS rows and calculation masks)."""
    kji = np.indices(grid.shape).reshape(3, -1).T
    ijk = mask_grid.physical_to_index(grid.index_to_physical(kji[:, ::-1].astype(float)))
    values = ndimage.map_coordinates(mask.astype(np.uint8), ijk[:, ::-1].T, order=0, mode="constant", cval=0)
    return values.reshape(grid.shape).astype(bool)


def density_volume(ct: sitk.Image, body: NDArray[np.bool_], curve: list[list[float]]) -> DensityVolume:
    red = relative_electron_density(array(ct), np.asarray(curve, dtype=float))
    red[~body] = 0.0
    return DensityVolume(ImageGrid.from_sitk(ct), red)


def _target_points(mask: NDArray[np.bool_], grid: ImageGrid) -> NDArray[np.float64]:
    """Voxel centres of the target plus the 8 quarter-voxel offsets (a gap-free BEV footprint)."""
    kji = np.argwhere(mask)[:, ::-1].astype(float)
    offsets = np.array([[a, b, c] for a in (-0.25, 0.25) for b in (-0.25, 0.25) for c in (-0.25, 0.25)])
    return grid.index_to_physical((kji[:, None, :] + offsets[None]).reshape(-1, 3))


@dataclass
class PlanningContext:
    """Everything the engine needs for one patient, computed once and shared by every unit plan."""

    ct_grid: ImageGrid
    density: DensityVolume
    dose_grid: ImageGrid
    calc_mask: NDArray[np.bool_]  # body on the dose grid
    model: BeamModel
    settings: PlanningSettings
    organ_rows: NDArray[np.bool_]  # dose-grid voxels of constrained organs (outside every target)

    @classmethod
    def build(cls, ct: sitk.Image, body: NDArray[np.bool_], organs: list[NDArray[np.bool_]], targets: list[NDArray[np.bool_]],
              settings: PlanningSettings, model: BeamModel) -> "PlanningContext":
        ct_grid = ImageGrid.from_sitk(ct)
        dose_grid = dose_grid_for(ct_grid, body, settings.dose_grid_mm)
        calc = mask_on_grid(body, ct_grid, dose_grid)
        organ = np.zeros(ct_grid.shape, bool)
        for m in organs:
            organ |= m
        for t in targets:
            organ &= ~t
        return cls(ct_grid, density_volume(ct, body, settings.hu_to_red), dose_grid, calc, model, settings, mask_on_grid(organ, ct_grid, dose_grid) & calc)


def engine_plan(context: PlanningContext, name: str, target_name: str, target: NDArray[np.bool_]) -> UnitPlan:
    """Conformal coplanar beams on ``target`` (CT grid), NNLS weights, normalised to its median."""
    start = time.perf_counter()
    s = context.settings
    target_dose_grid = mask_on_grid(target, context.ct_grid, context.dose_grid) & context.calc_mask
    if not target_dose_grid.any():
        raise ValueError(f"target {target_name} has no voxel inside the body on the dose grid")
    kji = np.argwhere(target)[:, ::-1].astype(float)
    isocentre = tuple(float(v) for v in context.ct_grid.index_to_physical(kji.mean(axis=0)[None])[0])
    points = _target_points(target, context.ct_grid)
    pad = 4.0 * context.model.data.tail_sigma_mm
    beam_doses, beams = [], []
    for angle in s.angles():
        beam = BeamGeometry(angle, isocentre, context.model.data.source_axis_distance_mm)  # type: ignore[arg-type]
        aperture = conformal_aperture(beam, points, s.aperture_margin_mm, s.fan_pixel_mm, pad)
        beam_doses.append(beam_dose_on_grid(context.model, context.density, beam, aperture, context.dose_grid, context.calc_mask, s.ray_step_mm))
        beams.append({"gantry_deg": angle, "isocentre_mm": [round(v, 2) for v in isocentre], "field_area_cm2": round(aperture.area_cm2, 2),
                      "equivalent_square_cm": round(aperture.equivalent_square_cm, 2)})
    stack = np.stack(beam_doses)  # (beams, k, j, i)
    target_rows = stack[:, target_dose_grid].T.astype(float)
    organ_idx = np.flatnonzero(context.organ_rows)
    if organ_idx.size > MAX_ORGAN_ROWS:
        organ_idx = np.sort(np.random.default_rng(0).choice(organ_idx, MAX_ORGAN_ROWS, replace=False))
    organ_rows = stack.reshape(len(beams), -1)[:, organ_idx].T.astype(float)
    result = optimise_weights(target_rows, organ_rows, s.organ_weight)
    dose = np.tensordot(result.weights.astype(np.float32), stack, axes=1).astype(np.float32)
    for beam, w in zip(beams, result.weights):
        beam["relative_weight"] = round(float(w / result.weights.sum()), 4) if result.weights.sum() > 0 else 0.0
    return UnitPlan(name, target_name, dose, "engine", beams, result, time.perf_counter() - start)


def tps_base_plan(dose_image: sitk.Image, ptv: NDArray[np.bool_], ct_grid: ImageGrid, dose_grid: ImageGrid) -> UnitPlan:
    """The clinic's RTDOSE resampled (trilinear) onto the dose grid and divided by its PTV median."""
    start = time.perf_counter()
    source_grid = ImageGrid.from_sitk(dose_image)
    kji = np.indices(dose_grid.shape).reshape(3, -1).T
    ijk = source_grid.physical_to_index(dose_grid.index_to_physical(kji[:, ::-1].astype(float)))
    dose = ndimage.map_coordinates(array(dose_image).astype(np.float32), ijk[:, ::-1].T, order=1, mode="constant", cval=0.0).reshape(dose_grid.shape)
    in_ptv = mask_on_grid(ptv, ct_grid, dose_grid)
    median = float(np.median(dose[in_ptv])) if in_ptv.any() else 0.0
    if median <= 0:
        raise ValueError("the TPS dose is zero in the PTV (dose and structures on different frames of reference?)")
    return UnitPlan("base", "PTV", (dose / median).astype(np.float32), "tps", [{"tps_ptv_median_gy": median}], None, time.perf_counter() - start)
