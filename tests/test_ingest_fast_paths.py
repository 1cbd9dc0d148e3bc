"""The fast paths of ingest give the answers of the slow, obvious computations they replaced.

* ``self_intersections`` tests only edge pairs whose bounding boxes overlap (sorted by x); the
  reference here tests every pair with exact integer arithmetic.
* ``contour_values`` parses ContourData from the bytes as read; the reference is pydicom's own
  conversion of the same element.
* ``stack`` fills an int16 volume plane by plane; the reference rounds and clips a float64 volume.
"""

from __future__ import annotations

import itertools

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from isotox.dicomio.rtstruct_reader import contour_values, self_intersections, self_intersections_each
from isotox.dicomio.volume import SliceGeometry, stack
from isotox.geometry import ImageGrid

from tests.reference_data import unpack_breast_example


def _orient(p: tuple[int, int], q: tuple[int, int], r: tuple[int, int]) -> int:
    return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])


def brute_force_crossings(points: list[tuple[int, int]], count_touching: bool = False) -> int:
    """Every pair of non-adjacent edges, in exact integer arithmetic: a proper crossing has the
    ends of each edge strictly on both sides of the other (``count_touching`` also counts a vertex
    lying on the other edge's line: the nearest wrong answer)."""
    n = len(points)
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    count = 0
    for i, j in itertools.combinations(range(n), 2):
        if j - i == 1 or (i == 0 and j == n - 1):
            continue
        (p, q), (r, s) = edges[i], edges[j]
        o1, o2, o3, o4 = _orient(p, q, r), _orient(p, q, s), _orient(r, s, p), _orient(r, s, q)
        crossing = o1 * o2 < 0 and o3 * o4 < 0
        touching = count_touching and o1 * o2 <= 0 and o3 * o4 <= 0 and min(p[0], q[0]) <= max(r[0], s[0]) and min(r[0], s[0]) <= max(p[0], q[0])
        count += crossing or touching
    return count


def _polygons() -> list[list[tuple[int, int]]]:
    """Random polygons on a small integer grid (many shared x, collinear edges, repeated vertices),
    star-shaped ones, and a zigzag whose edges all overlap in x."""
    rng = np.random.default_rng(7)
    shapes = [[(int(x), int(y)) for x, y in rng.integers(-6, 7, size=(n, 2))] for n in (4, 5, 6, 9, 17, 40, 80) for _ in range(6)]
    for n in (12, 60):
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.integers(50, 100, n)
        shapes.append([(int(r * np.cos(a)), int(r * np.sin(a))) for r, a in zip(radii, angles)])
    shapes.append([(0 if k % 2 else 10, k + (k % 3)) for k in range(30)])
    return shapes


def test_self_intersections_match_every_pair_tested() -> None:
    """Exact equality with the all-pairs count on 46 polygons. The nearest wrong answer (vertices
    touching another edge counted as crossings) differs on these polygons, so equality rejects it."""
    polygons = _polygons()
    fast = [self_intersections(np.asarray(p, dtype=float)) for p in polygons]
    assert fast == [brute_force_crossings(p) for p in polygons]
    assert sum(fast) > 0  # the set has crossings to find
    assert fast != [brute_force_crossings(p, count_touching=True) for p in polygons]


def test_self_intersections_of_many_polygons_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """All 46 polygons in one call (the way ``isotox dvh`` checks a structure set) give each polygon's
    all-pairs count, also in tiny blocks. The nearest wrong answer, crossings between edges of two
    different polygons (the polygons overlap in x and y), would add counts and fail equality; so would
    a polygon's closing edge treated as adjacent to the next polygon's first edge."""
    import isotox.dicomio.rtstruct_reader as reader

    polygons = [np.asarray(p, dtype=float) for p in _polygons()]
    truth = [brute_force_crossings(p) for p in _polygons()]
    stacked = [p + 3.0 * n for n, p in enumerate(polygons)]  # near-coincident shapes: many cross-polygon overlaps
    assert list(self_intersections_each(stacked)) == [brute_force_crossings(p.tolist()) for p in stacked]
    assert list(self_intersections_each(polygons)) == truth
    monkeypatch.setattr(reader, "_PAIRS_PER_BLOCK", 7)
    assert list(self_intersections_each(polygons)) == truth
    assert list(self_intersections_each([polygons[0][:3], np.zeros((0, 2))])) == [0, 0]


def test_self_intersections_in_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Splitting the candidate pairs into blocks (the memory bound) changes no count."""
    import isotox.dicomio.rtstruct_reader as reader

    polygons = _polygons()
    whole = [self_intersections(np.asarray(p, dtype=float)) for p in polygons]
    monkeypatch.setattr(reader, "_PAIRS_PER_BLOCK", 7)
    assert [self_intersections(np.asarray(p, dtype=float)) for p in polygons] == whole


def test_contour_values_equal_pydicom_conversion(tmp_path) -> None:
    """Every contour of the clinical example parsed from bytes equals pydicom's conversion, bit for
    bit (the nearest wrong answer, float32 parsing, is not bit-equal); an element pydicom has already
    converted is taken as it is."""
    rtss = unpack_breast_example(tmp_path) / "rtss.dcm"
    raw, converted = pydicom.dcmread(rtss), pydicom.dcmread(rtss)
    contours = 0
    for item_raw, item_conv in zip(raw.ROIContourSequence, converted.ROIContourSequence):
        for c_raw, c_conv in zip(item_raw.get("ContourSequence", []), item_conv.get("ContourSequence", [])):
            assert isinstance(c_raw.get_item("ContourData").value, bytes)
            expected = np.asarray([float(v) for v in c_conv.ContourData])
            got = contour_values(c_raw)
            assert got.dtype == np.float64 and np.array_equal(got, expected)
            contours += 1
    assert contours == sum(len(item.get("ContourSequence", [])) for item in converted.ROIContourSequence) > 100
    assert not np.array_equal(got.astype(np.float32).astype(np.float64), expected)
    item = Dataset()
    item.ContourData = [1.5, -2.0, 3.25]
    assert np.array_equal(contour_values(item), [1.5, -2.0, 3.25])  # an element already converted
    assert contour_values(Dataset()).size == 0


def test_stack_int16_rounds_and_clips_like_float64() -> None:
    """Plane-by-plane int16 equals rounding and clipping the float64 stack (half-way values, values
    beyond the int16 range); the nearest wrong answer, truncation, differs on -0.7 and 2.5 x 1.2."""
    grid = ImageGrid((3, 2, 3), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    geometry = SliceGeometry(grid, [0, 1, 2], np.zeros((3, 3)), np.array([2.0, 2.0]), 0.0)
    planes = [np.array([[-0.7, 0.5, 1.5], [2.5 * 1.2, -40000.0, 40000.0]]) + k for k in range(3)]
    got = stack(geometry, iter(planes), np.int16)
    reference = np.rint(np.stack(planes)).clip(-32768, 32767).astype(np.int16)
    assert got.dtype == np.int16 and np.array_equal(got, reference)
    assert not np.array_equal(got, np.stack(planes).clip(-32768, 32767).astype(np.int16))
    with pytest.raises(ValueError):
        stack(geometry, iter(planes[:2]), np.int16)


def test_dce_frames_stored_as_int16_only_when_lossless() -> None:
    """Whole-HU frames become int16 with identical values and geometry; a series with one
    non-integral value (rescale slope 0.5) or a value beyond int16 stays float32 unchanged. The
    nearest wrong answer, rounding such a series to int16 anyway, changes a value by 0.5 HU and
    fails the equality."""
    import SimpleITK as sitk

    from isotox.ingest import _as_int16_when_lossless

    def frame(values: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(values.astype(np.float32))
        image.SetSpacing((0.9, 0.9, 5.0))
        image.SetOrigin((-10.0, 4.0, 30.0))
        return image

    rng = np.random.default_rng(3)
    whole = [frame(rng.integers(-1024, 3000, size=(4, 6, 5)).astype(float)) for _ in range(3)]
    out = _as_int16_when_lossless(whole)
    assert all(f.GetPixelID() == sitk.sitkInt16 for f in out)
    for a, b in zip(whole, out):
        assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b).astype(np.float32))
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    halves = [*whole[:2], frame(np.full((4, 6, 5), 12.5))]
    assert all(f.GetPixelID() == sitk.sitkFloat32 for f in _as_int16_when_lossless(halves))
    assert _as_int16_when_lossless(halves)[2] is halves[2]
    beyond = [frame(np.full((4, 6, 5), 40000.0))]
    assert _as_int16_when_lossless(beyond)[0].GetPixelID() == sitk.sitkFloat32


def test_scanline_fill_equals_scikit_image_polygon_on_grid_aligned_contours() -> None:
    """The RTSTRUCT raster (scanline even-odd fill) against scikit-image's polygon fill, XOR-ed per
    contour, the peer the reader used before: equal voxel for voxel on contours whose vertices and
    edges fall exactly on voxel centres (axis-aligned squares with integer corners, a diamond, a
    figure with a hole, a contour crossing the image border) and on random polygons. Nearest wrong
    answer: the parity rule alone, which leaves centres on right or top edges outside; it differs on
    these shapes (asserted), so equality rejects it."""
    from skimage.draw import polygon

    import isotox.dicomio.rtstruct_reader as reader
    from isotox.dose.rt_dvh import fill_even_odd

    grid = ImageGrid((24, 20, 3), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    rng = np.random.default_rng(11)
    shapes = [
        [(2, 2), (9, 2), (9, 7), (2, 7)],             # integer corners: edges through centre rows/columns
        [(12, 3), (16, 7), (12, 11), (8, 7)],          # diamond: vertices on centres
        [(1, 10), (10, 10), (10, 18), (1, 18)], [(3, 12), (6, 12), (6, 15), (3, 15)],  # a hole
        [(18, -3), (26, 5), (18, 13)],                  # beyond the border
        [(4.5, 3.25), (7.0, 9.0), (2.0, 5.5)],
    ] + [[(float(x), float(y)) for x, y in rng.uniform(-1, 21, size=(7, 2))] for _ in range(5)]
    polys = [np.array([[x, y, 2.0] for x, y in s]) for s in shapes]  # all on slice k = 1
    expected = np.zeros(grid.shape, bool)
    for p in polys:
        plane = np.zeros(grid.shape[1:], bool)
        rr, cc = polygon(p[:, 1], p[:, 0], grid.shape[1:])
        plane[rr, cc] = True
        expected[1] ^= plane
    assert np.array_equal(reader.contours_to_mask(grid, polys, [], "test"), expected)
    dvh_mask, _ = fill_even_odd(grid, polys)  # isotox dvh's raster: the same rule
    assert np.array_equal(dvh_mask, expected)
    with pytest.MonkeyPatch.context() as patch:  # the parity rule alone: no centre on an edge added
        patch.setattr(reader, "_on_edges", lambda edges, nk, nj, ni: (np.zeros(0, np.intp), np.zeros(0, np.intp)))
        parity_only = reader.contours_to_mask(grid, polys, [], "test")
    assert not np.array_equal(parity_only, expected)
