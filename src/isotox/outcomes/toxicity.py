"""Toxicity against dose and volume: rates by dose bins and a logistic dose-response fit.

Pneumonitis (grade >= 2 and >= 3) against MLD, lung V20 and V5; oesophagitis against the
oesophagus Dmax and Dmean. Bins: rate with its exact (Clopper-Pearson) 95 % CI per bin.
Fit: logistic regression P(tox) = 1 / (1 + exp(-(b0 + b1 x))) by maximum likelihood
(statsmodels), with Wald 95 % CIs of the coefficients, the dose giving 50 % (TD50 = -b0 / b1)
and, where the plans predicted it, the mean NTCP next to the observed rate per bin.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.stats.proportion import proportion_confint

#: (toxicity column, minimum grade, dose-volume column, NTCP column), as the report tabulates them.
ANALYSES = (
    ("pneumonitis_grade", 2, "mld_gy", "ntcp_pneumonitis"),
    ("pneumonitis_grade", 2, "lung_v20_pct", "ntcp_pneumonitis"),
    ("pneumonitis_grade", 2, "lung_v5_pct", "ntcp_pneumonitis"),
    ("pneumonitis_grade", 3, "mld_gy", "ntcp_pneumonitis"),
    ("esophagitis_grade", 2, "esophagus_dmax_gy", "ntcp_esophagitis"),
    ("esophagitis_grade", 2, "esophagus_dmean_gy", "ntcp_esophagitis"),
    ("esophagitis_grade", 3, "esophagus_dmax_gy", "ntcp_esophagitis"),
)


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


def toxicity_tables(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fits, bins) for every analysis whose columns are present; a note row for those that are not."""
    fits, bins = [], []
    for tox, grade, dose, ntcp in ANALYSES:
        label = {"endpoint": f"{tox.removesuffix('_grade')} >= {grade}", "variable": dose}
        if tox not in table.columns or dose not in table.columns or table[dose].notna().sum() == 0:
            fits.append({**label, "note": f"no {dose if tox in table.columns else tox} column: run the planning stage or add it to the patient table"})
            continue
        toxic = table[tox].astype(float) >= grade
        toxic = toxic.where(table[tox].notna())
        usable = toxic.notna() & table[dose].notna()
        fits.append({**label, **logistic_fit(table.loc[usable, dose], toxic[usable])})
        b = rates_by_bin(table.loc[usable, dose], toxic[usable], ntcp=table.loc[usable, ntcp] if ntcp in table.columns else None)
        bins.append(b.assign(**label))
    return pd.DataFrame(fits), (pd.concat(bins, ignore_index=True) if bins else pd.DataFrame())
