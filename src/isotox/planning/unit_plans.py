"""Unit plans: dose distributions normalised to 1 Gy (median) on their target, ready to be scaled.

A base plan covers the PTV; a boost plan covers a boost PTV (arm A: GTV + margin, arm B: the
50 % SUVmax volume + margin). The search combines them voxel by voxel (total x base +
increment x boost), so every plan here is linear in its prescription by construction.
Sources: the clinic's RTDOSE (a TPS plan, renormalised to its PTV median) or the built-in engine
(coplanar conformal beams, beam or beamlet weights by NNLS; ``isotox.dose.photon_engine``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from isotox.dose.beam_model import BeamModel
from isotox.dose.beams import Aperture, BeamGeometry, conformal_aperture
from isotox.dose.density import relative_electron_density
from isotox.dose.photon_engine import DensityVolume, beam_dose_on_grid, beamlet_doses_at, trace_fan
from isotox.dose.weights import WeightResult, normalise, optimise_weights, solve_weights
from isotox.geometry import ImageGrid
from isotox.dicomio.volume import to_image
from isotox.images import array, resample_to
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
    apertures: list[Aperture] = field(default_factory=list)  # engine: each beam's field and fluence map
    geometry: list[BeamGeometry] = field(default_factory=list)  # engine: each beam's gantry angle, isocentre, SAD

    def fluence_arrays(self) -> dict[str, NDArray[Any]]:
        """Each beam's fluence map on its aperture pixels ([X, Z] on the isocentre plane, IEC 61217
        beam-limiting-device axes) with the pixel grid, for ``dose/{name}_fluence.npz``."""
        if not self.apertures:
            return {}
        out: dict[str, NDArray[Any]] = {
            "gantry_deg": np.array([g.gantry_deg for g in self.geometry]), "isocentre_mm": np.array([g.isocentre_mm for g in self.geometry]),
            "sad_mm": np.array([g.sad_mm for g in self.geometry]), "pixel_mm": np.array([a.pixel_mm for a in self.apertures]),
            "x0_mm": np.array([a.x0_mm for a in self.apertures]), "z0_mm": np.array([a.z0_mm for a in self.apertures])}
        for index, aperture in enumerate(self.apertures):
            out[f"open_{index}"] = aperture.mask
            out[f"fluence_{index}"] = aperture.fluence_map()
        return out

    def summary(self) -> dict[str, Any]:
        # no "seconds": plan.json must be identical on a rerun; the plan's log records each unit plan's time
        out: dict[str, Any] = {"target": self.target, "source": self.source, "beams": self.beams}
        if self.weights is not None:
            out["optimisation"] = self.weights.as_dict()
        return out


def load_fluence(path: Path) -> list[tuple[BeamGeometry, Aperture]]:
    """The beams of a ``dose/{plan}_fluence.npz``: summing ``beam_dose_on_grid`` over them on the
    patient's density reproduces the unit plan (the file is the plan, not a picture of it)."""
    with np.load(path) as data:
        return [(BeamGeometry(float(data["gantry_deg"][b]), tuple(float(v) for v in data["isocentre_mm"][b]), float(data["sad_mm"][b])),  # type: ignore[arg-type]
                 Aperture(float(data["x0_mm"][b]), float(data["z0_mm"][b]), float(data["pixel_mm"][b]), data[f"open_{b}"], data[f"fluence_{b}"]))
                for b in range(len(data["gantry_deg"]))]


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
    reference = to_image(grid, np.zeros(grid.shape, np.uint8))
    return array(resample_to(to_image(mask_grid, mask.astype(np.uint8)), reference, interpolator=sitk.sitkNearestNeighbor)) > 0


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

    @cached_property
    def calc_points(self) -> NDArray[np.float64]:
        """Centres of the calc_mask voxels (LPS), once for every beam of every unit plan."""
        return voxel_centres(self.calc_mask, self.dose_grid)

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


def voxel_centres(mask: NDArray[np.bool_], grid: ImageGrid) -> NDArray[np.float64]:
    """LPS centres (N, 3) of the voxels of ``mask`` on ``grid``, in C order (the order of
    ``dose[mask]``): the points at which the engine evaluates a plan's rows, shared with the
    painted plans (``isotox.painting.optimise``) so both read the same voxels."""
    return grid.index_to_physical(np.argwhere(mask)[:, ::-1].astype(float))


def organ_row_mask(context: PlanningContext) -> NDArray[np.bool_]:
    """Organ voxels used as NNLS rows: all of them, or a seeded random subset of MAX_ORGAN_ROWS.
    Public because the painted plans start from the same rows (then subsample them), so a painted
    component and the unit plans it rides on weigh the same organ voxels."""
    organ_idx = np.flatnonzero(context.organ_rows)
    if organ_idx.size > MAX_ORGAN_ROWS:
        organ_idx = np.sort(np.random.default_rng(0).choice(organ_idx, MAX_ORGAN_ROWS, replace=False))
    rows = np.zeros(context.dose_grid.shape, bool)
    rows.flat[organ_idx] = True
    return rows


def _neighbour_pairs(labels: NDArray[np.int32]) -> NDArray[np.intp]:
    """Pairs of beamlet labels that touch along X or Z on the aperture (each pair once)."""
    pairs = [np.c_[a[(a >= 0) & (b >= 0) & (a != b)], b[(a >= 0) & (b >= 0) & (a != b)]]
             for a, b in ((labels[:-1, :], labels[1:, :]), (labels[:, :-1], labels[:, 1:]))]
    both = np.sort(np.vstack(pairs), axis=1)
    return np.unique(both, axis=0) if both.size else np.zeros((0, 2), np.intp)


def smoothing_rows(labels: list[NDArray[np.int32]], offsets: list[int], n_weights: int, strength: float) -> NDArray[np.float64]:
    """Rows strength x (w_a - w_b) for neighbouring beamlets of the same beam: the fluence-smoothness
    penalty of a beamlet plan (``labels``: each beam's beamlet labels, ``offsets``: its first weight).
    Public so the painted plans penalise their fluence maps exactly as the unit plans do."""
    pairs = np.vstack([_neighbour_pairs(lab) + off for lab, off in zip(labels, offsets)])
    rows = np.zeros((len(pairs), n_weights))
    rows[np.arange(len(pairs)), pairs[:, 0]] = strength
    rows[np.arange(len(pairs)), pairs[:, 1]] = -strength
    return rows


def _beam_weight_plan(context: PlanningContext, geometry: list[tuple[BeamGeometry, Aperture]], target_rows: NDArray[np.bool_],
                      organ_rows: NDArray[np.bool_]) -> tuple[NDArray[np.float32], WeightResult, list[NDArray[np.float32]], list[Aperture]]:
    """One weight per open field: every beam on the whole grid, NNLS on its voxels (3-D CRT)."""
    s = context.settings
    stack = np.stack([beam_dose_on_grid(context.model, context.density, beam, aperture, context.dose_grid, context.calc_mask,
                                        s.ray_step_mm, context.calc_points) for beam, aperture in geometry])
    result = optimise_weights(stack[:, target_rows].T.astype(float), stack[:, organ_rows].T.astype(float), s.organ_weight)
    per_beam = [(w * d).astype(np.float32) for w, d in zip(result.weights, stack)]
    weighted = [with_fluence(a, float(w) * a.mask) for (_, a), w in zip(geometry, result.weights)]
    return np.sum(per_beam, axis=0).astype(np.float32), result, per_beam, weighted


def with_fluence(aperture: Aperture, fluence: NDArray[Any]) -> Aperture:
    """The same field (mask, pixel grid) carrying ``fluence`` as its fluence map (float32): how an
    optimised or rescaled fluence becomes a deliverable ``Aperture``, for unit and painted plans."""
    return Aperture(aperture.x0_mm, aperture.z0_mm, aperture.pixel_mm, aperture.mask, np.asarray(fluence, dtype=np.float32))


def _beamlet_plan(context: PlanningContext, geometry: list[tuple[BeamGeometry, Aperture]], target_rows: NDArray[np.bool_],
                  organ_rows: NDArray[np.bool_]) -> tuple[NDArray[np.float32], WeightResult, list[NDArray[np.float32]], list[Aperture]]:
    """A fluence map per beam: beamlet doses at the row voxels only, NNLS with a smoothness penalty,
    then each beam's dose on the whole grid from its optimised fluence map (one pass per beam)."""
    s = context.settings
    points = np.vstack([voxel_centres(target_rows, context.dose_grid), voxel_centres(organ_rows, context.dose_grid)])
    n_t = int(target_rows.sum())
    matrices, labels, offsets, fans = [], [], [], []
    for beam, aperture in geometry:
        # one trace per beam, on the whole grid: the rows are grid voxels, and the final dose reuses it
        fans.append(trace_fan(context.model, context.density, beam, aperture, context.calc_points, s.ray_step_mm))
        matrix, lab = beamlet_doses_at(context.model, context.density, beam, aperture, points, s.beamlet_mm, s.ray_step_mm, fan=fans[-1])
        offsets.append(sum(m.shape[1] for m in matrices))
        matrices.append(matrix)
        labels.append(lab)
    full = np.hstack(matrices, dtype=float)
    target, organs = full[:n_t], full[n_t:]
    # a weight difference dw changes the dose by about dw x (one beam's mean target dose at weight 1)
    typical = float(target.sum(axis=1).mean()) / len(geometry)
    regulariser = smoothing_rows(labels, offsets, full.shape[1], s.fluence_smoothing * typical)
    raw, used = solve_weights(target, organs, s.organ_weight, regulariser=regulariser)
    apertures, per_beam = [], []
    for (beam, aperture), lab, off, fan in zip(geometry, labels, offsets, fans):
        modulated = with_fluence(aperture, np.where(lab >= 0, raw[off + np.maximum(lab, 0)], 0.0))
        apertures.append(modulated)
        per_beam.append(beam_dose_on_grid(context.model, context.density, beam, modulated, context.dose_grid, context.calc_mask, s.ray_step_mm,
                                          context.calc_points, fan))
    dose = np.sum(per_beam, axis=0)
    result = normalise(raw, dose[target_rows].astype(float), used)
    # the fluence maps are stored at the plan's normalisation, so they reproduce the unit dose
    apertures = [with_fluence(a, a.fluence_map() * result.scale) for a in apertures]
    return (dose * result.scale).astype(np.float32), result, [(d * result.scale).astype(np.float32) for d in per_beam], apertures


def beam_geometry(context: PlanningContext, target: NDArray[np.bool_]) -> list[tuple[BeamGeometry, Aperture]]:
    """The protocol's beams (isocentre at the target's centroid) with their conformal apertures:
    shared by the unit plans and the painted plans, so both see the same fields."""
    s = context.settings
    kji = np.argwhere(target)[:, ::-1].astype(float)
    isocentre = tuple(float(v) for v in context.ct_grid.index_to_physical(kji.mean(axis=0)[None])[0])
    points = _target_points(target, context.ct_grid)
    pad = 4.0 * context.model.data.tail_sigma_mm
    geometry = []
    for angle in s.angles():
        beam = BeamGeometry(angle, isocentre, context.model.data.source_axis_distance_mm)  # type: ignore[arg-type]
        geometry.append((beam, conformal_aperture(beam, points, s.aperture_margin_mm, s.fan_pixel_mm, pad)))
    return geometry


def engine_plan(context: PlanningContext, name: str, target_name: str, target: NDArray[np.bool_]) -> UnitPlan:
    """Conformal coplanar beams on ``target`` (CT grid), NNLS beam or beamlet weights, normalised to its median."""
    start = time.perf_counter()
    s = context.settings
    target_rows = mask_on_grid(target, context.ct_grid, context.dose_grid) & context.calc_mask
    if not target_rows.any():
        raise ValueError(f"target {target_name} has no voxel inside the body on the dose grid")
    geometry = beam_geometry(context, target)
    organ_rows = organ_row_mask(context)
    # one BLAS thread: the solver factorises a few hundred columns twenty times, where OpenBLAS's
    # threads cost more than they save (on a loaded machine they spin: 4-20x the CPU time of a
    # single-threaded Cholesky; measured in benchmarks/plan_patient.py), and the stage has one core
    with threadpool_limits(limits=1, user_api="blas"):
        if s.weights == "beam":
            dose, result, per_beam, apertures = _beam_weight_plan(context, geometry, target_rows, organ_rows)
        else:
            dose, result, per_beam, apertures = _beamlet_plan(context, geometry, target_rows, organ_rows)
    target_mean = float(dose[target_rows].mean())
    beams = []
    for (beam, open_field), aperture, beam_dose in zip(geometry, apertures, per_beam):
        entry: dict[str, Any] = {"gantry_deg": beam.gantry_deg, "isocentre_mm": [round(v, 2) for v in beam.isocentre_mm], "sad_mm": beam.sad_mm,
                                 "field_area_cm2": round(open_field.area_cm2, 2), "equivalent_square_cm": round(open_field.equivalent_square_cm, 2),
                                 # the beam's share of the target's mean dose (weights of different kinds compare this way)
                                 "relative_weight": round(float(beam_dose[target_rows].mean()) / target_mean, 4) if target_mean > 0 else 0.0}
        if aperture.fluence is not None:
            open_fluence = aperture.fluence[aperture.mask]
            entry["fluence_max_over_mean"] = round(float(open_fluence.max() / open_fluence.mean()), 3) if open_fluence.mean() > 0 else None
            entry["beamlets_off_percent"] = round(100.0 * float((open_fluence <= 1e-6 * max(open_fluence.max(), 1e-12)).mean()), 1)
        beams.append(entry)
    return UnitPlan(name, target_name, dose, "engine", beams, result, time.perf_counter() - start, apertures, [g for g, _ in geometry])


def tps_base_plan(dose_image: sitk.Image, ptv: NDArray[np.bool_], ct_grid: ImageGrid, dose_grid: ImageGrid) -> UnitPlan:
    """The clinic's RTDOSE resampled (trilinear) onto the dose grid and divided by its PTV median."""
    start = time.perf_counter()
    reference = to_image(dose_grid, np.zeros(dose_grid.shape, np.float32))
    dose = array(resample_to(sitk.Cast(dose_image, sitk.sitkFloat32), reference))
    in_ptv = mask_on_grid(ptv, ct_grid, dose_grid)
    median = float(np.median(dose[in_ptv])) if in_ptv.any() else 0.0
    if median <= 0:
        raise ValueError("the TPS dose is zero in the PTV (dose and structures on different frames of reference?)")
    return UnitPlan("base", "PTV", (dose / median).astype(np.float32), "tps", [{"tps_ptv_median_gy": median}], None, time.perf_counter() - start)
