"""DVH time per structure on the clinical RT example and on a realistic planning grid.

0. In the same run, on ../shared/data/rt_breast_example: ``isotox dvh`` (a child process: CPU s,
   wall s, peak RSS; and in-process, without the interpreter and imports) against plastimatch
   (``plastimatch convert --input rtss.dcm --output-ss-img --output-ss-list --fixed rtdose.dcm`` +
   ``plastimatch dvh``; the example has a single CT slice, so the structures are rasterised on the
   dose grid, ``--fixed``, instead of ``--referenced-ct``), and each one's mean dose against the
   TPS's own DVH stored in the RTDOSE (DVHSequence, cumulative, 0.01 Gy bins).
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
import shutil
import subprocess
import sys
import tempfile
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


def _child(args: list[str]) -> tuple[float, float, float, str]:
    """(CPU s, wall s, peak RSS MB, stdout) of one command, measured by a fresh wrapper process."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True); w = time.perf_counter() - t; "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); sys.stderr.write(p.stdout); "
            "print(u.ru_utime + u.ru_stime, w, u.ru_maxrss / 1024.0)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    cpu, wall, rss = (float(v) for v in done.stdout.split())
    return cpu, wall, rss, done.stderr


def tps_means(rtdose: Path, rtss: Path) -> dict[str, float]:
    """Mean dose of each ROI from the TPS's cumulative DVH in the RTDOSE (bin widths and volumes)."""
    import pydicom

    names = {int(r.ROINumber): str(r.ROIName) for r in pydicom.dcmread(rtss).StructureSetROISequence}
    out = {}
    for d in pydicom.dcmread(rtdose, stop_before_pixels=True).get("DVHSequence", []):
        data = np.asarray(d.DVHData, dtype=float).reshape(-1, 2)
        widths, cumulative = data[:, 0] * float(d.DVHDoseScaling), data[:, 1]
        lower = np.concatenate([[0.0], np.cumsum(widths)[:-1]])
        differential = cumulative - np.concatenate([cumulative[1:], [0.0]])
        if cumulative[0] > 0:
            out[names[int(d.DVHReferencedROISequence[0].ReferencedROINumber)]] = float(np.dot(differential, lower + widths / 2) / cumulative[0])
    return out


def plastimatch_means(csv: Path, rtdose: Path, rtss: Path) -> dict[str, float]:
    """Mean dose from plastimatch's cumulative DVH (percent per bin lower edge)."""
    import pandas as pd

    table = pd.read_csv(csv)
    dose = table.iloc[:, 0].to_numpy(float)
    width = float(np.diff(dose).mean())
    out = {}
    for column in table.columns[1:]:
        cumulative = table[column].to_numpy(float)
        if cumulative[0] > 0:
            differential = cumulative - np.concatenate([cumulative[1:], [0.0]])
            out[column.strip()] = float(np.dot(differential, dose + width / 2) / cumulative[0])
    return out


def same_run_comparison() -> None:
    rtss, rtdose = EXAMPLE / "rtss.dcm", EXAMPLE / "rtdose.dcm"
    tps = tps_means(rtdose, rtss)
    cpu, wall, rss, out = _child([sys.executable, "-m", "isotox", "dvh", str(rtss), str(rtdose), "--roi-names", str(REPO / "config" / "roi_names.yaml")])
    lines = [line.split("\t") for line in out.strip().splitlines()]
    header = lines[0]
    ours = {row[0]: float(row[header.index("Dmean")]) for row in lines[1:] if row[header.index("Dmean")] not in ("", "nan")}
    start_cpu, start = time.process_time(), time.perf_counter()
    rt_dvhs(rtss, rtdose, REPO / "config" / "roi_names.yaml")
    inproc_cpu, inproc_wall = time.process_time() - start_cpu, time.perf_counter() - start
    print(f"isotox dvh (10 ROIs): {cpu:.2f} s CPU, {wall:.2f} s wall, peak RSS {rss:.0f} MB (process); "
          f"in-process without interpreter and imports {inproc_cpu:.2f} s CPU, {inproc_wall:.2f} s wall")
    rows = [("isotox", ours)]
    if shutil.which("plastimatch"):
        with tempfile.TemporaryDirectory() as tmp:
            ss_img, ss_list, csv = Path(tmp) / "ss.nrrd", Path(tmp) / "ss.txt", Path(tmp) / "dvh.csv"
            c1, w1, r1, _ = _child(["plastimatch", "convert", "--input", str(rtss), "--output-ss-img", str(ss_img), "--output-ss-list", str(ss_list),
                                    "--fixed", str(rtdose)])
            c2, w2, r2, _ = _child(["plastimatch", "dvh", "--input-ss-img", str(ss_img), "--input-ss-list", str(ss_list), "--input-dose", str(rtdose),
                                    "--output-csv", str(csv), "--dose-units", "gy", "--num-bins", "1500", "--bin-width", "0.01"])
            print(f"plastimatch convert + dvh: {c1 + c2:.2f} s CPU, {w1 + w2:.2f} s wall, peak RSS {max(r1, r2):.0f} MB")
            rows.append(("plastimatch", plastimatch_means(csv, rtdose, rtss)))
    else:
        print("plastimatch not installed: no comparison")
    for label, means in rows:
        errors = {n: abs(means[n] - tps[n]) / tps[n] for n in tps if n in means and tps[n] > 0.05}
        worst = max(errors, key=errors.get) if errors else None
        print(f"  {label} mean dose vs the TPS DVH (RTDOSE DVHSequence), {len(errors)} ROIs with mean > 0.05 Gy: median "
              f"{100 * float(np.median(list(errors.values()))):.2f} %, worst {100 * errors[worst]:.2f} % ({worst})" if errors else f"  {label}: no ROI matched")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicompyler-python", help="a Python interpreter with dicompyler-core and pydicom < 3 installed")
    args = parser.parse_args()
    if EXAMPLE.exists():
        same_run_comparison()
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
