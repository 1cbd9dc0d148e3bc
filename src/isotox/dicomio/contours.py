"""Planar contours from masks (or smooth level-set fields) on an image grid, in patient mm.

Contours are traced per slice with marching squares (scikit-image ``find_contours``) at
sub-voxel precision; the field is padded with 'outside' so every contour closes, even for a
structure touching the image border. Holes and islands come out as separate closed contours,
which RTSTRUCT readers combine with the even-odd rule.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage import measure

from isotox.geometry import ImageGrid

Contour = tuple[int, NDArray[np.float64]]  # (slice index k, (N, 3) LPS points)


def contours_from_field(grid: ImageGrid, inside: NDArray, level: float = 0.5, min_points: int = 3, upsample: int = 1) -> list[Contour]:
    """Trace the ``level`` iso-line of ``inside`` (k, j, i) on every slice.

    ``inside`` is larger inside the structure: a boolean mask (level 0.5) or the negated
    level-set of an analytic shape (level 0). For a smooth field, ``upsample`` > 1 traces a cubic
    spline interpolation with that many points per voxel, giving the ~1 mm point spacing of
    clinical contours instead of polygons that cut the corners of thin organs.
    """
    field = np.asarray(inside, dtype=float)
    outside_value = min(float(field.min()), level) - 1.0
    contours: list[Contour] = []
    for k in range(field.shape[0]):
        plane = field[k]
        if plane.max() <= level:
            continue
        rows, cols = np.nonzero(plane > level - 1.0) if upsample > 1 else np.nonzero(plane > level)
        r0, r1 = max(rows.min() - 2, 0), min(rows.max() + 3, plane.shape[0])
        c0, c1 = max(cols.min() - 2, 0), min(cols.max() + 3, plane.shape[1])
        crop = plane[r0:r1, c0:c1]
        if upsample > 1:
            # clip far values (a shape's 'far outside' constant) so the spline cannot ring across the level
            reach = 3.0 * max(grid.spacing[0], grid.spacing[1])
            crop = np.clip(crop, level - reach, level + reach)
            fr = np.arange(0, crop.shape[0] - 1 + 1e-9, 1.0 / upsample)
            fc = np.arange(0, crop.shape[1] - 1 + 1e-9, 1.0 / upsample)
            rr, cc = np.meshgrid(fr, fc, indexing="ij")
            crop = ndimage.map_coordinates(crop, [rr, cc], order=3, mode="nearest")
        padded = np.pad(crop, 1, constant_values=outside_value)
        for rc in measure.find_contours(padded, level):
            if np.allclose(rc[0], rc[-1]):
                rc = rc[:-1]
            if len(rc) < min_points:
                continue
            r = (rc[:, 0] - 1.0) / upsample + r0
            c = (rc[:, 1] - 1.0) / upsample + c0
            ijk = np.stack([c, r, np.full_like(r, float(k))], axis=1)
            contours.append((k, grid.index_to_physical(ijk)))
    return contours
