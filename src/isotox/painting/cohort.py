"""The cohort view of the strategies stage: every patient's rows in one table, a summary per
strategy (feasibility, limiting constraints, median TCP and TCP gain over uniform 66 Gy, Q,
NTCP, at each strategy's isotoxic/ceiling limit and at the patient's common toxicity level) and
the TCP-gain figure (both), with a small self-contained HTML page for the report."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from isotox.atomic import atomic_path, write_text
from isotox.painting.plots import cohort_gain_figure

REFERENCE = "uniform_66"


def read_tables(paths: list[str | Path]) -> pd.DataFrame:
    """Concatenate per-patient ``strategies.tsv`` files (a folder or the file itself)."""
    frames = []
    for p in paths:
        p = Path(p)
        frames.append(pd.read_csv(p / "strategies.tsv" if p.is_dir() else p, sep="\t", dtype={"patient_id": str}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row per strategy, in the order of the patient tables."""
    gain = table.pivot(index="patient_id", columns="strategy", values="tcp")
    gain = gain.sub(gain[REFERENCE], axis=0) if REFERENCE in gain else gain * float("nan")
    rows = []
    for name, part in table.groupby("strategy", sort=False):
        limiting = part["limiting_constraint"].fillna("").astype(str).replace("", "none").value_counts()
        rows.append({"strategy": name, "patients": len(part), "feasible": int(part["feasible"].astype(bool).sum()),
                     "limiting_constraints": "; ".join(f"{k} ({v})" for k, v in limiting.items()),
                     "median_tcp": part["tcp"].median(), "median_tcp_gain": gain[name].median() if name in gain else float("nan"),
                     "median_q_factor": part["q_factor"].median(), "median_gtv_mean_gy": part["gtv_mean_gy"].median(),
                     "median_top_dose_gy": part["top_dose_gy"].median(), "median_ntcp_pneumonitis": part["ntcp_pneumonitis"].median(),
                     "median_ntcp_oesophagitis": part["ntcp_oesophagitis"].median(), "median_mld_gy": part["mld_gy"].median(),
                     **_equal_toxicity_summary(part)})
    return pd.DataFrame(rows)


def _equal_toxicity_summary(part: pd.DataFrame) -> dict[str, float]:
    """Medians at the patient's common toxicity level, over the patients that have one (a patient
    whose base prescription breaks a constraint has no escalated strategy: NaN, not counted)."""
    def median(column: str) -> float:
        return float(pd.to_numeric(part[column], errors="coerce").median()) if column in part else float("nan")

    patients = int(pd.to_numeric(part["eqtox_tcp"], errors="coerce").notna().sum()) if "eqtox_tcp" in part else 0
    return {"patients_equal_toxicity": patients, "median_tcp_equal_toxicity": median("eqtox_tcp"), "median_tcp_gain_equal_toxicity": median("eqtox_tcp_gain"),
            "median_top_dose_gy_equal_toxicity": median("eqtox_top_dose_gy"), "median_equal_toxicity_level": median("eqtox_level"),
            "median_ntcp_pneumonitis_equal_toxicity": median("eqtox_ntcp_pneumonitis"),
            "median_ntcp_oesophagitis_equal_toxicity": median("eqtox_ntcp_oesophagitis")}


def _page(summary: pd.DataFrame, figure: Path, measure: str) -> str:
    encoded = base64.b64encode(figure.read_bytes()).decode("ascii")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>isotox: dose-painting strategies</title></head><body>"
            "<h1>Dose painting and biologically guided escalation</h1>"
            f"<p>Each strategy is escalated by the protocol's isotoxic search until its first constraint binds or its ceiling "
            f"(columns without suffix: strategies stopped at their ceiling sit at a lower toxicity than those stopped by a constraint). "
            f"Columns <i>_equal_toxicity</i>: every escalated strategy of a patient scaled to one common level of the "
            f"equal-toxicity measure ({html.escape(measure)}), the lowest of the strategies' own limits, so the TCP gains compare at the "
            f"same normal-tissue toxicity. TCP gain is over {html.escape(REFERENCE)} (the unescalated 66 Gy plan; percentage points "
            f"are 100 x the gain). Model parameters and their sources: config/painting.yaml.</p>"
            + summary.to_html(index=False, float_format=lambda v: f"{v:.3g}")
            + f"<p><img src='data:image/png;base64,{encoded}' alt='TCP gain per strategy'></p></body></html>\n")


def cohort_strategies(patient_tables: list[str | Path], table_path: str | Path, summary_path: str | Path, figure_path: str | Path,
                      page_path: str | Path) -> pd.DataFrame:
    """Write the cohort table, its per-strategy summary, the TCP-gain figure and the HTML page."""
    table = read_tables(patient_tables)
    summary = summarise(table)
    with atomic_path(table_path) as out:
        table.to_csv(out, sep="\t", index=False, float_format="%.5g")
    with atomic_path(summary_path) as out:
        summary.to_csv(out, sep="\t", index=False, float_format="%.5g")
    with atomic_path(figure_path) as out:
        cohort_gain_figure(table, out, REFERENCE)
    measures = table["eqtox_measure"].dropna().unique() if "eqtox_measure" in table else []
    write_text(page_path, _page(summary, Path(figure_path), ", ".join(map(str, measures)) or "none"))
    return summary
