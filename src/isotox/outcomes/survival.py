"""Kaplan-Meier, log-rank and cumulative incidence (lifelines), in the form a trial report needs.

Confidence intervals: lifelines' default, the Greenwood variance on the log(-log S) scale
("exponential Greenwood", Kalbfleisch & Prentice), which stays inside [0, 1] and equals R's
``survfit(..., conf.type = "log-log")``. Median CI: the times where the CI curves cross 0.5
(Brookmeyer-Crowley by the same transform), as R's ``quantile.survfit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from lifelines import AalenJohansenFitter, KaplanMeierFitter  # noqa: E402
from lifelines.plotting import add_at_risk_counts  # noqa: E402
from lifelines.statistics import logrank_test, multivariate_logrank_test  # noqa: E402
from lifelines.utils import median_survival_times  # noqa: E402


@dataclass
class KmSummary:
    group: str
    n: int
    events: int
    median: float
    median_lower: float
    median_upper: float
    landmarks: pd.DataFrame  # time, at_risk, estimate, lower, upper


def _median_bounds(kmf: KaplanMeierFitter) -> tuple[float, float]:
    ci = median_survival_times(kmf.confidence_interval_survival_function_)
    lower, upper = (float(v) for v in np.asarray(ci).ravel()[:2])
    return lower, upper


def kaplan_meier(times: pd.Series, events: pd.Series, landmarks: list[float], label: str = "all", alpha: float = 0.05) -> tuple[KaplanMeierFitter, KmSummary]:
    """KM fit with estimate and CI at ``landmarks`` (same unit as ``times``), median with CI."""
    kmf = KaplanMeierFitter(alpha=alpha, label=label)
    kmf.fit(times, event_observed=events == 1)
    rows = []
    for t in landmarks:
        at_risk = int((times >= t).sum())
        estimate = float(kmf.survival_function_at_times(t).iloc[0])
        ci = kmf.confidence_interval_survival_function_
        before = ci[ci.index <= t]
        lower, upper = (float(before.iloc[-1, 0]), float(before.iloc[-1, 1])) if len(before) else (1.0, 1.0)
        rows.append({"time": t, "at_risk": at_risk, "estimate": estimate, "lower": lower, "upper": upper})
    low, high = _median_bounds(kmf)
    return kmf, KmSummary(label, int(len(times)), int((events == 1).sum()), float(kmf.median_survival_time_), low, high, pd.DataFrame(rows))


def logrank(times: pd.Series, events: pd.Series, groups: pd.Series) -> dict[str, float]:
    """Log-rank test between groups (two groups: the classic test; more: the k-sample test)."""
    labels = sorted(groups.unique())
    if len(labels) < 2:
        return {"chisq": float("nan"), "df": 0, "p": float("nan")}
    if len(labels) == 2:
        a, b = (groups == labels[0]), (groups == labels[1])
        result = logrank_test(times[a], times[b], event_observed_A=events[a] == 1, event_observed_B=events[b] == 1)
        return {"chisq": float(result.test_statistic), "df": 1, "p": float(result.p_value)}
    result = multivariate_logrank_test(times, groups, events == 1)
    return {"chisq": float(result.test_statistic), "df": len(labels) - 1, "p": float(result.p_value)}


def cumulative_incidence(times: pd.Series, events: pd.Series, landmarks: list[float]) -> pd.DataFrame:
    """Aalen-Johansen cumulative incidence of the event (code 1) with death (code 2) competing."""
    ajf = AalenJohansenFitter(calculate_variance=True, seed=0)
    jittered = times + np.arange(len(times)) * 1e-9  # lifelines requires no tied times across causes
    ajf.fit(jittered, events.astype(int), event_of_interest=1)
    cif = ajf.cumulative_density_
    rows = []
    for t in landmarks:
        before = cif[cif.index <= t]
        rows.append({"time": t, "cumulative_incidence": float(before.iloc[-1, 0]) if len(before) else 0.0})
    return pd.DataFrame(rows)


def km_plot(fits: list[KaplanMeierFitter], title: str, path: str, xlabel: str = "months") -> None:
    """KM curves with CIs and a numbers-at-risk table under the axis (a note when no patient is evaluable)."""
    fig, ax = plt.subplots(figsize=(7, 5))
    if not fits:
        ax.text(0.5, 0.5, "no evaluable patients for this endpoint (see problems.tsv)", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    for kmf in fits:
        kmf.plot_survival_function(ax=ax, ci_show=True, show_censors=True)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability")
    ax.set_title(title)
    add_at_risk_counts(*fits, ax=ax, rows_to_show=["At risk"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
