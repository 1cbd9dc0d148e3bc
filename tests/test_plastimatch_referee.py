"""plastimatch as an outside referee of isotox's plan: the exported RTSTRUCT + RTDOSE of one sample
patient, rasterised and histogrammed by plastimatch, against plan.json's constraint values at the
prescribed dose.

The road, none of it isotox code: ``plastimatch convert`` rasterises the RTSTRUCT polygons onto the
planning CT grid (one mask per structure; the CT grid is the finest grid of the study, so the
polygon rasterisation adds least error) and resamples the RTDOSE onto the same grid (trilinear);
``plastimatch dvh`` writes the cumulative DVH in 0.01 Gy bins as voxel counts; the metrics are read
from that curve (Dmean as the area under it, Vx at the bin of x Gy, Dxcc where the curve falls to
x cc), EQD2 from the LQ formula applied to the physical D0.03cc (EQD2 is monotonic in dose, so the
near-max of the EQD2 dose is the EQD2 of the physical near-max).

Fails (never skips) when plastimatch is absent: the referee is part of the suite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from isotox.settings import load_protocol
from tests.conftest import REPO, sample_patients

PET_BOOST = REPO / "config" / "protocols" / "pet_boost.yaml"
BIN_GY = 0.01


def _plastimatch() -> str:
    path = shutil.which("plastimatch")
    assert path, "plastimatch is not installed: install the Debian package 'plastimatch' (apt-get install plastimatch); .ci/run does"
    return path


def _run(*args: str) -> None:
    proc = subprocess.run([_plastimatch(), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"plastimatch {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


@pytest.fixture(scope="module")
def referee(sample_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """plastimatch's DVH metrics of every exported structure of the first sample patient's plan."""
    _, patient_dir = sample_patients(sample_run)[0]
    plan = json.loads((patient_dir / "plan" / "plan.json").read_text())
    assert "rtstruct" in plan["export"], plan["export"]
    rs, rd = patient_dir / "plan" / plan["export"]["rtstruct"], patient_dir / "plan" / plan["export"]["rtdose"]
    ct = patient_dir / "ingest" / "planning_ct.nii.gz"
    work = tmp_path_factory.mktemp("plastimatch")
    # --xor-contours: an inner contour is a hole (LUNGS_MINUS_GTV around the GTV); plastimatch's default
    # OR fills it, which puts the 34 cc GTV back into the lungs (MLD +0.5 Gy, V20 +0.8 points on SAMPLE001)
    _run("convert", "--input", str(rs), "--fixed", str(ct), "--xor-contours", "--output-ss-img", str(work / "ss.nrrd"),
         "--output-ss-list", str(work / "ss.txt"))
    _run("convert", "--input-dose-img", str(rd), "--output-dose-img", str(work / "dose.nrrd"))
    _run("dvh", "--input-ss-img", str(work / "ss.nrrd"), "--input-ss-list", str(work / "ss.txt"), "--input-dose", str(work / "dose.nrrd"),
         "--output-csv", str(work / "dvh.csv"), "--cumulative", "--normalization", "vox", "--bin-width", str(BIN_GY),
         "--num-bins", str(int(round(120.0 / BIN_GY))))
    csv = pd.read_csv(work / "dvh.csv")
    assert (csv.iloc[-1, 1:] == 0).all(), "a dose beyond the histogram's 120 Gy range: raise --num-bins"
    voxel_cc = float(np.prod(sitk.ReadImage(str(ct)).GetSpacing())) / 1000.0
    dvh = pd.read_csv(patient_dir / "plan" / "dvh.tsv", sep="\t")
    audit_table = pd.read_csv(patient_dir / "plan" / "audit.tsv", sep="\t")
    target = plan["boost_total_gy"] or plan["prescribed_dose_gy"]
    audit_table = audit_table[np.isclose(audit_table["target_gy"], target) & ~audit_table["scan"].str.contains("whole-tumour")]
    return {"plan": plan, "curves": csv, "voxel_cc": voxel_cc, "physical": dvh[dvh["dose_type"] == "physical"].set_index("structure"),
            "audit": audit_table.set_index("constraint"), "protocol": load_protocol(PET_BOOST)}


def _curve(referee: dict[str, Any], structure: str) -> tuple[np.ndarray, np.ndarray]:
    """(bin dose Gy, cc receiving at least it) of one structure from plastimatch's CSV."""
    csv = referee["curves"]
    column = next((c for c in csv.columns if c.strip() == structure), None)
    assert column is not None, f"{structure} not in plastimatch's DVH columns {list(csv.columns)}"
    return csv.iloc[:, 0].to_numpy(float), csv[column].to_numpy(float) * referee["voxel_cc"]


def plastimatch_metric(referee: dict[str, Any], structure: str, metric: str) -> float:
    """A physical DVH metric from plastimatch's cumulative curve (0.01 Gy bins: reading error <= 0.01 Gy)."""
    dose, cc = _curve(referee, structure)
    total = cc[0]
    if metric in ("Dmean", "MLD"):
        return float(np.trapezoid(cc, dose) / total)  # mean = area under the cumulative DVH / volume
    if metric == "Dmax":
        return float(dose[cc > 0].max())
    if metric.startswith("V"):
        return float(100.0 * cc[np.isclose(dose, float(metric[1:]))][0] / total)
    if metric.startswith("D") and metric.endswith("cc"):
        return float(dose[cc >= min(float(metric[1:-2]), total) - 1e-9].max())  # the highest dose still covering x cc
    raise ValueError(metric)


def eqd2(dose_gy: float, fractions: int, alpha_beta_gy: float) -> float:
    """LQ: EQD2 = D (D/n + a/b) / (2 + a/b), written out here (the referee uses no isotox formula)."""
    return dose_gy * (dose_gy / fractions + alpha_beta_gy) / (2.0 + alpha_beta_gy)


def in_terms(value: float, constraint: dict[str, Any], fractions: int) -> float:
    """A physical order statistic (D0.03cc, Dmax) or mean in the constraint's dose type; EQD2 only for
    order statistics (monotone), which is all the protocol asks of EQD2 constraints."""
    if constraint.get("dose_type") == "eqd2":
        assert constraint["metric"] != "Dmean", "an EQD2 mean needs the voxel doses, not the physical curve"
        return eqd2(value, fractions, float(constraint["alpha_beta_gy"]))
    return value


def tolerance(metric: str, value: float) -> float:
    """Referee tolerance: plastimatch rasterises the polygons and samples the dose once per 4 mm CT voxel
    (at its centre); isotox samples 2 x 2 x 2 sub-voxels. Measured on SAMPLE001: Dmean within 0.05 %,
    Vx within 0.05 points, volumes identical; a near-max reads up to 1.1 % low (oesophagus D0.03cc in
    EQD2; the single centre sample misses the hottest sub-voxel of a 0.064 cc voxel, and 0.03 cc is
    less than one voxel), and on the spinal cord (radius 1.25 voxels, in a steep gradient) up to 2.3 %
    (physical D0.03cc on the current SAMPLE001; 1.6 % for the plan's EQD2 value). Tolerances: Dmean
    0.5 %, Vx 0.5 points, near-max 2.5 % of the value (in EQD2 for EQD2 constraints): the nearest
    wrong answers (test docstrings: EQD2 vs physical >= 6 %, a 5 % dose scaling) lie beyond them."""
    if metric.startswith("V"):
        return 0.5
    if metric in ("Dmean", "MLD"):
        return 0.005 * abs(value)
    return 0.025 * abs(value)


def test_plastimatch_volumes_match_the_exported_structures(referee: dict[str, Any]) -> None:
    """Structure volumes: plastimatch's rasterisation of the RTSTRUCT vs isotox's masks (dvh.tsv).
    Tolerance 0.5 % (polygon vs voxel boundary on the CT grid; measured 0.001 %). Nearest wrong answer:
    the hole of LUNGS_MINUS_GTV filled (the GTV counted as lung: +1 % of the lungs, +34 cc on SAMPLE001)."""
    physical = referee["physical"]
    for name in ("LUNGS_MINUS_GTV", "HEART", "ESOPHAGUS", "SPINAL_CORD", "PTV", "GTV"):
        _, cc = _curve(referee, name)
        assert cc[0] == pytest.approx(float(physical.loc[name, "volume_cc"]), rel=0.005), name
    lungs = _curve(referee, "LUNGS_MINUS_GTV")[1][0]
    filled = float(physical.loc["LUNGS_MINUS_GTV", "volume_cc"]) + float(physical.loc["GTV", "volume_cc"])
    assert abs(filled - lungs) > 0.005 * lungs


def test_plastimatch_agrees_with_plan_json_at_the_prescribed_dose(referee: dict[str, Any]) -> None:
    """Every constraint of the protocol at the prescribed dose: plan.json's value (the search), the
    independent audit's (audit.tsv) and plastimatch's, within :func:`tolerance`. Nearest wrong answers,
    each asserted outside the tolerance: the physical dose instead of EQD2 (cord, oesophagus), a 5 %
    dose scaling (MLD, oesophagus, cord), and V20 on one lung
    (LUNG_L) instead of both lungs minus the GTV."""
    plan, protocol, physical = referee["plan"], referee["protocol"], referee["physical"]
    fractions = int(plan["fractions"])
    table = []
    for c in protocol["constraints"]:
        isotox = float(plan["prescription"]["constraints"][c["id"]]["value"])
        referee_value = in_terms(plastimatch_metric(referee, c["structure"], c["metric"]), c, fractions)
        tol = tolerance(c["metric"], referee_value)
        independent = float(referee["audit"].loc[c["id"], "independent"])
        table.append((c["structure"], c["metric"], c.get("dose_type", "physical"), isotox, independent, referee_value, tol))
        assert abs(isotox - referee_value) <= tol, (c["id"], isotox, referee_value, tol)
        assert abs(independent - referee_value) <= tol, (c["id"], independent, referee_value, tol)
        if c["metric"].startswith("D"):  # a 5 % dose scaling error
            assert abs(1.05 * isotox - referee_value) > tol, (c["id"], "5 % scaling")
        if c.get("dose_type") == "eqd2":  # the physical D0.03cc instead of its EQD2
            assert abs(float(physical.loc[c["structure"], c["metric"]]) - referee_value) > tol, (c["id"], "physical instead of EQD2")
    for structure, metric, dose_type, isotox, independent, referee_value, tol in table:
        print(f"{structure:16s} {metric:8s} {dose_type:9s} isotox {isotox:9.4f} audit {independent:9.4f} "
              f"plastimatch {referee_value:9.4f} tol {tol:.3f}")
    # Dmax instead of D0.03cc is not a wrong answer plastimatch can referee: one sample per 4 mm voxel
    # puts the two within 1 % on these patients. The independent audit (27 samples per voxel, 0.75 %)
    # rejects it: tests/test_search_audit.py::test_wrong_metric_in_the_search_is_caught_by_the_audit.
    # V20 of one lung instead of both lungs minus the GTV
    v20 = plastimatch_metric(referee, "LUNGS_MINUS_GTV", "V20")
    assert abs(float(physical.loc["LUNG_L", "V20"]) - v20) > tolerance("V20", v20), "V20 of LUNG_L"


def test_plastimatch_agrees_with_the_key_dose_metrics(referee: dict[str, Any]) -> None:
    """plan.json's dose_metrics (the outcome tables' dose figures, physical) against plastimatch."""
    metrics = referee["plan"]["dose_metrics"]
    pairs = {"mld_gy": ("LUNGS_MINUS_GTV", "Dmean"), "lung_v20_pct": ("LUNGS_MINUS_GTV", "V20"), "lung_v5_pct": ("LUNGS_MINUS_GTV", "V5"),
             "esophagus_dmean_gy": ("ESOPHAGUS", "Dmean"), "heart_dmean_gy": ("HEART", "Dmean"),
             "esophagus_dmax_gy": ("ESOPHAGUS", "D0.03cc"), "cord_d003cc_gy": ("SPINAL_CORD", "D0.03cc")}
    for key, (structure, metric) in pairs.items():
        value = plastimatch_metric(referee, structure, metric)
        assert abs(metrics[key] - value) <= tolerance(metric, value), (key, metrics[key], value)
        if metric != "V5" and metric.startswith("D"):
            assert abs(1.05 * metrics[key] - value) > tolerance(metric, value), (key, "5 % scaling")
