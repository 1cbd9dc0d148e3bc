"""The strategies stage for one patient: ``PATIENT_DIR/{ingest,register,segment,plan}`` ->
``PATIENT_DIR/strategies``. What would each strategy give at the protocol's isotoxic limit?

Strategies (rows of ``strategies.tsv``, in this order): ``uniform_66`` (the base PTV plan at the
protocol's base prescription, no boost), ``arm_A_whole_tumour`` and ``arm_B_suv50`` (the plan
stage's boost plans), then the painted strategies of ``config/painting.yaml`` (``dpbn_fdg``,
``dpbn_hx4``, ``hypoxia_boost``, ...). Every escalated strategy is base x D_low + increment x its
component, the increment raised by the exact isotoxic search until the first constraint binds
(or the strategy's ceiling). The unit plans of the plan stage are reused, not recomputed.

Writes (all or nothing): ``strategies.tsv``; ``strategies.json`` (settings, sources, per-strategy
detail; no timing, so a rerun writes the same file); ``qvh.tsv``; ``dose/{strategy}.nii.gz`` (the delivered total dose, dose grid);
``maps/{strategy}_prescription.nii.gz`` (the prescription map at the chosen top dose, planning CT
grid, Gy) and ``maps/{strategy}_unit.nii.gz`` (the painted component, computed on the structures
whose DVHs are read and 0 elsewhere); ``dicom/{strategy}/RD_map.dcm``
+ ``RS_levels.dcm`` for painted strategies; ``qc/strategies.png``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from numpy.typing import NDArray

from isotox.atomic import atomic_path
from isotox.dicomio.volume import to_image
from isotox.dose.dvh import Dvh, StructureSamples, sample_structure
from isotox.dose.radiobiology import model_ntcp
from isotox.errors import ConfigError, InputDataError
from isotox.geometry import ImageGrid
from isotox.images import array, read_image, resample_to
from isotox.painting.escalation import Escalation, component_view, escalate
from isotox.painting.export import ExportError, export_map, write_map_nifti
from isotox.painting.maps import PaintingMap, strategy_map
from isotox.painting.optimise import MapPlanner, PaintedPlan, shape_on_dose_grid
from isotox.painting.plots import strategy_figure
from isotox.painting.quality import quality_factor, qvh
from isotox.painting.settings import PaintingSettings
from isotox.painting.tcp import clonogens, oxygen_modification, po2_from_tbr, tcp
from isotox.planning.settings import PlanningSettings
from isotox.planning.stage import _json_ready  # numpy/NaN -> JSON, as plan.json
from isotox.planning.unit_plans import PlanningContext
from isotox.settings import load_protocol
from isotox.settings.protocol import boost_ceiling_gy

log = logging.getLogger(__name__)
STAGE = "strategies"
COLUMNS = ["strategy", "feasible", "limiting_constraint", "gtv_mean_gy", "gtv_d98_gy", "gtv_d2_gy", "q_factor", "tcp",
           "ntcp_pneumonitis", "ntcp_oesophagitis", "mld_gy", "lung_v20_percent",
           "base_total_gy", "top_dose_gy", "fractions", "note"]
#: the plan stage's strategies: name -> (unit plan file, boost target mask or None)
PLAN_STRATEGIES = {"uniform_66": (None, None), "arm_A_whole_tumour": ("boost_A", "GTV"), "arm_B_suv50": ("boost_B", "GTV_SUV50")}
NTCP_COLUMNS = {"pneumonitis": "ntcp_pneumonitis", "esophagitis": "ntcp_oesophagitis"}


@dataclass
class PatientImages:
    """Everything per voxel the strategies need, on the planning CT grid (arrays k, j, i)."""

    ct: sitk.Image
    masks: dict[str, NDArray[np.bool_]]
    suv: NDArray[np.float64] | None
    tbr: NDArray[np.float64] | None


def _require(patient: str, path: Path, what: str, fix: str) -> Path:
    if not path.exists():
        raise InputDataError(patient, path, f"{what} is missing", fix)
    return path


def _read_images(patient: str, patient_dir: Path, names: set[str], hx4_session: str) -> PatientImages:
    ingest, register, segment = (patient_dir / s for s in ("ingest", "register", "segment"))
    ct = read_image(_require(patient, ingest / "planning_ct.nii.gz", "the planning CT", "run `isotox ingest` for this patient first"))
    masks = {n: array(read_image(segment / "masks" / f"{n}.nii.gz")).astype(bool) for n in sorted(names) if (segment / "masks" / f"{n}.nii.gz").exists()}
    suv_path, tbr_path = register / "fdg_pet_suv.nii.gz", segment / f"tbr_{hx4_session}.nii.gz"
    suv = array(read_image(suv_path)).astype(float) if suv_path.exists() else None
    tbr = array(read_image(tbr_path)).astype(float) if tbr_path.exists() else None
    return PatientImages(ct, masks, suv, tbr)


def _dvh_figures(samples: dict[str, StructureSamples], esc: Escalation, protocol: dict[str, Any]) -> dict[str, float | None]:
    weights = esc.weights()
    if not weights:
        return {}
    dvhs: dict[str, Dvh] = {n: s.dvh(weights) for n, s in samples.items()}
    out: dict[str, float | None] = {}
    gtv = dvhs.get("GTV")
    if gtv is not None:
        out.update(gtv_mean_gy=gtv.mean(), gtv_d98_gy=gtv.d_percent(98), gtv_d2_gy=gtv.d_percent(2))
    lungs = dvhs.get("LUNGS_MINUS_GTV")
    out.update(mld_gy=lungs.mean() if lungs else None, lung_v20_percent=lungs.v_percent(20.0) if lungs else None)
    for model in protocol.get("ntcp", {}).values():
        column = NTCP_COLUMNS.get(model.get("toxicity", ""))
        dvh = dvhs.get(model["structure"])
        if column and dvh is not None and dvh.total_cc:
            out[column] = model_ntcp(dvh, model, esc.candidate.fractions)  # type: ignore[union-attr]
    return out


def _prescribed_map(name: str, esc: Escalation, painting: PaintingMap | None, images: PatientImages) -> NDArray[np.float64] | None:
    """What the strategy prescribes per GTV voxel at its chosen candidate (for Q)."""
    c = esc.candidate
    if c is None:
        return None
    top = c.boost_increment_gy if esc.with_component else 0.0
    gtv = images.masks["GTV"]
    if painting is not None:
        return c.total_gy + top * painting.shape
    boost_target = PLAN_STRATEGIES[name][1]
    if boost_target is None:
        return np.full(gtv.shape, c.total_gy)
    return c.total_gy + top * images.masks.get(boost_target, np.zeros_like(gtv)).astype(float)


def _tcp(dose_gtv: NDArray[np.float64], fractions: int, images: PatientImages, settings: PaintingSettings, voxel_cc: float) -> float:
    gtv = images.masks["GTV"]
    p = settings.tcp
    uptake = images.suv[gtv] if p.clonogens == "fdg" and images.suv is not None else np.ones(int(gtv.sum()))
    omf = oxygen_modification(po2_from_tbr(images.tbr[gtv], p), p.oer_m, p.oer_k_mmhg) if images.tbr is not None else None
    return tcp(dose_gtv, fractions, clonogens(uptake, voxel_cc, p.clonogen_density_per_cc), p, omf)


def _painted_maps(settings: PaintingSettings, images: PatientImages, flags: list[str]) -> dict[str, PaintingMap]:
    gtv = images.masks["GTV"]
    out = {}
    for s in settings.strategies:
        image = images.suv if s.image == "fdg_suv" else images.tbr
        if image is None:
            flags.append(f"{s.name}: no {'FDG-PET' if s.image == 'fdg_suv' else 'HX4 TBR (' + settings.hx4_session + ')'} on the planning grid: strategy not evaluated")
            continue
        out[s.name] = strategy_map(s, image, gtv)
        if not np.any(out[s.name].shape > 0):
            flags.append(f"{s.name}: no GTV voxel above the painting low level {out[s.name].i_low:.3g}: the painted component is empty")
    return out


def strategies_patient(patient_dir: str | Path, protocol_path: str | Path, painting_path: str | Path, *,
                       settings: PlanningSettings | None = None, patient_id: str | None = None) -> pd.DataFrame:
    """Run the strategies stage for one patient; returns the strategies table (also written)."""
    started = time.perf_counter()
    patient_dir = Path(patient_dir)
    patient = patient_id or patient_dir.name
    settings = settings or PlanningSettings()
    protocol = load_protocol(protocol_path)
    painting = PaintingSettings.load(painting_path)
    if "boost" not in protocol:
        raise ConfigError(protocol_path, "the strategies stage needs a protocol with a 'boost' section (base prescription, boost ceiling)", "boost")
    plan_dir = patient_dir / "plan"
    _require(patient, plan_dir / "plan.json", "the plan stage output", "run `isotox plan` for this patient first")
    structures = {c["structure"] for c in protocol["constraints"]} | {m["structure"] for m in protocol.get("ntcp", {}).values()}
    images = _read_images(patient, patient_dir, structures | {"BODY", "GTV", "GTV_SUV50", "PTV", "LUNGS_MINUS_GTV"}, painting.hx4_session)
    for name in ("BODY", "GTV", "PTV"):
        if name not in images.masks or not images.masks[name].any():
            raise InputDataError(patient, patient_dir / "segment" / "masks" / f"{name}.nii.gz", f"structure {name} is missing or empty",
                                 "check the segmentation stage (segment.json flags)")
    flags: list[str] = []
    ct_grid = ImageGrid.from_sitk(images.ct)
    units = {}
    for unit in ("base", "boost_A", "boost_B"):
        path = _require(patient, plan_dir / "dose" / f"{unit}_unit.nii.gz", f"the plan stage's {unit} unit plan", "re-run the plan stage with a boost protocol")
        units[unit] = read_image(path)
    dose_grid = ImageGrid.from_sitk(units["base"])

    # painted components on the plan stage's context (same dose grid, organ rows and beam set)
    model = settings.beam_model()
    constrained = [images.masks[c["structure"]] for c in protocol["constraints"] if c["structure"] in images.masks]
    context = PlanningContext.build(images.ct, images.masks["BODY"], constrained, [images.masks["PTV"]], settings, model)
    if context.dose_grid.shape != dose_grid.shape or not np.allclose(context.dose_grid.origin, dose_grid.origin, atol=1e-3):
        raise InputDataError(patient, plan_dir / "dose" / "base_unit.nii.gz", "the plan stage's dose grid differs from this configuration's",
                             "re-run the plan stage with the same planning settings")
    maps = _painted_maps(painting, images, flags)
    if images.tbr is None:
        flags.append(f"no HX4 TBR ({painting.hx4_session}): TCP computed for oxic tumour everywhere")
    t0 = time.perf_counter()
    sampled = sorted((structures | {"GTV", "LUNGS_MINUS_GTV"}) & set(images.masks))
    planner = MapPlanner.build(context, images.masks["GTV"], images.masks["PTV"], painting.beamlet_mm, painting.organ_weight, painting.spill_weight,
                               evaluated=[images.masks[n] for n in sampled] + [images.masks["PTV"]])
    painted: dict[str, PaintedPlan] = planner.plans({n: shape_on_dose_grid(context, m.shape) for n, m in maps.items()})
    painting_seconds = time.perf_counter() - t0

    # one set of sample points, every component's dose on it
    component_names = ["boost_A", "boost_B", *painted]
    component_doses = [array(units[u]).astype(float) for u in ("base", "boost_A", "boost_B")] + [p.dose.astype(float) for p in painted.values()]
    doses = [(d, dose_grid) for d in component_doses]
    samples = {n: sample_structure(n, images.masks[n], ct_grid, doses, tuple(settings.supersample)) for n in sampled}

    n = int(protocol["fractionation"]["fractions"])
    base_total = float(protocol["boost"]["base_total_gy"])
    ceiling = boost_ceiling_gy(protocol)
    step = painting.escalation_step_gy
    by_name = {s.name: s for s in painting.strategies}
    rows, detail, qvh_curves, total_doses, dose_maps = [], {}, {}, {}, {}
    ct_reference = images.ct
    gtv = images.masks["GTV"]
    voxel_cc = float(np.prod(ct_grid.spacing)) / 1000.0
    order = list(PLAN_STRATEGIES) + [s.name for s in painting.strategies]
    for name in order:
        if name in PLAN_STRATEGIES:
            unit = PLAN_STRATEGIES[name][0]
            component = None if unit is None else 1 + component_names.index(unit)
            top_gy = ceiling
            pmap = None
        elif name in painted:
            component = 1 + component_names.index(name)
            s = by_name[name]
            top_gy = s.max_total_gy or (base_total * (1 + s.boost_percent / 100.0) if s.kind == "subvolume" else ceiling)
            top_gy = min(top_gy, ceiling)
            pmap = maps[name]
            if not np.any(pmap.shape > 0):
                component = None  # nothing to paint: the strategy is the uniform plan
        else:
            rows.append({"strategy": name, "feasible": False, "note": "not evaluated: " + next((f for f in flags if f.startswith(name)), "")})
            continue
        esc = escalate(samples, protocol, component, base_total, n, max(top_gy - base_total, 0.0), step)
        if pmap is not None and component is None:
            esc.note = (esc.note + "; " if esc.note else "") + "nothing to paint (no GTV voxel above the low level): the uniform plan"
        view = component_view(samples, component if esc.with_component else None)
        figures = _dvh_figures(view, esc, protocol)
        row: dict[str, Any] = {"strategy": name, "feasible": esc.feasible, "limiting_constraint": esc.limiting, **figures,
                               "base_total_gy": esc.candidate.total_gy if esc.candidate else None,
                               "top_dose_gy": (esc.candidate.total_gy + esc.candidate.boost_increment_gy) if esc.candidate else None,
                               "fractions": esc.candidate.fractions if esc.candidate else None, "note": esc.note}
        if esc.candidate is not None:
            weights = esc.weights()
            index = [0] + ([component] if esc.with_component else [])
            total = sum(w * component_doses[i] for w, i in zip(weights, index))
            total_doses[name] = total.astype(np.float32)
            on_ct = array(resample_to(to_image(dose_grid, total.astype(np.float32)), ct_reference)).astype(float)
            prescribed = _prescribed_map(name, esc, pmap, images)
            row["q_factor"] = quality_factor(on_ct, prescribed, gtv)
            row["tcp"] = _tcp(on_ct[gtv], esc.candidate.fractions, images, painting, voxel_cc)
            qvh_curves[name] = qvh(on_ct, prescribed, gtv)
            dose_maps[name] = (on_ct, prescribed)
        rows.append(row)
        detail[name] = {"constraints": esc.values, "note": esc.note, **({"painted": painted[name].summary(), "i_low": maps[name].i_low,
                        "i_high": maps[name].i_high, "image_max": maps[name].image_max} if name in painted else {})}
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table.insert(0, "patient_id", patient)

    meta = json.loads((patient_dir / "ingest" / "metadata.json").read_text()) if (patient_dir / "ingest" / "metadata.json").exists() else {}
    with atomic_path(patient_dir / STAGE) as out:
        for sub in ("dose", "maps", "qc", "dicom"):
            (out / sub).mkdir(parents=True)
        table.to_csv(out / "strategies.tsv", sep="\t", index=False, float_format="%.5g")
        (pd.concat([c.assign(strategy=n) for n, c in qvh_curves.items()], ignore_index=True)[["strategy", "q", "volume_percent"]] if qvh_curves
         else pd.DataFrame(columns=["strategy", "q", "volume_percent"])).to_csv(out / "qvh.tsv", sep="\t", index=False, float_format="%.5g")
        for name, total in total_doses.items():
            sitk.WriteImage(to_image(dose_grid, total), str(out / "dose" / f"{name}.nii.gz"), useCompression=True)
        for name, plan in painted.items():
            sitk.WriteImage(to_image(dose_grid, plan.dose), str(out / "maps" / f"{name}_unit.nii.gz"), useCompression=True)
            if name not in dose_maps:
                continue
            prescribed = dose_maps[name][1]
            write_map_nifti(out / "maps" / f"{name}_prescription.nii.gz", ct_grid, prescribed)
            try:
                key = (patient, name, f"{float(table.loc[table.strategy == name, 'top_dose_gy'].iloc[0]):.3f}")
                detail[name]["export"] = {k: (str(Path(v).relative_to(out)) if k.startswith("rt") else v)
                                          for k, v in export_map(out / "dicom" / name, meta.get("planning_ct_dicom"), ct_grid, prescribed,
                                                                 maps[name].level_masks(gtv), key).items()}
            except ExportError as exc:
                detail[name]["export"] = {"error": str(exc)}
                flags.append(f"{name}: DICOM map export skipped: {exc}")
        if dose_maps:
            strategy_figure(array(images.ct).astype(float), {n: d for n, (d, _) in dose_maps.items()}, gtv,
                            qvh_curves,
                            out / "qc" / "strategies.png", f"{patient}: strategies at the isotoxic limit ({protocol['name']})")
        doc = {"patient_id": patient, "protocol": protocol["name"], "painting_file": str(painting_path), "hx4_session": painting.hx4_session,
               "base_total_gy": base_total, "ceiling_gy": ceiling, "escalation_step_gy": step, "tcp_parameters": painting.tcp.__dict__,
               "sources": painting.sources, "strategies": detail, "flags": flags}  # no timing: a rerun writes the same file (times go to the log)
        (out / "strategies.json").write_text(json.dumps(_json_ready(doc), indent=2) + "\n", encoding="utf-8")
    log.info("%s: %d strategies in %.1f s (painted plans: setup %.1f s, %d plans %.1f s)", patient, len(table), time.perf_counter() - started,
             planner.setup_seconds, len(painted), painting_seconds - planner.setup_seconds)
    return table
