"""DVH time per structure on the clinical RT example and on a realistic planning grid.

1. ``isotox dvh`` on ../shared/data/rt_breast_example (10 ROIs, 2.5 mm dose grid): time per ROI.
2. A realistic planning-CT grid (512 x 512 x 120, 0.98 x 0.98 x 3 mm) with a 3 mm dose grid:
   DVH time of a lung-sized (1.5 L), a heart-sized (0.6 L) and a cord-sized (20 cc) mask with
   2 x 2 x 2 sub-voxel sampling.
3. ``--dicompyler-python PY``: dicompyler-core's ``dvhcalc.get_dvh`` on the same example, timed in
   a separate interpreter (dicompyler-core 0.5.6 needs pydicom < 3, isotox needs pydicom 3), e.g.
   ``python -m venv /tmp/dvenv && /tmp/dvenv/bin/pip install dicompyler-core "pydicom<3"``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from isotox.dose.dvh import dvh_from_mask
from isotox.dose.rt_dvh import rt_dvhs
from isotox.geometry import ImageGrid

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO.parent / "shared" / "data" / "rt_breast_example"


_DICOMPYLER = """
import json, sys, time
import pydicom
from dicompylercore import dvhcalc
rtss, rtdose = sys.argv[1], sys.argv[2]
rois = {int(r.ROINumber): str(r.ROIName) for r in pydicom.dcmread(rtss).StructureSetROISequence}
out, start_all = {}, time.perf_counter()
for number, name in rois.items():
    start = time.perf_counter()
    dvh = dvhcalc.get_dvh(rtss, rtdose, number)
    out[name] = {"seconds": time.perf_counter() - start, "volume_cc": float(dvh.volume), "mean": float(dvh.mean), "max": float(dvh.max)}
print(json.dumps({"total_s": time.perf_counter() - start_all, "rois": out}))
"""


def dicompyler_times(python: str) -> None:
    proc = subprocess.run([python, "-c", _DICOMPYLER, str(EXAMPLE / "rtss.dcm"), str(EXAMPLE / "rtdose.dcm")], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    print(f"dicompyler-core on rt_breast_example: {len(result['rois'])} ROIs in {result['total_s']:.1f} s")
    for roi in ("Heart", "Lt Lung", "Tumor Bed"):
        if roi in result["rois"]:
            r = result["rois"][roi]
            print(f"  {roi}: {r['seconds']:.2f} s ({r['volume_cc']:.2f} cc, mean {r['mean']:.4f} Gy, max {r['max']:.3f} Gy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicompyler-python", help="a Python interpreter with dicompyler-core and pydicom < 3 installed")
    args = parser.parse_args()
    if args.dicompyler_python and EXAMPLE.exists():
        dicompyler_times(args.dicompyler_python)
    if EXAMPLE.exists():
        start = time.perf_counter()
        dvhs, _ = rt_dvhs(EXAMPLE / "rtss.dcm", EXAMPLE / "rtdose.dcm", REPO / "config" / "roi_names.yaml")
        total = time.perf_counter() - start
        print(f"rt_breast_example: {len(dvhs)} ROIs in {total:.1f} s (rasterising + sampling), {sum(d.total_cc for d in dvhs):.0f} cc in all")
        for roi in ("Heart", "Lt Lung", "Tumor Bed"):
            start = time.perf_counter()
            rt_dvhs(EXAMPLE / "rtss.dcm", EXAMPLE / "rtdose.dcm", REPO / "config" / "roi_names.yaml", [roi])
            print(f"  {roi}: {time.perf_counter() - start:.2f} s")
    grid = ImageGrid((512, 512, 120), (0.977, 0.977, 3.0), (-250.0, -250.0, -180.0))
    dose_grid = ImageGrid((170, 170, 120), (3.0, 3.0, 3.0), (-255.0, -255.0, -181.5))
    rng = np.random.default_rng(0)
    dose = rng.uniform(0, 70, dose_grid.shape)
    kk, jj, ii = np.ogrid[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
    for name, radius_mm in (("lung-sized", 71.0), ("heart-sized", 52.0), ("cord-sized", 16.8)):
        mask = ((ii - 256) * 0.977) ** 2 + ((jj - 256) * 0.977) ** 2 + ((kk - 60) * 3.0) ** 2 <= radius_mm**2
        start = time.perf_counter()
        dvh = dvh_from_mask(name, mask, grid, dose, dose_grid)
        print(f"realistic grid, {name} ({dvh.total_cc:.0f} cc, {dvh.dose_gy.size:,} samples): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
