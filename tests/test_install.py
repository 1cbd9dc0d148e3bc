"""isotox after a plain (non-editable) install from a wheel, used from a folder that is not the checkout.

Old behaviour: `isotox ingest` and `plan` looked for config/roi_names.yaml in the current folder and
for the beam data through ``parents[3]`` of a source file, so they worked only from the repository
root. The test builds the wheel, installs it into a fresh virtual environment (the heavy
dependencies come from this interpreter's site-packages, the isotox package from the wheel only),
and runs `isotox ingest` and `isotox dvh` in an empty temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.clinical_patient import build_patient

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ folder of a virtual environment holding isotox from its wheel."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, text=True)
    wheel = next(wheels.glob("isotox-*.whl"))
    env_dir = root / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)
    return env_dir / "bin"


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    proc = _run(installed, tmp_path, "python", "-c", "import isotox, isotox.resources as r; print(isotox.__file__); print(r.defaults_root())")
    assert proc.returncode == 0, proc.stderr
    module, defaults = proc.stdout.split()
    assert str(installed.parent) in module and str(REPO) not in module
    assert defaults.endswith("isotox/_defaults") and str(installed.parent) in defaults


def test_ingest_dvh_and_validate_from_any_folder(installed: Path, tmp_path: Path, breast_example: Path) -> None:
    patient = build_patient(tmp_path / "dicom")
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = _run(installed, work, "isotox", "ingest", str(patient), str(work / "CLIN01"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert {"planning_ct", "fdg_pet", "rtstruct", "rtdose"} <= set(summary["roles"])
    meta = json.loads((work / "CLIN01" / "ingest" / "metadata.json").read_text())
    assert meta["structures"]["GTV"]["canonical"] == "GTV"  # the shipped ROI-name map was used

    proc = _run(installed, work, "isotox", "dvh", str(breast_example / "rtss.dcm"), str(breast_example / "rtdose.dcm"), "--roi", "Heart")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()[:2]
    table = dict(zip(header.split("\t"), row.split("\t")))
    assert float(table["volume_cc"]) == pytest.approx(440.23, rel=0.005)  # dicompyler-core's Heart volume

    for kind, name in (("protocol", "pet_boost"), ("protocol", "isotoxic_hypofractionated")):
        proc = _run(installed, work, "isotox", "validate", kind, name)
        assert proc.returncode == 0 and "valid protocol" in proc.stdout, proc.stderr
    proc = _run(installed, work, "isotox", "validate", "protocol", "no_such_protocol")
    assert proc.returncode == 2 and "pet_boost" in proc.stderr  # the error lists what ships
