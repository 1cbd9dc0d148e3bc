"""Grid and rigid-transform conventions agree with SimpleITK (the reference implementation)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from isotox.geometry import ImageGrid, RigidTransform, mean_displacement_mm

angles = st.tuples(*[st.floats(-0.3, 0.3)] * 3)
vectors = st.tuples(*[st.floats(-50, 50)] * 3)


@settings(max_examples=50, deadline=None)
@given(angles, vectors, vectors)
def test_rigid_transform_matches_sitk_euler3d(a: tuple[float, float, float], t: tuple[float, float, float], c: tuple[float, float, float]) -> None:
    tx = RigidTransform(a, t, c)
    pts = np.random.default_rng(0).uniform(-200, 200, size=(20, 3))
    ref = np.array([tx.to_sitk().TransformPoint(tuple(p)) for p in pts])
    np.testing.assert_allclose(tx.apply(pts), ref, atol=1e-9)
    np.testing.assert_allclose(tx.apply_inverse(tx.apply(pts)), pts, atol=1e-9)
    affine = np.asarray(tx.as_dict()["affine"])
    np.testing.assert_allclose(pts @ affine[:3, :3].T + affine[:3, 3], ref, atol=1e-6)


def test_grid_index_to_physical_matches_sitk_for_oblique_grid() -> None:
    rot = RigidTransform((0.1, -0.2, 0.3)).matrix
    grid = ImageGrid((7, 5, 3), (0.8, 1.3, 2.5), (-10.0, 4.0, 33.0), tuple(rot.ravel()))
    image = grid.to_sitk(np.zeros(grid.shape))
    ijk = np.array([[0, 0, 0], [6, 4, 2], [1.5, 2.25, 0.5]])
    ref = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))) for p in ijk])
    np.testing.assert_allclose(grid.index_to_physical(ijk), ref, atol=1e-9)
    np.testing.assert_allclose(grid.physical_to_index(ref), ijk, atol=1e-9)
    assert ImageGrid.from_sitk(image) == grid


def test_mean_displacement_of_pure_translation() -> None:
    pts = np.random.default_rng(1).normal(size=(100, 3)) * 50
    assert mean_displacement_mm(RigidTransform(translation_mm=(3.0, 4.0, 0.0)), RigidTransform(), pts) == np.float64(5.0)
    assert isinstance(sitk.Euler3DTransform(), sitk.Transform)
