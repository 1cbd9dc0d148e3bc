"""The per-patient summary table of the imaging stages, one row per patient, for the cohort analyses.

Joins what each stage wrote: ``segment/features.tsv`` (volumes, SUV, hypoxia), the GTV
perfusion medians of ``perfusion/tumour_perfusion.tsv`` and the registration flags. Missing
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
    qc = patient_dir / "register" / "qc.json"
    if qc.exists():
        row["registration_flagged"] = ",".join(json.loads(qc.read_text()).get("flagged", []))
    return row


def cohort_patient_table(patient_dirs: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([patient_row(Path(d)) for d in patient_dirs]).sort_values("patient_id")
