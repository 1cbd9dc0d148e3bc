"""CT number to relative electron density (RED, water = 1), the quantity radiological depth needs.

The default curve is piecewise linear through the nominal electron densities of the inserts of a
CIRS 062M electron-density phantom (lung inhale/exhale, adipose, water, muscle, liver, trabecular
and dense bone) at CT numbers typical of a 120 kVp scan. CT numbers are scanner- and kVp-specific:
a clinic replaces the table (config ``planning.hu_to_red``) with its own commissioning measurement,
as for any TPS. Outside the body contour the density is set to zero (couch, air, noise).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: (HU, RED) pairs, ascending in HU.
DEFAULT_HU_TO_RED: tuple[tuple[float, float], ...] = (
    (-1000.0, 0.001),  # air
    (-800.0, 0.19),  # lung, inhale
    (-500.0, 0.49),  # lung, exhale
    (-100.0, 0.95),  # adipose
    (0.0, 1.00),  # water
    (40.0, 1.04),  # muscle
    (60.0, 1.05),  # liver
    (240.0, 1.12),  # trabecular bone (200 mg/cc HA)
    (900.0, 1.46),  # dense bone (800 mg/cc HA)
    (1300.0, 1.69),  # dense bone (1250 mg/cc HA)
    (3000.0, 2.60),  # extrapolated (metal is not supported)
)


def validate_curve(pairs: list[list[float]] | tuple[tuple[float, float], ...]) -> NDArray[np.float64]:
    """The curve as an (n, 2) array; HU strictly increasing and RED non-negative and non-decreasing."""
    curve = np.asarray(pairs, dtype=float)
    if curve.ndim != 2 or curve.shape[1] != 2 or curve.shape[0] < 2:
        raise ValueError("hu_to_red must be a list of at least two [HU, RED] pairs")
    if np.any(np.diff(curve[:, 0]) <= 0):
        raise ValueError("hu_to_red: HU values must be strictly increasing")
    if np.any(curve[:, 1] < 0) or np.any(np.diff(curve[:, 1]) < 0):
        raise ValueError("hu_to_red: RED values must be >= 0 and non-decreasing with HU")
    return curve


def relative_electron_density(hu: NDArray, curve: NDArray[np.float64] | None = None) -> NDArray[np.float32]:
    """RED of every voxel by linear interpolation; clamped at the ends of the curve."""
    table = validate_curve(DEFAULT_HU_TO_RED if curve is None else curve)
    return np.interp(np.asarray(hu, dtype=np.float32), table[:, 0], table[:, 1]).astype(np.float32)
