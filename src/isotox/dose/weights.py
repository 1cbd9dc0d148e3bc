"""Beam or beamlet weights by non-negative least squares, and the normalisation of a plan to its target.

Weights minimise  sum_t c_t (D_t - 1)^2 + sum_o c_o D_o^2 + |R w|^2  over target voxels t,
organ-at-risk voxels o outside the target and optional regulariser rows R (fluence smoothness
between neighbouring beamlets), with w >= 0 (scipy's Lawson-Hanson NNLS). Target rows are then
re-weighted where the dose falls below 95 % or above 107 % of the prescription and the problem is
solved again (a few passes), which pulls the distribution into the ICRU 50/62 window
(D95 >= 95 %, Dmax <= 107 %) as far as the beam directions and the degrees of freedom allow. The
result is normalised so the target's median dose is the prescription (ICRU 83 reporting), and
raised if D95 is then below 95 %.

The rows outnumber the weights by 100-1000x, so each pass solves the equivalent square problem
min |R w - R^-T A^T b| with A^T A = R^T R (same minimiser, a few hundred rows instead of tens of
thousands); the organ and regulariser part of A^T A is formed once, only the target rows change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import solve_triangular
from scipy.optimize import nnls

FloatArray = NDArray[np.float64]

COVERAGE_D95 = 0.95
HOTSPOT_DMAX = 1.07
#: the solver aims 1 % inside the window: beamlet matrices and the final fan dose differ by up to
#: ~1-2 % at field edges (tests/test_photon_engine.py), so aiming at the limits themselves lets the
#: delivered dose miss them by a fraction of a percent
SOLVER_MARGIN = 0.01


@dataclass
class WeightResult:
    weights: FloatArray  # per beam or beamlet, relative (the plan dose is sum_b w_b D_b)
    d95: float  # of the target, relative to the prescription, after normalisation
    d50: float
    d2: float
    dmax: float
    passes: int
    notes: list[str] = field(default_factory=list)
    scale: float = 1.0  # normalisation factor applied to the solver's weights

    @property
    def meets_coverage(self) -> bool:
        return self.d95 >= COVERAGE_D95 - 1e-6

    @property
    def meets_hotspot(self) -> bool:
        return self.dmax <= HOTSPOT_DMAX + 1e-6

    def as_dict(self) -> dict[str, object]:
        listed: dict[str, object] = {"weights": [float(w) for w in self.weights]} if self.weights.size <= 50 else {"n_weights": int(self.weights.size)}
        return {**listed, "target_d95_percent": 100 * self.d95, "target_d50_percent": 100 * self.d50,
                "target_d2_percent": 100 * self.d2, "target_dmax_percent": 100 * self.dmax, "meets_d95_95": self.meets_coverage,
                "meets_dmax_107": self.meets_hotspot, "passes": self.passes, "notes": self.notes}


def _percentile_dose(dose: FloatArray, volume_percent: float) -> float:
    """D_x: minimum dose of the hottest x % (equal-volume samples)."""
    return float(np.percentile(dose, 100.0 - volume_percent)) if dose.size else float("nan")


def _nnls_from_normal_equations(gram: FloatArray, rhs: FloatArray, maxiter: int, zero_guess: NDArray[np.bool_] | None = None) -> FloatArray:
    """argmin_{w >= 0} |A w - b| given A^T A and A^T b: NNLS on the square system R w ~ R^-T A^T b
    with A^T A = R^T R (Cholesky), which has the same minimiser as the tall one.

    ``zero_guess``: the weights expected at 0 (the previous pass's): the active-set iteration starts
    there (``_warm_nnls``) instead of from all-zero, else (or if it fails) scipy's Lawson-Hanson."""
    ridge = 1e-10 * float(np.trace(gram)) / len(gram)  # columns that reach no row (a beamlet outside every row) stay solvable
    r = np.linalg.cholesky(gram + ridge * np.eye(len(gram))).T
    c = solve_triangular(r, rhs, trans="T")
    if zero_guess is not None:
        weights = _warm_nnls(r, c, zero_guess, maxiter)
        if weights is not None:
            return weights
    weights, _ = nnls(r, c, maxiter=maxiter)
    return weights


def _warm_nnls(r: FloatArray, c: FloatArray, zero_guess: NDArray[np.bool_], maxiter: int) -> FloatArray | None:
    """argmin_{w >= 0} |R w - c| for an upper-triangular (invertible) R by Lawson and Hanson's
    active-set method, started from a guessed zero set; None if it has not converged in ``maxiter`` steps.

    Why: scipy's NNLS starts with every weight at 0 and frees one per step: ~n steps of O(n^2) for a
    plan whose weights are nearly all positive. The re-weighting passes of ``solve_weights`` move
    only a few weights across 0, so starting from the previous pass's zero set takes a few steps.
    The minimiser is unique (R is invertible: the problem is strictly convex), so this returns
    scipy's solution to rounding. A step solves the least-squares problem with the zero set Z held
    at 0 through the full factor: w = R^-1 (c - Y l), Y = R^-T E_Z, l = argmin |Y l - c|."""
    n = len(c)
    zero = np.asarray(zero_guess, bool).copy()
    columns: dict[int, FloatArray] = {}

    def solve(z: NDArray[np.bool_]) -> FloatArray:
        index = np.flatnonzero(z)
        missing = [j for j in index if j not in columns]
        if missing:
            unit = np.zeros((n, len(missing)))
            unit[missing, np.arange(len(missing))] = 1.0
            for j, column in zip(missing, solve_triangular(r, unit, trans="T").T):
                columns[j] = column
        if index.size:
            y = np.stack([columns[j] for j in index], axis=1)
            w = solve_triangular(r, c - y @ np.linalg.lstsq(y, c, rcond=None)[0])
        else:
            w = solve_triangular(r, c)
        w[index] = 0.0
        return w

    x = solve(zero)
    for _ in range(n):  # a feasible start: drop the guessed-positive weights that come out negative
        negative = ~zero & (x < 0.0)
        if not negative.any():
            break
        zero |= negative
        x = solve(zero)
    scale = float(np.abs(r.T @ c).max()) or 1.0
    tolerance = 10.0 * n * np.finfo(float).eps * scale
    steps = 0
    while steps < maxiter:
        gradient = r.T @ (c - r @ x)  # minus the gradient of |R w - c|^2 / 2
        candidates = zero & (gradient > tolerance)
        if not candidates.any():
            return np.maximum(x, 0.0)
        zero[int(np.argmax(np.where(candidates, gradient, -np.inf)))] = False
        while True:
            steps += 1
            if steps > maxiter:
                return None
            w = solve(zero)
            bad = ~zero & (w <= 0.0)
            if not bad.any():
                x = w
                break
            alpha = float(np.min(x[bad] / (x[bad] - w[bad])))
            x = x + alpha * (w - x)
            leaving = ~zero & (x <= 0.0)
            leaving[np.flatnonzero(bad)[np.argmin(x[bad] / (x[bad] - w[bad]))]] = True  # at least the blocking one
            zero |= leaving
            x[zero] = 0.0
    return None


def solve_weights(target: FloatArray, organs: FloatArray | None = None, organ_weight: float = 0.3, passes: int = 20,
                  regulariser: FloatArray | None = None) -> tuple[FloatArray, int]:
    """Raw (unnormalised) weights and the pass they come from (the one with the lowest normalised hot spot).

    ``target``: (n_target_samples, n_weights) unit-weight doses; ``organs``: (n_organ_samples,
    n_weights); ``regulariser``: (n_rows, n_weights) rows whose product with w is driven to 0,
    scaled by the caller relative to a target row."""
    n_t, n_b = target.shape
    if n_t == 0:
        raise ValueError("the target has no voxels in the dose grid")
    organs = np.zeros((0, n_b)) if organs is None else organs
    regulariser = np.zeros((0, n_b)) if regulariser is None else regulariser
    organ_scale = organ_weight * np.sqrt(n_t / max(len(organs), 1))
    fixed = organ_scale**2 * (organs.T @ organs) + n_t * (regulariser.T @ regulariser)  # rows whose weight never changes
    row_weight = np.ones(n_t)
    best, best_hotspot, best_pass = np.ones(n_b), np.inf, 0
    # A^T diag(q) A and A^T q with q = row_weight^2 (the weighted rows' normal equations), updated
    # only by the rows whose weight changed: a pass re-weights the cold and hot rows, often a small
    # share, and forming the full product each pass (n_t x n_b^2) was the solver's largest cost
    gram, rhs = target.T @ target, target.sum(axis=0)
    zero_guess = None
    for used in range(1, passes + 1):
        weights = _nnls_from_normal_equations(gram + fixed, rhs, maxiter=50 * n_b, zero_guess=zero_guess)
        zero_guess = weights <= 0.0  # the next pass starts from this pass's zero set
        dose = target @ weights
        if not np.any(dose > 0):
            break
        # keep the pass whose hot spot is lowest once normalised (D95 >= 95 % is restored by normalise)
        hotspot = normalise(weights, dose).dmax
        if hotspot < best_hotspot - 1e-9:
            best, best_hotspot, best_pass = weights, hotspot, used
        dose = dose / np.median(dose)
        cold, hot = dose < COVERAGE_D95 + SOLVER_MARGIN, dose > HOTSPOT_DMAX - SOLVER_MARGIN
        if not cold.any() and not hot.any():
            break
        changed = np.flatnonzero(cold | hot)
        increase = row_weight[changed] ** 2 * (1.5**2 - 1.0)
        row_weight[changed] *= 1.5
        rows = target[changed]
        gram += rows.T @ (rows * increase[:, None])
        rhs += rows.T @ increase
    return best, best_pass


def normalise(weights: FloatArray, target_dose: FloatArray, passes: int = 0) -> WeightResult:
    """Scale ``weights`` so the target's median dose is 1, or its D95 0.95 if that is higher.

    ``target_dose`` is the dose of the unscaled weights at the target samples: the dose that will
    be delivered (for beamlets, the final fluence-map dose, not the optimiser's matrix)."""
    if not np.any(target_dose > 0):
        raise ValueError("no beam reaches the target (check the isocentre and the target mask)")
    notes: list[str] = []
    scale = 1.0 / float(np.median(target_dose))
    if _percentile_dose(target_dose * scale, 95.0) < COVERAGE_D95:
        notes.append("normalised to D95 = 95 % (the median normalisation left the target under-covered)")
        scale = COVERAGE_D95 / _percentile_dose(target_dose, 95.0)
    final = target_dose * scale
    return WeightResult(weights * scale, _percentile_dose(final, 95.0), float(np.median(final)), _percentile_dose(final, 2.0),
                        float(final.max()), passes, notes, scale)


def optimise_weights(target: FloatArray, organs: FloatArray | None = None, organ_weight: float = 0.3, passes: int = 20,
                     regulariser: FloatArray | None = None) -> WeightResult:
    """Solve and normalise on the same rows (exact when ``target`` is the delivered dose)."""
    weights, used = solve_weights(target, organs, organ_weight, passes, regulariser)
    return normalise(weights, target @ weights, used)
