"""Stage 6: survival statistics against R, Simon designs against Simon (1989), EORTC scoring by hand,
endpoint definitions on hand-made patients, and bad clinical rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_lung

from isotox.cli import main as cli_main
from isotox.outcomes.clinical import read_clinical
from isotox.outcomes.endpoints import DAYS_PER_MONTH, endpoint_table
from isotox.outcomes.qol import score
from isotox.outcomes.simon import evaluate, optimal_and_minimax
from isotox.outcomes.survival import cumulative_incidence, kaplan_meier, logrank
from isotox.outcomes.tabulate import tabulate_outcomes
from isotox.outcomes.toxicity import logistic_fit
from isotox.settings import load_protocol

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------- survival vs R --------------------
# Reference: R 4.2.2, survival 3.5-3, on survival::lung (NCCTG advanced lung cancer, 228 patients;
# the same data as lifelines.datasets.load_lung), computed with
#   f <- survfit(Surv(time, status) ~ 1, data = lung, conf.type = "log-log")
#   summary(f, times = c(182.625, 365.25, 730.5)); quantile(f, 0.5)
#   survfit(Surv(time, status) ~ sex, ...); survdiff(Surv(time, status) ~ sex, data = lung)
R_OVERALL = [  # time (days), n.risk, surv, lower, upper
    (182.625, 156, 0.70805423, 0.643995455, 0.76273835),
    (365.250, 65, 0.40924162, 0.338714269, 0.47838077),
    (730.500, 13, 0.11569310, 0.067632151, 0.17782520),
]
R_MEDIAN = {"all": (310, 284, 361), 1: (270, 210, 306), 2: (426, 345, 524)}
R_ONE_YEAR_BY_SEX = {1: (35, 0.33608783, 0.25272914, 0.42130217), 2: (30, 0.52646303, 0.40357982, 0.63531623)}
R_LOGRANK = (10.32674, 0.001311165)


@pytest.fixture(scope="module")
def lung() -> pd.DataFrame:
    data = load_lung()
    assert len(data) == 228 and int(data["status"].sum()) == 165, "lifelines' lung is R's survival::lung (165 deaths)"
    return data


def test_kaplan_meier_matches_r_survival(lung: pd.DataFrame) -> None:
    _, summary = kaplan_meier(lung["time"], lung["status"], [r[0] for r in R_OVERALL])
    for (_, row), (t, n_risk, surv, lower, upper) in zip(summary.landmarks.iterrows(), R_OVERALL):
        assert row["at_risk"] == n_risk
        assert row["estimate"] == pytest.approx(surv, abs=1e-6)
        assert row["lower"] == pytest.approx(lower, abs=1e-6) and row["upper"] == pytest.approx(upper, abs=1e-6)
    assert (summary.median, summary.median_lower, summary.median_upper) == R_MEDIAN["all"]


def test_kaplan_meier_by_group_and_logrank_match_r(lung: pd.DataFrame) -> None:
    for sex in (1, 2):
        mask = lung["sex"] == sex
        _, summary = kaplan_meier(lung["time"][mask], lung["status"][mask], [365.25])
        n_risk, surv, lower, upper = R_ONE_YEAR_BY_SEX[sex]
        row = summary.landmarks.iloc[0]
        assert row["at_risk"] == n_risk
        assert (row["estimate"], row["lower"], row["upper"]) == pytest.approx((surv, lower, upper), abs=1e-6)
        assert (summary.median, summary.median_lower, summary.median_upper) == R_MEDIAN[sex]
    test = logrank(lung["time"], lung["status"], lung["sex"])
    assert test["chisq"] == pytest.approx(R_LOGRANK[0], abs=1e-4)
    assert test["p"] == pytest.approx(R_LOGRANK[1], rel=1e-4)


def test_cumulative_incidence_by_hand() -> None:
    """Aalen-Johansen on 5 patients: event at 1 (4 at risk -> 1/5... ), worked out by hand.

    times 1 (event), 2 (death), 3 (event), 4 (censored), 5 (event). S(t-) before 1: 1;
    CIF(1) = 1/5 = 0.2; S after 1 = 0.8; death at 2 (4 at risk): S = 0.6; event at 3 (3 at risk):
    CIF += 0.6 x 1/3 = 0.2 -> 0.4; censored at 4; event at 5 (1 at risk): CIF += 0.4 x 1 -> 0.8.
    """
    t = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0])
    e = pd.Series([1, 2, 1, 0, 1])
    cif = cumulative_incidence(t, e, [1.5, 3.5, 6.0])
    np.testing.assert_allclose(cif["cumulative_incidence"], [0.2, 0.4, 0.8], atol=1e-6)


# ------------------------------------------------------------- Simon designs --------------------
# Simon R. Optimal two-stage designs for phase II clinical trials. Control Clin Trials 1989;10:1-10,
# Table 1 (alpha = 0.05, beta = 0.20): (p0, p1) -> optimal (r1/n1, r/n, EN0), minimax (r1/n1, r/n, EN0)
SIMON_1989 = [
    ((0.05, 0.25), (0, 9, 2, 17, 12.0), (0, 12, 2, 16, 13.8)),
    ((0.10, 0.30), (1, 10, 5, 29, 15.0), (1, 15, 5, 25, 19.5)),
    ((0.20, 0.40), (3, 13, 12, 43, 20.6), (4, 18, 10, 33, 22.3)),
    ((0.30, 0.50), (5, 15, 18, 46, 23.6), (6, 19, 16, 39, 25.7)),
]


@pytest.mark.parametrize(("rates", "optimal", "minimax"), SIMON_1989)
def test_simon_designs_reproduce_the_published_table(rates: tuple[float, float], optimal: tuple, minimax: tuple) -> None:
    got_opt, got_min = optimal_and_minimax(rates[0], rates[1], 0.05, 0.80)
    for got, want in ((got_opt, optimal), (got_min, minimax)):
        assert (got.r1, got.n1, got.r, got.n) == want[:4]
        assert round(got.en0, 1) == want[4]
        assert got.alpha <= 0.05 and got.power >= 0.80


def test_monitor_decisions() -> None:
    from isotox.outcomes.simon import monitor

    assert monitor(9, 12, 8, 12) == "continue" and monitor(8, 12, 8, 12) == "stop"
    assert monitor(5, 8, 8, 12) == "wait"  # 4 still to come could bring it to 9
    assert monitor(4, 8, 8, 12) == "stop"  # even 4 more free of toxicity gives only 8


def test_protocol_rule_is_evaluated_and_compared_with_the_optimal_design() -> None:
    protocol = load_protocol(REPO / "config" / "protocols" / "isotoxic_hypofractionated.yaml")
    s = protocol["safety"]["simon"]
    design = evaluate(s["r1"], s["n1"], 25, s["n"], s["p0"], s["p1"])
    # stop after 12 if <= 8 free of serious toxicity: PET under p0 = P(Bin(12, 0.75) <= 8)
    from scipy.stats import binom

    assert design.pet0 == pytest.approx(binom.cdf(8, 12, 0.75))
    optimal, _ = optimal_and_minimax(s["p0"], s["p1"], s["alpha"], s["power"])
    assert (optimal.r1, optimal.n1) != (s["r1"], s["n1"]) or optimal.n != s["n"]


# ------------------------------------------------------------- EORTC scoring --------------------
def _answers(**items: float) -> pd.DataFrame:
    row = {"patient_id": "P1", "timepoint": "baseline", **{f"q{i}": np.nan for i in range(1, 44)}}
    row.update({k: v for k, v in items.items()})
    return pd.DataFrame([row])


def test_qlq_c30_scales_by_hand() -> None:
    """PF2 items 1-5 = 1,2,2,1,1: RS = 1.4, PF = (1 - 0.4/3) x 100 = 86.67.
    QL2 items 29, 30 = 5, 6: RS = 5.5, QL = 4.5/6 x 100 = 75. FA items 10,12,18 = 2,3,4: RS 3,
    FA = 2/3 x 100 = 66.67. DY item 8 = 4: 100."""
    s = score(_answers(q1=1, q2=2, q3=2, q4=1, q5=1, q29=5, q30=6, q10=2, q12=3, q18=4, q8=4)).iloc[0]
    assert s["PF2"] == pytest.approx(86.6667, abs=1e-3)
    assert s["QL2"] == pytest.approx(75.0)
    assert s["FA"] == pytest.approx(66.6667, abs=1e-3)
    assert s["DY"] == pytest.approx(100.0)


def test_half_items_rule_for_missing_answers() -> None:
    """EF (4 items) with 2 answered (2, 3): scored from them, RS 2.5 -> (1 - 1.5/3) x 100 = 50;
    with 1 answered: missing. FA (3 items) with 2 answered (1, 2): RS 1.5 -> 16.67; with 1: missing."""
    assert score(_answers(q21=2, q22=3)).iloc[0]["EF"] == pytest.approx(50.0)
    assert np.isnan(score(_answers(q21=2)).iloc[0]["EF"])
    assert score(_answers(q10=1, q12=2)).iloc[0]["FA"] == pytest.approx(16.6667, abs=1e-3)
    assert np.isnan(score(_answers(q10=1)).iloc[0]["FA"])
    assert np.isnan(score(_answers()).iloc[0]["SL"])  # single item unanswered


def test_lc13_dyspnoea_needs_all_three_items() -> None:
    """LC13 items 3, 4, 5 (q33-q35) = 2, 3, 4: RS 3 -> 66.67. Item 5 missing: not scored (LC13 rule)."""
    assert score(_answers(q33=2, q34=3, q35=4)).iloc[0]["LCDY"] == pytest.approx(66.6667, abs=1e-3)
    assert np.isnan(score(_answers(q33=2, q34=3)).iloc[0]["LCDY"])
    assert score(_answers(q31=3)).iloc[0]["LCCO"] == pytest.approx(66.6667, abs=1e-3)


def test_out_of_range_answers_are_treated_as_missing() -> None:
    assert np.isnan(score(_answers(q11=7)).iloc[0]["SL"])  # 1-4 item answered 7


# ------------------------------------------------------------- endpoints and bad rows -----------
CLINICAL_HEADER = ("patient_id\tarm\tregistration_date\tlocal_progression_date\tregional_progression_date\tdistant_progression_date\t"
                   "death_date\tlast_followup_date\tpneumonitis_grade\tesophagitis_grade\trt_interruption_days")


def _clinical(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "clinical.tsv"
    path.write_text("\n".join([CLINICAL_HEADER, *lines]) + "\n")
    return path


def test_endpoint_definitions_on_hand_made_patients(tmp_path: Path) -> None:
    path = _clinical(tmp_path, [
        "P1\tA\t2024-01-01\t2024-07-01\t\t\t2025-01-01\t2025-01-01\t0\t0\t0",   # local prog, then death
        "P2\tB\t2024-01-01\t\t\t2024-04-01\t\t2025-01-01\t1\t2\t0",             # distant only, alive
        "P3\tA\t2024-01-01\t\t\t\t2024-10-01\t2024-10-01\t3\t0\t0",             # death without progression
    ])
    ep, problems = endpoint_table(read_clinical(path).rows, "registration", "event")
    assert problems.empty
    months = lambda a, b: (pd.Timestamp(b) - pd.Timestamp(a)).days / DAYS_PER_MONTH  # noqa: E731
    assert ep.loc["P1", "LPFS_months"] == pytest.approx(months("2024-01-01", "2024-07-01")) and ep.loc["P1", "LPFS_event"] == 1
    assert ep.loc["P1", "OS_months"] == pytest.approx(months("2024-01-01", "2025-01-01")) and ep.loc["P1", "OS_event"] == 1
    assert ep.loc["P2", "PFS_months"] == pytest.approx(months("2024-01-01", "2024-04-01")) and ep.loc["P2", "PFS_event"] == 1
    assert ep.loc["P2", "LC_event"] == 0 and ep.loc["P2", "LC_months"] == pytest.approx(months("2024-01-01", "2025-01-01"))
    assert ep.loc["P3", "LPFS_event"] == 1 and ep.loc["P3", "TTP_event"] == 0 and ep.loc["P3", "LC_event"] == 0
    competing, _ = endpoint_table(read_clinical(path).rows, "registration", "competing")
    assert competing.loc["P3", "LPFS_event"] == 2


def test_impossible_dates_are_reported_not_fixed(tmp_path: Path) -> None:
    path = _clinical(tmp_path, [
        "P1\tA\t2024-01-01\t2023-12-01\t\t\t\t2025-01-01\t0\t0\t0",            # progression before registration
        "P2\tA\t2024-01-01\t2024-09-01\t\t\t2024-06-01\t2024-06-01\t0\t0\t0",  # progression after death
        "P3\tA\t2024-01-01\t\t\t\t\t2025-01-01\t0\t0\t0",                      # fine
    ])
    ep, problems = endpoint_table(read_clinical(path).rows, "registration", "event")
    assert set(problems["patient_id"]) == {"P1", "P2"}
    assert "before the time origin" in problems.set_index("patient_id").loc["P1", "problem"]
    assert np.isnan(ep.loc["P1", "LPFS_months"]) and np.isnan(ep.loc["P2", "LC_months"])
    assert ep.loc["P3", "OS_event"] == 0


def test_a_cohort_without_evaluable_dates_still_gets_its_tables(tmp_path: Path) -> None:
    path = _clinical(tmp_path, ["P1\tA\t2024-01-01\t2023-12-01\t\t\t\t2025-01-01\t0\t0\t0"])  # progression before registration
    summary = tabulate_outcomes(path, tmp_path / "out", load_protocol(REPO / "config" / "protocols" / "pet_boost.yaml"))
    assert summary["problems"] >= 1 and (tmp_path / "out" / "km_LPFS.png").exists()
    assert (pd.read_csv(tmp_path / "out" / "survival.tsv", sep="\t")["endpoint"] == "LPFS").sum() == 0


def test_bad_clinical_rows_are_named_and_the_rest_is_tabulated(tmp_path: Path) -> None:
    path = _clinical(tmp_path, [
        "P1\tC\t2024-01-01\t\t\t\t\t2025-01-01\t0\t0\t0",             # unknown arm
        "P2\tA\t2024-02-30\t\t\t\t\t2025-01-01\t0\t0\t0",             # not a calendar date
        "P3\tA\t2024-01-01\t\t\t\t\t2025-01-01\t7\t0\t0",             # grade out of range
        "P4\tB\t2024-01-01\t\t\t\t\t2025-01-01\t0\t0\t0",
        "P5\tA\t2024-01-05\t2024-08-01\t\t\t\t2025-01-01\t2\t1\t0",
    ])
    table = read_clinical(path)
    problems = table.problems.set_index("patient_id")
    assert problems.loc["P1", "column"] == "arm" and "'C'" in problems.loc["P1", "problem"]
    assert problems.loc["P2", "column"] == "registration_date" and "calendar date" in problems.loc["P2", "problem"]
    assert problems.loc["P3", "column"] == "pneumonitis_grade"
    assert list(table.rows.index) == ["P4", "P5"]
    summary = tabulate_outcomes(table, tmp_path / "out", load_protocol(REPO / "config" / "protocols" / "pet_boost.yaml"))
    assert summary["patients"] == 2 and summary["excluded_rows"] == ["P1", "P2", "P3"]
    written = pd.read_csv(tmp_path / "out" / "problems.tsv", sep="\t")
    assert {"P1", "P2", "P3"} <= set(written["patient_id"])


def test_logistic_fit_recovers_a_known_dose_response() -> None:
    """2000 simulated patients, P = 1/(1+exp(-(-4 + 0.2 MLD))): the Wald 95 % CI of b1 contains 0.2
    and TD50 is within 10 % of 20 Gy."""
    rng = np.random.default_rng(11)
    mld = pd.Series(rng.uniform(5, 30, 2000))
    toxic = pd.Series(rng.random(2000) < 1 / (1 + np.exp(-(-4 + 0.2 * mld))))
    fit = logistic_fit(mld, toxic)
    assert fit["b1_ci_low"] <= 0.2 <= fit["b1_ci_high"]
    assert fit["td50"] == pytest.approx(20.0, rel=0.1)
    assert np.isnan(logistic_fit(mld, pd.Series(np.zeros(2000, bool)))["b1"])  # no events: not estimable


# ------------------------------------------------------------- the sample cohort, CLI ------------
def test_outcomes_cli_on_the_sample_cohort(sample_run: Path, tmp_path: Path) -> None:
    sample = sample_run / "sample"
    out = tmp_path / "outcomes"
    code = cli_main(["outcomes", str(sample / "clinical.tsv"), "--out", str(out), "--qol", str(sample / "qol.tsv"),
                     "--protocol", str(REPO / "config" / "protocols" / "isotoxic_hypofractionated.yaml")])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["simon_monitor"]["decision"] in ("continue", "stop", "wait")
    survival = pd.read_csv(out / "survival.tsv", sep="\t")
    assert set(survival["endpoint"]) == {"OS", "PFS", "TTP", "LC", "LPFS"}
    assert (out / "km_LPFS.png").stat().st_size > 10_000 and (out / "local_failure.tsv").exists()
    assert summary["primary_endpoint"]["kind"] == "safety" and (out / "outcomes_report.html").exists()
    scores = pd.read_csv(out / "qol_scores.tsv", sep="\t")
    assert scores[["QL2", "PF2", "LCDY"]].stack().between(0, 100).all()


def test_simon_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["simon", "--p0", "0.05", "--p1", "0.25", "--alpha", "0.05", "--power", "0.8", "--r1", "0", "--n1", "9", "--n", "17"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["given"]["is_optimal"] and result["minimax"]["n"] == 16


def test_qol_table_with_wrong_columns_is_refused(tmp_path: Path) -> None:
    from isotox.errors import ConfigError

    clinical = _clinical(tmp_path, ["P4\tB\t2024-01-01\t\t\t\t\t2025-01-01\t0\t0\t0"])
    qol = tmp_path / "qol.tsv"
    qol.write_text("patient_id\ttimepoint\tq1\tq44\nP4\tbaseline\t1\t2\n")
    with pytest.raises(ConfigError, match="unknown columns \\['q44'\\]"):
        tabulate_outcomes(clinical, tmp_path / "out", load_protocol(REPO / "config" / "protocols" / "pet_boost.yaml"), qol=qol)
    assert not (tmp_path / "out").exists()
