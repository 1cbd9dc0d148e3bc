"""Beam geometry (IEC 61217 gantry angles, divergent fan coordinates) and beam's-eye-view apertures.

Coordinates: DICOM patient LPS for a head-first supine patient. Gantry 0 deg puts the source
anterior (beam travelling posterior, +y), gantry 90 deg on the patient's left (beam travelling
-x), as IEC 61217 defines for a HFS patient. A point p has fan coordinates (X, Z, r): r is its
distance from the source along the central axis, and X, Z its lateral offsets projected onto the
isocentre plane (X along the gantry's in-plane lateral axis, Z cranio-caudal). A divergent ray is a
line of constant (X, Z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import find_contours

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class BeamGeometry:
    gantry_deg: float
    isocentre_mm: tuple[float, float, float]
    sad_mm: float = 1000.0

    @property
    def axis(self) -> FloatArray:
        """Unit vector of the central axis, source to isocentre."""
        g = np.deg2rad(self.gantry_deg)
        return np.array([-np.sin(g), np.cos(g), 0.0])

    @property
    def lateral(self) -> FloatArray:
        g = np.deg2rad(self.gantry_deg)
        return np.array([np.cos(g), np.sin(g), 0.0])

    @property
    def cranial(self) -> FloatArray:
        return np.array([0.0, 0.0, 1.0])

    @property
    def source_mm(self) -> FloatArray:
        return np.asarray(self.isocentre_mm, dtype=float) - self.sad_mm * self.axis

    def fan_coordinates(self, points_mm: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(X, Z, r) of (N, 3) LPS points; X and Z on the isocentre plane."""
        rel = np.asarray(points_mm, dtype=float) - self.source_mm
        r = rel @ self.axis
        scale = self.sad_mm / r
        return (rel @ self.lateral) * scale, (rel @ self.cranial) * scale, r

    def fan_points(self, x_iso: FloatArray, z_iso: FloatArray, r: FloatArray) -> FloatArray:
        """LPS points of fan coordinates (broadcast shapes), as (..., 3)."""
        scale = (np.asarray(r, dtype=float) / self.sad_mm)[..., None]
        offsets = np.asarray(x_iso, dtype=float)[..., None] * self.lateral + np.asarray(z_iso, dtype=float)[..., None] * self.cranial
        return self.source_mm + np.asarray(r, dtype=float)[..., None] * self.axis + scale * offsets


@dataclass
class Aperture:
    """An open field on the isocentre plane, rastered at ``pixel_mm`` (``mask`` indexed [x, z])."""

    x0_mm: float  # iso-plane X of pixel 0's centre
    z0_mm: float
    pixel_mm: float
    mask: NDArray[np.bool_]  # open pixels (the field shape: scatter and equivalent square come from it)
    fluence: NDArray[np.float32] | None = None  # relative fluence per pixel (None: open field, 1 inside the mask)

    def fluence_map(self) -> NDArray[np.float32]:
        return self.mask.astype(np.float32) if self.fluence is None else np.where(self.mask, self.fluence, 0.0).astype(np.float32)

    @property
    def area_cm2(self) -> float:
        return float(self.mask.sum()) * (self.pixel_mm / 10.0) ** 2

    @property
    def perimeter_cm(self) -> float:
        # marching squares on the lightly smoothed mask: a sub-pixel outline (pixel-edge counts and the
        # raw staircase both overestimate a round field's perimeter by 5-25 %)
        padded = ndimage.gaussian_filter(np.pad(self.mask.astype(float), 3), 1.0)
        length = sum(float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()) for c in find_contours(padded, 0.5))
        return length * self.pixel_mm / 10.0

    @property
    def equivalent_square_cm(self) -> float:
        """Side of the square field with the same scatter (Sterling's 4 area / perimeter)."""
        p = self.perimeter_cm
        return 4.0 * self.area_cm2 / p if p > 0 else 0.0

    def x_mm(self) -> FloatArray:
        return self.x0_mm + self.pixel_mm * np.arange(self.mask.shape[0])

    def z_mm(self) -> FloatArray:
        return self.z0_mm + self.pixel_mm * np.arange(self.mask.shape[1])

    @classmethod
    def rectangle(cls, width_mm: float, length_mm: float, pixel_mm: float, pad_mm: float) -> "Aperture":
        """A jaw-defined rectangular field centred on the axis (for commissioning checks)."""
        nx, nz = int(np.ceil((width_mm / 2 + pad_mm) / pixel_mm)), int(np.ceil((length_mm / 2 + pad_mm) / pixel_mm))
        x = (np.arange(-nx, nx) + 0.5) * pixel_mm  # pixel centres; the axis falls on a pixel boundary
        z = (np.arange(-nz, nz) + 0.5) * pixel_mm
        # a pixel is open when its centre lies inside the field
        mask = (np.abs(x)[:, None] < width_mm / 2) & (np.abs(z)[None, :] < length_mm / 2)
        return cls(float(x[0]), float(z[0]), pixel_mm, mask)


def conformal_aperture(beam: BeamGeometry, target_points_mm: FloatArray, margin_mm: float, pixel_mm: float, pad_mm: float) -> Aperture:
    """The beam's-eye-view projection of a target, grown by ``margin_mm`` (penumbra margin) on the
    isocentre plane, rastered at ``pixel_mm`` with ``pad_mm`` of closed field around it.

    ``target_points_mm`` should sample the target densely (voxel centres and sub-voxel offsets):
    the projection is their footprint, closed by one pixel and hole-filled (a conformal MLC field
    has no holes). The margin is exact Euclidean (distance transform), not a pixel dilation."""
    x, z, _ = beam.fan_coordinates(target_points_mm)
    reach = margin_mm + pad_mm + 2 * pixel_mm
    x0, z0 = np.floor((x.min() - reach) / pixel_mm) * pixel_mm, np.floor((z.min() - reach) / pixel_mm) * pixel_mm
    nx = int(np.ceil((x.max() + reach - x0) / pixel_mm)) + 1
    nz = int(np.ceil((z.max() + reach - z0) / pixel_mm)) + 1
    footprint = np.zeros((nx, nz), dtype=bool)
    footprint[np.rint((x - x0) / pixel_mm).astype(int), np.rint((z - z0) / pixel_mm).astype(int)] = True
    footprint = ndimage.binary_fill_holes(ndimage.binary_closing(footprint, iterations=1))
    distance = ndimage.distance_transform_edt(~footprint, sampling=pixel_mm)
    return Aperture(float(x0), float(z0), pixel_mm, distance <= margin_mm)


def equally_spaced_gantry_angles(n: int, start_deg: float = 0.0) -> list[float]:
    return [round((start_deg + i * 360.0 / n) % 360.0, 3) for i in range(n)]
