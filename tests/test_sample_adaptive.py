"""The sample generator's shortcuts give what the plain computations give.

* ``scanner.render`` with partial volume evaluates the anatomy at the voxel centres and only at
  the sub-points of voxels a surface may cross (``Anatomy.evaluate(clearance=True)``); here it is
  compared with the plain mean over all s^3 sub-points, for the contrast planning CT (HU, the
  structure fractions, the texture's voxel mean) and for a breathing PET session (FDG SUV).
* ``Anatomy.clearance`` is a true lower bound: no point closer than it has other labels.
* ``_count_inside`` (the planimetric volumes) counts exactly the raster points a point-by-point
  evaluation finds inside.
* The airway and vessel distances (segment groups, shared centrelines) equal a plain per-segment
  minimum, and the RTSTRUCT's raw ContourData bytes equal what pydicom writes from the strings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from isotox.geometry import ImageGrid, RigidTransform
from isotox.sample import appearance, scanner
from isotox.sample import levelsets as ls
from isotox.sample.anatomy import Anatomy, draw_anatomy
from isotox.sample.breathing import Breathing, draw_breathing
from isotox.sample.patient import _count_inside, _Raster

#: The adaptive mean equals the plain one up to float rounding (different summation order, float32
#: output, the texture's voxel mean as centre value x gain): 1e-3 HU and 1e-5 SUV leave room
#: for that and nothing else; the nearest wrong answers (no partial volume; the centre's texture
#: without the voxel mean) are off by hundreds of HU / whole SUVs and by ~1 HU, and must fail.
HU_TOL, SUV_TOL = 1e-3, 1e-5


def _anatomy(seed: int, histology: str = "squamous") -> Anatomy:
    return Anatomy(draw_anatomy(np.random.default_rng(seed), histology, with_node=True))


def _plain_mean(grid: ImageGrid, anatomy: Anatomy, pose: RigidTransform | None, painters: dict[str, scanner.Painter], s: int,
                breathing: Breathing | None = None) -> dict[str, np.ndarray]:
    """The partial-volume mean as it was: every sub-point of every voxel evaluated."""
    out = {name: np.zeros(grid.shape) for name in painters}
    for k in range(grid.size[2]):
        pts = scanner.slice_subpoints(grid, k, s)
        if pose is not None:
            pts = pose.apply_inverse(pts)
        if breathing is not None:
            pts = breathing.pull_back(pts)
        sample = anatomy.evaluate(pts)
        for name, paint in painters.items():
            v = paint(sample)
            z, r, c = v.shape
            out[name][k] = v.reshape(z, r // s, s, c // s, s).mean(axis=(0, 2, 4))
    return out


def test_adaptive_planning_ct_equals_the_full_partial_volume_mean() -> None:
    anatomy = _anatomy(3)
    look = appearance.CtLook.draw(np.random.default_rng(4))
    t = anatomy.p.tumour.centre
    # 4 mm voxels through the tumour, mediastinum, heart, spine and chest wall (one quarter of a slab)
    grid = ImageGrid.centred((56, 40, 5), (4.0, 4.0, 4.0), (t[0] / 2, t[1] / 2 + 20.0, t[2]))
    painters: dict[str, scanner.Painter] = {"hu": lambda s: look.hu(s, contrast=True)}
    for name in ("BODY", "LUNG_L", "LUNG_R", "HEART", "GTV", "SPINAL_CORD"):
        painters[name] = lambda s, n=name: (s.structures[n] < 0).astype(float)
    fast = scanner.render(grid, anatomy, None, painters, 2)
    full = _plain_mean(grid, anatomy, None, painters, 2)
    hu_err = np.abs(fast["hu"] - full["hu"])
    assert hu_err.max() < HU_TOL, hu_err.max()
    for name in painters:
        if name != "hu":
            assert np.abs(fast[name] - full[name]).max() < 1e-6, name
    # the grid really has partial-volume voxels, and both wrong answers fail the tolerance
    assert ((full["GTV"] > 0.01) & (full["GTV"] < 0.99)).sum() > 20
    centre_only = scanner.render(grid, anatomy, None, {"hu": painters["hu"]}, 1)["hu"]
    assert np.abs(centre_only - full["hu"]).max() > 100.0
    no_gain = full["hu"].copy()
    for k in range(grid.size[2]):
        sample = anatomy.evaluate(grid.slice_points(k))
        texture_hu = appearance._table(appearance._TEXTURE_HU)[sample.tissue]
        no_gain[k] += texture_hu * (sample.texture - scanner._uniform_texture(sample, scanner._SliceVoxels(grid, k, 2, None, None))())
    assert np.abs(no_gain - full["hu"]).max() > 100 * HU_TOL


def test_adaptive_breathing_pet_equals_the_full_partial_volume_mean() -> None:
    anatomy = _anatomy(5, "adenocarcinoma")
    p = anatomy.p
    fdg = appearance.FdgUptake.draw(np.random.default_rng(6), hot_rim=False)
    breathing = draw_breathing(np.random.default_rng(7), 0.93 * p.body_a - 9.0, 0.93 * p.body_b - 9.0, anatomy.y_vertebra,
                               anatomy.y_posterior, p.tumour.centre)
    pose = RigidTransform((0.03, -0.05, 0.04), (6.0, -4.0, 9.0), (0.0, 0.0, 0.0))
    c = pose.apply(np.asarray(breathing.push(np.asarray(p.tumour.centre))))
    grid = ImageGrid.centred((40, 32, 6), (5.3, 5.3, 5.0), tuple(float(v) for v in c))  # type: ignore[arg-type]
    fast = scanner.render(grid, anatomy, pose, {"suv": fdg.suv}, 2, breathing)["suv"]
    full = _plain_mean(grid, anatomy, pose, {"suv": fdg.suv}, 2, breathing)["suv"]
    assert np.abs(fast - full).max() < SUV_TOL
    assert full.max() > 0.5 * fdg.tumour_peak  # the tumour is in the field
    centre_only = scanner.render(grid, anatomy, pose, {"suv": fdg.suv}, 1, breathing)["suv"]
    assert np.abs(centre_only - full).max() > 1.0


def test_clearance_is_a_lower_bound_of_the_distance_to_other_labels() -> None:
    """Points drawn at 0.999 x the clearance around 4000 points keep every label (tissue and
    structure signs); without the tumour's bounding ball (clearance from |level set| alone) the
    lobulated tumour breaks it, which is why the ball is there."""
    anatomy = _anatomy(11, "adenocarcinoma")
    rng = np.random.default_rng(12)
    t = np.asarray(anatomy.p.tumour.centre)
    centres = np.concatenate([t + rng.normal(scale=25.0, size=(2000, 3)), rng.uniform([-170, -120, -80], [170, 120, 80], size=(2000, 3))])
    c = anatomy.evaluate(centres, clearance=True)
    assert c.clearance is not None and (c.clearance > 0).mean() > 0.5
    for _ in range(4):
        u = rng.normal(size=centres.shape)
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        q = anatomy.evaluate(centres + 0.999 * c.clearance[:, None] * u)
        assert np.array_equal(q.tissue, c.tissue)
        for name, field in c.structures.items():
            assert np.array_equal(q.structures[name] < 0, field < 0), name


@pytest.mark.parametrize("name", ["BODY", "SPINAL_CORD", "LUNG_R", "GTV"])
def test_count_inside_counts_the_raster_exactly(name: str) -> None:
    anatomy = _anatomy(3)
    t = anatomy.p.tumour.centre
    rasters = [_Raster(np.arange(-180.0, 180.0, 2.0) + 1.0, np.arange(-125.0, 125.0, 2.0) + 1.0, t[2], 2.0),
               _Raster(np.arange(t[0] - 31.0, t[0] + 30.0, 0.5) + 0.25, np.arange(t[1] - 29.0, t[1] + 30.0, 0.5) + 0.25, t[2] + 3.0, 0.5)]
    fast = _count_inside(anatomy, name, rasters)
    for r, n in zip(rasters, fast):
        yy, xx = np.meshgrid(r.ys, r.xs, indexing="ij")
        pts = np.stack([xx, yy, np.full_like(xx, r.z)], axis=-1)
        assert n == int((anatomy.evaluate(pts).structures[name] < 0).sum())


def test_polyline_distance_equals_the_per_segment_minimum() -> None:
    anatomy = _anatomy(3)
    rng = np.random.default_rng(1)
    pts = rng.uniform([-60, -80, -220], [60, 60, 120], size=(20000, 3))
    for line in [anatomy.aorta_line, anatomy.svc_line, anatomy.esophagus_line, *anatomy.pulmonary_lines]:
        reach = 32.0
        expected = np.full(len(pts), 1e4)
        for a, b in zip(line[:-1], line[1:]):
            inside = np.all((pts >= np.minimum(a, b) - reach) & (pts <= np.maximum(a, b) + reach), axis=1)
            ab = b - a
            tt = np.clip(((pts - a) @ ab) / float(ab @ ab), 0.0, 1.0)
            d = np.sqrt(sum((pts[:, i] - (a[i] + tt * ab[i])) ** 2 for i in range(3)))
            expected = np.where(inside, np.minimum(expected, d), expected)
        assert np.allclose(ls.polyline_distance(pts, line, reach), expected, rtol=0, atol=1e-12)


def test_raw_contour_data_is_what_pydicom_writes(tmp_path: Path) -> None:
    from isotox.dicomio.rtstruct_writer import CONTOUR_DATA, _contour_data

    values = [f"{v:.3f}" for v in np.random.default_rng(0).uniform(-300, 300, size=301)]  # odd length: padded
    files = []
    for raw in (False, True):
        ds = Dataset()
        item = Dataset()
        if raw:
            item[CONTOUR_DATA] = _contour_data(values)
            item.set_original_encoding(False, True, "iso8859")
        else:
            item.ContourData = values
        ds.ROIContourSequence = [item]
        path = tmp_path / f"{raw}.dcm"
        ds.save_as(path, implicit_vr=False, little_endian=True)
        files.append(path.read_bytes())
    assert files[0] == files[1]
    assert [str(v) for v in ds.ROIContourSequence[0].ContourData] == values  # the raw element reads as the strings
