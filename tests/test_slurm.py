"""The SLURM profile on a real (one-node, throw-away) SLURM cluster: the sample cohort runs as the
README says, each SLURM job holds one patient (one job for its imaging stages, one for its plan),
and every result file is byte-identical to a local run.

The local run is the session's ``sample_run`` (conftest): its results folder is moved aside, the
SLURM run writes the same path (so paths written into result files are the same), and the local
results are put back for the other tests whatever happens.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE_PATIENTS, SAMPLE_SEED, write_config
from tests.slurm_cluster import ClusterStartError, SlurmCluster

pytestmark = pytest.mark.workflow

README_COMMAND = "snakemake --configfile my_config.yaml --profile workflow/profiles/slurm"
NOT_RESULTS = ("logs", "benchmarks")  # wall-clock times and host names live here, by design
PATIENT_RULES = ("sample_patient", "ingest", "register", "segment", "perfusion", "plan", "strategies")
LOCAL_RULES = ("sample_cohort_tables", "cohort_table", "outcomes", "strategies_cohort", "provenance")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """munged + slurmctld + slurmd on this machine; stopped (by pid) after the module."""
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
    except ClusterStartError as exc:
        slurm.stop()
        pytest.fail(f"the test SLURM cluster did not start:\n{exc}")
    yield slurm
    slurm.stop()


def _result_files(results: Path) -> dict[str, bytes]:
    return {p.relative_to(results).as_posix(): p.read_bytes() for p in results.rglob("*")
            if p.is_file() and p.relative_to(results).parts[0] not in NOT_RESULTS}


def test_readme_states_the_command_we_run() -> None:
    assert README_COMMAND in (REPO / "README.md").read_text()


def test_sample_cohort_on_slurm_matches_the_local_run(sample_run: Path, cluster: SlurmCluster) -> None:
    """Byte-for-byte equality of every result file (logs and benchmarks excepted) between the local
    `--cores 2` run and the SLURM run of the same config. The nearest wrong answer is a result that
    carries when or where it was made (a `seconds` field in plan.json, a timestamp, a host name): one
    such byte fails the test. Job accounting: each SLURM job is for one patient only (the issue's
    `group-components: 4` would give one job for both), each patient has exactly one job, holding
    all of its rules (sample, imaging stages, plan, strategies), and no cohort-level local rule gets
    a SLURM job. Nearest wrong answer: two jobs per patient (the plan waiting for the cohort sheet)."""
    config = write_config(sample_run.parent / "slurm_config.yaml", results=str(sample_run),
                          sample={"patients": SAMPLE_PATIENTS, "seed": SAMPLE_SEED, "preset": "small"})
    local = sample_run.with_name(sample_run.name + ".local")
    on_slurm = sample_run.with_name(sample_run.name + ".slurm")
    shutil.move(sample_run, local)
    try:
        cmd = [sys.executable, "-m", *README_COMMAND.replace("my_config.yaml", str(config)).split()]
        watcher = cluster.watch()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600,
                              env={**cluster.env(), "PYTHONUNBUFFERED": "1"})
        jobs = watcher.stop()
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\njobs: {jobs}"
        shutil.move(sample_run, on_slurm)
    finally:
        if sample_run.exists():
            shutil.move(sample_run, on_slurm)
        shutil.move(local, sample_run)

    for job in jobs:  # what each SLURM job ran: the (rule, patient) pairs of its --target-jobs
        job["targets"] = sorted(set(re.findall(r"(\w+):pid=(\w+)", job["script"])))
    print("SLURM jobs:", *(f"{j['id']} {j['state']} cpus={j['cpus']} mem={j['mem']} {j['targets']}" for j in jobs), sep="\n  ")
    patients = [f"SAMPLE{i:03d}" for i in range(1, SAMPLE_PATIENTS + 1)]
    assert jobs and all(j["state"] == "COMPLETED" and j["targets"] for j in jobs), jobs
    for job in jobs:
        assert len({pid for _, pid in job["targets"]}) == 1, f"job {job} is not for exactly one patient"
        assert not {rule for rule, _ in job["targets"]} & set(LOCAL_RULES), f"local rule submitted: {job}"
        assert int(job["cpus"]) <= os.cpu_count(), job
    for pid in patients:
        mine = [sorted(rule for rule, p in j["targets"] if p == pid) for j in jobs if any(p == pid for _, p in j["targets"])]
        assert len(mine) == 1 and mine[0] == sorted(PATIENT_RULES), (pid, mine)

    local_files, slurm_files = _result_files(sample_run), _result_files(on_slurm)
    assert len(local_files) > 100
    assert sorted(local_files) == sorted(slurm_files), set(local_files) ^ set(slurm_files)
    differ = sorted(name for name in local_files if local_files[name] != slurm_files[name])
    print(f"compared {len(local_files)} result files byte for byte: {len(differ)} differ")
    assert not differ, differ


def test_nested_config_from_the_command_line_is_typed(tmp_path: Path) -> None:
    """`--config 'sample={"patients": 3}'` (the issue's command) gives 3 sample patients: nested
    --config values arrive as strings ('3') and are typed as a config file would type them before
    the schema sees them. Nearest wrong answers: the schema's "'3' is not of type 'integer'", or the
    default 12 patients (the override ignored). A value that is not a number is still refused."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--config", 'sample={"patients": 3}', f"results={tmp_path / 'r'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", proc.stdout, re.MULTILINE)}
    assert counts["sample_patient"] == 3 and counts["ingest"] == 3 and counts["provenance"] == 1, counts
    bad = subprocess.run([*cmd[:-2], 'sample={"patients": "three"}', cmd[-1]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "sample.patients" in bad.stdout + bad.stderr and "'three' is not of type 'integer'" in bad.stdout + bad.stderr
