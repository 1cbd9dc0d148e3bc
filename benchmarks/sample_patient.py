"""Time and peak memory to generate one sample patient (default: the 'realistic' preset).

Runs the generator in a child process so the peak resident memory (ru_maxrss) is that of the
generation alone. Prints one line per run and a summary.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys
from isotox.sample import write_sample_patient
write_sample_patient(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="realistic", choices=["small", "realistic"])
    parser.add_argument("--index", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20240101)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "patient"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHILD, str(out), str(args.index), str(args.seed), args.preset], check=True)
        seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        files = [f for f in out.rglob("*") if f.is_file()]
        size_mb = sum(f.stat().st_size for f in files) / 2**20
    print(f"preset={args.preset} patient={args.index} time_s={seconds:.1f} peak_rss_mb={peak_mb:.0f} files={len(files)} size_mb={size_mb:.0f}")


if __name__ == "__main__":
    main()
