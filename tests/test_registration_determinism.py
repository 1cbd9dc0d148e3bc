"""Issue 18: ``isotox register --threads 2`` gives byte-identical outputs run after run.

Before the fix, two 2-thread runs on the same input differed (transforms by ~1e-9, resampled
PET voxels by ~5e-7): the Mattes metric's multi-threaded reduction is not order-stable. The
registration now runs its optimiser on one thread and parallelises only per-voxel work.

The input is a small synthetic patient (a 4 mm thorax phantom: body, lungs, spine, tumour and its GTV; a
PET/CT session displaced by a known rigid motion; a 5-frame DCE slab), so the test takes a few
seconds. It compares the bytes of every file the stage writes, and that the thread count
does not change them either (1 vs 2 threads). Nearest wrong answer: outputs equal to ~1e-9
but not bytewise, which a byte comparison rejects by construction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from isotox.cli import main as cli_main

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
SPACING = (4.0, 4.0, 4.0)


def _phantom(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """HU phantom (k, j, i): elliptic body, two lungs, spine, a tumour in the right lung."""
    k, j, i = np.indices(shape, dtype=float)
    nz, ny, nx = shape
    y, x = (j - ny / 2) / (ny / 2), (i - nx / 2) / (nx / 2)
    hu = np.full(shape, -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.6) ** 2 <= 1] = 20.0
    for side in (-1, 1):
        hu[((x - side * 0.38) / 0.3) ** 2 + (y / 0.42) ** 2 + ((k - nz / 2) / (0.45 * nz)) ** 2 <= 1] = -820.0
    hu[((x / 0.12) ** 2 + ((y - 0.45) / 0.1) ** 2 <= 1)] = 650.0
    hu[((x - 0.38) / 0.1) ** 2 + ((y + 0.05) / 0.1) ** 2 + ((k - nz / 2) / 3.0) ** 2 <= 1] = 40.0
    return hu + rng.normal(0.0, 8.0, shape)


def _image(values: np.ndarray, origin: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin(origin)
    return image


def _write_patient(folder: Path) -> None:
    rng = np.random.default_rng(18)
    ingest = folder / "ingest"
    (ingest / "masks").mkdir(parents=True)
    planning = _image(_phantom((28, 56, 56), rng), (-112.0, -112.0, -56.0))
    sitk.WriteImage(sitk.Cast(planning, sitk.sitkInt16), str(ingest / "planning_ct.nii.gz"))
    # the tumour as the GTV, so the tumour-focused stage runs (and is compared byte by byte) too
    k, j, i = np.indices((28, 56, 56), dtype=float)
    gtv = ((i - 28) / 28 - 0.38) ** 2 / 0.1**2 + ((j - 28) / 28 + 0.05) ** 2 / 0.1**2 + ((k - 14) / 3.0) ** 2 <= 1
    mask = sitk.GetImageFromArray(gtv.astype(np.uint8))
    mask.CopyInformation(planning)
    sitk.WriteImage(mask, str(ingest / "masks" / "GTV.nii.gz"))
    motion = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.02, -0.01, 0.03, (5.0, -3.0, 4.0))
    session_grid = _image(np.zeros((26, 52, 52)), (-104.0, -104.0, -52.0))
    ct = sitk.Resample(planning, session_grid, motion.GetInverse(), sitk.sitkLinear, -1000.0)
    sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(ingest / "fdg_ct.nii.gz"))
    suv = sitk.GetArrayFromImage(ct) > 30.0
    pet = _image(np.where(suv, 8.0, 0.0) + np.where(sitk.GetArrayFromImage(ct) > -500, 1.0, 0.0), session_grid.GetOrigin())
    sitk.WriteImage(sitk.SmoothingRecursiveGaussian(pet, 4.0), str(ingest / "fdg_pet_suv.nii.gz"))
    slab = _image(np.zeros((8, 56, 56)), (-112.0, -112.0, -16.0))
    frames = []
    for n, shift in enumerate((0.0, 0.6, -0.4, 1.0, 0.3)):
        frame = sitk.Resample(planning, slab, sitk.TranslationTransform(3, (shift, 0.5 * shift, 0.0)), sitk.sitkLinear, -1000.0)
        values = sitk.GetArrayFromImage(frame) + (60.0 * n if n else 0.0) * (sitk.GetArrayFromImage(frame) > 30.0)
        frames.append(_image(values, slab.GetOrigin()))
    sitk.WriteImage(sitk.JoinSeries(frames), str(ingest / "dce_ct.nii.gz"))


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_register_twice_with_two_threads_is_byte_identical(tmp_path: Path) -> None:
    runs = {}
    for name, threads in (("a", 2), ("b", 2), ("c", 1)):
        patient = tmp_path / name / "P"
        _write_patient(patient)
        assert cli_main(["register", str(patient), "--config", str(CONFIG), "--threads", str(threads)]) == 0
        runs[name] = _outputs(patient / "register")
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert {"fdg.tfm", "fdg_global.tfm", "fdg_pet_suv.nii.gz", "fdg_ct.nii.gz", "dce.tfm", "dce_global.tfm", "dce_mc.nii.gz", "dce_motion.tsv", "qc.json"} <= set(a)
    assert "tumour_focused" in json.loads(a["qc.json"])["sessions"]["fdg"]
    assert set(a) == set(b)
    different = [name for name in a if a[name] != b[name]]
    assert different == [], f"two 2-thread runs differ in {different}"
    qc_a, qc_c = json.loads(a.pop("qc.json")), json.loads(c.pop("qc.json"))
    qc_a["settings"].pop("threads"), qc_c["settings"].pop("threads")
    assert qc_a == qc_c  # the thread count is recorded, nothing else may depend on it
    assert [name for name in a if a[name] != c[name]] == []
    # and the registration is not trivially identical because it did nothing: the known motion is found
    moved = sitk.ReadTransform(str(tmp_path / "a" / "P" / "register" / "fdg.tfm"))
    assert np.allclose(moved.TransformPoint((0.0, 0.0, 0.0)), (5.0, -3.0, 4.0), atol=2.0)
