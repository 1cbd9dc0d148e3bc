"""Helpers shared by the benchmark scripts: run a command as a child process and measure it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Measurement:
    """What one child process cost: wall time, CPU time (user + sys) and peak resident memory."""

    wall_s: float
    user_s: float
    sys_s: float
    peak_mb: float
    returncode: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def run_measured(args: list[str], *, log: Path | None = None, cwd: Path | None = None, check: bool = True) -> Measurement:
    """Run ``args`` as a child process, output to ``log`` (stdout and stderr); measure that child alone.

    Why ``os.wait4``: it returns the resource usage of the one child waited for (and of the
    processes it waited for itself), so a peak is not the running maximum of every earlier,
    bigger child of the benchmark, as ``getrusage(RUSAGE_CHILDREN)`` would report.
    """
    with (open(log, "w+", encoding="utf-8") if log is not None else tempfile.TemporaryFile("w+", encoding="utf-8")) as out:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if check and proc.returncode != 0:
            out.seek(0)
            raise subprocess.CalledProcessError(proc.returncode, args, output="\n".join(out.read().splitlines()[-20:]))
    return Measurement(wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024.0, proc.returncode)


def measure(args: list[str]) -> tuple[float, float]:
    """Run ``args``; return (wall seconds, peak RSS in MB of that command alone)."""
    m = run_measured(args)
    return m.wall_s, m.peak_mb


def generate_patient(folder: Path, preset: str, index: int = 1, seed: int = 20240101) -> float:
    """Synthesise one sample patient into ``folder``; returns the time taken."""
    code = f"from isotox.sample import write_sample_patient; write_sample_patient({str(folder)!r}, {index}, {seed}, {preset!r})"
    seconds, _ = measure([sys.executable, "-c", code])
    return seconds


def isotox(*args: str) -> list[str]:
    return [sys.executable, "-m", "isotox", *args]


def dcm2niix_binary() -> str | None:
    """The dcm2niix executable itself: the pip package's binary rather than its Python launcher
    (whose interpreter start-up and memory would be counted as dcm2niix's), else the one on PATH."""
    spec = importlib.util.find_spec("dcm2niix")  # located, not imported
    if spec is None or spec.origin is None:
        return shutil.which("dcm2niix")
    binary = Path(spec.origin).parent / "dcm2niix"
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else shutil.which("dcm2niix")
