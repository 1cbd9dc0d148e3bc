"""Stage 5 for one patient: ``PATIENT_DIR/{ingest,segment}`` -> ``PATIENT_DIR/plan``.

Writes (all or nothing):

* ``plan.json``: the prescription (total, fractions, arm, boost), feasibility, the limiting
  constraint, every constraint's value, margin and binding dose, target coverage, NTCP, EQD2 of
  the prescription, the unit plans (beams, weights, timing) and flags;
* ``dvh.tsv``: the prescribed plan's DVH metrics per structure (physical and EQD2 rows);
  ``dvh_curves.tsv``: the cumulative DVHs; ``constraint_scan.tsv``: every candidate evaluated;
  ``audit.tsv``: every candidate's constraints re-scored by the independent audit (``planning.audit``);
* ``dose/{base,boost_A,boost_B}_unit.nii.gz`` (Gy per Gy) and ``dose/prescribed.nii.gz`` (Gy);
  with the engine, ``dose/{unit plan}_fluence.npz``: each beam's optimised fluence map;
* ``qc/dvh.png``, ``qc/constraints.png``, ``qc/dose.png``;
* ``dicom/RS.dcm`` + ``dicom/RD.dcm``: the structures and the prescribed dose for the TPS.

A patient for whom no candidate is feasible gets a plan.json saying so (flagged, not dropped),
no prescribed dose and no DICOM dose.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from numpy.typing import NDArray

from isotox.atomic import atomic_path
from isotox.dose.dvh import Dvh, StructureSamples, dvh_table, sample_structure
from isotox.errors import InputDataError
from isotox.geometry import ImageGrid
from isotox.dicomio.tps_dose import covered_fraction
from isotox.dicomio.volume import to_image
from isotox.images import array, read_image, resample_to
from isotox.planning.audit import audit_plan, summary as audit_summary
from isotox.planning.export import ExportError, export_plan
from isotox.planning.plots import constraint_plot, dvh_plot
from isotox.planning.prescription import Prescription, has_boost, prescribe, prescribed_dose, prescribed_dvhs, radiobiology
from isotox.planning.settings import PlanningSettings
from isotox.planning.unit_plans import PlanningContext, UnitPlan, engine_plan, tps_base_plan
from isotox.qcplots import three_planes
from isotox.settings import load_protocol

log = logging.getLogger(__name__)
STAGE = "plan"
TARGETS = ("GTV", "GTV_SUV50", "CTV", "PTV", "PTV_BOOST_A", "PTV_BOOST_B")
ORGANS = ("LUNGS", "LUNGS_MINUS_GTV", "LUNG_L", "LUNG_R", "HEART", "ESOPHAGUS", "SPINAL_CORD", "AORTA")
NORMAL_TISSUE_ALPHA_BETA_GY = 3.0  # EQD2 rows of organs no constraint gives an alpha/beta for


def _read_masks(patient: str, folder: Path, names: set[str]) -> dict[str, NDArray[np.bool_]]:
    masks = {}
    for name in sorted(names):
        path = folder / f"{name}.nii.gz"
        if path.exists():
            masks[name] = array(read_image(path)).astype(bool)
    return masks


def _structure_alpha_beta(protocol: dict[str, Any], tumour_alpha_beta: float) -> dict[str, float]:
    out = {t: tumour_alpha_beta for t in TARGETS}
    for c in protocol["constraints"]:
        if c.get("dose_type") == "eqd2":
            out.setdefault(c["structure"], float(c["alpha_beta_gy"]))
    return out


def _dvh_rows(dvhs: dict[str, Dvh], fractions: int, alpha_beta: dict[str, float]) -> pd.DataFrame:
    physical = dvh_table(list(dvhs.values()), extra=("D50", "V5cc", "V20cc", "V30", "V40", "gEUD_a=1"))
    physical.insert(1, "dose_type", "physical")
    eqd2 = dvh_table([d.eqd2(fractions, alpha_beta.get(n, NORMAL_TISSUE_ALPHA_BETA_GY)) for n, d in dvhs.items()],
                     extra=("D50", "V5cc", "V20cc", "V30", "V40", "gEUD_a=1"))
    eqd2.insert(1, "dose_type", [f"eqd2 (a/b {alpha_beta.get(n, NORMAL_TISSUE_ALPHA_BETA_GY):g} Gy)" for n in dvhs])
    return pd.concat([physical, eqd2], ignore_index=True)


def _curves(dvhs: dict[str, Dvh]) -> pd.DataFrame:
    parts = [d.cumulative(0.25).assign(structure=n) for n, d in dvhs.items() if d.total_cc]
    return pd.concat(parts, ignore_index=True)[["structure", "dose_gy", "volume_cc", "volume_percent"]] if parts else pd.DataFrame()


def _coverage(dvhs: dict[str, Dvh], prescription: Prescription) -> dict[str, Any]:
    c = prescription.candidate
    out: dict[str, Any] = {}
    if c is None:
        return out
    for name, level in (("PTV", c.total_gy), (f"PTV_BOOST_{prescription.arm}", c.total_gy + c.boost_increment_gy)):
        dvh = dvhs.get(name)
        if dvh is None or not dvh.total_cc or level <= 0:
            continue
        out[name] = {"reference_gy": level, "D95_percent": 100 * dvh.d_percent(95) / level, "D50_percent": 100 * dvh.d_percent(50) / level,
                     "D2_percent": 100 * dvh.d_percent(2) / level, "Dmax_percent": 100 * dvh.max() / level}
    return out


def _key_metrics(dvhs: dict[str, Dvh]) -> dict[str, Any]:
    """The per-patient dose figures the outcome tables use (toxicity against dose)."""
    def get(name: str, metric: str) -> float | None:
        d = dvhs.get(name)
        return float(d.metric(metric)) if d is not None and d.total_cc else None
    return {"mld_gy": get("LUNGS_MINUS_GTV", "Dmean"), "lung_v20_pct": get("LUNGS_MINUS_GTV", "V20"), "lung_v5_pct": get("LUNGS_MINUS_GTV", "V5"),
            "esophagus_dmax_gy": get("ESOPHAGUS", "D0.03cc"), "esophagus_dmean_gy": get("ESOPHAGUS", "Dmean"), "heart_dmean_gy": get("HEART", "Dmean"),
            "cord_d003cc_gy": get("SPINAL_CORD", "D0.03cc")}


#: A TPS dose must cover this fraction of every target and constrained organ (1 % for contour rounding).
MIN_TPS_COVERAGE = 0.99


def _require_tps_coverage(patient: str, tps_dose: Path, masks: dict[str, NDArray[np.bool_]], protocol: dict[str, Any], ct_grid: ImageGrid) -> None:
    """Refuse a TPS dose whose grid leaves part of the PTV or a constrained organ out: outside the
    grid the dose is unknown, and a metric computed as if it were 0 there would pass a wrong plan."""
    grid = ImageGrid.from_sitk(read_image(tps_dose))
    names = ["PTV"] + sorted({c["structure"] for c in protocol["constraints"]} | {m["structure"] for m in protocol.get("ntcp", {}).values()})
    short = {n: covered_fraction(masks[n], ct_grid, grid) for n in names if n in masks and masks[n].any()}
    short = {n: f for n, f in short.items() if f < MIN_TPS_COVERAGE}
    if short:
        listing = ", ".join(f"{n} ({100 * (1 - f):.1f} % outside)" for n, f in sorted(short.items()))
        raise InputDataError(patient, tps_dose, f"the TPS dose grid does not cover {listing}",
                             "export the RTDOSE on a grid covering every organ at risk (or set planning.dose_source: engine)")


def plan_patient(patient_dir: str | Path, protocol_path: str | Path, *, arm: str | None = None,
                 settings: PlanningSettings | None = None, patient_id: str | None = None) -> dict[str, Any]:
    """Run stage 5 for one patient; returns what is written to ``plan/plan.json``."""
    started = time.perf_counter()
    patient_dir = Path(patient_dir)
    patient = patient_id or patient_dir.name
    settings = settings or PlanningSettings()
    protocol = load_protocol(protocol_path)
    ingest, segment = patient_dir / "ingest", patient_dir / "segment"
    for folder, stage in ((ingest, "ingest"), (segment, "segment")):
        if not folder.is_dir():
            raise InputDataError(patient, folder, f"the {stage} stage output is missing", f"run `isotox {stage}` for this patient first")
    ct = read_image(ingest / "planning_ct.nii.gz")
    meta = json.loads((ingest / "metadata.json").read_text())
    wanted = set(TARGETS) | set(ORGANS) | {"BODY"} | {c["structure"] for c in protocol["constraints"]} | {m["structure"] for m in protocol.get("ntcp", {}).values()}
    masks = _read_masks(patient, segment / "masks", wanted)
    needed = ["BODY", "PTV"] + (["PTV_BOOST_A", "PTV_BOOST_B"] if has_boost(protocol) else [])
    for name in needed:
        if name not in masks or not masks[name].any():
            raise InputDataError(patient, segment / "masks" / f"{name}.nii.gz", f"structure {name} is missing or empty",
                                 "check the segmentation stage (segment.json flags); a boost protocol needs an FDG-PET for the arm B volume")
    flags: list[str] = []
    model = settings.beam_model()
    constrained = [masks[c["structure"]] for c in protocol["constraints"] if c["structure"] in masks]
    context = PlanningContext.build(ct, masks["BODY"], constrained, [masks["PTV"]], settings, model)

    tps_dose = ingest / "rtdose.nii.gz"
    use_tps = settings.dose_source == "tps" or (settings.dose_source == "auto" and tps_dose.exists())
    tps_problem = str(meta.get("problems", {}).get("rtdose", ""))
    tps_refused = bool(tps_problem) and not tps_problem.startswith("no RTDOSE")
    if settings.dose_source == "tps" and not tps_dose.exists():
        raise InputDataError(patient, tps_dose, "planning.dose_source is 'tps' but no RTDOSE was ingested" + (f" (refused: {tps_problem})" if tps_refused else ""),
                             "add the plan's RTDOSE to the patient folder or use 'auto'")
    if settings.dose_source == "auto" and tps_refused:
        flags.append(f"TPS RTDOSE refused at ingest, the built-in engine computed the dose instead: {tps_problem}")
    if use_tps:
        _require_tps_coverage(patient, tps_dose, masks, protocol, context.ct_grid)
    units: dict[str, UnitPlan] = {}
    units["base"] = tps_base_plan(read_image(tps_dose), masks["PTV"], context.ct_grid, context.dose_grid) if use_tps \
        else engine_plan(context, "base", "PTV", masks["PTV"])
    if has_boost(protocol):
        for a in ("A", "B"):
            units[f"boost_{a}"] = engine_plan(context, f"boost_{a}", f"PTV_BOOST_{a}", masks[f"PTV_BOOST_{a}"])
    for unit in units.values():
        log.info("%s: unit plan %s (%s) in %.1f s", patient, unit.name, unit.source, unit.seconds)  # timing in the log, not in plan.json
        if unit.weights is not None and not unit.weights.meets_hotspot:
            flags.append(f"{unit.name}: target Dmax {100 * unit.weights.dmax:.1f} % > 107 % with these beam directions and apertures")

    plan_order = [p for p in ("base", "boost_A", "boost_B") if p in units]
    doses = [(units[p].dose, context.dose_grid) for p in plan_order]
    sample_names = [n for n in masks if n != "BODY"]
    samples: dict[str, StructureSamples] = {n: sample_structure(n, masks[n], context.ct_grid, doses, tuple(settings.supersample)) for n in sample_names}
    for n, s in samples.items():
        if s.outside_fraction > 0.001:
            flags.append(f"{n}: {100 * s.outside_fraction:.1f} % of the structure lies outside the dose grid (dose 0 there)")

    prescription = prescribe(samples, protocol, arm)
    result = prescription.result
    if result.get("not_prescribable"):
        flags.append(f"not prescribable: {result['not_prescribable']}")
    elif result.get("awaiting_randomisation"):
        flags.append("awaiting randomisation: " + result["note"])
    elif not result["feasible"]:
        flags.append(f"infeasible: no prescription of the protocol keeps every constraint (violated at the lowest dose: {', '.join(result['violated_at_lowest'])})")
    if result.get("allocation_note"):
        flags.append(result["allocation_note"])
    skipped = [c["id"] for c in protocol["constraints"] if c.get("optional") and c["structure"] not in samples]
    if skipped:
        flags.append(f"optional constraints skipped (structure absent): {', '.join(skipped)}")
    dvhs = prescribed_dvhs(samples, prescription)
    unit_doses = {p: units[p].dose for p in plan_order}
    total = prescribed_dose(unit_doses, prescription)
    doc: dict[str, Any] = {
        "patient_id": patient, "protocol": protocol["name"], "protocol_file": str(protocol_path), "dose_source": "tps" if use_tps else "engine",
        "arm_requested": arm, "arm_applied": result.get("arm") if has_boost(protocol) else None, "feasible": result["feasible"],
        "prescribed_dose_gy": result["total_gy"], "fractions": result["fractions"], "dose_per_fraction_gy": result["dose_per_fraction_gy"],
        "boost_total_gy": result.get("boost_total_gy"), "boost_feasible": result["whole_tumour_boost_test"]["feasible"] if has_boost(protocol) else None,
        "boost_dose_per_fraction_gy": result.get("boost_dose_per_fraction_gy"), "boost_stopped_by": result.get("boost_stopped_by"),
        "not_prescribable": result.get("not_prescribable"), "awaiting_randomisation": bool(result.get("awaiting_randomisation")),
        "limiting_constraints": result["limiting_constraints"], "prescription": result,
        "coverage": _coverage(dvhs, prescription), "dose_metrics": _key_metrics(dvhs),
        "radiobiology": radiobiology(dvhs, protocol, prescription, settings.tumour_alpha_beta_gy),
        "engine": {**model.summary(), "gantry_angles_deg": settings.angles(), "dose_grid_mm": settings.dose_grid_mm,
                   "aperture_margin_mm": settings.aperture_margin_mm, "weights": settings.weights, "beamlet_mm": settings.beamlet_mm, "dose_grid": {"size": list(context.dose_grid.size), "origin_mm": list(context.dose_grid.origin)}},
        "unit_plans": {p: units[p].summary() for p in plan_order}, "flags": flags,
    }
    with atomic_path(patient_dir / STAGE) as out:
        (out / "dose").mkdir(parents=True)
        (out / "qc").mkdir()
        for p in plan_order:
            sitk.WriteImage(to_image(context.dose_grid, unit_doses[p]), str(out / "dose" / f"{p}_unit.nii.gz"), useCompression=True)
            if units[p].apertures:
                np.savez_compressed(out / "dose" / f"{p}_fluence.npz", **units[p].fluence_arrays())
        prescription.scan.to_csv(out / "constraint_scan.tsv", sep="\t", index=False, float_format="%.5g")
        chosen_gy = (prescription.candidate.total_gy + prescription.candidate.boost_increment_gy) if prescription.candidate else None
        audit = audit_plan(out, segment / "masks", protocol)  # the written scan re-scored by an independent DVH code
        audit.to_csv(out / "audit.tsv", sep="\t", index=False, float_format="%.5g")
        doc["audit"] = audit_summary(audit, chosen_gy)
        if not doc["audit"]["passed"]:
            flags.append("search audit failed: the independent DVH disagrees with the search beyond its tolerance ("
                         + ", ".join(doc["audit"]["failed"][:5]) + "); see plan/audit.tsv")
        if not prescription.scan.empty:
            constraint_plot(prescription.scan, protocol["constraints"], chosen_gy, out / "qc" / "constraints.png", f"{patient}: constraints vs dose ({protocol['name']})")
        if total is not None:
            sitk.WriteImage(to_image(context.dose_grid, total), str(out / "dose" / "prescribed.nii.gz"), useCompression=True)
            _dvh_rows(dvhs, prescription.candidate.fractions, _structure_alpha_beta(protocol, settings.tumour_alpha_beta_gy)).to_csv(out / "dvh.tsv", sep="\t", index=False, float_format="%.5g")
            _curves(dvhs).to_csv(out / "dvh_curves.tsv", sep="\t", index=False, float_format="%.4g")
            dvh_plot(dvhs, out / "qc" / "dvh.png", f"{patient}: {result['total_gy']:g} Gy / {result['fractions']} fx" +
                     (f", boost {doc['boost_total_gy']:g} Gy (arm {prescription.arm})" if doc.get("boost_total_gy") else ""))
            dose_on_ct = resample_to(to_image(context.dose_grid, total), ct)
            centre = context.ct_grid.index_to_physical(np.argwhere(masks["PTV"]).mean(axis=0)[::-1][None])[0]
            three_planes(ct, centre, out / "qc" / "dose.png", f"{patient}: prescribed dose (Gy)", overlay=dose_on_ct, overlay_label="Gy",
                         contours={n: masks[n] for n in ("PTV", "GTV", f"PTV_BOOST_{prescription.arm}") if n in masks})
            key = (patient, protocol["name"], str(prescription.arm), f"{result['total_gy']}", f"{doc['boost_total_gy']}")
            try:
                c = prescription.candidate
                targets = {"PTV": c.total_gy, **({f"PTV_BOOST_{prescription.arm}": c.total_gy + c.boost_increment_gy} if c.boost_increment_gy else {})}
                doc["export"] = export_plan(out / "dicom", meta.get("planning_ct_dicom"), context.ct_grid, masks, total, context.dose_grid, key,
                                            c.fractions, targets)
                doc["export"] = {k: (str(Path(v).relative_to(out)) if k in ("rtstruct", "rtplan", "rtdose") else v) for k, v in doc["export"].items()}
            except ExportError as exc:
                doc["export"] = {"error": str(exc)}
                flags.append(f"DICOM export skipped: {exc}")
        else:
            pd.DataFrame(columns=["structure", "dose_type"]).to_csv(out / "dvh.tsv", sep="\t", index=False)
            pd.DataFrame(columns=["structure", "dose_gy", "volume_cc", "volume_percent"]).to_csv(out / "dvh_curves.tsv", sep="\t", index=False)
            doc["export"] = {"error": "no prescription (" + ("not prescribable" if result.get("not_prescribable") else
                             "awaiting randomisation" if result.get("awaiting_randomisation") else "infeasible") + "): nothing to export"}
        (out / "plan.json").write_text(json.dumps(json_ready(doc), indent=2) + "\n", encoding="utf-8")
    log.info("%s: %s, %s Gy / %s fx, boost %s, limiting %s (%.1f s)", patient, "feasible" if doc["feasible"] else "INFEASIBLE",
             doc["prescribed_dose_gy"], doc["fractions"], doc["boost_total_gy"], doc["limiting_constraints"], time.perf_counter() - started)
    return doc


def json_ready(value: Any) -> Any:
    """numpy scalars to Python, NaN/inf to null (JSON has no NaN), recursively. Public because every
    stage document written like plan.json (the painted plans' strategies.json too) must encode
    numbers the same way."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
