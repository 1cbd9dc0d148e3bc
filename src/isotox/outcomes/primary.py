"""The primary endpoint the protocol names (``primary_endpoint``), computed as the trial defines it.

* ``safety`` (the isotoxic hypofractionated trial): patients with a serious toxicity among the
  evaluable ones, with an exact (Clopper-Pearson) interval, the pending and left-out patients,
  and the Simon decisions with the check of the design itself.
* ``time_to_event`` (PET-boost: LPFS at 1 year; MAASTRO: overall survival): Kaplan-Meier at the
  landmarks, all patients and per randomized arm. For a local endpoint where death competes
  (LC, or LPFS with ``death_in_local_progression: competing``) the probability of local failure
  is the Aalen-Johansen cumulative incidence; one minus the Kaplan-Meier that censors deaths is
  shown next to it under its own name.

isotox used to write a 1-year LPFS as the "primary" figure for every protocol.
One table layout for both kinds: measure, group, n, events, estimate, ci_low, ci_high, method, detail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from isotox.outcomes.survival import kaplan_meier, local_failure

COLUMNS = ["measure", "group", "n", "events", "estimate", "ci_low", "ci_high", "method", "detail"]
RANDOMIZED_ARMS = ("A", "B")


def _row(measure: str, group: str = "all", **values: Any) -> dict[str, Any]:
    return {"measure": measure, "group": group, **values}


def _safety_rows(safety: dict[str, Any] | None, protocol: dict[str, Any], level: float) -> list[dict[str, Any]]:
    if safety is None:
        return [_row("serious adverse events", detail="the protocol's primary endpoint is safety but it has no safety section")]
    status = safety["status"]
    evaluable = status[status["status"].isin(("event", "free"))]
    k, n = int((evaluable["status"] == "event").sum()), int(len(evaluable))
    low, high = proportion_confint(k, n, alpha=1 - level, method="beta") if n else (np.nan, np.nan)
    window = safety.get("toxicity_window")
    window_text = f"free of it only after {window['months']:g} months from {window['origin']}" if window else "no toxicity window in the protocol: every recorded grade taken as final"
    rows = [_row("patients with a serious toxicity", "evaluable", n=n, events=k, estimate=k / n if n else np.nan, ci_low=float(low), ci_high=float(high),
                 method=f"Clopper-Pearson exact {level:.0%}", detail=f"{protocol['primary_endpoint']['description']}; evaluable: the event, or {window_text}")]
    for label, name in (("pending", "pending (toxicity window not complete)"), ("not evaluable", "not evaluable (left out; replaced per protocol)")):
        group = status[status["status"] == label]
        rows.append(_row(name, n=int(len(group)), detail="; ".join(f"{pid}: {reason}" for pid, reason in group["reason"].items())))
    if "monitor" in safety:
        design, monitor = safety["design"]["protocol_design"], safety["monitor"]
        for stage, key in (("Simon stage 1", "stage1"), ("Simon final analysis", "final")):
            m = monitor[key]
            rows.append(_row(stage, n=m["evaluable"], events=m["serious_toxicities"], method=m["rule"],
                             detail=f"decision: {m['decision']}; {m['free_of_serious_toxicity']} free of serious toxicity of {m['evaluable']} evaluable"
                                    f" ({m['patients']} counted){'; pending: ' + ', '.join(m['pending']) if m['pending'] else ''}"))
        flags, notes = safety["design"]["flags"], safety["design"]["notes"]
        rows.append(_row("Simon design check", method=f"{design['r1']}/{design['n1']}, {design['r']}/{design['n']}: alpha {design['alpha']:.3f}, power {design['power']:.3f}",
                         detail=" ".join([*notes, *(flags or ["The rule is the design the protocol claims."])])))
    return rows


def _time_to_event_rows(spec: dict[str, Any], endpoints: pd.DataFrame, arms: pd.Series, protocol: dict[str, Any], level: float) -> list[dict[str, Any]]:
    name = spec["endpoint"]
    landmarks = [12.0 * y for y in spec["landmarks_years"]]
    t, e = endpoints[f"{name}_months"], endpoints[f"{name}_event"]
    ok = t.notna() & e.notna()
    groups = [("all", ok)] + [(f"arm {a}", ok & (arms == a)) for a in RANDOMIZED_ARMS if (ok & (arms == a)).any()]
    rows: list[dict[str, Any]] = []
    for label, mask in groups:
        if not mask.any():
            continue
        _, km = kaplan_meier(t[mask], e[mask], landmarks, label=label, alpha=1 - level)
        for _, lm in km.landmarks.iterrows():
            rows.append(_row(f"{name} at {lm['time'] / 12:g} y (Kaplan-Meier)", label, n=km.n, events=km.events, estimate=lm["estimate"],
                             ci_low=lm["lower"], ci_high=lm["upper"], method=f"Greenwood, log(-log) {level:.0%}", detail=f"at risk {int(lm['at_risk'])}"))
    death_competes = name == "LC" or (name == "LPFS" and protocol.get("endpoints", {}).get("death_in_local_progression") == "competing")
    if death_competes:
        lt, le = endpoints["LF_months"], endpoints["LF_event"]
        for label, mask in groups:
            mask = mask & lt.notna() & le.notna()
            if not mask.any():
                continue
            for _, lf in local_failure(lt[mask], le[mask], landmarks, alpha=1 - level).iterrows():
                rows.append(_row(f"local failure by {lf['time'] / 12:g} y: {lf['estimator']}", label, n=lf["n"], events=lf["local_progressions"],
                                 estimate=lf["estimate"], ci_low=lf["ci_low"], ci_high=lf["ci_high"], method=lf["ci_method"],
                                 detail=f"{lf['competing_deaths']} deaths without local progression; at risk {int(lf['at_risk'])}"))
    if not rows:
        rows.append(_row(f"{name} (Kaplan-Meier)", detail="no evaluable patients for this endpoint (see problems.tsv)"))
    return rows


def primary_endpoint_table(protocol: dict[str, Any], endpoints: pd.DataFrame, arms: pd.Series, safety: dict[str, Any] | None) -> pd.DataFrame:
    """The primary endpoint's table (``COLUMNS``), as the protocol's ``primary_endpoint`` defines it."""
    spec = protocol.get("primary_endpoint")
    if spec is None:
        return pd.DataFrame([_row("primary endpoint", detail="the protocol names no primary_endpoint: nothing computed as primary")], columns=COLUMNS)
    level = float(spec.get("ci_level", 0.95))
    rows = _safety_rows(safety, protocol, level) if spec["kind"] == "safety" else _time_to_event_rows(spec, endpoints, arms, protocol, level)
    return pd.DataFrame(rows, columns=COLUMNS).astype({"n": "Int64", "events": "Int64"})
