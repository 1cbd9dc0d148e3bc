"""The Snakemake workflow: lint-clean, validated config, whole DAG for any cohort size, real run.

The real run itself is the session fixture ``sample_run`` (conftest), shared with the DICOM tests.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, SAMPLE_PATIENTS, run_snakemake, write_config

pytestmark = pytest.mark.workflow


def _job_counts(stdout: str) -> dict[str, int]:
    table = stdout[stdout.index("Job stats:"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_lint_is_clean() -> None:
    proc = run_snakemake("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_default_config_dry_run_builds_the_whole_dag() -> None:
    counts = _job_counts(run_snakemake("-n", "--forceall", "--quiet", "rules").stdout)
    assert counts["sample_patient"] == 12 and counts["ingest"] == 12
    assert counts["sample_cohort_tables"] == 1


def test_thousand_patient_sample_cohort_dry_run(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", results=str(tmp_path / "r"), sample={"patients": 1000, "seed": 1, "preset": "small"})
    counts = _job_counts(run_snakemake("-n", "--forceall", "--quiet", "rules", "--configfile", str(config)).stdout)
    assert counts["sample_patient"] == 1000 and counts["ingest"] == 1000


def test_thousand_patient_cohort_sheet_dry_run(tmp_path: Path) -> None:
    """A real-cohort sheet of 1000 rows validates and gives one ingest job per patient."""
    rows = []
    for i in range(1000):
        (tmp_path / "data" / f"LUNG{i:04d}").mkdir(parents=True)
        rows.append(f"LUNG{i:04d}\t{tmp_path / 'data' / f'LUNG{i:04d}'}\t{'squamous' if i % 2 else 'adenocarcinoma'}\t{'A' if i % 3 else 'B'}")
    sheet = tmp_path / "cohort.tsv"
    sheet.write_text("patient_id\tdicom_dir\thistology\tarm\n" + "\n".join(rows) + "\n")
    config = write_config(tmp_path / "c.yaml", results=str(tmp_path / "r"), cohort={"source": "sheet", "sheet": str(sheet)})
    counts = _job_counts(run_snakemake("-n", "--quiet", "rules", "--configfile", str(config)).stdout)
    assert counts["ingest"] == 1000 and "sample_patient" not in counts


def test_config_typo_stops_with_key_and_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "typo.yaml", results="results", sample={"patients": 2, "seed": 1, "preset": "smal"})
    proc = run_snakemake("-n", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "sample.preset" in text and "typo.yaml" in text and "'smal' is not one of" in text


def test_unsafe_patient_id_in_sheet_stops_the_run(tmp_path: Path) -> None:
    sheet = tmp_path / "cohort.tsv"
    sheet.write_text("patient_id\tdicom_dir\thistology\n../evil\td\tsquamous\n")
    config = write_config(tmp_path / "c.yaml", results="results", cohort={"source": "sheet", "sheet": str(sheet)})
    proc = run_snakemake("-n", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert "../evil" in proc.stdout + proc.stderr and str(sheet) in proc.stdout + proc.stderr


def test_real_run_writes_patients_tables_logs_and_benchmarks(sample_run: Path) -> None:
    sample = sample_run / "sample"
    patients = sorted(p.name for p in sample.glob("SAMPLE*"))
    assert patients == [f"SAMPLE{i:03d}" for i in range(1, SAMPLE_PATIENTS + 1)]
    clinical = pd.read_csv(sample / "clinical.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(clinical["patient_id"]) == patients
    sheet = pd.read_csv(sample / "cohort.tsv", sep="\t", dtype=str)
    assert all(Path(d).is_dir() for d in sheet["dicom_dir"])
    for pid in patients:
        assert "done" in (sample_run / "logs" / "sample_patient" / f"{pid}.log").read_text()
        for stage, marker in (("ingest", "metadata.json"), ("register", "qc.json"), ("segment", "segment.json"), ("perfusion", "perfusion.json"), ("plan", "plan.json")):
            assert (sample_run / "patients" / pid / stage / marker).is_file(), (pid, stage)
            assert (sample_run / "logs" / stage / f"{pid}.log").is_file()
        assert "roles" in (sample_run / "logs" / "ingest" / f"{pid}.log").read_text()
        assert (sample_run / "benchmarks" / "sample_patient" / f"{pid}.tsv").is_file()
        truth = json.loads((sample / pid / "ground_truth.json").read_text())
        assert truth["patient_id"] == pid
    assert not list(sample_run.rglob("*.partial")), "a half-written output was left behind"
    table = pd.read_csv(sample_run / "cohort" / "patients.tsv", sep="\t")
    assert list(table["patient_id"]) == patients and "gtv_pet_suvmax" in table.columns and "gtv_ktrans_median" in table.columns and "boost_feasible" in table.columns
    assert json.loads((sample_run / "cohort" / "outcomes" / "summary.json").read_text())["patients"] == SAMPLE_PATIENTS


def test_report_has_the_categories(sample_run: Path, tmp_path: Path) -> None:
    config = write_config(sample_run.parent / "sample_config.yaml", results=str(sample_run),
                          sample={"patients": SAMPLE_PATIENTS, "seed": 20240101, "preset": "small"})
    report = tmp_path / "report.zip"
    run_snakemake("--configfile", str(config), "--report", str(report))
    import zipfile

    with zipfile.ZipFile(report) as archive:
        names = archive.namelist()
        text = " ".join(archive.read(n).decode("utf-8", "ignore") for n in names if n.endswith((".html", ".js")))
    for category in ("Per-patient QC", "Survival", "Toxicity", "Simon monitor", "Quality of life", "Cohort tables"):
        assert category in text, category
    assert any(n.endswith("km_LPFS.png") for n in names) and any("fdg_fused.png" in n for n in names)


def test_rerun_has_nothing_to_do(sample_run: Path) -> None:
    config = write_config(sample_run.parent / "sample_config.yaml", results=str(sample_run),
                          sample={"patients": SAMPLE_PATIENTS, "seed": 20240101, "preset": "small"})
    proc = run_snakemake("-n", "--configfile", str(config))
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_snakefile_is_thin_and_isotox_never_imports_snakemake() -> None:
    snakefile = (REPO / "Snakefile").read_text()
    assert "rule all" in snakefile and snakefile.count("\nrule ") == 1
    for path in (REPO / "src" / "isotox").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "snakemake" for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "snakemake", path
