"""Stage 6 for a cohort: every outcome table and figure from the clinical table (+ QoL, + patient summaries).

``tabulate_outcomes`` writes into one folder (atomically):

``problems.tsv``            every row/date/item problem: patient, column, what is wrong
``endpoints.tsv``           per patient: months and event code of OS, PFS, TTP, LC, LPFS
``survival.tsv``            per endpoint and group: n, events, median (95 % CI; empty = not reached), estimate at each landmark (95 % CI, at risk)
``logrank.tsv``             per endpoint: log-rank chi-square, df, p between arms
``primary_endpoint.tsv``    the protocol's primary endpoint as it defines it (``isotox.outcomes.primary``)
``local_failure.tsv``       local failure by each landmark: Aalen-Johansen (death competing) and 1 - KM (deaths censored), named
``toxicity_ntcp.tsv``       observed rate of each NTCP model's own endpoint next to its mean predicted NTCP
``toxicity_evaluability.tsv`` per patient: serious toxicity, evaluable / pending / not evaluable and why
``km_{endpoint}.png``       KM curves per arm with numbers at risk
``toxicity_fits.tsv``, ``toxicity_bins.tsv``, ``toxicity.png``  toxicity vs dose/volume (when dose columns exist)
``simon.tsv``, ``simon.json`` optimal/minimax designs, the protocol's own rule and its flags, the monitor decisions
``feasibility.tsv``         proportion with the 72 Gy whole-tumour boost feasible (exact CI); dose per arm
``qol_scores.tsv``, ``qol_change.tsv``, ``qol_summary.tsv``, ``qol.png``  EORTC scales
``summary.json``            the headline numbers (primary endpoint first)
``outcomes_report.html``    the report: primary endpoint, Simon design flags and monitor, local failure, toxicity vs NTCP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from isotox.atomic import atomic_path  # noqa: E402
from isotox.errors import ConfigError  # noqa: E402
from isotox.outcomes import qol as qol_scoring  # noqa: E402
from isotox.outcomes.clinical import ClinicalTable, read_clinical  # noqa: E402
from isotox.outcomes.endpoints import ENDPOINTS, endpoint_table  # noqa: E402
from isotox.outcomes.primary import RANDOMIZED_ARMS, primary_endpoint_table  # noqa: E402
from isotox.outcomes.report import write_report  # noqa: E402
from isotox.outcomes.safety import assess_safety  # noqa: E402
from isotox.outcomes.survival import kaplan_meier, km_plot, local_failure, logrank  # noqa: E402
from isotox.outcomes.toxicity import exact_ci, observed_vs_predicted, toxicity_tables  # noqa: E402

log = logging.getLogger(__name__)


def _survival(endpoints: pd.DataFrame, arms: pd.Series, landmarks_years: list[float], out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    landmarks = [12.0 * y for y in landmarks_years]
    rows, tests = [], []
    for name in ENDPOINTS:
        t, e = endpoints[f"{name}_months"], endpoints[f"{name}_event"]
        ok = t.notna() & e.notna()
        fits: dict[str, Any] = {}
        groups: list[tuple[str, pd.Series]] = [("all", ok)]
        groups += [(f"arm {a}", ok & (arms == a)) for a in RANDOMIZED_ARMS if (ok & (arms == a)).sum() > 0]
        for label, mask in groups:
            if mask.sum() == 0:
                continue
            kmf, summary = kaplan_meier(t[mask], e[mask], landmarks, label=label)
            fits[label] = kmf
            finite = lambda v: v if np.isfinite(v) else np.nan  # noqa: E731  (inf = not reached -> NaN, as R's NA)
            row: dict[str, Any] = {"endpoint": name, "group": label, "n": summary.n, "events": summary.events, "median_months": finite(summary.median),
                                   "median_ci_low": finite(summary.median_lower), "median_ci_high": finite(summary.median_upper)}
            for _, lm in summary.landmarks.iterrows():
                y = f"{lm['time'] / 12:g}y"
                row.update({f"{y}_estimate": lm["estimate"], f"{y}_ci_low": lm["lower"], f"{y}_ci_high": lm["upper"], f"{y}_at_risk": lm["at_risk"]})
            rows.append(row)
        randomized = ok & arms.isin(RANDOMIZED_ARMS)
        test = logrank(t[randomized], e[randomized], arms[randomized]) if arms[randomized].nunique() == 2 else {"chisq": np.nan, "df": 0, "p": np.nan}
        tests.append({"endpoint": name, "comparison": "arm A vs arm B", **test})
        shown = [f for label, f in fits.items() if label != "all"] or list(fits.values())  # per arm, else the whole cohort
        km_plot(shown, f"{name} (Kaplan-Meier, 95 % CI log-log)", str(out / f"km_{name}.png"))
    return pd.DataFrame(rows), pd.DataFrame(tests)


def _local_failure(endpoints: pd.DataFrame, landmarks_years: list[float]) -> pd.DataFrame:
    """Both local-failure estimators, by name, for the whole cohort (a note row when nobody is evaluable)."""
    ok = endpoints["LF_months"].notna() & endpoints["LF_event"].notna() if len(endpoints) else pd.Series(dtype=bool)
    if not ok.any():
        return pd.DataFrame([{"estimator": "local failure", "note": "no evaluable patients (see problems.tsv)"}])
    table = local_failure(endpoints.loc[ok, "LF_months"], endpoints.loc[ok, "LF_event"], [12.0 * y for y in landmarks_years])
    return table.rename(columns={"time": "months"}).assign(years=lambda t: t["months"] / 12.0)


def _feasibility(rows: pd.DataFrame, patients: pd.DataFrame | None) -> pd.DataFrame:
    """Boost feasibility: from the plans (``boost_feasible``) when present, else from the allocation
    (PET-boost: a patient is randomized only when the 72 Gy whole-tumour boost is feasible)."""
    out = []
    if patients is not None and "boost_feasible" in patients.columns:
        flags = patients["boost_feasible"].dropna().astype(str).str.lower().isin(["true", "1", "yes"])
        source = "plans (boost_feasible)"
    elif "arm" in rows.columns and rows["arm"].notna().any():
        flags = rows["arm"].dropna().isin(RANDOMIZED_ARMS)
        source = "allocation (randomized = boost feasible)"
    else:
        return pd.DataFrame([{"measure": "boost feasible", "note": "no arm and no boost_feasible column"}])
    k, n = int(flags.sum()), int(flags.size)
    low, high = exact_ci(k, n)
    out.append({"measure": "whole-tumour boost to 72 Gy feasible", "source": source, "n": n, "feasible": k,
                "proportion": k / n if n else np.nan, "ci_low": low, "ci_high": high, "ci_method": "Clopper-Pearson exact"})
    if patients is not None and "prescribed_dose_gy" in patients.columns:
        # per arm as planned (plan_arm) when the plans say it, else as allocated in the clinical table
        arms = patients["plan_arm"] if "plan_arm" in patients.columns else (rows["arm"] if "arm" in rows.columns else None)
        if arms is not None:
            doses = patients[[c for c in ("prescribed_dose_gy", "boost_total_gy") if c in patients.columns]].astype(float)
            joined = doses.join(arms.rename("group"), how="inner")
            for arm, group in joined.groupby("group"):
                d = group["prescribed_dose_gy"].dropna()
                entry = {"measure": f"prescribed dose, arm {arm}", "n": len(d), "median_gy": d.median(), "min_gy": d.min(), "max_gy": d.max()}
                if "boost_total_gy" in group and group["boost_total_gy"].notna().any():
                    b = group["boost_total_gy"].dropna()
                    entry.update({"boost_median_gy": b.median(), "boost_min_gy": b.min(), "boost_max_gy": b.max(),
                                  "boost_per_fraction_median_gy": b.median() / float(patients.loc[b.index, "fractions"].astype(float).median())
                                  if "fractions" in patients.columns else np.nan})
                    if "boost_stopped_by" in patients.columns:
                        stops = patients.loc[b.index, "boost_stopped_by"].fillna("").astype(str)
                        entry["boost_stopped_by"] = "; ".join(f"{k or 'unknown'}: {v}" for k, v in stops.value_counts().sort_index().items())
                out.append(entry)
    return pd.DataFrame(out)


def _simon_json(safety: dict[str, Any] | None) -> dict[str, Any]:
    """simon.json: the design check and the monitor (JSON-ready), or a note."""
    if safety is None or "design" not in safety:
        return {"note": "the protocol has no Simon two-stage section"}
    return {**safety["design"], "monitor": safety["monitor"]}


def _qol(answers: pd.DataFrame, arms: pd.Series, out: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    problems = qol_scoring.check_items(answers)
    scores = qol_scoring.score(answers)
    change = qol_scoring.change_from_baseline(scores)
    scores.to_csv(out / "qol_scores.tsv", sep="\t", index=False, float_format="%.2f")
    change.to_csv(out / "qol_change.tsv", sep="\t", index=False, float_format="%.2f")
    scores = scores.assign(arm=scores["patient_id"].map(arms).fillna("unknown"))
    scales = [c for c in scores.columns if c not in ("patient_id", "timepoint", "arm")]
    order = list(dict.fromkeys(answers["timepoint"]))
    summary = scores.groupby(["timepoint", "arm"])[scales].agg(["mean", "count"])
    summary.columns = [f"{a}_{b}" for a, b in summary.columns]
    summary = summary.reset_index()
    summary["timepoint"] = pd.Categorical(summary["timepoint"], order, ordered=True)
    summary.sort_values(["timepoint", "arm"]).to_csv(out / "qol_summary.tsv", sep="\t", index=False, float_format="%.2f")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, scale, title in zip(axes, ("QL2", "DY", "LCDY"), ("Global health status (QL2)", "Dyspnoea (C30 DY)", "Dyspnoea (LC13)")):
        means = scores.groupby(["arm", "timepoint"])[scale].mean().unstack(0).reindex(order)
        means.plot(ax=ax, marker="o")
        ax.set_title(title)
        ax.set_ylim(0, 100)
        ax.set_ylabel("score (0-100)")
    fig.tight_layout()
    fig.savefig(out / "qol.png", dpi=90)
    plt.close(fig)
    return problems.assign(problem="answer out of range (set to missing)").rename(columns={"value": "detail"}), {"timepoints": order, "patients": int(answers["patient_id"].nunique())}


def _toxicity_plot(bins: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if bins.empty:
        ax.text(0.5, 0.5, "no dose-volume columns yet (planning stage)", ha="center", va="center")
        ax.set_axis_off()
    else:
        for (endpoint, variable), group in bins.groupby(["endpoint", "variable"]):
            ax.errorbar(range(len(group)), group["rate"], yerr=[group["rate"] - group["ci_low"], group["ci_high"] - group["rate"]], marker="o", capsize=3, label=f"{endpoint} vs {variable}")
        ax.set_xlabel("dose bin (quartiles)")
        ax.set_ylabel("observed rate (95 % exact CI)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def tabulate_outcomes(clinical: str | Path | ClinicalTable, out_dir: str | Path, protocol: dict[str, Any], *, qol: str | Path | None = None,
                      patients: str | Path | None = None) -> dict[str, Any]:
    """Write every outcome table and figure for the cohort into ``out_dir`` (see module docstring)."""
    table = clinical if isinstance(clinical, ClinicalTable) else read_clinical(clinical)
    rows = table.rows
    endpoints_cfg = protocol.get("endpoints", {})
    endpoints, date_problems = endpoint_table(rows, endpoints_cfg.get("time_origin", "registration"), endpoints_cfg.get("death_in_local_progression", "event"))
    arms = rows["arm"] if "arm" in rows.columns else pd.Series(np.nan, index=rows.index)
    patient_table = pd.read_csv(patients, sep="\t", dtype={"patient_id": str}).set_index("patient_id") if patients else None
    merged = rows.join(patient_table, how="left", rsuffix="_imaging") if patient_table is not None else rows
    summary: dict[str, Any] = {"patients": int(len(rows)), "excluded_rows": table.excluded, "protocol": protocol.get("name")}
    with atomic_path(out_dir) as out:
        out.mkdir(parents=True)
        endpoints.to_csv(out / "endpoints.tsv", sep="\t", index=False, float_format="%.3f")
        surv, tests = _survival(endpoints, arms, endpoints_cfg.get("landmarks_years", [1, 3, 5]), out)
        surv.to_csv(out / "survival.tsv", sep="\t", index=False, float_format="%.4f")
        tests.to_csv(out / "logrank.tsv", sep="\t", index=False, float_format="%.4g")
        failure = _local_failure(endpoints, endpoints_cfg.get("landmarks_years", [1, 3, 5]))
        failure.to_csv(out / "local_failure.tsv", sep="\t", index=False, float_format="%.4f")
        window = protocol.get("safety", {}).get("toxicity_window")
        fits, bins = toxicity_tables(merged, protocol.get("ntcp"), window)
        fits.to_csv(out / "toxicity_fits.tsv", sep="\t", index=False, float_format="%.4g")
        bins.to_csv(out / "toxicity_bins.tsv", sep="\t", index=False, float_format="%.4g")
        versus = observed_vs_predicted(merged, protocol.get("ntcp"), window)
        versus.to_csv(out / "toxicity_ntcp.tsv", sep="\t", index=False, float_format="%.4g")
        _toxicity_plot(bins, out / "toxicity.png")
        safety = assess_safety(rows, protocol)
        evaluability = safety["status"].reset_index() if safety else pd.DataFrame(columns=["patient_id", "status", "reason"])
        evaluability.to_csv(out / "toxicity_evaluability.tsv", sep="\t", index=False, date_format="%Y-%m-%d")
        simon_result = _simon_json(safety)
        (out / "simon.json").write_text(json.dumps(simon_result, indent=2) + "\n", encoding="utf-8")
        designs = [{"design": k, **v} for k, v in simon_result.items() if k in ("protocol_design", "protocol_design_if_alpha_two_sided", "optimal", "minimax") and v]
        pd.DataFrame(designs).to_csv(out / "simon.tsv", sep="\t", index=False, float_format="%.4f")
        primary = primary_endpoint_table(protocol, endpoints, arms, safety)
        primary.to_csv(out / "primary_endpoint.tsv", sep="\t", index=False, float_format="%.4f")
        _feasibility(rows, patient_table).to_csv(out / "feasibility.tsv", sep="\t", index=False, float_format="%.4f")
        all_problems = [table.problems.assign(source="clinical row"), date_problems.assign(source="dates")]
        if qol is not None:
            answers = pd.read_csv(qol, sep="\t", dtype={"patient_id": str, "timepoint": str})
            missing = [c for c in ("patient_id", "timepoint") if c not in answers.columns]
            unknown = [c for c in answers.columns if c not in ("patient_id", "timepoint", *qol_scoring.ITEM_COLUMNS)]
            if missing or unknown:
                raise ConfigError(qol, f"QoL table: missing columns {missing}, unknown columns {unknown} (expected patient_id, timepoint, q1..q43)")
            qol_problems, summary["qol"] = _qol(answers, arms, out)
            all_problems.append(qol_problems.assign(source="qol"))
        else:  # the figure always exists, so a workflow can declare it
            fig, ax = plt.subplots(figsize=(6, 2))
            ax.text(0.5, 0.5, "no quality-of-life table given", ha="center", va="center")
            ax.set_axis_off()
            fig.savefig(out / "qol.png", dpi=90)
            plt.close(fig)
        pd.concat(all_problems, ignore_index=True).to_csv(out / "problems.tsv", sep="\t", index=False)
        spec = protocol.get("primary_endpoint") or {}
        summary["primary_endpoint"] = {"kind": spec.get("kind"), "description": spec.get("description"),
                                       "rows": json.loads(primary.to_json(orient="records"))}
        summary["simon_monitor"] = simon_result.get("monitor")
        summary["simon_design_flags"] = simon_result.get("flags", [])
        summary["problems"] = int(sum(len(p) for p in all_problems))
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
        write_report(out / "outcomes_report.html", protocol, primary=primary, simon_result=simon_result, evaluability=evaluability,
                     local_failure=failure, toxicity_ntcp=versus, problems=summary["problems"])
    for _, problem in table.problems.iterrows():
        log.warning("%s: column %s: %s (row left out)", problem["patient_id"], problem["column"], problem["problem"])
    return summary
