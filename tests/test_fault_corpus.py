"""The fault corpus (issue 17): every broken input gives a clear error or is handled, never a
traceback, never a silent wrong answer, and no input is modified.

Cases come from :mod:`tests.faults` (one builder per fault, applied to a copy of a good input);
each is run through the ``isotox`` CLI in-process (``isotox.cli.main``), as a user would run it:

* ``error``: exit code 2, no traceback, one line naming the patient (DICOM) or the file and key
  (documents), the problem and, for patient data, the fix after ``->``;
* ``handled``: exit code 0 and the problem recorded where a person looks: ingest ``metadata.json``
  and the cohort table's status columns (:func:`isotox.planning.summary.status_columns`), or the
  outcome tables' ``problems.tsv``.

Where a handled input still gives an image (absolute RTDOSE offsets, PET in GML or Philips CNTS),
the image is compared with the good input's: the nearest wrong answer is then the conversion
applied twice or the frames placed as relative offsets, which the tolerance below rejects.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from isotox.cli import main
from isotox.planning.summary import status_columns
from isotox.settings import read_cohort_sheet
from tests.clinical_patient import tree_digest
from tests.faults import CASES, EXISTING, FaultCase
from tests.faults.bases import build_good_inputs
from tests.faults.registry import ERROR, HANDLED

REPO = Path(__file__).resolve().parents[1]
PATIENT = "CLIN01"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_good_inputs(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def good_ingest(good: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("good_ingest") / PATIENT
    code, _, err = run_cli(["ingest", str(good["patient"]), str(out), "--patient-id", PATIENT])
    assert code == 0, err
    return out / "ingest"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``isotox ARGV`` in this process: (exit code, stdout, stderr); SystemExit counts as its code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return int(code), out.getvalue(), err.getvalue()


def _digest(path: Path) -> dict[str, str]:
    if path.is_dir():
        return tree_digest(path)
    return tree_digest(path.parent) if path.exists() else {}


def _argv(case: FaultCase, broken: Path, out: Path) -> list[str]:
    if case.command == "ingest":
        return ["ingest", str(broken), str(out / PATIENT), "--patient-id", PATIENT, *case.args]
    if case.command == "outcomes":
        return ["outcomes", str(broken), "--out", str(out / "outcomes")]
    return [*case.command.split(), str(broken)]


def _recorded(case: FaultCase, out: Path, stdout: str) -> str:
    """Everything a handled case records, as text: ingest warnings, problems and skipped files plus
    the cohort-table status columns; the outcome problems table; or the validated sheet."""
    if case.command == "ingest":
        meta = json.loads((out / PATIENT / "ingest" / "metadata.json").read_text())
        columns = status_columns(out / PATIENT)
        assert columns["status"] != "failed" and not columns["error"]
        recorded = "\n".join([*meta["warnings"], *(f"{k}: {v}" for k, v in meta["problems"].items()),
                              *(s["reason"] for s in meta["skipped_files"])])
        shown = f"{columns['ingest_warnings']}\n{columns['ingest_problems']}"
        for text in case.expect:  # what metadata records, the cohort table shows
            assert text in shown, (text, shown)
        return recorded
    if case.command == "outcomes":
        summary = json.loads((out / "outcomes" / "summary.json").read_text())
        problems = pd.read_csv(out / "outcomes" / "problems.tsv", sep="\t", dtype=str, keep_default_na=False)
        return f"{summary['patients']} patients, {len(problems)} problems\n" + problems.to_csv(sep="\t", index=False)
    return stdout


@pytest.mark.parametrize("case", CASES, ids=[c.name + ("-" + "-".join(a.strip("-") for a in c.args) if c.args else "") for c in CASES])
def test_fault(case: FaultCase, good: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    broken = case.build(good[case.base], tmp_path / "broken" / good[case.base].name)
    before = _digest(broken)
    code, stdout, stderr = run_cli(_argv(case, broken, tmp_path / "out"))
    assert _digest(broken) == before, "an input was modified"
    assert "Traceback" not in stderr, stderr
    if case.outcome == ERROR:
        assert code == 2, (code, stderr[-2000:])
        message = next(line for line in stderr.splitlines() if line.startswith("isotox ") and ": error: " in line)
        for text in case.expect:
            assert text in message, (text, message)
        if case.command == "ingest":  # patient data: the patient and the fix are named
            assert f"patient {PATIENT}" in message and " -> " in message, message
        else:
            assert str(broken) in message or broken.name in message, message
        return
    assert case.outcome == HANDLED
    assert code == 0, (code, stderr[-2000:])
    recorded = _recorded(case, tmp_path / "out", stdout)
    for text in case.expect:
        assert text in recorded, (text, recorded)


def _image(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image.GetOrigin()


@pytest.mark.parametrize(("builder", "image", "rtol"), [
    ("rtdose_offsets_absolute", "rtdose.nii.gz", 1e-6),
    ("pet_units_gml", "fdg_pet_suv.nii.gz", 1e-5),
    ("pet_units_cnts_with_philips_factor", "fdg_pet_suv.nii.gz", 1e-5),
])
def test_handled_input_gives_the_good_image(builder: str, image: str, rtol: float, good: dict[str, Path], good_ingest: Path, tmp_path: Path) -> None:
    """Same image as from the good input. Nearest wrong answers: absolute offsets read as relative put
    the dose 34.5 mm off (origin compared to 1e-3 mm); GML or CNTS values multiplied by the BQML
    factor again are off by a factor of ~1e-4 (values compared to 1e-5 relative, float32 rounding
    of the stored slope being ~1e-7)."""
    case = next(c for c in CASES if c.name == builder)
    broken = case.build(good[case.base], tmp_path / "broken")
    code, _, err = run_cli(_argv(case, broken, tmp_path / "out"))
    assert code == 0, err
    got, origin = _image(tmp_path / "out" / PATIENT / "ingest" / image)
    want, want_origin = _image(good_ingest / image)
    np.testing.assert_allclose(origin, want_origin, atol=1e-3)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))
    assert not np.allclose(got * 1.0001, want, rtol=rtol, atol=0) or not want.any()


def test_cohort_sheet_with_bom_or_windows_line_endings_reads_the_same(good: dict[str, Path], tmp_path: Path) -> None:
    """The handled sheet encodings give the same table as the clean sheet, cell for cell (a BOM kept
    in the first column name, or a '\\r' at the end of the last column, would be the wrong answer)."""
    from tests.faults import tables

    clean = read_cohort_sheet(good["cohort"], check_dirs=True)
    for builder in (tables.cohort_bom, tables.cohort_windows_line_endings):
        other = read_cohort_sheet(builder(good["cohort"], tmp_path / f"{builder.__name__}.tsv"), check_dirs=True)
        pd.testing.assert_frame_equal(other, clean)


def test_corpus_covers_every_input_type_with_at_least_60_cases() -> None:
    """The issue's bar: >= 60 cases over every input type (workflow kills: tests/test_workflow_faults.py)."""
    types = {c.input_type for c in CASES} | {e[1] for e in EXISTING}
    assert {"DICOM CT", "DICOM PET", "DICOM RTSTRUCT", "DICOM RTDOSE", "DICOM DCE", "cohort sheet", "config", "protocol", "clinical TSV"} <= types
    assert len(CASES) + len(EXISTING) >= 60
    assert len({c.name + "".join(c.args) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("node", sorted({e[3] for e in EXISTING}))
def test_existing_cases_are_real_tests(node: str) -> None:
    """The 16 cases counted from earlier tests point at test functions that exist."""
    path, _, name = node.partition("::")
    text = (REPO / path).read_text()
    assert (f"def {name}(" in text) if name else "def test_" in text
