"""Planning to a prescription map: beamlet fluence by non-negative least squares to a voxel map.

The painted component P of a strategy is a unit plan like the boost plans of
``isotox.planning.unit_plans``, except that its target rows ask for the map's shape phi(v) (in
[0, 1], the fraction of the painted range) instead of a uniform 1:

    min_w  sum_t (A_t w - phi_t)^2 + c_s^2 sum_s (A_s w)^2 + c_o^2 sum_o (A_o w)^2 + n_t |R w|^2,  w >= 0

over GTV voxels t, PTV voxels outside the GTV s ("spill": the escalation stays in the tumour),
organ-at-risk voxels o and the fluence-smoothness rows R of the base plan's optimiser. The plan
delivered is base x D_low + P x (D_high - D_low): P rides on the base PTV plan, and the isotoxic
search scales the painted range (D_high - D_low) as it scales a boost increment.

Why a module of its own: the base optimiser (``dose.weights``) drives every target row to 1; a
map needs a different right-hand side. The beamlet matrices are computed once per patient
(``MapPlanner``) and shared by every strategy: they depend on the apertures, not on the map.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.linalg import solve_triangular
from scipy.optimize import nnls

from isotox.dicomio.volume import to_image
from isotox.dose.beam_model import BeamModel
from isotox.dose.beams import Aperture, BeamGeometry
from isotox.dose import photon_engine
from isotox.dose.photon_engine import DensityVolume, beamlet_doses_at
from isotox.images import array, resample_to
from isotox.planning.unit_plans import PlanningContext, beam_geometry, mask_on_grid, organ_row_mask, smoothing_rows, voxel_centres, with_fluence

log = logging.getLogger(__name__)
#: organ-at-risk rows of the map problem (seeded subset): the beamlet matrix at them is most of the setup time
MAX_ORGAN_ROWS = 6000


@dataclass
class PaintedPlan:
    """A painted component on the dose grid: Gy per Gy of painted range (phi = 1 -> ~1 Gy)."""

    name: str
    dose: NDArray[np.float32]
    fit_rms: float  # rms of (P - phi) over the GTV rows, delivered dose (fraction of the painted range)
    scale: float  # least-squares factor from the optimiser's matrix dose to the delivered dose
    seconds: float
    apertures: list[Aperture] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"fit_rms": round(self.fit_rms, 4), "scale": round(self.scale, 4)}


def beam_doses_for_fluences(model: BeamModel, density: DensityVolume, beam: BeamGeometry, aperture: Aperture,
                            points_mm: NDArray[np.float64], fluences: list[NDArray[np.float32]], step_mm: float) -> list[NDArray[np.float32]]:
    """One beam's dose at ``points_mm`` for several fluence maps on the same aperture, tracing the
    density once. Why: the ray trace is fluence independent and 3/4 of a beam's cost, and every
    painted strategy shares the GTV apertures. Same steps as ``photon_engine.beam_dose_at``
    (its fan trace and fan dose, called once per trace instead of once per fluence);
    ``tests/test_painting.py`` checks the two agree."""
    fan = photon_engine.trace_fan(model, density, beam, aperture, points_mm, step_mm)
    if fan is None:
        return [np.zeros(len(points_mm), np.float32) for _ in fluences]
    return [ndimage.map_coordinates(photon_engine.fan_dose(model, fan, np.where(aperture.mask, f, 0.0).astype(np.float32), aperture.pixel_mm),
                                    fan.point_coords, order=1, mode="constant", cval=0.0).astype(np.float32) for f in fluences]


def shape_on_dose_grid(context: PlanningContext, shape_ct: NDArray[np.float64]) -> NDArray[np.float64]:
    """A CT-grid shape resampled (trilinear) onto the dose grid."""
    reference = to_image(context.dose_grid, np.zeros(context.dose_grid.shape, np.float32))
    return array(resample_to(to_image(context.ct_grid, shape_ct.astype(np.float32)), reference)).astype(float)


@dataclass
class MapPlanner:
    """The beamlet matrices of one patient's GTV apertures, and the rows of the map problem."""

    context: PlanningContext
    geometry: list[tuple[BeamGeometry, Aperture]]
    labels: list[NDArray[np.int32]]
    offsets: list[int]
    target_rows: NDArray[np.bool_]  # GTV on the dose grid
    dose_voxels: NDArray[np.bool_]  # where the delivered painted dose is computed (dose grid)
    cholesky: NDArray[np.float64]  # upper R with R^T R = A^T A (+ ridge): the map problem's matrix, map independent
    target_matrix: NDArray[np.float64]
    setup_seconds: float

    @classmethod
    def build(cls, context: PlanningContext, gtv: NDArray[np.bool_], ptv: NDArray[np.bool_], beamlet_mm: float,
              organ_weight: float, spill_weight: float, evaluated: list[NDArray[np.bool_]] | None = None) -> "MapPlanner":
        """Apertures conformal to the GTV (``gtv``, ``ptv``: CT-grid masks), beamlet doses at the rows.

        ``evaluated``: CT-grid masks of the structures whose DVHs will be read (organs, targets).
        The delivered painted dose is computed only on them (plus one voxel for the trilinear
        sampling), 0 elsewhere: the fan dose on the whole body costs ~3x more and nothing reads it."""
        start = time.perf_counter()
        s = context.settings
        target_rows = mask_on_grid(gtv, context.ct_grid, context.dose_grid) & context.calc_mask
        if not target_rows.any():
            raise ValueError("the GTV has no voxel inside the body on the dose grid")
        spill_rows = mask_on_grid(ptv, context.ct_grid, context.dose_grid) & context.calc_mask & ~target_rows
        organ_rows = organ_row_mask(context) & ~target_rows & ~spill_rows
        organ_idx = np.flatnonzero(organ_rows)
        if organ_idx.size > MAX_ORGAN_ROWS:  # a GTV-sized field reaches few organ voxels: fewer rows steer it as well
            organ_rows = np.zeros_like(organ_rows)
            organ_rows.flat[np.sort(np.random.default_rng(1).choice(organ_idx, MAX_ORGAN_ROWS, replace=False))] = True
        geometry = beam_geometry(context, gtv)
        dose_voxels = context.calc_mask.copy()
        if evaluated:
            union = np.zeros(context.ct_grid.shape, bool)
            for m in evaluated:
                union |= m
            dose_voxels = ndimage.binary_dilation(mask_on_grid(union, context.ct_grid, context.dose_grid), iterations=1) & context.calc_mask
        rows = [target_rows, spill_rows, organ_rows]
        row_points = np.vstack([voxel_centres(r, context.dose_grid) for r in rows])
        matrices, labels, offsets = [], [], []
        for beam, aperture in geometry:
            matrix, lab = beamlet_doses_at(context.model, context.density, beam, aperture, row_points, beamlet_mm, s.ray_step_mm)
            offsets.append(sum(m.shape[1] for m in matrices))
            matrices.append(matrix)
            labels.append(lab)
        full = np.hstack(matrices).astype(float)
        n_t, n_s = int(target_rows.sum()), int(spill_rows.sum())
        target, spill, organs = full[:n_t], full[n_t:n_t + n_s], full[n_t + n_s:]
        typical = float(target.sum(axis=1).mean()) / len(geometry)
        regulariser = smoothing_rows(labels, offsets, full.shape[1], s.fluence_smoothing * typical)
        spill_scale = spill_weight * np.sqrt(n_t / max(n_s, 1))
        organ_scale = organ_weight * np.sqrt(n_t / max(len(organs), 1))
        gram = target.T @ target + spill_scale**2 * (spill.T @ spill) + organ_scale**2 * (organs.T @ organs) + n_t * (regulariser.T @ regulariser)
        # factored once for every strategy (only the right-hand side A^T phi changes); the ridge as in dose.weights
        ridge = 1e-10 * float(np.trace(gram)) / len(gram)
        r = np.linalg.cholesky(gram + ridge * np.eye(len(gram))).T
        return cls(context, geometry, labels, offsets, target_rows, dose_voxels, r, target, time.perf_counter() - start)

    def _weights(self, phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """argmin_{w >= 0} of the map problem: NNLS on the square system R w ~ R^-T A^T phi
        (the same minimiser as the tall one, as in ``dose.weights``)."""
        a = self.target_matrix
        weights, _ = nnls(self.cholesky, solve_triangular(self.cholesky, a.T @ phi, trans="T"), maxiter=50 * a.shape[1])
        return weights

    def plan(self, name: str, shape_dose_grid: NDArray[np.float64]) -> PaintedPlan:
        """The painted component for one shape on the dose grid (phi at the GTV rows)."""
        return self.plans({name: shape_dose_grid})[name]

    def plans(self, shapes: dict[str, NDArray[np.float64]]) -> dict[str, PaintedPlan]:
        """The painted components of several strategies; each beam's density is traced once for all."""
        start = time.perf_counter()
        c, s = self.context, self.context.settings
        phis = {n: sh[self.target_rows] for n, sh in shapes.items()}
        active = [n for n, phi in phis.items() if np.any(phi > 0)]  # nothing to paint (no hypoxic voxel): a zero component
        fluences: dict[str, list[NDArray[np.float32]]] = {n: [] for n in active}
        for n in active:
            raw = self._weights(phis[n])
            fluences[n] = [np.where(lab >= 0, raw[off + np.maximum(lab, 0)], 0.0).astype(np.float32) for lab, off in zip(self.labels, self.offsets)]
        doses = {n: np.zeros(c.dose_grid.shape, np.float32) for n in active}
        points = c.dose_grid.index_to_physical(np.argwhere(self.dose_voxels)[:, ::-1].astype(float))
        for b, (beam, aperture) in enumerate(self.geometry):
            if not active:
                break
            for n, values in zip(active, beam_doses_for_fluences(c.model, c.density, beam, aperture, points, [fluences[n][b] for n in active], s.ray_step_mm)):
                doses[n][self.dose_voxels] += values
        out = {}
        for n in shapes:
            if n not in doses:
                out[n] = PaintedPlan(n, np.zeros(c.dose_grid.shape, np.float32), 0.0, 0.0, 0.0)
                continue
            delivered, phi = doses[n][self.target_rows].astype(float), phis[n]
            # the fan dose differs from the matrix by ~1-2 % at field edges: rescale to the map in least squares
            scale = float(delivered @ phi / (delivered @ delivered)) if np.any(delivered > 0) else 0.0
            fit = float(np.sqrt(np.mean((scale * delivered - phi) ** 2)))
            apertures = [with_fluence(a, f * scale) for (_, a), f in zip(self.geometry, fluences[n])]
            out[n] = PaintedPlan(n, (doses[n] * scale).astype(np.float32), fit, scale, time.perf_counter() - start, apertures)
            log.info("%s: painted component fitted (rms %.3f of the painted range)", n, fit)
        log.info("%d painted components in %.1f s", len(active), time.perf_counter() - start)
        return out
