"""The workflow under faults (issue 17): bad patients fail alone, kills do not corrupt, exit codes mean something.

Runs use their own working directory (``--directory``), so the Snakemake lock and metadata of a
test never touch the checkout's ``.snakemake`` (other runs may be going on there).

* ``--keep-going`` with one patient's bad planning CT and one missing DICOM folder: those jobs
  fail with exit code 2, the good patient goes on, and the cohort table lists all three, the
  failed ones with their stage and first error line; the next run's table waits for the good
  patient only (stopped at ingest to stay small: tiny phantoms, a few seconds per job);
* SIGKILL of snakemake (its whole process group, like a node lost) in the middle of ingestion,
  then a rerun: refused on the lock, completes after ``--unlock``, and gives the same results as
  an uninterrupted run; nothing half-written is taken as an output;
* the step exit codes: 2 and one clear last log line for bad input, 1 with the traceback for a bug.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from tests.clinical_patient import build_patient, tree_digest
from tests.conftest import REPO
from tests.faults.common import copy_input, dicom_files, edit

pytestmark = pytest.mark.workflow


def _config(work: Path, sheet_rows: list[tuple[str, Path, str]]) -> Path:
    """A sheet-cohort config in ``work`` (absolute paths: the run's working directory is ``work``)."""
    work.mkdir(parents=True, exist_ok=True)
    sheet = work / "cohort.tsv"
    sheet.write_text("patient_id\tdicom_dir\thistology\n" + "".join(f"{pid}\t{folder}\t{histology}\n" for pid, folder, histology in sheet_rows))
    doc = _absolute(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    doc.update(results=str(work / "results"), cohort={"source": "sheet", "sheet": str(sheet)})
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _absolute(value: object) -> object:
    """The config with every relative path to a file of the checkout (protocol, beams...) made absolute."""
    if isinstance(value, dict):
        return {k: _absolute(v) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("config/") and (REPO / value).exists():
        return str(REPO / value)
    return value


def _snakemake(work: Path, config: Path, *args: str, **popen: object) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work), "--configfile", str(config), *args]


def _run(work: Path, config: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_snakemake(work, config, *args), capture_output=True, text=True, timeout=timeout, cwd=work,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


# --- exit codes and the log of one step -------------------------------------------------------

STEP = """
import sys
from isotox.errors import InputDataError
from isotox.runlog import log_to_file
log = log_to_file(sys.argv[1])
log.info("working on it")
if sys.argv[2] == "bad_input":
    raise InputDataError("P7", "/data/P7/ct/1.dcm", "PixelSpacing (0028,0030) is missing", "re-export the series")
if sys.argv[2] == "bug":
    {}["no such key"]
log.info("done")
"""


@pytest.mark.parametrize(("kind", "code"), [("bad_input", 2), ("bug", 1), ("ok", 0)])
def test_step_exit_code_log_and_failure_record(kind: str, code: int, tmp_path: Path) -> None:
    """Bad input: exit 2, the log's last line is the one clear message (no traceback before it).
    A bug: exit 1, the traceback in the log. Both leave a failure record; success removes an old one."""
    from isotox.runlog import failure_record_path, read_failure

    log = tmp_path / "logs" / "ingest" / "P7.log"
    failure_record_path(log).parent.mkdir(parents=True)
    failure_record_path(log).write_text(json.dumps({"error": "an older attempt"}))
    proc = subprocess.run([sys.executable, "-c", STEP, str(log), kind], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == code, proc.stderr
    text = log.read_text()
    last = text.rstrip("\n").splitlines()[-1]
    record = read_failure(log)
    if kind == "ok":
        assert record is None and last.endswith("done")
        return
    assert record is not None and record["exit_code"] == code and record["stage"] == "ingest" and record["patient"] == "P7"
    if kind == "bad_input":
        assert "Traceback" not in text
        assert last == "ERROR (bad input, exit code 2): patient P7: /data/P7/ct/1.dcm: PixelSpacing (0028,0030) is missing -> re-export the series"
        assert record["kind"] == "bad_input" and record["error"].startswith("patient P7: ")
    else:
        assert "Traceback (most recent call last)" in text and "KeyError: 'no such key'" in text
        assert last.startswith("ERROR (a bug in isotox, exit code 1") and record["kind"] == "bug"


# --- --keep-going: bad patients fail alone, the cohort table lists them -------------------------

def _job_counts(text: str) -> dict[str, int]:
    import re

    table = text[text.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_keep_going_bad_patients_fail_alone_and_are_listed(sample_run: Path, tmp_path: Path) -> None:
    """The default target with --keep-going. GOOD (a sample patient's DICOM, from the sample run)
    goes through every stage in this run;
    BAD (the phantom's planning CT without PixelSpacing) and GONE (no DICOM folder) fail their
    ingest with exit code 2 and a clear last log line, inputs untouched. The run ends failed, and
    the cohort table patients.tsv is written in the same run: every patient, GOOD ok, the failed
    ones with stage and first error line. Nearest wrong answers: no table until a
    rerun (the rule waited for BAD), a table without the failed patients, or a stand-in under
    another name. A run whose targets leave a patient unfinished gives patients.incomplete.tsv
    instead (never patients.tsv, which a rerun would take as finished).
    The next run has nothing to do for the table (dry run: no job of BAD or GONE in its DAG)."""
    good = sample_run / "sample" / "SAMPLE001" / "dicom"
    bad = copy_input(build_patient(tmp_path / "phantom"), tmp_path / "data" / "BAD")
    edit(dicom_files(bad / "ct"), lambda ds: delattr(ds, "PixelSpacing"))
    before = {**tree_digest(tmp_path / "data"), **tree_digest(good)}
    work = tmp_path / "work"
    config = _config(work, [("GOOD", good, "adenocarcinoma"), ("BAD", bad, "squamous"), ("GONE", tmp_path / "data" / "GONE", "squamous")])
    results = work / "results"
    proc = _run(work, config, "--cores", "2", "--keep-going")  # the default target, as a user runs it
    assert proc.returncode != 0, "two patients failed: the run must say so"
    assert {**tree_digest(tmp_path / "data"), **tree_digest(good)} == before, "an input was modified"
    assert (results / "patients" / "GOOD" / "plan" / "plan.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "exit status 2" in proc.stdout + proc.stderr
    for pid, message in (("BAD", "PixelSpacing (0028,0030) is missing"), ("GONE", "DICOM folder not found")):
        log = (results / "logs" / "ingest" / f"{pid}.log").read_text()
        last = log.rstrip().splitlines()[-1]
        assert "Traceback" not in log and last.startswith(f"ERROR (bad input, exit code 2): patient {pid}: ") and message in last, log[-1500:]
        assert not (results / "patients" / pid / "ingest").exists()

    assert not (results / "cohort" / "patients.incomplete.tsv").exists()  # the final table replaced the stand-in
    table = pd.read_csv(results / "cohort" / "patients.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("patient_id")
    assert sorted(table.index) == ["BAD", "GONE", "GOOD"]
    assert table.loc["GOOD", "status"] == "ok" and table.loc["GOOD", "error"] == "" and table.loc["GOOD", "dose_source"] != ""
    for pid, message in (("BAD", "PixelSpacing (0028,0030) is missing"), ("GONE", "DICOM folder not found")):
        assert table.loc[pid, "status"] == "failed" and table.loc[pid, "failed_stage"] == "ingest"
        assert message in table.loc[pid, "error"] and f"patient {pid}" in table.loc[pid, "error"]

    dry = _run(work, config, "-n", "--quiet", "rules", "--", str(results / "cohort" / "patients.tsv"))
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "Job stats:" not in dry.stdout + dry.stderr, dry.stdout[-3000:]  # nothing to do: the table is final

    other = tmp_path / "partial"  # only ingest asked for: GOOD is unfinished, so the table is a stand-in
    partial_config = _config(other, [("GOOD", good, "adenocarcinoma"), ("BAD", bad, "squamous")])
    partial = _run(other, partial_config, "--cores", "2", "--keep-going", *(str(other / "results" / "patients" / p / "ingest") for p in ("GOOD", "BAD")))
    assert partial.returncode != 0 and not (other / "results" / "cohort" / "patients.tsv").exists()
    stand_in = pd.read_csv(other / "results" / "cohort" / "patients.incomplete.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("patient_id")
    assert stand_in.loc["GOOD", "status"] == "incomplete" and stand_in.loc["BAD", "status"] == "failed"


# --- SIGKILL mid-run, then rerun -------------------------------------------------------------

def test_sigkill_mid_run_then_unlock_and_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Snakemake and its jobs are killed (SIGKILL to the process group) while ingesting the second of
    two patients (its staging folder exists, its output does not). The rerun stops on the lock (LockException), completes after --unlock, leaves
    no *.partial output taken as a result, and gives the same images and metadata as a run that was
    never interrupted (compared voxel for voxel)."""
    data = tmp_path / "data"
    patients = {pid: build_patient(data / pid) for pid in ("K1", "K2")}
    rows = [(pid, folder, "adenocarcinoma") for pid, folder in patients.items()]
    targets = lambda work: [str(work / "results" / "patients" / pid / "ingest") for pid in patients]  # noqa: E731

    reference = tmp_path / "reference"
    ref_config = _config(reference, rows)
    proc = _run(reference, ref_config, "--cores", "1", *targets(reference))
    assert proc.returncode == 0, proc.stderr[-3000:]

    work = tmp_path / "killed"
    config = _config(work, rows)
    job = subprocess.Popen(_snakemake(work, config, "--cores", "1", *targets(work)), cwd=work, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    results = work / "results" / "patients"
    while time.monotonic() < deadline and not (list(results.glob("*/ingest")) and list(results.glob("*/.ingest.*.partial"))):
        time.sleep(0.02)  # the first patient done, the second one's ingest being written
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    done = [p for p in patients if (work / "results" / "patients" / p / "ingest").is_dir()]
    assert len(done) == 1, f"the kill was not mid-run: {done}"
    assert list((work / "results" / "patients").glob("*/.ingest.*.partial")), "the second ingest was not under way"

    locked = _run(work, config, "--cores", "1", *targets(work))
    assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr
    assert _run(work, config, "--unlock", *targets(work)).returncode == 0
    rerun = _run(work, config, "--cores", "1", "--rerun-incomplete", *targets(work))
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    for pid in patients:
        got, want = work / "results" / "patients" / pid / "ingest", reference / "results" / "patients" / pid / "ingest"
        assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*")) == sorted(p.relative_to(want).as_posix() for p in want.rglob("*"))
        assert json.loads((got / "metadata.json").read_text()) == json.loads((want / "metadata.json").read_text())
        for image in want.rglob("*.nii.gz"):
            a, b = sitk.ReadImage(str(got / image.relative_to(want))), sitk.ReadImage(str(image))
            assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
            np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
