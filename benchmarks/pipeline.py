"""Every stage of one sample patient through the ``isotox`` CLI, then the peers on the same input.

One command: builds a sample patient (``isotox sample-cohort``, one patient, or reuses the one in
``--workdir``), runs ingest, register, segment, perfusion and plan, each as its own child process,
and prints wall time, CPU time (user + sys of that child) and peak RSS per stage. Then, in the same
run and on the same input:

* the planning-CT conversion: ``isotox ingest`` of a folder holding the planning CT alone against
  dcm2niix ``-z y`` (gzip, like isotox's .nii.gz) and ``-z n``;
* the DVH of the clinical example ``shared/data/rt_breast_example``: ``isotox dvh`` against
  dicompyler-core (in its own virtual environment in the workdir: it needs pydicom < 3) and
  plastimatch (``convert`` + ``dvh``).

The header records the date, the git commit (and whether the tree had uncommitted changes), the
machine and its load: other processes on a shared machine slow every figure down.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _child import REPO, Measurement, dcm2niix_binary, isotox, run_measured

CONFIG = REPO / "config" / "config.yaml"
EXAMPLE = REPO.parent / "shared" / "data" / "rt_breast_example"
PATIENT = "SAMPLE001"


@dataclass(frozen=True)
class Row:
    name: str
    cost: Measurement
    note: str = ""


def _git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{commit}" + (" with uncommitted changes" if git("status", "--porcelain") else "")


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({model}), {mem_kb / 2**20:.0f} GiB, Python {platform.python_version()}"


def _load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def sample_patient(workdir: Path, preset: str) -> tuple[Path, dict[str, str], Row | None]:
    """The sample patient of ``workdir`` (generated when absent): its DICOM folder, its cohort row,
    and the generation's cost (None when reused)."""
    sample = workdir / "sample"
    row = None
    if not (sample / "cohort.tsv").is_file():
        cost = run_measured(isotox("sample-cohort", "--patients", "1", "--preset", preset, str(sample)), log=workdir / "logs" / "sample.log", cwd=REPO)
        row = Row(f"sample-cohort ({preset})", cost, "generation, not a stage")
    truth = json.loads((sample / PATIENT / "ground_truth.json").read_text())
    if truth["preset"] != preset:
        sys.exit(f"{sample} holds a '{truth['preset']}' patient, not '{preset}': use another --workdir")
    with open(sample / "cohort.tsv", newline="") as f:
        cohort = next(r for r in csv.DictReader(f, delimiter="\t") if r["patient_id"] == PATIENT)
    return sample / PATIENT / "dicom", cohort, row


def stage_commands(dicom: Path, patient: Path, cohort: dict[str, str]) -> list[tuple[str, list[str]]]:
    """The CLI call of each stage, with the arguments the workflow's rules give it (config/config.yaml)."""
    config = str(CONFIG)
    arm = ["--arm", cohort["arm"]] if cohort.get("arm") in ("A", "B", "not_randomized") else []
    return [
        ("ingest", ["ingest", str(dicom), str(patient), "--roi-names", str(REPO / "config" / "roi_names.yaml")]),
        ("register", ["register", str(patient), "--config", config, "--threads", "2"]),  # the rule's threads
        ("segment", ["segment", str(patient), "--histology", cohort["histology"], "--config", config]),
        ("perfusion", ["perfusion", str(patient), "--config", config]),
        ("plan", ["plan", str(patient), "--config", config, *arm]),
    ]


def ct_peers(patient: Path, workdir: Path) -> list[Row]:
    """isotox's planning-CT ingest against dcm2niix on the same files (the planning CT alone)."""
    folder = workdir / "planning_ct_only"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "dicom").mkdir(parents=True)
    with open(patient / "ingest" / "series.tsv", newline="") as f:
        ct = next(r for r in csv.DictReader(f, delimiter="\t") if r["role"] == "planning_ct")
    # the sample writes one folder per series (no pydicom here: see dicompyler_script)
    files = sorted(p for p in Path(ct["folder"]).iterdir() if p.is_file())
    if len(files) != int(ct["n_files"]):
        sys.exit(f"{ct['folder']} holds {len(files)} files, the planning CT {ct['n_files']}: not one folder per series")
    for p in files:
        (folder / "dicom" / p.name).symlink_to(p.resolve())
    logs = workdir / "logs"
    rows = [Row("isotox ingest (planning CT alone)", run_measured(isotox("ingest", str(folder / "dicom"), str(folder / "isotox" / PATIENT)), log=logs / "ct_isotox.log", cwd=REPO),
                f"{len(files)} files -> int16 .nii.gz")]
    dcm2niix = dcm2niix_binary()
    if dcm2niix is None:
        return rows + [Row("dcm2niix", Measurement(0, 0, 0, 0, -1), "not installed (pip install dcm2niix)")]
    for z, what in (("y", "gzip .nii.gz"), ("n", "uncompressed .nii")):
        out = folder / f"dcm2niix_{z}"
        out.mkdir()
        cost = run_measured([dcm2niix, "-z", z, "-o", str(out), str(folder / "dicom")], log=logs / f"ct_dcm2niix_{z}.log")
        rows.append(Row(f"dcm2niix -z {z}", cost, what))
    return rows


def dicompyler_script() -> str:
    """The dicompyler-core timing script of benchmarks/dvh.py, read from its source rather than
    imported: importing it would load numpy and isotox into this parent, and a child's peak RSS
    (ru_maxrss) starts at the parent's size when it is forked."""
    tree = ast.parse((Path(__file__).parent / "dvh.py").read_text(encoding="utf-8"))
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_DICOMPYLER" for t in node.targets))


def dicompyler_python(workdir: Path) -> tuple[str | None, str]:
    """A Python with dicompyler-core (a venv in the workdir, created once), or None and why not."""
    venv = workdir / "dicompyler-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        log = workdir / "logs" / "dicompyler-venv.log"
        try:
            run_measured([sys.executable, "-m", "venv", str(venv)], log=log)
            run_measured([str(python), "-m", "pip", "install", "--quiet", "dicompyler-core", "pydicom<3"], log=log)
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(venv, ignore_errors=True)
            return None, f"dicompyler-core could not be installed ({(exc.output or '').strip().splitlines()[-1:] or exc})"
    return str(python), ""


def dvh_peers(workdir: Path) -> list[Row]:
    """The DVH of every ROI of the clinical example: isotox, dicompyler-core, plastimatch."""
    if not EXAMPLE.is_dir():
        return [Row("DVH peers", Measurement(0, 0, 0, 0, -1), f"{EXAMPLE} not found")]
    logs, rtss, rtdose = workdir / "logs", str(EXAMPLE / "rtss.dcm"), str(EXAMPLE / "rtdose.dcm")
    rows = [Row("isotox dvh", run_measured(isotox("dvh", rtss, rtdose), log=logs / "dvh_isotox.log", cwd=REPO), "every ROI")]
    python, why = dicompyler_python(workdir)
    if python is None:
        rows.append(Row("dicompyler-core", Measurement(0, 0, 0, 0, -1), why))
    else:
        cost = run_measured([python, "-c", dicompyler_script(), rtss, rtdose], log=logs / "dvh_dicompyler.log")
        result = json.loads((logs / "dvh_dicompyler.log").read_text().strip().splitlines()[-1])
        rows.append(Row("dicompyler-core get_dvh", cost, f"every ROI, own interpreter ({result['total_s']:.1f} s inside get_dvh)"))
    plastimatch = shutil.which("plastimatch")
    if plastimatch is None:
        rows.append(Row("plastimatch", Measurement(0, 0, 0, 0, -1), "not installed (apt-get install plastimatch)"))
        return rows
    out = workdir / "plastimatch"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    convert = run_measured([plastimatch, "convert", "--input", rtss, "--input-dose-img", rtdose, "--output-ss-img", str(out / "ss.nrrd"),
                            "--output-ss-list", str(out / "ss.txt"), "--output-dose-img", str(out / "dose.nrrd")], log=logs / "dvh_plastimatch_convert.log")
    dvh = run_measured([plastimatch, "dvh", "--input-ss-img", str(out / "ss.nrrd"), "--input-ss-list", str(out / "ss.txt"), "--input-dose", str(out / "dose.nrrd"),
                        "--num-bins", "1000", "--bin-width", "0.01", "--output-csv", str(out / "dvh.csv")], log=logs / "dvh_plastimatch.log")
    both = Measurement(convert.wall_s + dvh.wall_s, convert.user_s + dvh.user_s, convert.sys_s + dvh.sys_s, max(convert.peak_mb, dvh.peak_mb), 0)
    rows.append(Row("plastimatch convert + dvh", both, "every ROI, 0.01 Gy bins"))
    return rows


def print_table(title: str, rows: list[Row], reference: Row | None = None) -> None:
    """A markdown table; with ``reference``, each row's wall and CPU time as a ratio to it
    (reference / row: 2.00x means the reference takes twice as long). CPU ratios are the steadier
    figure on a shared machine, where the wall time also measures the other processes."""
    print(f"\n{title}")
    ratio = " | wall ratio | CPU ratio" if reference is not None else ""
    print(f"| step | wall s | CPU s | peak RSS MB{ratio} | note |")
    print("| --- | ---: | ---: | ---:" + (" | ---: | ---:" if reference is not None else "") + " | --- |")
    for row in rows:
        c = row.cost
        if c.returncode != 0:  # not run (-1) or failed
            missing = " | -" * (4 if reference is not None else 2)
            print(f"| {row.name} | -{missing} | {row.note or f'failed (exit {c.returncode})'} |")
            continue
        vs = ""
        if reference is not None:
            r = reference.cost
            vs = f" | {r.wall_s / c.wall_s:.2f}x | " + (f"{r.cpu_s / c.cpu_s:.2f}x" if c.cpu_s > 0 else "-")
        print(f"| {row.name} | {c.wall_s:.1f} | {c.cpu_s:.1f} | {c.peak_mb:.0f}{vs} | {row.note} |")


def run_stages(dicom: Path, patient: Path, cohort: dict[str, str], logs: Path) -> list[Row]:
    """Each stage in turn; a failed stage is reported (and its log named), the next ones still run."""
    rows = []
    for stage, argv in stage_commands(dicom, patient, cohort):
        cost = run_measured(isotox(*argv), log=logs / f"{stage}.log", cwd=REPO, check=False)
        note = "" if cost.returncode == 0 else f"failed (exit {cost.returncode}): see logs/{stage}.log"
        print(f"  {stage}: {cost.wall_s:.1f} s wall, {cost.cpu_s:.1f} s CPU, {cost.peak_mb:.0f} MB {note}", flush=True)
        rows.append(Row(stage, cost, note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["small", "realistic"])
    parser.add_argument("--workdir", type=Path, help="folder for the sample patient (reused when present), logs and outputs (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the stage outputs in WORKDIR/results/ (and a temporary workdir)")
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="isotox-pipeline-"))).resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    print(f"isotox pipeline benchmark, preset {args.preset}, {time.strftime('%Y-%m-%d %H:%M %Z')}, commit {_git_state()}")
    print(f"machine: {_machine()}; {_load()} at start")
    print(f"workdir: {workdir} (logs in logs/)")
    try:
        dicom, cohort, generated = sample_patient(workdir, args.preset)
        patient = workdir / "results" / PATIENT
        shutil.rmtree(patient, ignore_errors=True)
        rows = run_stages(dicom, patient, cohort, workdir / "logs")
        total = Measurement(sum(r.cost.wall_s for r in rows), sum(r.cost.user_s for r in rows), sum(r.cost.sys_s for r in rows),
                            max(r.cost.peak_mb for r in rows), max(abs(r.cost.returncode) for r in rows))
        print_table("Stages (each its own `isotox` child process)", [*([generated] if generated else []), *rows, Row("all five stages", total, "peak: the largest stage" if total.returncode == 0 else "a stage failed")])
        ct = ct_peers(patient, workdir)
        print_table("Planning CT to NIfTI (ratios: isotox's time / the peer's)", ct, reference=ct[0])
        dvh = dvh_peers(workdir)
        print_table("DVH of every ROI of rt_breast_example (ratios: isotox's time / the peer's)", dvh, reference=dvh[0])
        print(f"\n{_load()} at the end")
    finally:
        if not args.keep:
            shutil.rmtree(workdir / "results", ignore_errors=True)
            shutil.rmtree(workdir / "planning_ct_only", ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
