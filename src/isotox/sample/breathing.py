"""Breathing state of one imaging session: a smooth non-rigid displacement of the thorax content.

Every session is scanned free-breathing at its own breathing state, so relative to the planning
CT the diaphragm, lungs, heart and tumour are displaced (mostly cranio-caudal, a few mm
antero-posterior), while the bones (spine, ribs) and the body outline move only with the
patient's rigid pose on the table.

Model, in planning-CT coordinates (LPS mm): the content at planning point ``p`` lies, before the
session's rigid pose, at ``q`` with ``q - d(q) = p`` and

    d(q) = shift * w(q),   w = g_wall(q) * g_spine(q) * g_apex(q)  in [0, 1],

* ``g_wall``: 0 outside the ribs' inner surface (the ellipse ``rib_a`` x ``rib_b``), rising smoothly
  (smootherstep) to 1 at ``wall_band_mm`` inside it; the chest wall, ribs and skin stay put;
* ``g_spine``: 0 within ``spine_clear_mm`` of the vertebral body and the posterior elements, 1 at
  ``spine_clear_mm + spine_band_mm``;
* ``g_apex``: 1 up to ``apex_z0_mm`` (everything a tumour can occupy), falling smoothly to
  ``apex_floor`` at ``apex_z1_mm`` (the lung apex breathes less than its base).

A scanner therefore shows, at a session point ``q`` (pose removed), the planning anatomy at the
pulled-back point ``q - d(q)`` (:meth:`Breathing.pull_back`, one evaluation per point); a planning
point goes to the session by solving ``q - d(q) = p`` (:meth:`Breathing.push`, Newton). The
Jacobian determinant of the pull-back is ``1 - shift . grad w`` (> 0: no folding): cranio-caudal
shifts barely change volumes (w hardly varies along z where the tumour is), the AP part compresses
or expands lung next to the chest wall by up to ~30 %, as breathing does; the cranio-caudal shift
shears the lung along the chest wall (pleural sliding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from isotox.sample import levelsets as ls

Points = NDArray[np.float64]


def _smootherstep(t: NDArray[np.float64]) -> NDArray[np.float64]:
    """C2 ramp: 0 for t <= 0, 1 for t >= 1, 6t^5 - 15t^4 + 10t^3 between (max slope 1.875)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * t * (t * (6.0 * t - 15.0) + 10.0)


@dataclass(frozen=True)
class Breathing:
    """A session's breathing state relative to the planning CT (all lengths mm, planning axes)."""

    shift_mm: tuple[float, float, float]  # displacement where w = 1 (lung bases, diaphragm dome, heart)
    rib_a: float  # inner surface of the ribs: ellipse semi-axes (x, y) around the body axis
    rib_b: float
    y_vertebra: float
    y_posterior: float
    wall_band_mm: float = 25.0
    spine_clear_mm: float = 6.0
    spine_band_mm: float = 22.0
    apex_z0_mm: float = 90.0
    apex_z1_mm: float = 250.0
    apex_floor: float = 0.5

    @classmethod
    def still(cls, rib_a: float, rib_b: float, y_vertebra: float, y_posterior: float) -> "Breathing":
        return cls((0.0, 0.0, 0.0), rib_a, rib_b, y_vertebra, y_posterior)

    def weight(self, p: Points) -> NDArray[np.float64]:
        """w(p) in [0, 1]: 1 in the mobile thorax content, exactly 0 at and near bone."""
        p = np.asarray(p, dtype=float)
        wall = ls.elliptic_cylinder(p, 0.0, 0.0, self.rib_a, self.rib_b)  # < 0 inside the rib cage (~mm)
        g_wall = _smootherstep(-wall / self.wall_band_mm)
        spine = self._spine(p)
        g_spine = _smootherstep((spine - self.spine_clear_mm) / self.spine_band_mm)
        t = (p[..., 2] - self.apex_z0_mm) / (self.apex_z1_mm - self.apex_z0_mm)
        g_apex = 1.0 - (1.0 - self.apex_floor) * _smootherstep(t)
        return g_wall * g_spine * g_apex

    def _spine(self, p: Points) -> NDArray[np.float64]:
        return ls.union(ls.elliptic_cylinder(p, 0.0, self.y_vertebra, 21.0, 18.0), ls.elliptic_cylinder(p, 0.0, self.y_posterior, 26.0, 11.0))

    def displacement(self, p: Points) -> NDArray[np.float64]:
        """d(p) = shift * w(p), (..., 3)."""
        return self.weight(p)[..., None] * np.asarray(self.shift_mm)

    def pull_back(self, q: Points) -> Points:
        """The planning point whose content a session shows at ``q`` (session point with the pose removed)."""
        q = np.asarray(q, dtype=float)
        if not any(self.shift_mm):
            return q
        return q - self.displacement(q)

    def push(self, p: Points, iterations: int = 30) -> Points:
        """Where planning point ``p`` lies in the session (before the pose): solves ``q - d(q) = p``
        by Newton's method (the Jacobian ``I - shift grad w^T`` inverts by Sherman-Morrison)."""
        p = np.asarray(p, dtype=float)
        if not any(self.shift_mm):
            return p.copy()
        s = np.asarray(self.shift_mm)
        q = p + self.displacement(p)
        for _ in range(iterations):
            r = q - self.displacement(q) - p
            g = self.weight_gradient(q)
            q = q - (r + s * ((g * r).sum(-1) / (1.0 - (g * s).sum(-1)))[..., None])
        return q

    def weight_gradient(self, p: Points, h: float = 1e-3) -> NDArray[np.float64]:
        """grad w (..., 3), central differences."""
        p = np.asarray(p, dtype=float)
        out = np.empty(p.shape)
        for axis in range(3):
            e = np.zeros(3)
            e[axis] = h
            out[..., axis] = (self.weight(p + e) - self.weight(p - e)) / (2 * h)
        return out

    def local_lipschitz(self, q: Points, radius: float) -> NDArray[np.float64]:
        """An upper bound of |d(a) - d(b)| / |a - b| for a, b within ``radius`` mm of each point ``q``.

        w's three factors only change in their ramps (smootherstep, steepest slope 1.875 over its
        band; the wall and spine level sets are 1-Lipschitz, the factors lie in [0, 1]), so a
        ball that misses a ramp adds nothing: outside the rib cage, deep in the thorax content,
        the pull-back is a pure shift. The scanner uses this to bound a voxel's size after the
        pull-back without pulling back every sub-point.
        """
        q = np.asarray(q, dtype=float)
        wall = ls.elliptic_cylinder(q, 0.0, 0.0, self.rib_a, self.rib_b)
        spine = self._spine(q) - self.spine_clear_mm

        def ramp(value: NDArray[np.float64], lo: float, hi: float, slope: float) -> NDArray[np.float64]:
            return np.where((value > lo - radius) & (value < hi + radius), slope, 0.0)

        slope = (ramp(wall, -self.wall_band_mm, 0.0, 1.875 / self.wall_band_mm)
                 + ramp(spine, 0.0, self.spine_band_mm, 1.875 / self.spine_band_mm)
                 + ramp(q[..., 2], self.apex_z0_mm, self.apex_z1_mm, (1.0 - self.apex_floor) * 1.875 / (self.apex_z1_mm - self.apex_z0_mm)))
        return float(np.linalg.norm(self.shift_mm)) * slope

    def jacobian_determinant(self, q: Points) -> NDArray[np.float64]:
        """det of the pull-back q -> q - d(q): 1 - shift . grad w (> 0: the field never folds)."""
        return 1.0 - self.weight_gradient(q) @ np.asarray(self.shift_mm)

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Breathing":
        d = dict(d)
        d["shift_mm"] = tuple(d["shift_mm"])
        return cls(**d)


def draw_breathing(rng: np.random.Generator, rib_a: float, rib_b: float, y_vertebra: float, y_posterior: float,
                   tumour_centre: tuple[float, float, float], tumour_shift_mm: tuple[float, float] = (5.0, 15.0),
                   max_shift_mm: float = 22.0) -> Breathing:
    """A breathing state whose displacement at the tumour centre is 5-15 mm, mostly cranio-caudal.

    Direction: cranio-caudal (either way: the planning CT's state is arbitrary), antero-posterior
    10-30 % of it with the physiological coupling (inspiration: diaphragm down = -z, chest content
    anterior = -y), left-right within 8 %. The shift at full weight is scaled so the tumour moves
    by the drawn amount, capped at ``max_shift_mm`` (a tumour next to the chest wall or the spine
    is tethered and moves less; such a tumour is also deformed: the part near the wall moves less).
    """
    still = Breathing.still(rib_a, rib_b, y_vertebra, y_posterior)
    zeta = float(rng.choice([-1.0, 1.0]))
    direction = np.array([rng.uniform(-0.08, 0.08), zeta * rng.uniform(0.1, 0.3), zeta])
    direction /= np.linalg.norm(direction)
    magnitude = float(rng.uniform(*tumour_shift_mm))
    c = np.asarray(tumour_centre, dtype=float)
    full = min(max_shift_mm, magnitude / max(float(still.weight(c)), 1e-3))
    for _ in range(8):  # the weight is taken where the tumour ends up: rescale until it moves by `magnitude`
        state = Breathing(tuple(float(v) for v in full * direction), rib_a, rib_b, y_vertebra, y_posterior)  # type: ignore[arg-type]
        moved = float(np.linalg.norm(state.push(c) - c))
        if moved <= 0.0 or abs(moved - magnitude) < 1e-9 or full >= max_shift_mm:
            break
        full = min(max_shift_mm, full * magnitude / moved)
    return state
