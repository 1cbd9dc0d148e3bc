"""Shared fixtures: the repository root and one real run of the workflow on a small sample cohort.

The sample cohort is produced by the workflow itself (``snakemake --cores 2``), so the DICOM
tests measure exactly what a user's default run writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLE_SEED = 20240101
#: Four patients: together they hold every case the accuracy tests must meet: AORTA contoured and
#: not (the aorta found on the CT), lungs contoured and not (CT lungs), a 4D planning CT (SAMPLE004),
#: breathing shifts of 5-13 mm and a PET field of view that ends inside the aorta (SAMPLE003).
SAMPLE_PATIENTS = 4


def run_snakemake(*args: str, cwd: Path = REPO, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    """Run snakemake in a subprocess (as a user would) and return the completed process."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def breast_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vendored clinical RTSTRUCT/RTDOSE example, decompressed once per test session."""
    from tests.reference_data import unpack_breast_example

    return unpack_breast_example(tmp_path_factory.mktemp("rt_breast_example"))


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results folder of a real workflow run on SAMPLE_PATIENTS small sample patients.

    ``ISOTOX_TEST_SAMPLE_RUN=/some/folder`` keeps the run there between local test sessions
    (Snakemake then redoes only what is out of date); CI leaves it unset and runs afresh.
    """
    kept = os.environ.get("ISOTOX_TEST_SAMPLE_RUN")
    results = Path(kept) if kept else tmp_path_factory.mktemp("results")
    results.mkdir(parents=True, exist_ok=True)
    config = write_config(results.parent / "sample_config.yaml", results=str(results),
                          sample={"patients": SAMPLE_PATIENTS, "seed": SAMPLE_SEED, "preset": "small"})
    run_snakemake("--cores", "2", "--configfile", str(config))
    return results


def write_config(path: Path, **overrides: object) -> Path:
    """The default config with top-level keys replaced, written to ``path``."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    return path


def sample_patients(results: Path) -> list[tuple[dict, Path]]:
    """(ground truth, results/patients/PID) of every patient of a sample run, in id order."""
    import json

    out = [(json.loads(f.read_text()), results / "patients" / f.parent.name) for f in sorted((results / "sample").glob("SAMPLE*/ground_truth.json"))]
    assert out, f"no sample patients under {results}"
    return out
