"""The safety monitor as the protocol runs it: serious toxicity, evaluability, the Simon decisions.

A patient counts for the Simon rule only when evaluable: with a serious toxicity, or followed
past the protocol's toxicity window without one (``toxicity.toxicity_status``). Patients whose
window is still open are *pending*: shown, never counted as free of toxicity (isotox used to fill
their grades with 0). Patients who cannot become evaluable (died before the end of the window
without the event, grade never recorded) are left out and the next registered patient takes
their place, as the isotoxic protocol says ("Shedding, withdrawal and loss of follow-up cases
will not be included ... We will continue to include patients until the number of qualified
patients reaches the experimental design").

Stage 1 is the first ``n1`` patients by registration date who are evaluable or pending; the
final analysis the first ``n``. The stage-1 decision (``simon.monitor``) and the final one
(``simon.final_decision``) are taken on the evaluable among them, with the pending ones still to come.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from isotox.outcomes import simon
from isotox.outcomes.toxicity import serious_toxicity, toxicity_status


def serious_toxicity_status(rows: pd.DataFrame, safety: dict[str, Any]) -> pd.DataFrame:
    """Per patient, in registration order: serious toxicity (True/False/<NA>), status, reason, window end."""
    serious = serious_toxicity(rows, safety["serious_toxicity"])
    status = toxicity_status(rows, serious, safety.get("toxicity_window"))
    out = status.assign(serious_toxicity=serious, registration_date=rows.get("registration_date"))
    out.index.name = "patient_id"
    return out.sort_values(["registration_date"], kind="stable") if "registration_date" in rows.columns else out


def _stage(status: pd.DataFrame, size: int) -> dict[str, Any]:
    """Counts of the first ``size`` patients who are (or will be) evaluable."""
    counted = status[status["status"] != "not evaluable"].head(size)
    evaluable = counted[counted["status"].isin(("event", "free"))]
    free = int((evaluable["status"] == "free").sum())
    return {"patients": int(len(counted)), "evaluable": int(len(evaluable)), "free_of_serious_toxicity": free,
            "serious_toxicities": int(len(evaluable) - free), "pending": list(counted.index[counted["status"] == "pending"])}


def simon_monitor(status: pd.DataFrame, design: dict[str, Any]) -> dict[str, Any]:
    """Stage-1 and final decisions of the protocol's rule (``design``: r1, n1, r, n) on the evaluable patients."""
    r1, n1, r, n = design["r1"], design["n1"], design["r"], design["n"]
    stage1, final = _stage(status, n1), _stage(status, n)
    stage1["decision"] = simon.monitor(stage1["free_of_serious_toxicity"], stage1["evaluable"], r1, n1)
    stage1["rule"] = f"stop if at most {r1} of the first {n1} evaluable patients are free of serious toxicity"
    if stage1["decision"] == "stop":
        final["decision"] = "stopped at stage 1"
    else:
        final["decision"] = simon.final_decision(final["free_of_serious_toxicity"], final["evaluable"], r, n)
    final["rule"] = f"acceptable toxicity if more than {r} of {n} evaluable patients are free of serious toxicity"
    excluded = status[status["status"] == "not evaluable"]
    return {"stage1": stage1, "final": final, "not_evaluable": {pid: reason for pid, reason in excluded["reason"].items()},
            "decision": stage1["decision"]}


def assess_safety(rows: pd.DataFrame, protocol: dict[str, Any]) -> dict[str, Any] | None:
    """Status per patient, the Simon design check and the monitor (None when the protocol has no safety section)."""
    safety = protocol.get("safety")
    if not safety:
        return None
    status = serious_toxicity_status(rows, safety)
    result: dict[str, Any] = {"status": status, "toxicity_window": safety.get("toxicity_window")}
    if "simon" in safety:
        design = simon.assess_protocol_design(safety["simon"])
        result["design"] = design
        result["monitor"] = simon_monitor(status, design["protocol_design"])
    return result
