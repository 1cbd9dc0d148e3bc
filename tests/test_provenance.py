"""results/provenance/: checksums against an independent hash, determinism, and what it refuses."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from isotox.errors import InputDataError
from isotox.provenance import NOT_A_CHECKOUT, ProvenanceInputs, git_state, write_provenance
from tests.conftest import REPO


def _tree(root: Path) -> ProvenanceInputs:
    """A results tree of two patients (one nested input file each) and two cohort tables."""
    for pid, payload in (("P1", b"dicom one"), ("P2", b"dicom two")):
        (root / "in" / pid / "series").mkdir(parents=True)
        (root / "in" / pid / "series" / "ct.dcm").write_bytes(payload)
        (root / "in" / pid / "notes.txt").write_bytes(pid.encode())
        stage = root / "results" / "patients" / pid / "plan"
        stage.mkdir(parents=True)
        (stage / "plan.json").write_text(json.dumps({"patient_id": pid, "prescribed_dose_gy": 66.0}))
        (stage / "dose.nii.gz").write_bytes(b"not a table")
    (root / "results" / "cohort").mkdir(parents=True)
    (root / "results" / "cohort" / "patients.tsv").write_text("patient_id\nP1\nP2\n")
    (root / "results" / "logs").mkdir()
    (root / "results" / "logs" / "plan.log").write_text("took 3.2 s on node17\n")
    protocol = root / "protocol.yaml"
    protocol.write_text("name: test\n")
    return ProvenanceInputs(config={"results": "results", "sample": {"patients": 2}}, files={"protocol": protocol},
                            patient_inputs={"P1": root / "in" / "P1", "P2": root / "in" / "P2"}, results=root / "results",
                            workflow_dir=REPO)


def test_checksums_match_an_independent_hash_and_cover_every_table(tmp_path: Path) -> None:
    """Each input file's sha256 equals hashlib on its bytes read independently, and tables.tsv lists
    exactly the TSV/JSON results (not the NIfTI, not the log). Nearest wrong answers: hashing the
    path instead of the content (the two patients' ct.dcm differ in bytes, so the digests must
    differ), or listing the log file (it must be absent)."""
    inputs = _tree(tmp_path)
    out = tmp_path / "results" / "provenance"
    doc = write_provenance(out, inputs)
    files = pd.read_csv(out / "inputs.tsv", sep="\t")
    assert len(files) == 4
    for row in files.itertuples():
        data = (tmp_path / "in" / row.patient_id / row.file).read_bytes()
        assert row.sha256 == hashlib.sha256(data).hexdigest() and row.bytes == len(data)
    assert doc["patients"]["P1"]["input_sha256"] != doc["patients"]["P2"]["input_sha256"]
    tables = pd.read_csv(out / "tables.tsv", sep="\t")
    assert sorted(tables["table"]) == ["cohort/patients.tsv", "patients/P1/plan/plan.json", "patients/P2/plan/plan.json"]
    for row in tables.itertuples():
        assert row.sha256 == hashlib.sha256((tmp_path / "results" / row.table).read_bytes()).hexdigest()
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"results": "results", "sample": {"patients": 2}}
    assert (out / "files" / "protocol.yaml").read_text() == "name: test\n"
    assert doc["files"]["protocol"]["sha256"] == hashlib.sha256(b"name: test\n").hexdigest()
    assert doc["packages"]["numpy"] not in ("", "not installed")


def test_changed_input_changes_only_that_patients_digest(tmp_path: Path) -> None:
    """One byte changed in P2's input changes P2's digest and leaves P1's (nearest wrong answer:
    one cohort-wide digest, which would flag both patients)."""
    inputs = _tree(tmp_path)
    before = write_provenance(tmp_path / "results" / "provenance", inputs)["patients"]
    (tmp_path / "in" / "P2" / "series" / "ct.dcm").write_bytes(b"dicom twO")
    after = write_provenance(tmp_path / "results" / "provenance", inputs)["patients"]
    assert after["P1"] == before["P1"] and after["P2"] != before["P2"]


def test_rewriting_gives_a_byte_identical_folder(tmp_path: Path) -> None:
    """Provenance holds no time, host or duration: writing it twice gives the same bytes in every
    file (the log's 'took 3.2 s on node17' is not copied). The earlier version of the folder is not
    hashed as a result table of the second (nearest wrong answer: tables.tsv growing by the old
    provenance.json)."""
    inputs = _tree(tmp_path)
    out = tmp_path / "results" / "provenance"
    write_provenance(out, inputs)
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_provenance(out, inputs)
    second = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert first == second
    assert b"node17" not in b"".join(first.values())


def test_git_commit_or_not_a_checkout(tmp_path: Path) -> None:
    """Inside this checkout: the commit git itself reports; outside any work tree: the words
    'not a git checkout' (nearest wrong answer: an empty or made-up commit)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert git_state(REPO)["commit"] == head.stdout.strip()
    else:
        assert git_state(REPO)["commit"] == NOT_A_CHECKOUT
    assert git_state(tmp_path) == {"commit": NOT_A_CHECKOUT}


def test_missing_input_folder_names_the_patient(tmp_path: Path) -> None:
    inputs = _tree(tmp_path)
    broken = ProvenanceInputs(**{**inputs.__dict__, "patient_inputs": {**inputs.patient_inputs, "P3": tmp_path / "in" / "P3"}})
    with pytest.raises(InputDataError, match="P3"):
        write_provenance(tmp_path / "results" / "provenance", broken)
    assert not (tmp_path / "results" / "provenance").exists()
