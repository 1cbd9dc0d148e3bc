"""An independent audit of the isotoxic search: every candidate of ``constraint_scan.tsv`` re-scored
by a deliberately separate, simple DVH implementation.

Why separate: an audit that reuses the search's sampling, ``constraint_dvh`` and metric code agrees
with a wrong metric by construction. This module imports nothing from ``isotox.dose`` or
``planning.prescription``; it shares only the inputs (the unit-dose NIfTIs the plan stage wrote and
the segmentation masks) and the protocol's definitions (a metric's name means what the protocol says).

The road it takes, written out here:

* **structures**: the segmentation stage's planning-CT masks (the structures the search was given),
  voxelised as points: each mask voxel split into equal parts at most half a dose voxel apart
  (:func:`subdivisions`: 3 x 3 x 3 for a 4 mm CT on a 3 mm dose grid, where the search uses its
  configured 2 x 2 x 2), so the two samplings differ and their agreement measures the
  voxelisation error too. The masks are chosen over the exported RTSTRUCT polygons because the
  RTSTRUCT exists only for a prescribed plan (the audit must also score infeasible patients and every
  candidate of the scan) and its polygons are traced from these masks, so they would add contour
  rounding without checking anything the search did; the polygon road is refereed by plastimatch
  (``tests/test_plastimatch_referee.py``).
* **the summed dose on the full dose grid**: total x base + increment x boost, each unit plan read
  at the points by trilinear weights of the 8 surrounding dose voxels (own index arithmetic from the
  NIfTI origin, spacing and direction);
* **a voxel histogram**: every point with its dose and volume, metrics read from it;
* **its own EQD2**: BED = D (1 + d / (alpha/beta)), EQD2 = BED / (1 + 2 / (alpha/beta)), d = D / n,
  per point; per-fraction constraints divide by n;
* **its own metric parser** for the protocol's names (Dmean/MLD, Dmax, Dmin, Dx, Dxcc, Vx, Vxcc).

The two roads differ by voxelisation only, so they agree within :func:`tolerance` (stated and
justified there); a disagreement beyond it means the search computed a metric wrongly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from numpy.typing import NDArray

#: the audit's structure points are at most this fraction of a dose voxel apart (per axis)
POINT_SPACING_IN_DOSE_VOXELS = 0.5

#: tolerances of the audit (see :func:`tolerance`)
DOSE_TOLERANCE_FRACTION = 0.0075  # Gy metrics: 0.75 % of the value ...
DOSE_TOLERANCE_FLOOR_GY = 0.1  # ... but never below 0.1 Gy (0.02 Gy for per-fraction limits)
MAX_TOLERANCE_FRACTION = 0.015  # Dmax / Dmin: the single hottest (coldest) point, 1.5 %
VOLUME_TOLERANCE_PERCENT_POINTS = 0.25  # Vx in percent of the structure
VOLUME_TOLERANCE_FRACTION_CC = 0.0075  # Vxcc: 0.75 % of the value, at least 0.05 cc
VOLUME_TOLERANCE_FLOOR_CC = 0.05


@dataclass(frozen=True)
class Geometry:
    """A NIfTI/ITK voxel grid as an affine: point = origin + matrix @ (i, j, k); arrays are (k, j, i)."""

    origin: NDArray[np.float64]
    matrix: NDArray[np.float64]  # direction x diag(spacing), mm per index step
    shape: tuple[int, int, int]  # numpy (k, j, i)

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
        return cls(np.asarray(image.GetOrigin(), float), direction * np.asarray(image.GetSpacing(), float)[None, :],
                   tuple(int(s) for s in reversed(image.GetSize())))  # type: ignore[arg-type]

    @property
    def voxel_cc(self) -> float:
        return abs(float(np.linalg.det(self.matrix))) / 1000.0


def subdivisions(mask_geometry: Geometry, dose_geometry: Geometry) -> tuple[int, int, int]:
    """Sub-points per mask voxel along i, j, k so that neighbouring points are at most half a dose
    voxel apart (a 4 mm CT voxel on a 3 mm dose grid: 3; a 1 mm CT voxel: 1)."""
    mask_mm = np.linalg.norm(mask_geometry.matrix, axis=0)
    dose_mm = float(np.linalg.norm(dose_geometry.matrix, axis=0).min())
    return tuple(max(1, int(math.ceil(m / (POINT_SPACING_IN_DOSE_VOXELS * dose_mm) - 1e-9))) for m in mask_mm)  # type: ignore[return-value]


def point_doses(mask: NDArray[np.bool_], mask_geometry: Geometry, dose_geometry: Geometry, doses: list[NDArray[np.float64]],
                chunk: int = 1_000_000) -> tuple[list[NDArray[np.float64]], float, float]:
    """A structure as points on the dose grid: (each dose's value at every point, cc per point, cc outside the grid).

    Each mask voxel is split into equal parts (:func:`subdivisions`); at each part's centre every dose
    is interpolated trilinearly from the 8 surrounding dose-grid voxels (weights written out here, not
    a library call). A point within half a voxel outside the outermost voxel centres takes the edge
    value; a point farther out is outside the dose grid: its dose is unknown and counts as 0 Gy."""
    n = subdivisions(mask_geometry, dose_geometry)
    axes = [(np.arange(s) + 0.5) / s - 0.5 for s in n]
    offsets = np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T  # (parts, 3) in (i, j, k)
    point_cc = mask_geometry.voxel_cc / len(offsets)
    to_dose = np.linalg.inv(dose_geometry.matrix)
    shape_ijk = np.array(dose_geometry.shape[::-1])
    flat = [d.ravel() for d in doses]
    out: list[list[NDArray[np.float64]]] = [[] for _ in doses]
    kji = np.argwhere(mask)
    outside = 0
    per_chunk = max(1, chunk // len(offsets))
    for start in range(0, len(kji), per_chunk):
        ijk = kji[start:start + per_chunk, ::-1].astype(float)
        points = mask_geometry.origin + (ijk[:, None, :] + offsets[None, :, :]).reshape(-1, 3) @ mask_geometry.matrix.T
        x = (points - dose_geometry.origin) @ to_dose.T  # continuous dose-grid index (i, j, k)
        inside = np.all((x >= -0.5) & (x <= shape_ijk - 0.5), axis=1)
        outside += int((~inside).sum())
        x = np.clip(x, 0.0, shape_ijk - 1.0)
        low = np.minimum(np.floor(x).astype(np.int64), np.maximum(shape_ijk - 2, 0))
        frac = x - low
        values = [np.zeros(len(x)) for _ in doses]
        for corner in np.ndindex(2, 2, 2):
            c = np.asarray(corner)
            index = np.minimum(low + c, shape_ijk - 1)
            weight = np.prod(np.where(c == 1, frac, 1.0 - frac), axis=1)
            flat_index = (index[:, 2] * shape_ijk[1] + index[:, 1]) * shape_ijk[0] + index[:, 0]
            for v, f in zip(values, flat):
                v += weight * f[flat_index]
        for o, v in zip(out, values):
            o.append(np.where(inside, v, 0.0))
    return [np.concatenate(o) if o else np.zeros(0) for o in out], point_cc, outside * point_cc


@dataclass(frozen=True)
class VoxelHistogram:
    """A structure's points with their dose (Gy) and volume (cc): the full, unbinned histogram."""

    dose_gy: NDArray[np.float64]
    volume_cc: NDArray[np.float64]

    def value(self, metric: str) -> float:
        """A protocol metric read from the histogram."""
        kind, x = parse_metric(metric)
        total = float(self.volume_cc.sum())
        if total <= 0:
            return float("nan")
        if kind == "mean":
            return float((self.dose_gy * self.volume_cc).sum() / total)
        if kind == "max":
            return float(self.dose_gy[self.volume_cc > 0].max())
        if kind == "min":
            return float(self.dose_gy[self.volume_cc > 0].min())
        if kind in ("v_percent", "v_cc"):
            receiving = float(self.volume_cc[self.dose_gy >= x].sum())
            return 100.0 * receiving / total if kind == "v_percent" else receiving
        if kind == "geud":
            return float(((self.volume_cc / total) * np.maximum(self.dose_gy, 0.0) ** x).sum() ** (1.0 / x))
        wanted_cc = x if kind == "d_cc" else x / 100.0 * total
        order = np.argsort(self.dose_gy)[::-1]  # hottest voxel first
        hottest = np.cumsum(self.volume_cc[order])
        reached = min(int(np.searchsorted(hottest, min(wanted_cc, total) * (1 - 1e-12))), len(order) - 1)
        return float(self.dose_gy[order][reached])  # the coolest dose inside the hottest ``wanted_cc``


_NAMES = {"Dmean": "mean", "MLD": "mean", "Dmax": "max", "Dmin": "min"}
_PATTERN = re.compile(r"(?P<q>[DV])(?P<x>\d+(\.\d+)?)(?P<cc>cc)?")


def parse_metric(text: str) -> tuple[str, float]:
    """A protocol metric name -> (kind, parameter): ``V20`` -> ('v_percent', 20), ``D0.03cc`` -> ('d_cc', 0.03)."""
    text = text.strip()
    if text in _NAMES:
        return _NAMES[text], math.nan
    if text.startswith("gEUD_a="):
        return "geud", float(text.removeprefix("gEUD_a="))
    m = _PATTERN.fullmatch(text)
    if not m:
        raise ValueError(f"the audit does not know the metric {text!r} (Dmean, MLD, Dmax, Dmin, Dx, Dxcc, Vx, Vxcc, gEUD_a=x)")
    kind = ("d_" if m["q"] == "D" else "v_") + ("cc" if m["cc"] else "percent")
    return kind, float(m["x"])


def in_constraint_terms(dose_gy: NDArray[np.float64], constraint: dict[str, Any], fractions: int) -> NDArray[np.float64]:
    """Physical total dose per voxel -> the constraint's dose: per fraction, or EQD2 via the BED."""
    if constraint.get("scope") == "per_fraction":
        return dose_gy / fractions
    if constraint.get("dose_type") == "eqd2":
        ab = float(constraint["alpha_beta_gy"])
        bed = dose_gy * (1.0 + (dose_gy / fractions) / ab)
        return bed / (1.0 + 2.0 / ab)
    return dose_gy


def tolerance(constraint: dict[str, Any], value: float) -> float:
    """How far the search's value may be from the audit's, in the constraint's unit.

    Justification: the two differ only by the points at which a structure meets the dose (2 x 2 x 2
    sub-voxels vs points <= half a dose voxel apart), so a near-max or a mean moves by the dose
    change across a fraction of a sub-voxel, and a Vx by the boundary points straddling the
    threshold isodose. Measured on the two sample patients (all 340 candidate x constraint values):
    dose metrics within 0.27 % (oesophagus D0.03cc, 0.17 Gy of 61 Gy), MLD within 0.001 Gy, Vx within
    0.06 percentage points. The limits, 0.75 % (at least 0.1 Gy; 0.02 Gy per fraction) and 0.25
    points, are about 3-4 times that and below the nearest wrong answers the tests name: D0.03cc read
    as Dmax on the oesophagus (+1.4 %), a 5 % dose scaling, the physical dose instead of EQD2 (cord
    alpha/beta 2 at < 1 Gy per fraction: +25 %; oesophagus -4 %), V20 of one lung (tens of points).
    A Dmax is the single hottest point of each point set, so it moves most with the sampling
    (0.6 %: oesophagus Dmax, isotoxic_hypofractionated protocol on SAMPLE001): 1.5 %, still below a
    5 % scaling."""
    kind, _ = parse_metric(constraint["metric"])
    if kind == "v_percent":
        return VOLUME_TOLERANCE_PERCENT_POINTS
    if kind == "v_cc":
        return max(VOLUME_TOLERANCE_FLOOR_CC, VOLUME_TOLERANCE_FRACTION_CC * abs(value))
    floor = DOSE_TOLERANCE_FLOOR_GY
    fraction = MAX_TOLERANCE_FRACTION if kind in ("max", "min") else DOSE_TOLERANCE_FRACTION
    if constraint.get("scope") == "per_fraction":
        floor = DOSE_TOLERANCE_FLOOR_GY / 5.0  # 0.02 Gy on a ~2 Gy per-fraction limit
    return max(floor, fraction * abs(value))


def scan_plans(label: str) -> tuple[str, ...]:
    """The unit plans a scan row combines, from its label (the plan stage's scan labels)."""
    if "whole-tumour" in label:
        return ("base", "boost_A")
    if label.startswith("boost arm"):
        return ("base", f"boost_{label[-1]}")
    return ("base",)


#: the audit table's columns (``plan/audit.tsv``)
COLUMNS = ("candidate", "scan", "target_gy", "total_gy", "fractions", "boost_increment_gy", "constraint", "structure", "metric",
           "dose_type", "scope", "limit", "isotox", "independent", "difference", "tolerance", "pass", "feasible_isotox", "feasible_audit")


@dataclass
class Structure:
    """One structure's points with each unit plan's dose there (Gy per Gy) and the volume per point."""

    unit_dose: dict[str, NDArray[np.float64]]
    point_cc: float

    def histogram(self, weights: dict[str, float]) -> VoxelHistogram:
        """The points' physical dose for ``weights`` (Gy of each unit plan), as a histogram."""
        dose = sum((w * self.unit_dose[p] for p, w in weights.items() if w), start=np.zeros_like(self.unit_dose["base"]))
        return VoxelHistogram(dose, np.full(dose.size, self.point_cc))


def audit_scan(scan: pd.DataFrame, units: dict[str, sitk.Image], masks: dict[str, sitk.Image], protocol: dict[str, Any]) -> pd.DataFrame:
    """One row per scan candidate and constraint: the search's value, the audit's, the difference,
    the tolerance and whether it passes; ``feasible_isotox`` / ``feasible_audit`` per candidate.

    ``units``: unit-dose images (Gy per Gy) by plan name; ``masks``: structure masks by name."""
    dose_geometry = Geometry.of(units["base"])
    plan_names = sorted(units)
    unit_arrays = [sitk.GetArrayViewFromImage(units[p]).astype(np.float64) for p in plan_names]
    structures: dict[str, Structure] = {}
    for c in protocol["constraints"]:
        name = c["structure"]
        if name in masks and name not in structures:
            m = masks[name]
            values, point_cc, _ = point_doses(sitk.GetArrayViewFromImage(m).astype(bool), Geometry.of(m), dose_geometry, unit_arrays)
            structures[name] = Structure(dict(zip(plan_names, values)), point_cc)
    rows = []
    for n, row in scan.reset_index(drop=True).iterrows():
        plans = scan_plans(str(row["scan"]))
        fractions = int(row["fractions"])
        weights = {"base": float(row["total_gy"])}
        if len(plans) > 1:
            weights[plans[1]] = float(row["boost_increment_gy"])
        feasible_audit = True
        for c in protocol["constraints"]:
            isotox = float(row[c["id"]]) if str(row[c["id"]]) not in ("", "nan") else math.nan
            if c["structure"] in structures:
                hist = structures[c["structure"]].histogram(weights)
                independent = VoxelHistogram(in_constraint_terms(hist.dose_gy, c, fractions), hist.volume_cc).value(c["metric"])
            else:
                independent = math.nan
            tol = tolerance(c, independent)
            both_missing = math.isnan(isotox) and math.isnan(independent)
            passed = both_missing or (abs(isotox - independent) <= tol)
            feasible_audit &= math.isnan(independent) or independent <= float(c["limit"]) + 1e-9
            rows.append({"candidate": n, "scan": row["scan"], "target_gy": float(row["target_gy"]), "total_gy": float(row["total_gy"]),
                         "fractions": fractions, "boost_increment_gy": float(row["boost_increment_gy"]), "constraint": c["id"],
                         "structure": c["structure"], "metric": c["metric"], "dose_type": c.get("dose_type", "physical"),
                         "scope": c.get("scope", "total"), "limit": float(c["limit"]), "isotox": isotox, "independent": independent,
                         "difference": isotox - independent, "tolerance": tol, "pass": bool(passed),
                         "feasible_isotox": str(row["feasible"]) == "True"})
        for r in rows[-len(protocol["constraints"]):]:
            r["feasible_audit"] = bool(feasible_audit)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def summary(table: pd.DataFrame, chosen_target_gy: float | None) -> dict[str, Any]:
    """What plan.json records of the audit: pass, the worst difference per constraint, and whether the
    audit's own feasibility picks the same prescription as the search.

    ``passed`` is every value within its tolerance. A feasibility that differs while both values are
    within tolerance of each other is a value within the tolerance of its limit (voxelisation decides
    it, not the search), so it is reported (``feasibility_agrees``, ``chosen_agrees``), not failed."""
    if table.empty:
        return {"passed": True, "rows": 0, "failed": [], "worst": {}, "feasibility_agrees": True, "chosen_agrees": True}
    failed = table[~table["pass"]]
    worst = {}
    for cid, part in table.groupby("constraint", sort=False):
        diff = part["difference"].abs()
        if diff.notna().any():
            at = diff.idxmax()
            worst[str(cid)] = {"difference": float(part.loc[at, "difference"]), "tolerance": float(part.loc[at, "tolerance"]),
                               "target_gy": float(part.loc[at, "target_gy"])}
    per_candidate = table.drop_duplicates("candidate")
    feasibility_agrees = bool((per_candidate["feasible_isotox"] == per_candidate["feasible_audit"]).all())
    main = per_candidate[~per_candidate["scan"].astype(str).str.contains("whole-tumour")]
    audit_chosen = float(main[main["feasible_audit"]]["target_gy"].max()) if main["feasible_audit"].any() else None
    chosen_agrees = (audit_chosen is None and chosen_target_gy is None) or (
        audit_chosen is not None and chosen_target_gy is not None and abs(audit_chosen - chosen_target_gy) < 1e-6)
    return {"passed": bool(failed.empty), "rows": int(len(table)),
            "failed": sorted({f"{r.constraint} at {r.target_gy:g} Gy" for r in failed.itertuples()}), "worst": worst,
            "feasibility_agrees": feasibility_agrees, "chosen_agrees": bool(chosen_agrees), "audit_chosen_target_gy": audit_chosen}


def read_inputs(plan_dir: Path, masks_dir: Path, protocol: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, sitk.Image], dict[str, sitk.Image]]:
    """The scan table, unit doses and constrained structures' masks as the plan and segment stages wrote them."""
    try:
        scan = pd.read_csv(plan_dir / "constraint_scan.tsv", sep="\t", keep_default_na=False)
    except pd.errors.EmptyDataError:  # a patient who may not be prescribed at all: nothing was searched
        scan = pd.DataFrame()
    units = {p.name.removesuffix("_unit.nii.gz"): sitk.ReadImage(str(p)) for p in sorted((plan_dir / "dose").glob("*_unit.nii.gz"))}
    masks = {}
    for name in {c["structure"] for c in protocol["constraints"]}:
        path = masks_dir / f"{name}.nii.gz"
        if path.exists():
            masks[name] = sitk.ReadImage(str(path))
    return scan, units, masks


def audit_plan(plan_dir: str | Path, masks_dir: str | Path, protocol: dict[str, Any]) -> pd.DataFrame:
    """:func:`audit_scan` on a written plan folder (``constraint_scan.tsv``, ``dose/*_unit.nii.gz``)."""
    scan, units, masks = read_inputs(Path(plan_dir), Path(masks_dir), protocol)
    if scan.empty:  # nothing was searched (not prescribable): an empty table with the columns
        return pd.DataFrame(columns=list(COLUMNS))
    return audit_scan(scan, units, masks, protocol)
