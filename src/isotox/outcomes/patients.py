"""The per-patient summary table of the imaging stages, one row per patient, for the cohort analyses.

Joins what each stage wrote: ``segment/features.tsv`` (volumes, SUV, hypoxia), the GTV
perfusion medians of ``perfusion/tumour_perfusion.tsv``, the registration flags and the plan
(``plan/plan.json``: prescription, boost feasibility, dose metrics, NTCP). Missing
stages leave their columns empty; a patient is never dropped for lacking one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

PERFUSION_COLUMNS = {"etofts_ktrans": "gtv_ktrans_median", "etofts_ve": "gtv_ve_median", "etofts_vp": "gtv_vp_median", "bf_maxslope": "gtv_bf_median"}


def patient_row(patient_dir: Path) -> dict[str, object]:
    row: dict[str, object] = {"patient_id": patient_dir.name}
    features = patient_dir / "segment" / "features.tsv"
    if features.exists():
        row.update(pd.read_csv(features, sep="\t", dtype={"patient_id": str}).iloc[0].to_dict())
    perfusion = patient_dir / "perfusion" / "tumour_perfusion.tsv"
    if perfusion.exists():
        table = pd.read_csv(perfusion, sep="\t")
        gtv = table[table["region"] == "GTV"].set_index("map")
        for source, name in PERFUSION_COLUMNS.items():
            if source in gtv.index:
                row[name] = gtv.loc[source, "median"]
    plan = patient_dir / "plan" / "plan.json"
    if plan.exists():
        row.update(plan_columns(json.loads(plan.read_text())))
    qc = patient_dir / "register" / "qc.json"
    if qc.exists():
        row["registration_flagged"] = ",".join(json.loads(qc.read_text()).get("flagged", []))
    return row


#: NTCP models are named by their organ in the table, whatever the protocol calls them
NTCP_COLUMN_BY_STRUCTURE = {"LUNGS_MINUS_GTV": "ntcp_pneumonitis", "ESOPHAGUS": "ntcp_esophagitis"}


def plan_columns(plan: dict[str, object]) -> dict[str, object]:
    """The plan's figures the cohort analyses use (toxicity against dose, boost feasibility)."""
    row: dict[str, object] = {key: plan.get(key) for key in ("prescribed_dose_gy", "fractions", "boost_total_gy", "boost_dose_per_fraction_gy",
                                                           "boost_stopped_by", "boost_feasible", "feasible", "not_prescribable",
                                                           "awaiting_randomisation", "dose_source")}
    prescription = plan.get("prescription") or {}
    row["plan_arm"] = prescription.get("arm") if isinstance(prescription, dict) else None
    row["limiting_constraint"] = ",".join(plan.get("limiting_constraints") or [])  # type: ignore[arg-type]
    row.update(plan.get("dose_metrics") or {})  # type: ignore[arg-type]
    biology = plan.get("radiobiology") or {}
    row["eqd2_prescription_gy"] = biology.get("eqd2_prescription_gy")  # type: ignore[union-attr]
    for model in (biology.get("ntcp") or {}).values():  # type: ignore[union-attr]
        column = NTCP_COLUMN_BY_STRUCTURE.get(model.get("structure"))
        if column:
            row[column] = model.get("value")
    coverage = (plan.get("coverage") or {}).get("PTV") or {}  # type: ignore[union-attr]
    row["ptv_d95_pct"] = coverage.get("D95_percent")
    return row


def cohort_patient_table(patient_dirs: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([patient_row(Path(d)) for d in patient_dirs]).sort_values("patient_id")
