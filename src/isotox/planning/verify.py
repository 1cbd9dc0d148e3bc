"""Re-evaluation of a written plan's search by the independent audit (``planning.audit``), in the
wide layout of ``constraint_scan.tsv``: one row per candidate, ``<id>_recomputed`` per constraint.

Kept for callers that want the scan table side by side with the audit's numbers; the audit table
itself (isotox value, independent value, difference, tolerance, pass) is ``plan/audit.tsv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from isotox.planning.audit import audit_plan, scan_plans

__all__ = ["reevaluate_scan", "scan_plans"]


def reevaluate_scan(patient_dir: Path, protocol: dict[str, Any]) -> pd.DataFrame:
    """The scan table with every constraint recomputed by the independent audit (columns
    ``<id>_recomputed``, ``<id>_tolerance``, ``<id>_pass``) and ``feasible_recomputed``."""
    patient_dir = Path(patient_dir)
    scan = pd.read_csv(patient_dir / "plan" / "constraint_scan.tsv", sep="\t", keep_default_na=False)
    table = audit_plan(patient_dir / "plan", patient_dir / "segment" / "masks", protocol)
    if table.empty:
        return scan
    wide = table.pivot(index="candidate", columns="constraint", values=["independent", "tolerance", "pass"])
    ids = [c["id"] for c in protocol["constraints"]]
    out = pd.DataFrame({f"{cid}_{suffix}": wide[(column, cid)].to_numpy() for cid in ids
                        for column, suffix in (("independent", "recomputed"), ("tolerance", "tolerance"), ("pass", "pass"))})
    out["feasible_recomputed"] = table.drop_duplicates("candidate").sort_values("candidate")["feasible_audit"].to_numpy()
    return pd.concat([scan, out], axis=1)
