"""Image grids and rigid transforms in DICOM patient coordinates (LPS, millimetres).

Conventions, stated once because silent mismatches are the commonest bug of the field:

* Patient coordinates are DICOM LPS: +x towards the patient's Left, +y Posterior, +z Superior.
* Array index order is (k, j, i) = (slice, row, column), as numpy arrays from SimpleITK come;
  ``direction`` columns are the unit vectors of the i, j, k axes (SimpleITK's convention).
* A :class:`RigidTransform` maps a point of one frame to another: ``x_out = R @ (x - c) + c + t``,
  the parametrisation of ITK's ``Euler3DTransform``. In registration (fixed = planning CT) ITK's
  transform maps *fixed* points to *moving* points; the sample generator's ground truth uses the
  same direction (planning -> session), so a recovered transform compares directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray


if TYPE_CHECKING:  # imported where used: ``isotox dvh`` needs no SimpleITK (~0.3 s and ~60 MB at start-up)
    import SimpleITK as sitk

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ImageGrid:
    """Voxel grid: ``size`` (i, j, k counts), ``spacing`` (mm), ``origin`` (mm, centre of voxel 0), ``direction``."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        """numpy array shape (k, j, i)."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> FloatArray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_physical(self, ijk: FloatArray) -> FloatArray:
        """(N, 3) continuous indices (i, j, k) -> (N, 3) LPS points."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def physical_to_index(self, xyz: FloatArray) -> FloatArray:
        """(N, 3) LPS points -> (N, 3) continuous indices (i, j, k)."""
        xyz = np.asarray(xyz, dtype=float)
        return ((xyz - np.asarray(self.origin)) @ self.direction_matrix) / np.asarray(self.spacing)

    def slice_points(self, k: int, supersample: int = 1) -> FloatArray:
        """LPS points of slice ``k`` as an array (rows, cols, 3), optionally supersampled in-plane.

        With ``supersample`` s, each voxel contributes s x s sub-points (for partial-volume averaging).
        """
        s = supersample
        offsets = (np.arange(s) + 0.5) / s - 0.5
        ii = (np.arange(self.size[0])[:, None] + offsets[None, :]).ravel()
        jj = (np.arange(self.size[1])[:, None] + offsets[None, :]).ravel()
        jgrid, igrid = np.meshgrid(jj, ii, indexing="ij")
        ijk = np.stack([igrid, jgrid, np.full_like(igrid, float(k))], axis=-1)
        return self.index_to_physical(ijk.reshape(-1, 3)).reshape(jgrid.shape + (3,))

    def slice_positions(self) -> FloatArray:
        """(nk, 3) ImagePositionPatient of every slice (centre of its first voxel)."""
        ijk = np.zeros((self.size[2], 3))
        ijk[:, 2] = np.arange(self.size[2])
        return self.index_to_physical(ijk)

    def to_sitk(self, array: NDArray, copy_info_only: bool = False) -> sitk.Image:
        """Wrap a (k, j, i) array as a SimpleITK image carrying this grid's geometry."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "ImageGrid":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    @classmethod
    def centred(cls, size: tuple[int, int, int], spacing: tuple[float, float, float], centre: tuple[float, float, float]) -> "ImageGrid":
        """Axial grid whose voxel centres are symmetric about ``centre``."""
        origin = tuple(float(c - (n - 1) * s / 2.0) for n, s, c in zip(size, spacing, centre))
        return cls(size, spacing, origin)  # type: ignore[arg-type]


def euler_matrix(angles_rad: tuple[float, float, float]) -> FloatArray:
    """Rotation matrix of ITK's Euler3DTransform (ZXY order, ComputeZYX off): R = Rz @ Rx @ Ry."""
    ax, ay, az = angles_rad
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class RigidTransform:
    """``x_out = R (x - centre) + centre + translation``; R from Euler angles (radians) as ITK builds it."""

    angles_rad: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    matrix: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", euler_matrix(self.angles_rad))

    def apply(self, points: FloatArray) -> FloatArray:
        """Map (..., 3) points."""
        c = np.asarray(self.centre_mm)
        return (np.asarray(points) - c) @ self.matrix.T + c + np.asarray(self.translation_mm)

    def apply_inverse(self, points: FloatArray) -> FloatArray:
        """Map (..., 3) points back: ``x = R^T (x_out - centre - t) + centre``."""
        c = np.asarray(self.centre_mm)
        return (np.asarray(points) - c - np.asarray(self.translation_mm)) @ self.matrix + c

    def to_sitk(self) -> sitk.Euler3DTransform:
        import SimpleITK as sitk

        tx = sitk.Euler3DTransform()
        tx.SetCenter(self.centre_mm)
        tx.SetRotation(*self.angles_rad)
        tx.SetTranslation(self.translation_mm)
        return tx

    def as_dict(self) -> dict[str, object]:
        """JSON-ready description, including the 4x4 affine (x_out = A @ [x, 1])."""
        affine = np.eye(4)
        affine[:3, :3] = self.matrix
        c = np.asarray(self.centre_mm)
        affine[:3, 3] = c + np.asarray(self.translation_mm) - self.matrix @ c
        return {
            "angles_deg": [float(np.degrees(a)) for a in self.angles_rad],
            "translation_mm": [float(v) for v in self.translation_mm],
            "centre_mm": [float(v) for v in self.centre_mm],
            "affine": affine.round(9).tolist(),
        }


def mean_displacement_mm(a: RigidTransform, b: RigidTransform, points: FloatArray) -> float:
    """Mean distance between where two transforms send the same points (registration error)."""
    return float(np.linalg.norm(a.apply(points) - b.apply(points), axis=-1).mean())
