"""Stage 5: unit plans, the isotoxic search on real (sample) patients, exports, bad input.

The search is checked by brute force: every candidate the plan evaluated is rebuilt from the
written unit-dose NIfTIs as a full dose volume (total x base + increment x boost, voxel by voxel),
its DVHs recomputed from the segmentation masks, and each constraint re-evaluated; the chosen
prescription must be the highest candidate where all hold, and the one above it must break the
reported limiting constraint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from scipy.optimize import nnls

from isotox.dicomio.rtdose import read_rtdose
from isotox.dicomio.rtstruct_reader import read_structure_set
from isotox.dose.dvh import dvh_from_mask
from isotox.dose.weights import _nnls_from_normal_equations, optimise_weights
from isotox.errors import InputDataError
from isotox.geometry import ImageGrid
from isotox.images import array, read_image
from isotox.dose.photon_engine import beam_dose_on_grid
from isotox.planning.settings import PlanningSettings
from isotox.planning.unit_plans import PlanningContext, load_fluence
from isotox.planning.stage import plan_patient
from isotox.planning.verify import reevaluate_scan
from isotox.settings import load_protocol
from isotox.settings.roi_names import RoiNameMap
from tests.conftest import REPO, SAMPLE_PATIENTS, sample_patients
from tests.sample_dicom import dciodvfy_errors

PET_BOOST = REPO / "config" / "protocols" / "pet_boost.yaml"


def test_weights_meet_coverage_and_organ_penalty_moves_dose_away() -> None:
    rng = np.random.default_rng(3)
    target = 0.8 + 0.4 * rng.random((3000, 5))
    organs = np.zeros((2000, 5))
    organs[:, 0] = 0.9  # only beam 0 crosses the organ
    # the penalty itself, on one NNLS pass (later passes re-weight target rows differently per problem)
    free = optimise_weights(target, organs, organ_weight=0.0, passes=1)
    spared = optimise_weights(target, organs, organ_weight=1.0, passes=1)
    for result in (free, spared):
        assert np.all(result.weights >= 0) and result.meets_coverage
        dose = target @ result.weights
        assert np.percentile(dose, 5) >= 0.95 - 1e-6
    assert (organs @ spared.weights).mean() < (organs @ free.weights).mean()
    # re-weighting passes keep the lowest normalised hot spot, so they never do worse than one pass
    assert optimise_weights(target, organs, organ_weight=1.0).dmax <= spared.dmax + 1e-12


def test_normal_equation_nnls_has_the_tall_problems_minimiser() -> None:
    """The optimiser solves the small Cholesky-reduced system; it must reach the same minimum as
    scipy's NNLS on the tall system (a law: |Aw - b|^2 = |Rw - c|^2 + const for A^T A = R^T R)."""
    rng = np.random.default_rng(5)
    a = rng.random((4000, 60)) * (rng.random(60) < 0.7)  # some columns are zero (beamlets that reach no row)
    b = rng.random(4000)
    tall, _ = nnls(a, b, maxiter=5000)
    small = _nnls_from_normal_equations(a.T @ a, a.T @ b, maxiter=5000)
    assert np.all(small >= 0)
    assert np.linalg.norm(a @ small - b) == pytest.approx(np.linalg.norm(a @ tall - b), rel=1e-6)


def test_warm_started_nnls_is_scipys_minimiser() -> None:
    """The re-weighting passes start the active-set NNLS from the previous pass's zero set
    (``_warm_nnls``). The problem is strictly convex (R invertible), so from any guess, right or
    badly wrong, it must reach scipy's minimiser: 1e-9 of the largest weight (scipy's and ours agree
    to ~1e-13 on the engine's plans); the nearest wrong answer, stopping at the guessed zero set
    without the active-set steps, is asserted to miss it."""
    from scipy.linalg import solve_triangular

    from isotox.dose.weights import _warm_nnls

    rng = np.random.default_rng(8)
    for trial in range(6):
        a = rng.normal(size=(600, 80)) + 0.5 * rng.random(80)
        b = rng.normal(size=600) + 1.0
        r = np.linalg.cholesky(a.T @ a).T
        c = solve_triangular(r, a.T @ b, trans="T")
        expected, _ = nnls(r, c, maxiter=4000)
        for guess in (expected <= 0, rng.random(80) < 0.5, np.zeros(80, bool), np.ones(80, bool)):
            warm = _warm_nnls(r, c, guess, 4000)
            assert warm is not None and np.all(warm >= 0)
            assert np.abs(warm - expected).max() <= 1e-9 * expected.max(), trial
        free = rng.random(80) < 0.5  # stopping at a guessed zero set: its least-squares weights, clipped at 0
        wrong = np.zeros(80)
        wrong[free] = np.maximum(np.linalg.lstsq(a[:, free], b, rcond=None)[0], 0.0)
        assert np.abs(wrong - expected).max() > 1e-3 * expected.max()


def test_workflow_plans_every_sample_patient(sample_run: Path) -> None:
    table = pd.read_csv(sample_run / "cohort" / "patients.tsv", sep="\t")
    for column in ("prescribed_dose_gy", "boost_feasible", "mld_gy", "lung_v20_pct", "ntcp_pneumonitis", "ntcp_esophagitis", "eqd2_prescription_gy"):
        assert column in table.columns, column
    assert len(table) == SAMPLE_PATIENTS and table["boost_feasible"].notna().all()
    feasibility = pd.read_csv(sample_run / "cohort" / "outcomes" / "feasibility.tsv", sep="\t")
    first = feasibility.iloc[0]
    assert first["source"] == "plans (boost_feasible)" and first["n"] == SAMPLE_PATIENTS
    assert first["feasible"] == int(table["boost_feasible"].astype(str).str.lower().eq("true").sum())
    for _, patient_dir in sample_patients(sample_run):
        plan = json.loads((patient_dir / "plan" / "plan.json").read_text())
        for name in ("dvh.tsv", "dvh_curves.tsv", "constraint_scan.tsv", "qc/dvh.png", "qc/constraints.png", "qc/dose.png", "dose/prescribed.nii.gz"):
            assert (patient_dir / "plan" / name).is_file(), name
        assert plan["feasible"] and plan["dose_source"] == "engine"
        coverage = plan["coverage"]["PTV"]
        assert coverage["D95_percent"] >= 95.0  # ICRU 50/62: the prescribed plan's sub-voxel DVH
        assert plan["radiobiology"]["eqd2_prescription_gy"] == pytest.approx(
            plan["prescribed_dose_gy"] * (plan["dose_per_fraction_gy"] + 10) / 12)
        # beamlet weights reach the ICRU 50/62 window on the dose-grid voxels of every unit plan
        for name, unit in plan["unit_plans"].items():
            assert unit["optimisation"]["meets_d95_95"] and unit["optimisation"]["meets_dmax_107"], (patient_dir.name, name, unit["optimisation"])


def _dose_at_mask_voxels(dose: sitk.Image, mask: sitk.Image) -> np.ndarray:
    """Dose (trilinear) at the centre of every voxel of ``mask``: a deliberately plain sampling,
    written here (index -> LPS by origin/spacing/direction, LPS -> dose index by solving the dose
    grid's affine), sharing nothing with isotox's DVH code."""
    from scipy.ndimage import map_coordinates

    ijk = np.argwhere(sitk.GetArrayFromImage(mask) > 0)[:, ::-1].astype(float)
    to_lps = np.array(mask.GetDirection()).reshape(3, 3) * np.array(mask.GetSpacing())
    lps = np.array(mask.GetOrigin()) + ijk @ to_lps.T
    dose_affine = np.array(dose.GetDirection()).reshape(3, 3) * np.array(dose.GetSpacing())
    index = np.linalg.solve(dose_affine, (lps - np.array(dose.GetOrigin())).T)
    return map_coordinates(sitk.GetArrayFromImage(dose).astype(float), index[::-1], order=1, mode="nearest")


def test_ptv_coverage_against_an_independent_voxel_sampling(sample_run: Path) -> None:
    """PTV coverage of every sample plan recomputed here from ``dose/prescribed.nii.gz`` and the PTV
    mask at the mask's voxel centres: D95 >= 95 % of the PTV reference dose (ICRU 50/62) and within
    1 percentage point of plan.json's sub-voxel DVH (the two samplings differ by <= 0.6 points on
    the 4 patients). Each unit plan, normalised to its own median: D95 >= 94 % on the target's
    voxel centres (the optimiser's 95 % holds on the dose-grid voxels; the planning-grid rim reads
    up to 0.6 points lower: SAMPLE004 base 94.4 %).

    Nearest wrong answer: the plan normalised to its maximum instead of the target median (ICRU 83):
    D95 / Dmax is 86-93 % here, below 95 % (asserted)."""
    for _, patient_dir in sample_patients(sample_run):
        plan = json.loads((patient_dir / "plan" / "plan.json").read_text())
        masks = patient_dir / "segment" / "masks"
        dose = sitk.ReadImage(str(patient_dir / "plan" / "dose" / "prescribed.nii.gz"))
        values = _dose_at_mask_voxels(dose, sitk.ReadImage(str(masks / "PTV.nii.gz")))
        reference = plan["coverage"]["PTV"]["reference_gy"]
        d95 = 100.0 * float(np.percentile(values, 5)) / reference
        assert d95 >= 95.0, (patient_dir.name, d95)
        assert abs(d95 - plan["coverage"]["PTV"]["D95_percent"]) <= 1.0, (patient_dir.name, d95, plan["coverage"]["PTV"])
        assert 100.0 * float(np.percentile(values, 5)) / float(values.max()) < 95.0, patient_dir.name
        for unit, target in (("base", "PTV"), ("boost_A", "PTV_BOOST_A"), ("boost_B", "PTV_BOOST_B")):
            unit_values = _dose_at_mask_voxels(sitk.ReadImage(str(patient_dir / "plan" / "dose" / f"{unit}_unit.nii.gz")),
                                               sitk.ReadImage(str(masks / f"{target}.nii.gz")))
            unit_d95 = 100.0 * float(np.percentile(unit_values, 5)) / float(np.median(unit_values))
            assert unit_d95 >= 94.0, (patient_dir.name, unit, unit_d95)


def test_search_agrees_with_brute_force_on_the_sample_cohort(sample_run: Path) -> None:
    protocol = load_protocol(PET_BOOST)
    ids = [c["id"] for c in protocol["constraints"]]
    for _, patient_dir in sample_patients(sample_run):
        plan = json.loads((patient_dir / "plan" / "plan.json").read_text())
        scan = reevaluate_scan(patient_dir, protocol)
        for cid in ids:  # the independent audit (planning.audit) within its stated tolerance
            assert scan[f"{cid}_pass"].all(), (cid, scan.loc[~scan[f"{cid}_pass"], [cid, f"{cid}_recomputed", f"{cid}_tolerance"]])
        assert (scan["feasible_recomputed"] == (scan["feasible"].astype(str) == "True")).all()
        test = scan[scan["scan"].str.contains("whole-tumour")].iloc[0]
        assert plan["boost_feasible"] == bool(test["feasible_recomputed"])
        main = scan[~scan["scan"].str.contains("whole-tumour")].reset_index(drop=True)
        feasible = main.index[main["feasible_recomputed"]]
        chosen = main.loc[feasible[-1]]
        assert chosen["target_gy"] == pytest.approx(plan["boost_total_gy"] or plan["prescribed_dose_gy"])
        if feasible[-1] + 1 < len(main):  # the next candidate up breaks the reported limiting constraint(s)
            above = main.loc[feasible[-1] + 1]
            broken = {cid for cid in ids if above[f"{cid}_recomputed"] > protocol["constraints"][ids.index(cid)]["limit"]}
            assert set(plan["limiting_constraints"]) == broken
        else:
            assert plan["limiting_constraints"] == []  # the protocol's cap was reached


def test_exported_rtstruct_and_rtdose_validate_and_reload_with_the_same_dvh(sample_run: Path) -> None:
    _, patient_dir = sample_patients(sample_run)[0]
    plan_dir = patient_dir / "plan"
    plan = json.loads((plan_dir / "plan.json").read_text())
    rs_path, rd_path = plan_dir / plan["export"]["rtstruct"], plan_dir / plan["export"]["rtdose"]
    rp_path = plan_dir / plan["export"]["rtplan"]
    for path in (rs_path, rp_path, rd_path):
        assert dciodvfy_errors(path) == [], path.name
    rp = pydicom.dcmread(rp_path)
    assert int(rp.FractionGroupSequence[0].NumberOfFractionsPlanned) == plan["fractions"]
    assert float(rp.DoseReferenceSequence[0].TargetPrescriptionDose) == pytest.approx(plan["prescribed_dose_gy"])
    assert str(pydicom.dcmread(rd_path).ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID) == str(rp.SOPInstanceUID)
    ct = read_image(patient_dir / "ingest" / "planning_ct.nii.gz")
    grid = ImageGrid.from_sitk(ct)
    meta = json.loads((patient_dir / "ingest" / "metadata.json").read_text())
    rs = pydicom.dcmread(rs_path)
    back = {r.name: r.mask for r in read_structure_set(rs, grid, meta["planning_ct_dicom"]["frame_of_reference_uid"],
                                                              RoiNameMap.from_yaml(REPO / "config" / "roi_names.yaml")).rois}
    dose = read_rtdose(pydicom.dcmread(rd_path), patient_dir.name, rd_path)
    table = pd.read_csv(plan_dir / "dvh.tsv", sep="\t")
    physical = table[table["dose_type"] == "physical"].set_index("structure")
    for name in ("PTV", "GTV", "LUNGS_MINUS_GTV", "HEART", "SPINAL_CORD"):
        dvh = dvh_from_mask(name, back[name], grid, dose.dose_gy, dose.grid)
        # contour round trip: marching squares at the voxel edges and even-odd filling give back the same voxels
        # to within the boundary voxels that touch a contour (<= 1.5 % of a >= 30 cc structure)
        assert dvh.total_cc == pytest.approx(physical.loc[name, "volume_cc"], rel=0.015), name
        assert dvh.mean() == pytest.approx(physical.loc[name, "Dmean"], rel=0.01, abs=0.05), name
        assert dvh.d_percent(95) == pytest.approx(physical.loc[name, "D95"], rel=0.01, abs=0.1), name
    assert float(dose.dose_gy.max()) == pytest.approx(float(array(read_image(plan_dir / "dose" / "prescribed.nii.gz")).max()), rel=1e-6)


@pytest.fixture()
def patient_copy(sample_run: Path, tmp_path: Path) -> Path:
    """A writable copy of a sample patient's ingest/ and segment/ (plan/ is produced by the test)."""
    _, patient_dir = sample_patients(sample_run)[0]
    out = tmp_path / patient_dir.name
    for stage in ("ingest", "segment"):
        shutil.copytree(patient_dir / stage, out / stage)
    return out


def _protocol_variant(tmp_path: Path, source: Path, change) -> Path:
    doc = yaml.safe_load(source.read_text())
    change(doc)
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("name", ["isotoxic_hypofractionated", "maastro_isotoxic_bid"])
def test_other_protocols_follow_their_fractionation_rule(patient_copy: Path, name: str) -> None:
    protocol = load_protocol(REPO / "config" / "protocols" / f"{name}.yaml")
    doc = plan_patient(patient_copy, REPO / "config" / "protocols" / f"{name}.yaml", settings=PlanningSettings())
    rule = protocol["fractionation"]
    if doc["feasible"]:
        assert protocol["total_dose_gy"]["min"] - 1e-9 <= doc["prescribed_dose_gy"] <= protocol["total_dose_gy"]["max"] + 1e-9
        if rule["rule"] == "fixed_dose_per_fraction":
            assert doc["dose_per_fraction_gy"] == pytest.approx(rule["dose_per_fraction_gy"])
        for cid, entry in doc["prescription"]["constraints"].items():
            assert entry["value"] is None or entry["value"] <= entry["limit"] + 1e-9, cid
    assert doc["boost_feasible"] is None and (patient_copy / "plan" / "plan.json").is_file()


@pytest.mark.parametrize("weights", ["beamlet", "beam"])
def test_fluence_files_reproduce_the_unit_plan(patient_copy: Path, weights: str) -> None:
    """``dose/base_fluence.npz`` is the plan: its beams, recomputed on the patient's density, give the
    stored unit dose (to float32 storage). Beam weights give flat fields, beamlets modulated ones."""
    settings = PlanningSettings(weights=weights)  # type: ignore[arg-type]
    doc = plan_patient(patient_copy, REPO / "config" / "protocols" / "isotoxic_hypofractionated.yaml", settings=settings)
    beams = load_fluence(patient_copy / "plan" / "dose" / "base_fluence.npz")
    assert [g.gantry_deg for g, _ in beams] == settings.angles()
    ct = read_image(patient_copy / "ingest" / "planning_ct.nii.gz")
    body, ptv = (array(read_image(patient_copy / "segment" / "masks" / f"{n}.nii.gz")).astype(bool) for n in ("BODY", "PTV"))
    context = PlanningContext.build(ct, body, [], [ptv], settings, settings.beam_model())
    recomputed = sum(beam_dose_on_grid(context.model, context.density, g, a, context.dose_grid, context.calc_mask, settings.ray_step_mm)
                     for g, a in beams)
    stored = array(read_image(patient_copy / "plan" / "dose" / "base_unit.nii.gz"))
    assert np.abs(recomputed - stored).max() < 1e-4 * stored.max()
    spread = [float(np.ptp(a.fluence[a.mask]) / a.fluence[a.mask].max()) for _, a in beams if a.fluence[a.mask].max() > 0]  # NNLS may switch a beam off
    if weights == "beam":
        assert max(spread) < 1e-6
    else:
        assert max(spread) > 0.2  # modulated (the smoothness penalty keeps it from being noise)
    assert doc["unit_plans"]["base"]["optimisation"]["meets_d95_95"]


def test_infeasible_patient_is_flagged_not_dropped(patient_copy: Path, tmp_path: Path) -> None:
    def tighten(doc: dict) -> None:
        doc["name"] = "tight"
        doc["constraints"][1]["limit"] = 0.5  # MLD <= 0.5 Gy: impossible at any dose of the protocol
    doc = plan_patient(patient_copy, _protocol_variant(tmp_path, PET_BOOST, tighten))
    assert not doc["feasible"] and doc["prescribed_dose_gy"] is None
    assert any("infeasible" in f and "lung_mld" in f for f in doc["flags"])
    assert not (patient_copy / "plan" / "dicom").exists() and (patient_copy / "plan" / "plan.json").is_file()


def test_missing_ptv_names_patient_file_and_fix(patient_copy: Path) -> None:
    (patient_copy / "segment" / "masks" / "PTV.nii.gz").unlink()
    with pytest.raises(InputDataError) as info:
        plan_patient(patient_copy, PET_BOOST)
    text = str(info.value)
    assert patient_copy.name in text and "PTV.nii.gz" in text and "segmentation" in text
    assert not (patient_copy / "plan").exists() and not list(patient_copy.glob(".plan*")), "no half-written result"


def test_tps_dose_is_used_when_present(patient_copy: Path, sample_run: Path) -> None:
    """A TPS RTDOSE (here the engine's base plan scaled to 66 Gy, as a TPS would export it) becomes the
    base plan, renormalised to its PTV median; the boost plans still come from the engine."""
    _, source_dir = sample_patients(sample_run)[0]
    base = read_image(source_dir / "plan" / "dose" / "base_unit.nii.gz")
    sitk.WriteImage(base * 66.0, str(patient_copy / "ingest" / "rtdose.nii.gz"))
    doc = plan_patient(patient_copy, PET_BOOST, settings=PlanningSettings(dose_source="auto"))
    assert doc["dose_source"] == "tps" and doc["unit_plans"]["base"]["source"] == "tps"
    assert doc["unit_plans"]["boost_A"]["source"] == "engine"
    tps_unit = array(read_image(patient_copy / "plan" / "dose" / "base_unit.nii.gz"))
    ratio = tps_unit[array(base) > 0.5] / array(base)[array(base) > 0.5]
    assert np.ptp(ratio) < 1e-3  # the same distribution, only renormalised
