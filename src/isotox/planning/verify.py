"""An independent re-evaluation of a written plan's search (audit, tests, benchmarks).

The search evaluates candidates on per-structure sub-voxel samples of the unit plans. This module
takes the other road: for every candidate of ``plan/constraint_scan.tsv`` it rebuilds the full
dose volume from the unit-dose NIfTIs (total x base + increment x boost, voxel by voxel), computes
each constrained structure's DVH from its mask, and re-evaluates every constraint. A plan whose
scan disagrees with this was not searched correctly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from isotox.dose.dvh import dvh_from_mask
from isotox.dose.search import constraint_dvh
from isotox.geometry import ImageGrid
from isotox.images import array, read_image


def scan_plans(label: str) -> tuple[str, ...]:
    """The unit plans a scan row combines, from its label (see planning.prescription)."""
    if "whole-tumour" in label:
        return ("base", "boost_A")
    if label.startswith("boost arm"):
        return ("base", f"boost_{label[-1]}")
    return ("base",)


def reevaluate_scan(patient_dir: Path, protocol: dict[str, Any]) -> pd.DataFrame:
    """The scan table with every constraint recomputed from full dose volumes (columns ``<id>_recomputed``)
    and ``feasible_recomputed``."""
    plan_dir = Path(patient_dir) / "plan"
    scan = pd.read_csv(plan_dir / "constraint_scan.tsv", sep="\t", keep_default_na=False)
    units = {p.name.removesuffix("_unit.nii.gz"): read_image(p) for p in (plan_dir / "dose").glob("*_unit.nii.gz")}
    grid = ImageGrid.from_sitk(units["base"])
    masks = {}
    for c in protocol["constraints"]:
        path = Path(patient_dir) / "segment" / "masks" / f"{c['structure']}.nii.gz"
        if path.exists() and c["structure"] not in masks:
            image = read_image(path)
            masks[c["structure"]] = (array(image).astype(bool), ImageGrid.from_sitk(image))
    rows = []
    for _, row in scan.iterrows():
        plans = scan_plans(str(row["scan"]))
        total = float(row["total_gy"]) * array(units["base"]).astype(float)
        if len(plans) > 1:
            total = total + float(row["boost_increment_gy"]) * array(units[plans[1]]).astype(float)
        values, feasible = {}, True
        for c in protocol["constraints"]:
            if c["structure"] not in masks:
                values[f"{c['id']}_recomputed"] = np.nan
                continue
            mask, mask_grid = masks[c["structure"]]
            dvh = constraint_dvh(dvh_from_mask(c["structure"], mask, mask_grid, total, grid), c, int(row["fractions"]))
            value = dvh.metric(c["metric"])
            values[f"{c['id']}_recomputed"] = value
            feasible &= bool(value <= c["limit"] + 1e-9)
        rows.append({**values, "feasible_recomputed": feasible})
    return pd.concat([scan, pd.DataFrame(rows)], axis=1)
