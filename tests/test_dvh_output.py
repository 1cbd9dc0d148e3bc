"""Helpers of the lean ``isotox dvh`` path: the TSV writer against pandas, the sub-voxel grid
against hand-computed centres."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd

from isotox.dose.dvh import write_tsv
from isotox.dose.rt_dvh import subdivided
from isotox.geometry import ImageGrid


def test_tsv_writer_matches_pandas_to_csv() -> None:
    """Byte-identical to ``DataFrame.to_csv(sep="\\t", index=False, float_format="%.4f")``, the table
    the command printed before; wrong answers rejected: NaN written as "nan", floats unformatted."""
    rows = [{"structure": "Heart", "volume_cc": 439.8012, "Dmean": 0.64641, "V20": float("nan"), "outside_dose_grid_percent": 0.0},
            {"structure": "Lt Lung", "volume_cc": 2003.96, "Dmean": np.float64(0.90851), "V20": 1.25, "outside_dose_grid_percent": 12.5}]
    ours = io.StringIO()
    write_tsv(rows, ours)
    assert ours.getvalue() == pd.DataFrame(rows).to_csv(sep="\t", index=False, float_format="%.4f")
    assert "nan" not in ours.getvalue() and "0.64641" not in ours.getvalue()


def test_subdivided_grid_has_the_sub_voxel_centres_and_volume() -> None:
    """Each voxel split 2 x 2 x 2: the fine mask's centres are the coarse centres +- a quarter voxel
    (computed here by hand) and the volume is unchanged. Wrong answer rejected: the fine grid started
    at the coarse origin (centres a quarter voxel off)."""
    grid = ImageGrid((4, 3, 2), (2.0, 3.0, 5.0), (-10.0, 20.0, 100.0))
    mask = np.zeros(grid.shape, bool)
    mask[0, 1, 2] = mask[1, 2, 0] = True
    fine_mask, fine = subdivided(mask, grid)
    kji = np.argwhere(fine_mask)
    got = np.sort(np.asarray(fine.origin) + kji[:, ::-1] * np.asarray(fine.spacing), axis=0)
    expected = [np.asarray(grid.origin) + np.asarray(grid.spacing) * (np.array([i, j, k]) + np.array(d) * 0.5 - 0.25)
                for k, j, i in np.argwhere(mask) for d in itertools.product((0, 1), repeat=3)]
    assert np.allclose(got, np.sort(np.asarray(expected), axis=0))
    assert fine_mask.sum() * fine.voxel_volume_mm3 == mask.sum() * grid.voxel_volume_mm3
    shifted = np.sort(np.asarray(grid.origin) + kji[:, ::-1] * np.asarray(fine.spacing), axis=0)
    assert not np.allclose(shifted, np.sort(np.asarray(expected), axis=0))


def test_pydicom_is_imported_without_requests_and_requests_still_imports() -> None:
    """``isotox dvh`` imports pydicom with ``requests`` hidden (its downloader's import was a sixth of
    the command's CPU): in a fresh interpreter pydicom loads, ``requests`` is not loaded by it, and
    an explicit ``import requests`` afterwards works (the wrong answer, leaving the ``None`` marker
    in ``sys.modules``, would make that import fail)."""
    import subprocess
    import sys

    script = ("import sys; from isotox.cli import _import_pydicom_offline; _import_pydicom_offline(); "
              "assert 'pydicom' in sys.modules and 'requests' not in sys.modules; import requests; print('ok')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
