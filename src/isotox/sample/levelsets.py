"""Level-set primitives and constructive solid geometry for the analytic phantom.

A level set is negative inside a shape, positive outside, and roughly a distance in mm near the
surface, so shapes combine with min/max (union/intersection/difference) and contours can be
traced at sub-voxel precision at level 0. Points are (..., 3) arrays in LPS mm.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray

Points = NDArray[np.float64]
LevelSet = NDArray[np.float64]


def ellipsoid(p: Points, centre: tuple[float, float, float], radii: tuple[float, float, float]) -> LevelSet:
    # component by component: a sum over the last axis of (..., 3) is several times slower
    q2 = sum(((p[..., i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    return (np.sqrt(q2) - 1.0) * float(min(radii))


def elliptic_cylinder(p: Points, cx: float, cy: float, a: float, b: float, z0: float | None = None, z1: float | None = None) -> LevelSet:
    """Cylinder along z with elliptic cross-section, capped at z0 and z1 if given.

    Uncapped by default: the former default caps at +-10 m never bound a thorax (the radial part,
    >= -min(a, b), always exceeded them), and the anatomy's 11 cylinders paid 3 extra passes each.
    """
    radial = (np.sqrt(((p[..., 0] - cx) / a) ** 2 + ((p[..., 1] - cy) / b) ** 2) - 1.0) * min(a, b)
    if z0 is None and z1 is None:
        return radial
    axial = np.maximum(-np.inf if z0 is None else z0 - p[..., 2], -np.inf if z1 is None else p[..., 2] - z1)
    return np.maximum(radial, axial)


def z_bands(p: Points, period: float, width: float, phase: float = 0.0) -> LevelSet:
    """Periodic slabs along z (vertebral discs, ribs): inside when (z - phase) mod period < width."""
    m = np.mod(p[..., 2] - phase, period)
    return np.minimum(np.abs(m - width / 2.0) - width / 2.0, period - np.abs(m - width / 2.0) - width / 2.0)


def tube(p: Points, polyline: NDArray[np.float64], radius: float) -> LevelSet:
    """Distance to a polyline centreline minus the radius (a vessel or airway).

    Only points inside a segment's bounding box (grown by the radius + 20 mm) are measured; the
    rest are 'far outside' (1e4), which is all the CSG and the contouring need.
    """
    return polyline_distance(p, polyline, radius + 20.0) - radius


def polyline_distance(p: Points, polyline: NDArray[np.float64], reach: float) -> NDArray[np.float64]:
    """Distance to a polyline, measured only inside its segments' boxes grown by ``reach`` (1e4 elsewhere).

    One distance serves several tubes around one centreline (airway wall and lumen): the largest
    radius + 20 mm as ``reach`` measures every point each of them would. The points near the
    whole polyline are picked once, so each segment only scans those.
    """
    flat = p.reshape(-1, 3)
    best = np.full(flat.shape[0], 1e4)
    near = points_in_box(flat, polyline.min(0) - reach, polyline.max(0) + reach)  # a few vertices: cheap
    if near.size:
        best[near] = _nearest_on_polyline(flat[near], polyline, reach)
    return best.reshape(p.shape[:-1])


#: Largest extent (mm) of a group of consecutive segments in :func:`_nearest_on_polyline`.
GROUP_MM = 40.0


def _segment_groups(polyline: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    """Consecutive vertices in runs whose box spans at most ``GROUP_MM`` (a longer segment alone)."""
    groups, start = [], 0
    for end in range(2, len(polyline) + 1):
        run = polyline[start:end]
        if end - start > 2 and float((run.max(0) - run.min(0)).max()) > GROUP_MM:
            groups.append(polyline[start : end - 1])
            start = end - 2
    groups.append(polyline[start:])
    return groups


def _nearest_on_polyline(pts: NDArray[np.float64], polyline: NDArray[np.float64], reach: float) -> NDArray[np.float64]:
    """Distance of each point to the segments whose grown box holds it (1e4 if none).

    Segments are scanned in groups of neighbours (:func:`_segment_groups`): a group's box (grown
    by ``reach``) picks the points its segments can see, so the aorta's 25 arch segments scan a
    few small subsets, not the whole box 25 times (they were ~20 % of an anatomy evaluation).
    The (point, segment) pairs measured, and so the result, are the same.
    """
    nearest = np.full(pts.shape[0], 1e4)
    groups = _segment_groups(polyline)
    for vertices in groups:
        if len(groups) > 1:
            idx = points_in_box(pts, vertices.min(0) - reach, vertices.max(0) + reach)
        else:
            idx = np.arange(pts.shape[0])
        group = pts[idx]
        for a, b in zip(vertices[:-1], vertices[1:]):
            if len(vertices) == 2 and len(groups) > 1:  # one segment: its box is the group's
                sel = np.arange(group.shape[0])
            else:
                sel = points_in_box(group, np.minimum(a, b) - reach, np.maximum(a, b) + reach)
            if sel.size == 0:
                continue
            q = group[sel]
            ab = b - a
            t = np.clip(((q - a) @ ab) / float(ab @ ab), 0.0, 1.0)
            d = np.sqrt(sum((q[:, i] - (a[i] + t * ab[i])) ** 2 for i in range(3)))
            hit = idx[sel]
            nearest[hit] = np.minimum(nearest[hit], d)
    return nearest


def points_in_box(points: NDArray[np.float64], lo: NDArray[np.float64], hi: NDArray[np.float64]) -> NDArray[np.intp]:
    """Indices of the (n, 3) points inside the axis-aligned box [lo, hi] (an early-out per axis)."""
    inside = (points[:, 0] >= lo[0]) & (points[:, 0] <= hi[0])
    idx = np.flatnonzero(inside)
    for axis in (1, 2):
        c = points[idx, axis]
        idx = idx[(c >= lo[axis]) & (c <= hi[axis])]
    return idx


def union(*sets: LevelSet) -> LevelSet:
    # pairwise: ``np.minimum.reduce(sets)`` would first stack every set into one new array
    return functools.reduce(np.minimum, sets)


def intersect(*sets: LevelSet) -> LevelSet:
    return functools.reduce(np.maximum, sets)


def subtract(a: LevelSet, *b: LevelSet) -> LevelSet:
    return np.maximum(a, -union(*b)) if b else a


def arc(centre: tuple[float, float, float], radius: float, start_deg: float, end_deg: float, plane: str, n: int = 24) -> NDArray[np.float64]:
    """Polyline along a circular arc in the 'yz' or 'xz' plane (the aortic arch)."""
    ang = np.radians(np.linspace(start_deg, end_deg, n))
    c = np.asarray(centre, dtype=float)
    pts = np.repeat(c[None, :], n, axis=0)
    axis = 1 if plane == "yz" else 0
    pts[:, axis] += radius * np.cos(ang)
    pts[:, 2] += radius * np.sin(ang)
    return pts
