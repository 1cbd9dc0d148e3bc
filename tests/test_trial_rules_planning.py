"""The PET-boost and isotoxic rules as the trials ran them (issue: the trials' rules).

Each test names the old behaviour it fails on. The search inputs are synthetic unit-plan samples
(1 Gy to the PTV, a boost plan of 1 Gy to the boost target), with doses chosen so the answer can
be worked out by hand from the constraint limits.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from isotox.dose.dvh import StructureSamples
from isotox.dose.search import pet_boost_search, search, candidates
from isotox.planning.prescription import prescribe
from isotox.planning.allocation import recorded_arm
from isotox.sample.clinical import sample_allocation, simulate_clinical
from isotox.settings import load_protocol
from isotox.settings.protocol import boost_ceiling_gy

REPO = Path(__file__).resolve().parents[1]
N = 24


def _s(name: str, base: float, boost: float, n: int = 200) -> StructureSamples:
    return StructureSamples(name, [np.full(n, base), np.full(n, boost)], np.full(n, 0.01), 0.0)


def _three(samples: dict[str, StructureSamples]) -> dict[str, StructureSamples]:
    """Samples with plans (base, boost_A, boost_B): the same boost plan for both arms."""
    return {k: StructureSamples(k, [v.doses[0], v.doses[1], v.doses[1]], v.volume_cc, v.outside_fraction) for k, v in samples.items()}


def _lungs() -> StructureSamples:
    """70 % of the lungs at 4 % of the PTV dose, 30 % at 20 %: V20 0 %, V5 30 %, MLD 8.8 % at 72 Gy."""
    base = np.r_[np.full(1400, 0.04), np.full(600, 0.2)]
    return StructureSamples("LUNGS_MINUS_GTV", [base, 0.01 * base], np.full(2000, 0.01), 0.0)


def _world(esophagus_boost: float) -> dict[str, StructureSamples]:
    """Oesophagus max point: 0.9 of the PTV dose plus ``esophagus_boost`` of the boost increment. Every
    other organ far below its limit. Oesophagus limit EQD2(a/b 10) <= 76 Gy over 24 fractions."""
    return {"SPINAL_CORD": _s("SPINAL_CORD", 0.3, 0.0), "LUNGS_MINUS_GTV": _lungs(),
            "ESOPHAGUS": _s("ESOPHAGUS", 0.9, esophagus_boost), "HEART": _s("HEART", 0.2, 0.0), "GTV": _s("GTV", 1.0, 1.0)}


def _eqd2(total: float, n: int = N, ab: float = 10.0) -> float:
    d = total / n
    return total * (d + ab) / (2.0 + ab)


def test_randomized_boost_is_escalated_past_72_gy_to_the_ceiling() -> None:
    """Old behaviour: max_total_gy 72 = test_total_gy, so every randomized boost stopped at 72 Gy.
    With no organ near a limit the boost reaches the protocol ceiling, 3.6 Gy x 24 = 86.4 Gy, itself a
    candidate although it is off the 0.5 Gy step grid from 72 Gy, and says the ceiling stopped it.
    Nearest wrong answers: 72 Gy (old cap), and 86.0 Gy (the grid stopping short of the ceiling it
    reports: first version of the ceiling)."""
    protocol = load_protocol("pet_boost")
    samples = _world(esophagus_boost=0.0)
    out = pet_boost_search({"A": samples, "B": samples}, protocol, "B")
    assert out["randomized"] and boost_ceiling_gy(protocol) == pytest.approx(86.4)
    assert out["boost_total_gy"] == pytest.approx(86.4)
    assert out["boost_dose_per_fraction_gy"] == pytest.approx(3.6)
    assert out["boost_stopped_by"] == "protocol ceiling (86.4 Gy)"


def test_escalation_stops_at_the_binding_constraint_worked_by_hand() -> None:
    """The oesophagus receives 0.9 x 66 Gy + 0.8 x the boost increment. Its EQD2 limit of 76 Gy binds
    first: the largest boost top T on the 0.5 Gy grid with EQD2(59.4 + 0.8 (T - 66)) <= 76 Gy is found
    here by brute force over T, independent of the search. Nearest wrong answers: 72 Gy (old cap) and
    the ceiling."""
    protocol = load_protocol("pet_boost")
    out = pet_boost_search({"A": _world(0.8), "B": _world(0.8)}, protocol, "A")
    tops = np.arange(72.0, 86.4 + 1e-9, 0.5)
    allowed = [t for t in tops if _eqd2(0.9 * 66.0 + 0.8 * (t - 66.0)) <= 76.0 + 1e-9]
    assert out["boost_total_gy"] == pytest.approx(max(allowed))
    assert 72.0 < out["boost_total_gy"] < 86.0
    assert out["boost_stopped_by"] == "esophagus_max"


def test_ceiling_is_protocol_data_with_its_source() -> None:
    protocol = load_protocol("pet_boost")
    assert "max_total_gy" not in protocol["boost"] and protocol["boost"]["max_dose_per_fraction_gy"] == 3.6
    assert "3.30" in protocol["boost"]["ceiling_source"] and "isotox default" in protocol["boost"]["ceiling_source"]
    lower = copy.deepcopy(protocol)
    lower["boost"]["max_total_gy"] = 80.0  # both given: the lower one applies
    assert boost_ceiling_gy(lower) == 80.0


def test_missing_cord_makes_the_patient_not_prescribable() -> None:
    """Old behaviour: without a SPINAL_CORD structure the cord constraint evaluated to NaN, counted as
    met, and the search escalated to the top dose with only a flag."""
    protocol = load_protocol("isotoxic_hypofractionated")
    samples = {k: StructureSamples(k, [v.doses[0]], v.volume_cc, 0.0) for k, v in _world(0.0).items() if k != "SPINAL_CORD"}
    result = search(samples, protocol["constraints"], candidates(protocol)).as_dict(protocol["constraints"])
    assert not result["feasible"] and result["total_gy"] is None
    assert "SPINAL_CORD" in result["not_prescribable"] and "roi_names.yaml" in result["not_prescribable"]
    assert "cord_max" in result["not_prescribable"]
    # marked optional by the protocol: skipped, the others decide
    optional = copy.deepcopy(protocol)
    for c in optional["constraints"]:
        if c["structure"] == "SPINAL_CORD":
            c["optional"] = True
    result = search(samples, optional["constraints"], candidates(optional)).as_dict(optional["constraints"])
    assert result["feasible"] and result["not_prescribable"] is None and result["missing_structures"] == ["SPINAL_CORD"]


def test_missing_organ_in_the_pet_boost_rule_too() -> None:
    protocol = load_protocol("pet_boost")
    samples = {k: v for k, v in _three(_world(0.0)).items() if k != "HEART"}
    p = prescribe(samples, protocol, "A")
    assert p.candidate is None and "HEART" in p.result["not_prescribable"] and p.result["arm"] == "not_prescribable"


def test_unallocated_randomizable_patient_gets_no_prescribed_plan() -> None:
    """Old behaviour: a randomizable patient with no arm allocated got the arm-A escalation as the
    prescribed (and exported) plan. Now nothing is prescribed until an arm is allocated; both arms'
    escalations are reported."""
    protocol = load_protocol("pet_boost")
    samples = _three(_world(0.5))
    p = prescribe(samples, protocol, None)
    assert p.candidate is None and p.result["awaiting_randomisation"] and p.result["arm"] == "not_allocated"
    assert set(p.result["escalation_by_arm"]) == {"A", "B"}
    assert all(e["boost_total_gy"] > 72.0 for e in p.result["escalation_by_arm"].values())
    allocated = prescribe(samples, protocol, "B")
    assert allocated.candidate is not None and allocated.arm == "B" and allocated.plans == ["base", "boost_B"]


def test_constraints_say_their_dose_type_and_why() -> None:
    """Old file: 'expressed in EQD2 where the fraction size differs' while MLD, V20 and heart V40 were
    physical. Now each PET-boost constraint carries a dose_type_source that agrees with its dose_type."""
    protocol = load_protocol("pet_boost")
    assert "EQD2 where the fraction size differs" not in protocol["notes"]
    for c in protocol["constraints"]:
        why = c["dose_type_source"].lower()
        assert ("physical" in why) == (c["dose_type"] == "physical"), c["id"]
        assert ("eqd2" in why) == (c["dose_type"] == "eqd2"), c["id"]
    types = {c["id"]: c["dose_type"] for c in protocol["constraints"]}
    assert types["lung_mld"] == types["lung_v20"] == types["heart_v40"] == "physical"


def test_sample_has_one_randomisation_list() -> None:
    """Old behaviour: clinical.tsv drew the arm from its own random stream, the plan rule from
    sample_allocation: the two lists disagreed for about half the patients."""
    truths = [{"index": i, "patient_id": f"SAMPLE{i:03d}", "tumour": {"gtv_volume_cc": 8.0 + (i % 4), "hypoxic_fraction": 0.2},
               "histology": "squamous", "has_node": False, "planning_date": "20250101"} for i in range(1, 25)]
    clinical, _, _ = simulate_clinical(truths, 20240101)
    assert (clinical["arm"] != "not_randomized").sum() >= 8  # enough randomized patients for the check to mean something
    for _, row in clinical.iterrows():
        if row["arm"] != "not_randomized":
            assert row["arm"] == sample_allocation(int(row["patient_id"][-3:]), 20240101), row["patient_id"]


# ---------------------------------------------------------- the allocation the plan applies --------
def _per_arm(esophagus_boost_a: float, esophagus_boost_b: float) -> dict[str, StructureSamples]:
    """Samples with plans (base, boost_A, boost_B) whose boost plans differ in the oesophagus dose."""
    a, b = _world(esophagus_boost_a), _world(esophagus_boost_b)
    return {k: StructureSamples(k, [a[k].doses[0], a[k].doses[1], b[k].doses[1]], a[k].volume_cc, 0.0) for k in a}


def test_recorded_not_randomized_is_followed_even_when_the_test_passes() -> None:
    """Old behaviour: a patient the cohort sheet records as not randomized was treated as 'no arm
    allocated'; when isotox's 72 Gy test passed he got no plan at all (awaiting randomisation),
    while the outcome tables counted him as not randomized. Now the plan follows the record: the
    highest isotoxic dose <= 66 Gy, no boost, and says that isotox's test disagrees. Nearest wrong
    answers: no plan, or a boosted plan."""
    protocol = load_protocol("pet_boost")
    p = prescribe(_three(_world(0.5)), protocol, "not_randomized")
    assert p.result["whole_tumour_boost_test"]["feasible"]  # isotox's test passes ...
    assert p.candidate is not None and p.plans == ["base"] and p.candidate.boost_increment_gy == 0.0  # ... the record is followed
    assert p.candidate.total_gy <= 66.0 + 1e-9 and p.result["arm"] == "not_randomized" and p.arm is None
    assert not p.result.get("awaiting_randomisation") and "records the patient as not randomized" in p.result["allocation_note"]


def test_allocated_arm_is_not_applied_when_the_whole_tumour_test_fails() -> None:
    """The arm is allocated at registration and applied only when the 72 Gy whole-tumour boost is
    feasible. Old behaviour: the allocation was dropped without a word (plan.json said arm B was
    requested and not_randomized was prescribed, nothing said why). Now the plan names the
    allocation it did not apply and the constraint that stopped it."""
    protocol = load_protocol("pet_boost")
    hot = _three(_world(0.0))
    hot["ESOPHAGUS"] = StructureSamples("ESOPHAGUS", [np.full(50, 1.0)] * 3, np.full(50, 0.01), 0.0)  # the boost crosses it
    p = prescribe(hot, protocol, "B")
    assert p.result["arm"] == "not_randomized" and p.result["arm_recorded"] == "B" and p.plans == ["base"]
    assert p.candidate is not None and p.candidate.total_gy <= 66.0 + 1e-9
    note = p.result["allocation_note"]
    assert "allocated arm B not applied" in note and "esophagus_max" in note


def test_recorded_arm_comes_from_the_cohort_sheet(tmp_path: Path) -> None:
    """The one allocation: the cohort sheet's arm column (real cohorts and the sample alike)."""
    from isotox.errors import ConfigError, InputDataError
    from isotox.planning.allocation import recorded_arm

    sheet = tmp_path / "cohort.tsv"
    sheet.write_text("patient_id\tdicom_dir\thistology\tarm\nP1\t/d/P1\tsquamous\tA\nP2\t/d/P2\tsquamous\tnot_randomized\nP3\t/d/P3\tsquamous\t\n")
    assert [recorded_arm(sheet, p) for p in ("P1", "P2", "P3")] == ["A", "not_randomized", None]
    with pytest.raises(InputDataError) as info:
        recorded_arm(sheet, "P9")
    assert "P9" in str(info.value) and str(sheet) in str(info.value) and "add the patient's row" in str(info.value)
    sheet.write_text("patient_id\tdicom_dir\thistology\tarm\nP1\t/d/P1\tsquamous\tC\n")
    with pytest.raises(ConfigError, match="arm"):
        recorded_arm(sheet, "P1")


@pytest.mark.workflow
def test_sample_plan_rule_reads_the_patients_own_enrolment_record(tmp_path: Path) -> None:
    """The sample plan reads its patient's enrolment record (the row of the sample's cohort sheet,
    written with the patient's DICOM). Nearest wrong answers: the plan re-running the generator's
    RNG (no record as input: the plan and clinical.tsv could disagree), or the plan waiting for the
    whole cohort's sheet (sample_cohort_tables in its DAG: every plan then waits for every patient,
    and on a cluster each patient needs a second job)."""
    from tests.conftest import run_snakemake, write_config

    results = tmp_path / "r"
    config = write_config(tmp_path / "c.yaml", results=str(results), sample={"patients": 2, "seed": 20240101, "preset": "small"})
    proc = run_snakemake(f"{results}/patients/SAMPLE001/plan", "-n", "--quiet", "rules", "--configfile", str(config))
    table = proc.stdout[proc.stdout.index("Job stats:"):]
    assert re.search(r"^plan\s+1$", table, re.MULTILINE) and re.search(r"^sample_patient\s+1$", table, re.MULTILINE), table
    assert "sample_cohort_tables" not in table, table
    reason = run_snakemake(f"{results}/patients/SAMPLE001/plan", "-n", "--quiet", "reason", "--configfile", str(config)).stdout
    assert f"{results}/sample/SAMPLE001" in reason.split("rule plan:")[1], reason


def test_enrolment_records_are_the_cohort_sheet(tmp_path: Path) -> None:
    """The sample's cohort sheet is its patients' enrolment records concatenated, and their arms are
    the clinical table's (one allocation). Built from small fake truths, without generating images:
    the enrolment file is written by the same function write_sample_patient calls."""
    import pandas as pd

    from isotox.sample.cohort import write_cohort_tables
    from isotox.sample.patient import ENROLMENT_FILE, write_enrolment

    truth_files = []
    for i in range(1, 9):
        folder = tmp_path / f"SAMPLE{i:03d}"
        folder.mkdir()
        truth = {"index": i, "patient_id": f"SAMPLE{i:03d}", "tumour": {"gtv_volume_cc": 6.0 + 9 * (i % 5), "hypoxic_fraction": 0.2},
                 "histology": "squamous", "has_node": i % 3 == 0, "planning_date": "20250101", "sessions": {}}
        (folder / "ground_truth.json").write_text(json.dumps(truth))
        write_enrolment(folder / ENROLMENT_FILE, truth, 20240101)
        truth_files.append(folder / "ground_truth.json")
    paths = write_cohort_tables(tmp_path, truth_files[::-1], 20240101)
    sheet = pd.read_csv(paths["cohort"], sep="\t", dtype=str, keep_default_na=False)
    records = pd.concat([pd.read_csv(f.parent / ENROLMENT_FILE, sep="\t", dtype=str, keep_default_na=False) for f in truth_files], ignore_index=True)
    assert set(records["dicom_dir"]) == {"dicom"}  # relative to the record: the folder's bytes do not depend on where it is
    records["dicom_dir"] = [str(f.parent / "dicom") for f in truth_files]
    pd.testing.assert_frame_equal(sheet, records)
    clinical = pd.read_csv(paths["clinical"], sep="\t", dtype=str, keep_default_na=False)
    assert list(clinical["arm"]) == list(sheet["arm"]) and set(sheet["arm"]) >= {"not_randomized"} and set(sheet["arm"]) & {"A", "B"}
    assert [recorded_arm(f.parent / ENROLMENT_FILE, f.parent.name) for f in truth_files] == [a or None for a in sheet["arm"]]


def test_cohort_table_has_the_boost_reached_per_arm_and_what_stopped_it(tmp_path: Path) -> None:
    """Old cohort table: one boost_total_gy (the allocated arm's) and no word on what stopped it, nor on
    the other arm or the allocation. Now per patient: arm recorded and applied, each arm's boost
    (total and per fraction) and its stopping constraint or the ceiling, and for a patient who is
    not randomized the constraints the 72 Gy test broke. Worked by hand: arm A's boost gives the
    oesophagus 0.8 of the increment, so EQD2 76 Gy binds at 79.5 Gy; arm B's gives 0.3 and reaches
    the 86.4 Gy ceiling."""
    from isotox.outcomes.patients import cohort_patient_table
    from isotox.planning.stage import json_ready
    from isotox.planning.summary import add_boost_columns

    protocol = load_protocol("pet_boost")
    hot = _three(_world(0.0))
    hot["ESOPHAGUS"] = StructureSamples("ESOPHAGUS", [np.full(50, 1.0)] * 3, np.full(50, 0.01), 0.0)
    plans = {"P1": prescribe(_per_arm(0.8, 0.3), protocol, "A"), "P2": prescribe(hot, protocol, "B")}
    for pid, p in plans.items():
        (tmp_path / pid / "plan").mkdir(parents=True)
        doc = {"patient_id": pid, "prescription": p.result, "boost_total_gy": p.result.get("boost_total_gy")}
        (tmp_path / pid / "plan" / "plan.json").write_text(json.dumps(json_ready(doc)))
    dirs = [tmp_path / "P1", tmp_path / "P2"]
    table = add_boost_columns(cohort_patient_table(dirs), dirs).set_index("patient_id")
    p1, p2 = table.loc["P1"], table.loc["P2"]
    assert (p1["arm_recorded"], p1["arm_applied"]) == ("A", "A")
    assert p1["boost_A_reached_gy"] == pytest.approx(79.5) and p1["boost_A_stopped_by"] == "esophagus_max"
    assert p1["boost_B_reached_gy"] == pytest.approx(86.4) and p1["boost_B_stopped_by"] == "protocol ceiling (86.4 Gy)"
    assert p1["boost_A_per_fraction_gy"] == pytest.approx(79.5 / 24) and p1["boost_total_gy"] == pytest.approx(79.5)
    assert (p2["arm_recorded"], p2["arm_applied"]) == ("B", "not_randomized") and "esophagus_max" in p2["boost_test_violated"]
    assert "allocated arm B not applied" in p2["allocation_note"] and pd.isna(p2["boost_B_reached_gy"])


def test_sample_plans_apply_the_sample_cohort_sheets_allocation(sample_run: Path) -> None:
    """On the sample run: the arm each plan was given is the sample cohort sheet's (the same value as
    clinical.tsv's), and the arm it applied agrees with the clinical table unless the plan says why
    (the allocation could not be applied). Old behaviour: SAMPLE001 is not randomized in clinical.tsv
    but its plan was given arm A by a second draw of the generator's RNG."""
    sheet = pd.read_csv(sample_run / "sample" / "cohort.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("patient_id")
    clinical = pd.read_csv(sample_run / "sample" / "clinical.tsv", sep="\t", dtype=str, keep_default_na=False).set_index("patient_id")
    table = pd.read_csv(sample_run / "cohort" / "patients.tsv", sep="\t", dtype={"patient_id": str}).set_index("patient_id")
    for pid in sheet.index:
        plan = json.loads((sample_run / "patients" / pid / "plan" / "plan.json").read_text())
        assert plan["arm_requested"] == (sheet.loc[pid, "arm"] or None) == (clinical.loc[pid, "arm"] or None), pid
        if plan["arm_applied"] != clinical.loc[pid, "arm"]:
            assert "not applied" in (plan["prescription"].get("allocation_note") or ""), pid
        assert table.loc[pid, "arm_applied"] == plan["arm_applied"]
