"""Time for Snakemake to build the whole DAG (dry run) of a large sample cohort.

The workflow has no checkpoints on its main path, so the DAG of any cohort is known up front;
this prints how long that takes for N patients (default 1000).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        config["results"] = str(Path(tmp) / "results")
        config["sample"]["patients"] = args.patients
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile", str(path)],
                              cwd=REPO, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
    total = next((line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("total")), "?")
    print(f"patients={args.patients} jobs={total} dry_run_s={seconds:.1f}")


if __name__ == "__main__":
    main()
