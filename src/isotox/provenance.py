"""What a results folder was made from, written next to it (``results/provenance/``).

A prescription table is only evidence when a reader can tell which inputs, settings and software
produced it, and check that the tables in front of them are the ones that were produced. So the
provenance folder holds:

* ``config.yaml``: the resolved configuration (config files and ``--config`` merged, as the run saw it);
* ``files/``: copies of the protocol, beam data, ROI-name map and cohort sheet the run read;
* ``inputs.tsv``: every input file of every patient with its size and sha256;
* ``tables.tsv``: the sha256 of every result table (TSV/CSV/JSON under ``patients/`` and ``cohort/``);
* ``provenance.json``: package versions, the git commit of the workflow checkout (or
  ``"not a git checkout"``), a per-patient digest of its inputs and the sha256 of every file above.

Nothing in it depends on when or where the run happened (no timestamps, host names or durations),
so two runs of the same inputs write byte-identical provenance folders.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from isotox.atomic import atomic_path
from isotox.errors import InputDataError

# The packages whose versions change results (the science) or how they are written.
PACKAGES = ("isotox", "numpy", "scipy", "pandas", "SimpleITK", "pydicom", "scikit-image", "statsmodels",
            "lifelines", "matplotlib", "jsonschema", "PyYAML", "snakemake", "snakemake-executor-plugin-slurm")
TABLE_SUFFIXES = (".tsv", ".csv", ".json")
TABLE_FOLDERS = ("patients", "cohort")
NOT_A_CHECKOUT = "not a git checkout"


@dataclass(frozen=True)
class ProvenanceInputs:
    """Everything a provenance record is built from.

    ``patient_inputs`` maps a patient id to the folder of its input files (DICOM); ``files`` maps a
    role (``protocol``, ``cohort_sheet``, ...) to a file that was read; ``results`` is the results
    folder whose tables are hashed; ``workflow_dir`` is where the git commit is looked up.
    """

    config: Mapping[str, Any]
    files: Mapping[str, Path]
    patient_inputs: Mapping[str, Path]
    results: Path
    workflow_dir: Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files_under(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (links followed), in a platform-independent order."""
    return sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())


def input_checksums(patient_inputs: Mapping[str, Path]) -> pd.DataFrame:
    """One row per input file: patient_id, file (relative to the patient's folder), bytes, sha256."""
    rows = []
    for pid in sorted(patient_inputs):
        folder = Path(patient_inputs[pid])
        if not folder.is_dir():
            raise InputDataError(pid, folder, "the patient's input folder does not exist",
                                 "fix dicom_dir in the cohort sheet (provenance hashes every input file)")
        for path in _files_under(folder):
            rows.append({"patient_id": pid, "file": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
                         "sha256": sha256_file(path)})
    return pd.DataFrame(rows, columns=["patient_id", "file", "bytes", "sha256"])


def patient_digests(checksums: pd.DataFrame, patients: Iterable[str]) -> dict[str, str]:
    """One sha256 per patient over its (file, sha256) list: equal digests = identical input folders
    (an empty folder has the digest of the empty list)."""
    out: dict[str, str] = {}
    for pid in sorted(patients):
        rows = checksums[checksums["patient_id"] == pid]
        text = "".join(f"{f}\t{s}\n" for f, s in zip(rows["file"], rows["sha256"]))
        out[pid] = hashlib.sha256(text.encode()).hexdigest()
    return out


def result_tables(results: Path, exclude: Iterable[Path] = ()) -> pd.DataFrame:
    """sha256 of every result table: TSV/CSV/JSON under ``results/patients`` and ``results/cohort``
    (logs, benchmarks, the sample's synthetic inputs and provenance itself are not results)."""
    skip = {Path(p).resolve() for p in exclude}
    rows = []
    for name in TABLE_FOLDERS:
        folder = results / name
        if not folder.is_dir():
            continue
        for path in _files_under(folder):
            if path.suffix in TABLE_SUFFIXES and path.resolve() not in skip and not any(part.endswith(".partial") for part in path.parts):
                rows.append({"table": path.relative_to(results).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return pd.DataFrame(rows, columns=["table", "bytes", "sha256"])


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"not installed"`` when absent) and of Python itself."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state(folder: Path) -> dict[str, Any]:
    """The commit of the checkout holding ``folder`` and whether tracked files differ from it.

    ``{"commit": "not a git checkout"}`` when ``folder`` is not in a git work tree or git is absent.
    """
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=60)

    try:
        head = git("rev-parse", "HEAD")
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {"commit": NOT_A_CHECKOUT}
    if head.returncode != 0:
        return {"commit": NOT_A_CHECKOUT}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}


def _tsv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, sep="\t", index=False, lineterminator="\n")


def write_provenance(out_dir: str | Path, inputs: ProvenanceInputs) -> dict[str, Any]:
    """Write the provenance folder ``out_dir`` atomically; returns the ``provenance.json`` document."""
    out_dir = Path(out_dir)
    checksums = input_checksums(inputs.patient_inputs)
    tables = result_tables(Path(inputs.results), exclude=[out_dir])
    with atomic_path(out_dir) as staged:
        (staged / "files").mkdir(parents=True)
        (staged / "config.yaml").write_text(yaml.safe_dump(_plain(inputs.config), sort_keys=True), encoding="utf-8")
        copied = {}
        for role in sorted(inputs.files):
            source = Path(inputs.files[role])
            target = staged / "files" / f"{role}{''.join(source.suffixes) or '.txt'}"
            shutil.copyfile(source, target)
            copied[role] = {"source": str(source), "copy": target.relative_to(staged).as_posix(), "sha256": sha256_file(target)}
        _tsv(checksums, staged / "inputs.tsv")
        _tsv(tables, staged / "tables.tsv")
        doc = {
            "workflow": git_state(Path(inputs.workflow_dir)),
            "packages": package_versions(),
            "files": copied,
            "patients": {pid: {"input_files": int((checksums["patient_id"] == pid).sum()), "input_sha256": digest}
                         for pid, digest in patient_digests(checksums, inputs.patient_inputs).items()},
            "tables": len(tables),
            "sha256": {name: sha256_file(staged / name) for name in ("config.yaml", "inputs.tsv", "tables.tsv")},
        }
        (staged / "provenance.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return doc


def _plain(value: Any) -> Any:
    """Snakemake's config (and its nested mappings/sequences) as plain dicts and lists for YAML."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
