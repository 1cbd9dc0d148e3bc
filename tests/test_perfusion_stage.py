"""Stage 4 on the sample cohort: the AIF, bolus arrival and tumour parameters against the generator.

The sample tumour has finite plasma flow (2CXM truth, its own bolus delay and dispersion) and is a
mixture of viable and hypoxic tissue (hypoxic: a third to a half of the flow, 60 % of the PS, half
the vp, the same ve; sometimes a necrotic core); the generator's curves are RK4 solutions of the
compartment equations, not isotox's models. The DCE slab covers the tumour's centre, so the
mixture *inside the slab* is not in the ground truth; what is known is the range between the two
tissues. Tolerances on top of that range, from the OSIPI reference tolerances (Ktrans 0.005 /min +
10 %) plus 5 % for the observer-drawn GTV's rim of lung (vp 0.15) and the finite-flow bias of an
extended Tofts fit (measured on the generator's own noiseless curves: +15 % at most).

* bolus arrival within one frame interval (3 s) of the generator's aortic arrival;
* AIF: the measured blood curve within 10 % of its peak (RMS) of the generator's aortic curve.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import sample_patients
from isotox.cli import main as cli_main
from isotox.errors import InputDataError
from isotox.perfusion.stage import PerfusionSettings, perfusion_patient

REPO = Path(__file__).resolve().parents[1]


def _tissue_range(truth: dict, name: str) -> tuple[float, float]:
    """(low, high) of a parameter over the tumour's viable and hypoxic tissue."""
    tissues = truth["perfusion"]["tissues"]
    key = {"ktrans": "ktrans_per_min"}.get(name, name)
    values = (tissues["tumour_viable"][key], tissues["tumour_hypoxic"][key])
    return min(values), max(values)


def _within(value: float, bounds: tuple[float, float], atol: float, rtol: float = 0.0) -> bool:
    low, high = bounds
    return low - atol - rtol * low <= value <= high + atol + rtol * high


@pytest.fixture(scope="module")
def perfused(sample_run: Path) -> list[tuple[dict, dict, Path]]:
    return [(truth, json.loads((patient / "perfusion" / "perfusion.json").read_text()), patient / "perfusion") for truth, patient in sample_patients(sample_run)]


def test_aif_is_the_aorta_not_the_earlier_brighter_venous_side(perfused: list[tuple[dict, dict, Path]]) -> None:
    """The measured AIF is the generator's aortic curve: RMS difference <= 10 % of its peak (noise
    averaged over the lumen voxels, no partial volume inside the selected lumen); bolus arrival
    within one frame interval (3 s) of the generator's (our 5 %-of-rise definition lags Parker's
    origin by ~2 s).

    Nearest wrong answers: the superior vena cava and the right heart / pulmonary artery, which
    enhance earlier and higher in every sample patient (what an 'earliest, highest vessel' rule
    picks). Both differ from the measured AIF by more than the tolerance (asserted), and the
    slab really contains an earlier vessel (so the check is not vacuous).
    """
    for truth, summary, stage in perfused:
        p = truth["perfusion"]
        aif = pd.read_csv(stage / "aif.tsv", sep="\t")
        measured = aif["blood_hu"].to_numpy()
        curves = {name: np.asarray(c) - np.asarray(c)[0] for name, c in p["blood_curves_hu"].items()}
        rms = {name: float(np.sqrt(np.mean((measured - c) ** 2))) for name, c in curves.items()}
        tolerance = 0.10 * curves["blood"].max()
        assert rms["blood"] <= tolerance, (truth["patient_id"], rms)
        assert rms["blood_venous"] > tolerance and rms["blood_right"] > tolerance, (truth["patient_id"], rms)
        np.testing.assert_allclose(aif["plasma_hu"], aif["blood_hu"] / (1 - 0.45), rtol=1e-4, atol=1e-3)  # atol: the table holds 5 significant digits
        assert summary["aif"]["bolus_arrival_s"] == pytest.approx(p["bolus_arrival_s"], abs=3.0)
        assert summary["aif"]["source"] == "automatic: descending aorta by anatomy"
        qc = summary["aif"]["qc"]
        assert 5.0 <= qc["left_of_spine_mm"] <= 60.0 and qc["slices"] >= 5
        assert any(o["time_to_peak_s"] < qc["time_to_peak_s"] - 2.0 for o in qc["other_vessels"]), qc["other_vessels"]
        assert (stage / "qc" / "aif.png").stat().st_size > 5_000


def test_tumour_parameters_recover_the_truth(perfused: list[tuple[dict, dict, Path]]) -> None:
    """Extended Tofts on the GTV's mean curve (delay fitted): Ktrans inside the viable-hypoxic range
    +- (0.005 + 15 %) with a 95 % interval narrower than a factor 2; ve within the common ve
    (-8 % - 0.05, +0.05); the voxel-wise GTV median Ktrans within the range +- 30 % (5 mm smoothing,
    8-18 HU noise), fits at a bound left out of it.

    Nearest wrong answers, rejected (asserted): Ktrans off by 2x or by 0.5x (the band cannot hold
    either for the range's midpoint); ve from the blood instead of the plasma curve (x (1 - Hct) =
    0.55 ve) below the ve band."""
    for truth, summary, stage in perfused:
        pid = truth["patient_id"]
        roi = pd.read_csv(stage / "tumour_roi_fits.tsv", sep="\t").set_index("model")
        ktrans, ve = (float(roi.loc["etofts", k]) for k in ("ktrans", "ve"))
        k_range = _tissue_range(truth, "ktrans")
        assert _within(ktrans, k_range, 0.005, 0.15), (pid, ktrans, k_range)
        assert roi.loc["etofts", "ktrans_ci95_factor"] <= 2.0 and not roi.loc["etofts", "at_bound"], (pid, roi.loc["etofts"].to_dict())
        mid = 0.5 * sum(k_range)
        assert not _within(2.0 * mid, k_range, 0.005, 0.15) and not _within(0.5 * mid, k_range, 0.005, 0.15), (pid, k_range)
        true_ve = truth["perfusion"]["tissues"]["tumour_viable"]["ve"]
        low_ve, high_ve = true_ve - 0.08 * true_ve - 0.05, true_ve + 0.05
        assert low_ve <= ve <= high_ve, (pid, ve, true_ve)
        assert not low_ve <= (1.0 - 0.45) * true_ve <= high_ve
        assert summary["settings"]["delay"] == "fit"  # the default: a fixed zero delay biases every parameter
        voxels = pd.read_csv(stage / "tumour_perfusion.tsv", sep="\t").set_index(["region", "map"])
        gtv_ktrans = voxels.loc[("GTV", "etofts_ktrans")]
        assert _within(float(gtv_ktrans["median"]), k_range, 0.005, 0.30), (pid, gtv_ktrans["median"])
        assert gtv_ktrans["coverage"] > 0.5 and gtv_ktrans["failed_fraction"] < 0.1


def test_roi_two_compartment_fit_reports_only_what_the_curve_determines(perfused: list[tuple[dict, dict, Path]]) -> None:
    """2CXM on the GTV's mean curve: a parameter counts as measured only when the fit is not at a
    bound (the parameter box or the edge of the delay search) and its 95 % interval is within a
    factor 2 either way; every other one is flagged in perfusion.json. A measured value's interval
    must overlap the viable-hypoxic range (widened by the 0.015 vp / 15 % allowance above).

    Nearest wrong answers: the GTV-mean Fp of 307 and 432 ml/100 ml/min for true 23-61 and 16-37
    (SAMPLE002, SAMPLE004 before this check: 5-12x) reported as results, and vp = 0. Both are
    rejected: a measured Fp must lie within [low / 2, 2 high] and a measured vp above 0.

    On the 4 sample patients (3 s frames, partial volume with lung, dispersed tumour input) no
    GTV-mean 2CXM fit determines Fp (3 are at the 0 s edge of the delay search); the test then
    checks that each is flagged, which is what a physicist needs to know before reading the table,
    and that at least one parameter somewhere was measured and checked (SAMPLE002 ve)."""
    measured = 0
    for truth, summary, stage in perfused:
        pid = truth["patient_id"]
        row = pd.read_csv(stage / "tumour_roi_fits.tsv", sep="\t", keep_default_na=False, na_values=[""]).set_index("model").loc["2cxm"]
        loose = set(str(row["undetermined"]).split(",")) - {"", "nan"}
        at_bound = str(row["at_bound"]) == "True"
        flags = " | ".join(summary["flags"])
        if at_bound:
            assert "GTV ROI 2cxm" in flags and ("edge of the search" in flags or "bound" in flags), (pid, flags)
        loose_flag = next((f for f in summary["flags"] if f.startswith("GTV ROI 2cxm:") and "not determined" in f), "")
        for name in loose:
            assert name in loose_flag.split(" not determined")[0], (pid, name, summary["flags"])
            assert row[f"{name}_ci95_factor"] > 2.0
        for name in ("fp", "ps", "vp", "ve"):
            if at_bound or name in loose:
                continue
            value, factor = float(row[name]), float(row[f"{name}_ci95_factor"])
            key = {"fp": "fp_ml_100ml_min", "ps": "ps_ml_100ml_min"}.get(name, name)
            low, high = _tissue_range(truth, key)
            if name == "ps":
                low, high = low / 100.0, high / 100.0  # truth ml/100 ml/min, fit /min
            allowance = 0.015 if name == "vp" else 0.15 * high
            assert value / factor <= high + allowance and value * factor >= low - allowance, (pid, name, value, factor, (low, high))
            if name == "fp":
                assert low / 2.0 <= value <= 2.0 * high, (pid, value, (low, high))
            if name == "vp":
                assert value > 0.0
            measured += 1
    assert measured, "no 2CXM parameter of any sample patient was measured: the test would check only flags"


def test_maps_are_on_the_planning_grid_with_units(perfused: list[tuple[dict, dict, Path]], sample_run: Path) -> None:
    import SimpleITK as sitk

    truth, summary, stage = perfused[0]
    planning = sitk.ReadImage(str(sample_run / "patients" / truth["patient_id"] / "ingest" / "planning_ct.nii.gz"))
    for name in ("patlak_ktrans", "tofts_ve", "etofts_vp", "2cxm_fp", "bf_maxslope", "etofts_r2", "etofts_failed", "etofts_reduced"):
        image = sitk.ReadImage(str(stage / "maps" / f"{name}.nii.gz"))
        assert image.GetSize() == planning.GetSize() and image.GetOrigin() == pytest.approx(planning.GetOrigin())
    assert summary["units"]["ktrans"] == "/min" and summary["units"]["fp"] == "ml/100 ml/min"
    assert summary["baseline_frames"] >= 2


def test_no_dce_is_a_clear_error_and_structure_aif_needs_an_aorta(sample_run: Path, tmp_path: Path) -> None:
    patient = tmp_path / "SAMPLE001"
    for stage in ("ingest", "register", "segment"):
        shutil.copytree(sample_run / "patients" / "SAMPLE001" / stage, patient / stage)
    (patient / "segment" / "masks" / "AORTA.nii.gz").unlink(missing_ok=True)  # SAMPLE001 has no AORTA contour anyway
    with pytest.raises(InputDataError, match="SAMPLE001.*no AORTA structure.*perfusion.aif: auto"):
        perfusion_patient(patient, PerfusionSettings(aif="structure", models=("patlak",)))
    (patient / "register" / "dce_mc.nii.gz").unlink()
    with pytest.raises(InputDataError, match="SAMPLE001.*no registered DCE-CT"):
        perfusion_patient(patient, PerfusionSettings(models=("patlak",)))
    assert cli_main(["perfusion", str(patient), "--config", str(REPO / "config" / "config.yaml")]) == 2
    assert not (patient / "perfusion").exists()
    with pytest.raises(ValueError, match="unknown model"):
        PerfusionSettings.from_config({"models": ["gamma_variate"]})


def test_tumour_table_leaves_fits_at_a_bound_out_of_every_statistic() -> None:
    """Issue 15: a 2CXM fit at its Fp bound (500) is a limit, not a measurement. The tumour table's
    median / mean / IQR use only the voxels not at a bound, and at_bound_fraction reports the share
    left out. Nearest wrong answer: the statistics over all fitted voxels (median 265 here, the
    bound dragging it up), which must differ from what the table reports."""
    from isotox.perfusion.stage import _summaries

    fp = np.array([10.0, 20.0, 30.0, 500.0, 500.0, 500.0, np.nan], dtype=np.float32)
    bound = np.array([0, 0, 0, 1, 1, 1, np.nan], dtype=np.float32)
    values = {("GTV", "2cxm_fp"): fp, ("GTV", "2cxm_at_bound"): bound, ("GTV", "2cxm_failed"): np.where(np.isnan(fp), np.nan, 0.0),
              ("GTV", "2cxm_r2"): np.array([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, np.nan], dtype=np.float32)}
    table = _summaries(values, {"GTV": 7}).set_index("map")
    assert set(table.index) == {"2cxm_fp", "2cxm_r2"}  # flag maps are not summarised as parameters
    row = table.loc["2cxm_fp"]
    assert row["median"] == pytest.approx(20.0) and row["mean"] == pytest.approx(20.0)
    assert row["q25"] == pytest.approx(15.0) and row["q75"] == pytest.approx(25.0)
    assert row["at_bound_fraction"] == pytest.approx(0.5)
    assert row["coverage"] == pytest.approx(6 / 7)
    assert table.loc["2cxm_r2", "median"] == pytest.approx(0.9)
    assert abs(float(np.nanmedian(fp)) - row["median"]) > 100.0  # the wrong answer is far outside any tolerance
