"""Toxicity against dose and volume, toxicity evaluability, and observed rates next to predicted NTCP.

Pneumonitis (grade >= 2 and >= 3) against MLD, lung V20 and V5; oesophagitis against the
oesophagus Dmax and Dmean. Bins: rate with its exact (Clopper-Pearson) 95 % CI per bin.
Fit: logistic regression P(tox) = 1 / (1 + exp(-(b0 + b1 x))) by maximum likelihood
(statsmodels), with Wald 95 % CIs of the coefficients and the dose giving 50 % (TD50 = -b0 / b1).

Like with like: a protocol NTCP model predicts one endpoint (its ``toxicity`` and ``min_grade``),
so its mean prediction is shown only next to the observed rate of that same grade; a grade the
protocol has no model for is tabulated without one (and says which grade the model predicts).

Evaluable patients only: a patient free of the toxicity counts as free only when followed past
the protocol's toxicity window (``safety.toxicity_window``); with the event they count at once.
The others are *pending* (window not over) or *not evaluable* (died before its end, grade not
recorded), listed rather than counted as free.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.stats.proportion import proportion_confint

from isotox.outcomes.endpoints import DAYS_PER_MONTH
from isotox.outcomes.patients import NTCP_COLUMN_BY_STRUCTURE

#: (toxicity column, minimum grade, dose-volume column), as the report tabulates them.
ANALYSES = (
    ("pneumonitis_grade", 2, "mld_gy"),
    ("pneumonitis_grade", 2, "lung_v20_pct"),
    ("pneumonitis_grade", 2, "lung_v5_pct"),
    ("pneumonitis_grade", 3, "mld_gy"),
    ("esophagitis_grade", 2, "esophagus_dmax_gy"),
    ("esophagitis_grade", 2, "esophagus_dmean_gy"),
    ("esophagitis_grade", 3, "esophagus_dmax_gy"),
)
#: a protocol NTCP model's ``toxicity`` -> the clinical grade column it is observed in
GRADE_COLUMN = {"pneumonitis": "pneumonitis_grade", "esophagitis": "esophagitis_grade"}
WINDOW_ORIGIN_COLUMN = {"rt_end": "rt_end_date", "rt_start": "rt_start_date", "registration": "registration_date"}
EVALUABLE = ("event", "free")


def _grades(rows: pd.DataFrame, column: str) -> pd.Series:
    """A grade column as nullable integers (missing column: all missing, never 0)."""
    if column not in rows.columns:
        return pd.Series(pd.NA, index=rows.index, dtype="Int64")
    return pd.to_numeric(rows[column], errors="coerce").astype("Int64")


def serious_toxicity(rows: pd.DataFrame, rule: dict[str, Any]) -> pd.Series:
    """The protocol's serious toxicity per patient: True, False, or <NA> when it cannot be told.

    Pneumonitis >= grade p, oesophagitis >= grade e, or oesophagitis >= grade i with the RT
    interrupted for at least d days ("7 days or more" in the isotoxic protocol's primary
    objective). Kleene logic: a known criterion met is True whatever is missing; False needs every
    criterion known. (isotox used to fill missing grades with 0, so an unrecorded grade counted
    as free of toxicity, and to require *more than* d days.)
    """
    pneu, eso = _grades(rows, "pneumonitis_grade"), _grades(rows, "esophagitis_grade")
    serious = (pneu >= rule["pneumonitis_min_grade"]) | (eso >= rule["esophagitis_min_grade"])
    if "esophagitis_interruption_grade" in rule:
        pause = _grades(rows, "rt_interruption_days")
        serious = serious | ((eso >= rule["esophagitis_interruption_grade"]) & (pause >= rule["esophagitis_interruption_days"]))
    return serious.astype("boolean")


def _dates(rows: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_datetime(rows[column]) if column in rows.columns else pd.Series(pd.NaT, index=rows.index, dtype="datetime64[ns]")


def toxicity_status(rows: pd.DataFrame, toxic: pd.Series, window: dict[str, Any] | None) -> pd.DataFrame:
    """Per patient: ``status`` (event, free, pending, not evaluable), ``reason`` and ``window_end``.

    ``toxic`` is True/False/<NA> per patient. Free needs the follow-up (last follow-up or death)
    to reach the end of the window; a death before it without the event makes the patient not
    evaluable (the protocol replaces such patients). With no window in the protocol every
    recorded grade is taken as final, which the report says.
    """
    toxic = toxic.astype("boolean").reindex(rows.index)
    event, unknown = toxic.fillna(False).astype(bool), toxic.isna()
    out = pd.DataFrame({"status": "free", "reason": "", "window_end": pd.NaT}, index=rows.index)
    if window is None:
        out.loc[unknown, ["status", "reason"]] = ["not evaluable", "grade not recorded"]
        out.loc[event, "status"] = "event"
        return out
    origin_column = WINDOW_ORIGIN_COLUMN[window["origin"]]
    end = _dates(rows, origin_column) + pd.to_timedelta(window["months"] * DAYS_PER_MONTH, unit="D")
    died = _dates(rows, "death_date")
    followed = pd.concat([_dates(rows, "last_followup_date"), died], axis=1).max(axis=1)
    out["window_end"] = end
    complete = followed.notna() & end.notna() & (followed >= end)
    for pid in rows.index[~event & ~complete]:
        if pd.isna(end[pid]):
            out.loc[pid, ["status", "reason"]] = ["pending", f"{origin_column} missing: the {window['months']:g}-month window has no start"]
        elif pd.notna(died[pid]):
            out.loc[pid, ["status", "reason"]] = ["not evaluable", f"died {died[pid].date()}, before the window ended ({end[pid].date()}), without the event"]
        else:
            last = followed[pid].date() if pd.notna(followed[pid]) else "never"
            out.loc[pid, ["status", "reason"]] = ["pending", f"followed to {last}, window ends {end[pid].date()}"]
    out.loc[complete & unknown & ~event, ["status", "reason"]] = ["not evaluable", "window complete but the grade is not recorded"]
    out.loc[event, ["status", "reason"]] = ["event", ""]
    return out


def ntcp_models(protocol_ntcp: dict[str, Any] | None) -> dict[tuple[str, int], dict[str, Any]]:
    """(grade column, minimum grade) -> the protocol NTCP model predicting exactly that endpoint.

    Models without ``toxicity``/``min_grade`` are not compared with anything: an NTCP is only
    meaningful next to the endpoint its parameters were fitted to.
    """
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for name, model in (protocol_ntcp or {}).items():
        column = NTCP_COLUMN_BY_STRUCTURE.get(model["structure"])
        if "toxicity" in model and "min_grade" in model and column:
            out[(GRADE_COLUMN[model["toxicity"]], int(model["min_grade"]))] = {"name": name, "column": column, **model}
    return out


def exact_ci(events: int, n: int) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    low, high = proportion_confint(events, n, alpha=0.05, method="beta")
    return float(low), float(high)


def rates_by_bin(x: pd.Series, toxic: pd.Series, bins: int = 4, ntcp: pd.Series | None = None) -> pd.DataFrame:
    """Observed rate (exact CI) per quantile bin of ``x``; mean predicted NTCP when given."""
    frame = pd.DataFrame({"x": x, "toxic": toxic.astype(int)})
    if ntcp is not None:
        frame["ntcp"] = ntcp
    frame = frame.dropna(subset=["x"])
    n_bins = max(1, min(bins, frame["x"].nunique()))
    frame["bin"] = pd.qcut(frame["x"], n_bins, duplicates="drop")
    rows = []
    for interval, group in frame.groupby("bin", observed=True):
        k, n = int(group["toxic"].sum()), len(group)
        low, high = exact_ci(k, n)
        row = {"bin": str(interval), "n": n, "events": k, "rate": k / n, "ci_low": low, "ci_high": high}
        if "ntcp" in group:
            row["mean_ntcp"] = float(group["ntcp"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def logistic_fit(x: pd.Series, toxic: pd.Series) -> dict[str, float]:
    """ML logistic fit; NaN figures when it cannot be estimated (no events, all events, separation)."""
    frame = pd.DataFrame({"x": x, "y": toxic.astype(float)}).dropna()
    out = {"n": float(len(frame)), "events": float(frame["y"].sum())}
    nan = {k: float("nan") for k in ("b0", "b1", "b1_ci_low", "b1_ci_high", "td50", "p_value")}
    if len(frame) < 5 or frame["y"].nunique() < 2:
        return {**out, **nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = sm.Logit(frame["y"], sm.add_constant(frame["x"])).fit(disp=0)
        except Exception:  # perfect separation and singular fits: reported as not estimable
            return {**out, **nan}
    b0, b1 = (float(v) for v in result.params)
    ci = result.conf_int().to_numpy()
    return {**out, "b0": b0, "b1": b1, "b1_ci_low": float(ci[1, 0]), "b1_ci_high": float(ci[1, 1]),
            "td50": -b0 / b1 if b1 != 0 else float("nan"), "p_value": float(result.pvalues.iloc[1])}


def _toxic(table: pd.DataFrame, column: str, grade: int) -> pd.Series:
    return (_grades(table, column) >= grade).astype("boolean")


def _ntcp_label(model: dict[str, Any]) -> dict[str, str]:
    return {"ntcp_model": model["name"], "ntcp_endpoint": f"{model['toxicity']} >= {model['min_grade']}", "ntcp_source": model.get("source", "")}


def toxicity_tables(table: pd.DataFrame, protocol_ntcp: dict[str, Any] | None = None,
                    window: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fits, bins) for every analysis whose columns are present; a note row for those that are not.

    Only evaluable patients enter (``toxicity_status``); a protocol NTCP model is put next to
    the analysis of its own endpoint only (``ntcp_models``).
    """
    models = ntcp_models(protocol_ntcp)
    fits, bins = [], []
    for tox, grade, dose in ANALYSES:
        label = {"endpoint": f"{tox.removesuffix('_grade')} >= {grade}", "variable": dose}
        model = models.get((tox, grade))
        other = [m for (column, _), m in models.items() if column == tox and m is not model]
        if model is not None:
            label.update(_ntcp_label(model))
        elif other:
            label["ntcp_note"] = "; ".join(f"NTCP model '{m['name']}' predicts grade >= {m['min_grade']}: compared there, not here" for m in other)
        if tox not in table.columns or dose not in table.columns or table[dose].notna().sum() == 0:
            fits.append({**label, "note": f"no {dose if tox in table.columns else tox} column: run the planning stage or add it to the patient table"})
            continue
        toxic = _toxic(table, tox, grade)
        status = toxicity_status(table, toxic, window)
        usable = status["status"].isin(EVALUABLE) & table[dose].notna()
        observed = toxic[usable].astype(bool)
        fits.append({**label, "pending": int((status["status"] == "pending").sum()), **logistic_fit(table.loc[usable, dose], observed)})
        ntcp = table.loc[usable, model["column"]] if model is not None and model["column"] in table.columns else None
        bins.append(rates_by_bin(table.loc[usable, dose], observed, ntcp=ntcp).assign(**label))
    return pd.DataFrame(fits), (pd.concat(bins, ignore_index=True) if bins else pd.DataFrame())


def observed_vs_predicted(table: pd.DataFrame, protocol_ntcp: dict[str, Any] | None, window: dict[str, Any] | None) -> pd.DataFrame:
    """One row per protocol NTCP model: the observed rate of *its* endpoint (evaluable patients
    with a plan NTCP; exact 95 % CI) next to the mean predicted NTCP, with the model's source."""
    rows = []
    for (tox, grade), model in ntcp_models(protocol_ntcp).items():
        row: dict[str, Any] = {"endpoint": f"{tox.removesuffix('_grade')} >= {grade}", **_ntcp_label(model),
                               "td50_gy": model["td50_gy"], "m": model["m"], "n_volume": model["n"]}
        if tox not in table.columns or model["column"] not in table.columns or table[model["column"]].notna().sum() == 0:
            rows.append({**row, "note": f"no {model['column']} or {tox} column yet (planning stage / clinical table)"})
            continue
        toxic = _toxic(table, tox, grade)
        status = toxicity_status(table, toxic, window)
        usable = status["status"].isin(EVALUABLE) & table[model["column"]].notna()
        k, n = int(toxic[usable].astype(bool).sum()), int(usable.sum())
        low, high = exact_ci(k, n)
        rows.append({**row, "patients": n, "events": k, "observed_rate": k / n if n else np.nan, "ci_low": low, "ci_high": high,
                     "mean_predicted_ntcp": float(table.loc[usable, model["column"]].astype(float).mean()) if n else np.nan,
                     "pending": int((status["status"] == "pending").sum())})
    return pd.DataFrame(rows)
