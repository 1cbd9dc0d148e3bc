"""Helpers shared by the benchmark scripts: run a command as a child process and measure it."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(args: list[str]) -> tuple[float, float]:
    """Run ``args``; return (wall seconds, peak RSS in MB of that command alone).

    The command runs under a fresh Python wrapper (this file as a script), so the peak is not
    inflated by earlier, bigger children of the benchmark (resource usage of children is a
    running maximum per parent).
    """
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, float(done.stdout.strip().splitlines()[-1])


def generate_patient(folder: Path, preset: str, index: int = 1, seed: int = 20240101) -> float:
    """Synthesise one sample patient into ``folder``; returns the time taken."""
    code = f"from isotox.sample import write_sample_patient; write_sample_patient({str(folder)!r}, {index}, {seed}, {preset!r})"
    seconds, _ = measure([sys.executable, "-c", code])
    return seconds


def isotox(*args: str) -> list[str]:
    return [sys.executable, "-m", "isotox", *args]


if __name__ == "__main__":  # wrapper mode: run the command, print its peak RSS (MB) last
    subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0)
