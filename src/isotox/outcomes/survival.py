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


def _separate_cross_cause_ties(times: pd.Series, events: pd.Series, event_of_interest: int = 1) -> pd.Series:
    """Times with competing events moved just before an event of interest at the same time.

    lifelines' Aalen-Johansen refuses ties between *different* causes and jitters them at random
    (or, as isotox did before, by row order, which also moved censorings). The estimator itself
    needs no order: at a time t with n at risk, d1 events of interest and d2 competing events,
    CIF1 rises by S(t-) d1 / n whichever cause goes first (S(t-) (n - d2)/n x d1/(n - d2) is the
    same number). So only the competing events that share a time with an event of interest are
    moved, *earlier*, by an amount far below the data's time resolution; censorings and events of
    interest keep their times. Censorings at t therefore stay in the risk set at t (the usual
    convention: events before censorings, as R's ``survfit``), and an event at a landmark stays
    inside it.
    """
    t = times.astype(float).to_numpy().copy()
    e = events.astype(int).to_numpy()
    distinct = np.unique(t)
    gap = float(np.min(np.diff(distinct))) if distinct.size > 1 else 1.0
    eps = gap * 1e-6
    interest_times = set(t[e == event_of_interest])
    for rank, code in enumerate(sorted(set(e[(e != 0) & (e != event_of_interest)])), start=1):
        tied = (e == code) & np.isin(t, list(interest_times))
        t[tied] -= eps * rank  # one offset per competing cause, so causes never tie with each other
    return pd.Series(t, index=times.index)


def cumulative_incidence(times: pd.Series, events: pd.Series, landmarks: list[float], alpha: float = 0.05) -> pd.DataFrame:
    """Aalen-Johansen cumulative incidence of the event (code 1) with death (code 2) competing.

    One row per landmark: ``at_risk`` (times >= landmark), ``cumulative_incidence``, its standard
    error ``se`` (lifelines' Greenwood-type variance, Collett 2003 p. 411, which equals R's
    ``survfit`` multi-state standard error) and ``ci_low``/``ci_high`` on the log(-log) scale (R's
    default for multi-state curves is the log scale, so its bounds differ). lifelines labels these two columns the wrong way round (its "upper" is the
    smaller), so they are read as min and max. Ties: see ``_separate_cross_cause_ties``.
    """
    ajf = AalenJohansenFitter(alpha=alpha, calculate_variance=True)
    ajf.fit(_separate_cross_cause_ties(times, events), events.astype(int), event_of_interest=1)
    cif = ajf.cumulative_density_.iloc[:, 0]
    bounds = ajf.confidence_interval_
    se = pd.Series(np.sqrt(ajf.variance_.to_numpy(dtype=float)), index=cif.index)
    rows = []
    for t in landmarks:
        before = cif.index <= t
        estimate = float(cif[before].iloc[-1]) if before.any() else 0.0
        ci = bounds[bounds.index <= t].iloc[-1].to_numpy(dtype=float) if before.any() and estimate > 0 else np.array([np.nan, np.nan])
        rows.append({"time": t, "at_risk": int((times >= t).sum()), "cumulative_incidence": estimate,
                     "se": float(se[before].iloc[-1]) if before.any() else 0.0,
                     "ci_low": float(np.nanmin(ci)) if np.isfinite(ci).any() else np.nan,
                     "ci_high": float(np.nanmax(ci)) if np.isfinite(ci).any() else np.nan})
    return pd.DataFrame(rows)


#: the two local-failure estimators, by the names the tables use
AJ_LOCAL_FAILURE = "cumulative incidence of local progression, death competing (Aalen-Johansen)"
KM_LOCAL_FAILURE = "1 - Kaplan-Meier of local progression, deaths censored"


def local_failure(times: pd.Series, events: pd.Series, landmarks: list[float], alpha: float = 0.05) -> pd.DataFrame:
    """Probability of local failure by each landmark, by the two estimators, each under its name.

    ``events``: 1 local progression, 2 death without local progression, 0 censored. When death
    competes, the probability of having failed locally by t is the Aalen-Johansen cumulative
    incidence. One minus a Kaplan-Meier that censors deaths answers another question (failure if
    nobody died) and is never smaller; it is shown next to it, named as what it is, because
    trials often report it.
    """
    aj = cumulative_incidence(times, events, landmarks, alpha).rename(columns={"cumulative_incidence": "estimate"})
    _, km = kaplan_meier(times, (events == 1).astype(int), landmarks, alpha=alpha)
    one_minus = km.landmarks.assign(estimate=1.0 - km.landmarks["estimate"], ci_low=1.0 - km.landmarks["upper"], ci_high=1.0 - km.landmarks["lower"])
    common = {"n": int(len(times)), "local_progressions": int((events == 1).sum()), "competing_deaths": int((events == 2).sum())}
    return pd.concat([
        aj.assign(estimator=AJ_LOCAL_FAILURE, ci_method="lifelines Aalen-Johansen variance (Greenwood-type), log(-log)", **common),
        one_minus[["time", "at_risk", "estimate", "ci_low", "ci_high"]].assign(estimator=KM_LOCAL_FAILURE, ci_method="Greenwood, log(-log) (1 - KM bounds)", **common),
    ], ignore_index=True)[["estimator", "time", "n", "local_progressions", "competing_deaths", "at_risk", "estimate", "ci_low", "ci_high", "ci_method"]]


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
