"""The strategies stage for one patient: ``PATIENT_DIR/{ingest,register,segment,plan}`` ->
``PATIENT_DIR/strategies``. What would each strategy give at the protocol's isotoxic limit?

Strategies (rows of ``strategies.tsv``, in this order): ``uniform_66`` (the base PTV plan at the
protocol's base prescription, no boost), ``arm_A_whole_tumour`` and ``arm_B_suv50`` (the plan
stage's boost plans), then the painted strategies of ``config/painting.yaml`` (``dpbn_fdg``,
``dpbn_hx4``, ``hypoxia_boost``, ...). Every escalated strategy is base x D_low + increment x its
component, the increment raised by the exact isotoxic search until the first constraint binds
(or the strategy's ceiling). The unit plans of the plan stage are reused, not recomputed.

Equal toxicity (``isotox.painting.equal_toxicity``): the strategies stop at different toxicities
(most at their ceiling), so each escalated strategy is also scaled back to the patient's common
level of one toxicity measure (default the mean lung dose), the lowest of the escalated strategies'
values at their own limit; the ``eqtox_*`` columns give it there. ``uniform_66`` is the reference
(no escalation, below the level); ``eqtox_tcp_gain`` = ``eqtox_tcp`` - TCP(uniform_66).

Writes (all or nothing, into ``out_dir``, default PATIENT_DIR/strategies): ``strategies.tsv``;
``strategies.json`` (settings, sources, per-strategy detail with the equal-toxicity point, its
constraint values and a TCP scan along the component's scale; no timing, so a rerun writes the
same file); ``qvh.tsv``; ``dose/{strategy}.nii.gz`` (the delivered total dose, dose grid) and
``dose/{strategy}_equal_toxicity.nii.gz`` (at the common level);
``maps/{strategy}_prescription.nii.gz`` (the prescription map at the chosen top dose, planning CT
grid, Gy) and ``maps/{strategy}_unit.nii.gz`` (the painted component, computed on the structures
whose DVHs are read and 0 elsewhere); ``dicom/{strategy}/RD_map.dcm``
+ ``RS_levels.dcm`` for painted strategies; ``qc/strategies.png``.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from isotox.dose.search import Candidate, evaluate
from isotox.errors import ConfigError, InputDataError
from isotox.geometry import ImageGrid
from isotox.images import array, read_image, resample_to
from isotox.painting.equal_toxicity import INCREMENT_TOLERANCE_GY, common_level, measure_function, scale_to_level
from isotox.painting.escalation import Escalation, component_view, escalate
from isotox.painting.export import ExportError, export_map, write_map_nifti
from isotox.painting.maps import PaintingMap, strategy_map
from isotox.painting.optimise import MapPlanner, PaintedPlan, shape_on_dose_grid
from isotox.painting.plots import strategy_figure
from isotox.painting.quality import quality_factor, qvh
from isotox.painting.settings import PaintingSettings
from isotox.painting.tcp import clonogens, oxygen_modification, po2_from_tbr, tcp
from isotox.planning.settings import PlanningSettings
from isotox.planning.stage import json_ready  # numpy/NaN -> JSON, as plan.json
from isotox.planning.unit_plans import PlanningContext
from isotox.settings import load_protocol
from isotox.settings.protocol import boost_ceiling_gy

log = logging.getLogger(__name__)
STAGE = "strategies"
COLUMNS = ["strategy", "feasible", "limiting_constraint", "gtv_mean_gy", "gtv_d98_gy", "gtv_d2_gy", "q_factor", "tcp",
           "ntcp_pneumonitis", "ntcp_oesophagitis", "mld_gy", "lung_v20_percent",
           "base_total_gy", "top_dose_gy", "fractions", "note"]
#: the same strategies at the patient's common toxicity level (``isotox.painting.equal_toxicity``)
EQUAL_TOXICITY_COLUMNS = ["eqtox_status", "eqtox_measure", "eqtox_level", "eqtox_top_dose_gy", "eqtox_gtv_mean_gy", "eqtox_gtv_d98_gy",
                          "eqtox_gtv_d2_gy", "eqtox_q_factor", "eqtox_tcp", "eqtox_tcp_gain", "eqtox_ntcp_pneumonitis", "eqtox_ntcp_oesophagitis",
                          "eqtox_mld_gy", "eqtox_lung_v20_percent", "eqtox_constraints_met"]
COLUMNS = COLUMNS + EQUAL_TOXICITY_COLUMNS
EQUAL_TOXICITY_SUFFIX = "_equal_toxicity"
REFERENCE = "uniform_66"
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


def _weights(candidate: Candidate | None, with_component: bool) -> tuple[float, ...]:
    if candidate is None:
        return ()
    return (candidate.total_gy, candidate.boost_increment_gy) if with_component else (candidate.total_gy,)


def _dvh_figures(samples: dict[str, StructureSamples], candidate: Candidate | None, with_component: bool,
                 protocol: dict[str, Any]) -> dict[str, float | None]:
    weights = _weights(candidate, with_component)
    if not weights or candidate is None:
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
            out[column] = model_ntcp(dvh, model, candidate.fractions)
    return out


def _prescribed_map(name: str, candidate: Candidate | None, with_component: bool, painting: PaintingMap | None,
                    images: PatientImages) -> NDArray[np.float64] | None:
    """What the strategy prescribes per GTV voxel at a candidate (for Q)."""
    c = candidate
    if c is None:
        return None
    top = c.boost_increment_gy if with_component else 0.0
    gtv = images.masks["GTV"]
    if painting is not None:
        return c.total_gy + top * painting.shape
    boost_target = PLAN_STRATEGIES[name][1]
    if boost_target is None:
        return np.full(gtv.shape, c.total_gy)
    return c.total_gy + top * images.masks.get(boost_target, np.zeros_like(gtv)).astype(float)


def _tcp_model(images: PatientImages, settings: PaintingSettings, voxel_cc: float) -> Callable[[NDArray[np.float64], int], float]:
    """TCP of GTV voxel doses (planning CT grid) in n fractions: clonogens and oxygen effect fixed once."""
    gtv = images.masks["GTV"]
    p = settings.tcp
    uptake = images.suv[gtv] if p.clonogens == "fdg" and images.suv is not None else np.ones(int(gtv.sum()))
    omf = oxygen_modification(po2_from_tbr(images.tbr[gtv], p), p.oer_m, p.oer_k_mmhg) if images.tbr is not None else None
    n_clonogens = clonogens(uptake, voxel_cc, p.clonogen_density_per_cc)
    return lambda dose_gtv, fractions: tcp(dose_gtv, fractions, n_clonogens, p, omf)


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


class StepTimes:
    """Wall and CPU seconds per step of one run, exclusive (a step nested in another is charged to
    itself only) and summed over its calls, and the process's peak RSS after each step. For the log,
    the CLI and ``benchmarks/strategies_patient.py``; never written to ``strategies.json`` (a rerun
    must write the same file)."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}
        self._stack: list[list[Any]] = []  # [name, wall start, cpu start] of the open steps

    def _charge(self, frame: list[Any], wall: float, cpu: float) -> None:
        record = self.steps.setdefault(frame[0], {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0})
        record["wall_s"] += wall - frame[1]
        record["cpu_s"] += cpu - frame[2]
        frame[1], frame[2] = wall, cpu

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        if self._stack:
            self._charge(self._stack[-1], wall, cpu)
        self._stack.append([name, wall, cpu])
        try:
            yield
        finally:
            wall, cpu = time.perf_counter(), time.process_time()
            frame = self._stack.pop()
            self._charge(frame, wall, cpu)
            record = self.steps[name]
            record["calls"] += 1
            record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            if self._stack:
                self._stack[-1][1], self._stack[-1][2] = wall, cpu

    def summary(self) -> dict[str, dict[str, float]]:
        return {k: {m: round(v, 3) for m, v in r.items()} for k, r in self.steps.items()}


@dataclass(eq=False)
class _Strategy:
    """One row's inputs: its component (index into the samples' doses, None: base alone) and map."""

    name: str
    component: int | None
    painting: PaintingMap | None
    escalation: Escalation


@dataclass
class _Evaluator:
    """A strategy's figures, Q and TCP at any candidate on the shared samples (one patient)."""

    samples: dict[str, StructureSamples]
    component_doses: list[NDArray[np.float64]]  # dose grid: [base, boost_A, boost_B, painted...]
    component_gtv: list[NDArray[np.float64]]  # the same on the planning CT grid, at the GTV voxels
    dose_grid: ImageGrid
    images: PatientImages
    protocol: dict[str, Any]
    tcp_of: Callable[[NDArray[np.float64], int], float]
    timer: StepTimes

    def weighted(self, arrays: list[NDArray[np.float64]], strategy: _Strategy, candidate: Candidate, with_component: bool) -> NDArray[np.float64]:
        index = [0] + ([strategy.component] if with_component and strategy.component is not None else [])
        return sum(w * arrays[i] for w, i in zip(_weights(candidate, with_component), index))  # type: ignore[return-value]

    def tcp(self, strategy: _Strategy, candidate: Candidate, with_component: bool) -> float:
        with self.timer.step("tcp"):
            return self.tcp_of(self.weighted(self.component_gtv, strategy, candidate, with_component), candidate.fractions)

    def point(self, strategy: _Strategy, candidate: Candidate, with_component: bool, step: str = "evaluation") -> dict[str, Any]:
        """DVH figures, Q, TCP, the dose on both grids and the prescribed map at ``candidate``."""
        with self.timer.step(step):
            view = component_view(self.samples, strategy.component if with_component else None)
            figures = _dvh_figures(view, candidate, with_component, self.protocol)
            total = self.weighted(self.component_doses, strategy, candidate, with_component)
            on_ct = array(resample_to(to_image(self.dose_grid, total.astype(np.float32)), self.images.ct)).astype(float)
            prescribed = _prescribed_map(strategy.name, candidate, with_component, strategy.painting, self.images)
            gtv = self.images.masks["GTV"]
            return {"figures": figures, "q_factor": quality_factor(on_ct, prescribed, gtv),
                    "tcp": self.tcp(strategy, candidate, with_component), "total": total, "on_ct": on_ct, "prescribed": prescribed}


def _equal_toxicity(strategies: list[_Strategy], evaluator: _Evaluator, measure: str, base_total: float, fractions: int,
                    rows: dict[str, dict[str, Any]], detail: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fill the eqtox_* columns: every escalated strategy scaled to the common level of ``measure``.
    Returns the equal-toxicity points (for the dose files)."""
    constraints = evaluator.protocol["constraints"]
    escalated = [s for s in strategies if s.component is not None and s.escalation.feasible and s.escalation.with_component
                 and s.escalation.candidate is not None]
    reference = next((s for s in strategies if s.name == REFERENCE), None)
    points: dict[str, dict[str, Any]] = {}
    escalated_names = {s.name for s in escalated}
    for s in strategies:
        rows[s.name]["eqtox_status"] = ("reference (no escalation)" if s.name == REFERENCE and s.escalation.feasible else
                                        "not escalated" if s.name not in escalated_names else "")
    if not escalated:  # e.g. the base prescription already breaks a constraint: nothing to compare at equal toxicity
        why = "no escalated strategy" + (" (the base prescription breaks a constraint)" if not any(s.escalation.feasible for s in strategies) else "")
        for s in strategies:
            rows[s.name]["eqtox_status"] = f"no common level: {why}"
        return points
    with evaluator.timer.step("equal_toxicity"):
        measures = {s.name: measure_function(component_view(evaluator.samples, s.component), evaluator.protocol, measure) for s in escalated}
        own = {s.name: measures[s.name](s.escalation.candidate) for s in escalated}  # type: ignore[arg-type]
        level, setter = common_level(own)
    for s in escalated:
        own_candidate = s.escalation.candidate
        assert own_candidate is not None
        with evaluator.timer.step("equal_toxicity"):
            at_level = scale_to_level(measures[s.name], base_total, fractions, own_candidate.boost_increment_gy, level)
            candidate = Candidate(base_total, fractions, at_level.increment_gy)
            checked = evaluate(component_view(evaluator.samples, s.component), constraints, candidate)
            point = evaluator.point(s, candidate, True, step="equal_toxicity")
        # TCP along the component's scale, from the base plan to the strategy's own limit (monotone check)
        scan = sorted({0.0, at_level.increment_gy, own_candidate.boost_increment_gy,
                       *(f * own_candidate.boost_increment_gy for f in (0.25, 0.5, 0.75))})
        with evaluator.timer.step("equal_toxicity"):
            scan_measure = [measures[s.name](Candidate(base_total, fractions, t)) for t in scan]
        scan_tcp = [evaluator.tcp(s, Candidate(base_total, fractions, t), True) for t in scan]
        points[s.name] = {"total": point["total"]}  # only the dose is written; the CT-grid arrays are dropped
        rows[s.name].update({f"eqtox_{k}": v for k, v in point["figures"].items()})
        rows[s.name].update(eqtox_status="sets the level" if s.name == setter else "at the level", eqtox_measure=measure,
                            eqtox_level=level, eqtox_top_dose_gy=base_total + at_level.increment_gy, eqtox_q_factor=point["q_factor"],
                            eqtox_tcp=point["tcp"], eqtox_constraints_met=checked.feasible)
        detail[s.name]["equal_toxicity"] = {"measure": measure, "level": level, "set_by": setter, "value": at_level.value,
                                            "own_limit_value": own[s.name], "boost_increment_gy": at_level.increment_gy,
                                            "own_boost_increment_gy": own_candidate.boost_increment_gy, "bisection_steps": at_level.iterations,
                                            "constraints": checked.values, "violated": checked.violated,
                                            "scan": {"boost_increment_gy": scan, measure: scan_measure, "tcp": scan_tcp}}
    if reference is not None and reference.escalation.candidate is not None:
        ref = rows[reference.name]
        ref.update({f"eqtox_{k}": ref.get(k) for k in ("gtv_mean_gy", "gtv_d98_gy", "gtv_d2_gy", "q_factor", "tcp", "ntcp_pneumonitis",
                                                         "ntcp_oesophagitis", "mld_gy", "lung_v20_percent", "top_dose_gy")})
        ref.update(eqtox_measure=measure, eqtox_level=level, eqtox_constraints_met=reference.escalation.feasible)
        for s in strategies:
            if rows[s.name].get("eqtox_tcp") is not None and ref.get("tcp") is not None:
                rows[s.name]["eqtox_tcp_gain"] = rows[s.name]["eqtox_tcp"] - ref["tcp"]
    return points


def strategies_patient(patient_dir: str | Path, protocol_path: str | Path, painting_path: str | Path, *,
                       settings: PlanningSettings | None = None, patient_id: str | None = None, out_dir: str | Path | None = None,
                       timer: StepTimes | None = None) -> pd.DataFrame:
    """Run the strategies stage for one patient; returns the strategies table (also written to
    ``out_dir``, default PATIENT_DIR/strategies). ``timer``: per-step times (see ``StepTimes``)."""
    started = time.perf_counter()
    timer = timer or StepTimes()
    patient_dir = Path(patient_dir)
    out_dir = Path(out_dir) if out_dir is not None else patient_dir / STAGE
    patient = patient_id or patient_dir.name
    settings = settings or PlanningSettings()
    protocol = load_protocol(protocol_path)
    painting = PaintingSettings.load(painting_path)
    if "boost" not in protocol:
        raise ConfigError(protocol_path, "the strategies stage needs a protocol with a 'boost' section (base prescription, boost ceiling)", "boost")
    plan_dir = patient_dir / "plan"
    _require(patient, plan_dir / "plan.json", "the plan stage output", "run `isotox plan` for this patient first")
    structures = {c["structure"] for c in protocol["constraints"]} | {m["structure"] for m in protocol.get("ntcp", {}).values()}
    with timer.step("read"):
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
    with timer.step("setup"):
        model = settings.beam_model()
        constrained = [images.masks[c["structure"]] for c in protocol["constraints"] if c["structure"] in images.masks]
        context = PlanningContext.build(images.ct, images.masks["BODY"], constrained, [images.masks["PTV"]], settings, model)
    if context.dose_grid.shape != dose_grid.shape or not np.allclose(context.dose_grid.origin, dose_grid.origin, atol=1e-3):
        raise InputDataError(patient, plan_dir / "dose" / "base_unit.nii.gz", "the plan stage's dose grid differs from this configuration's",
                             "re-run the plan stage with the same planning settings")
    with timer.step("maps"):
        maps = _painted_maps(painting, images, flags)
    if images.tbr is None:
        flags.append(f"no HX4 TBR ({painting.hx4_session}): TCP computed for oxic tumour everywhere")
    sampled = sorted((structures | {"GTV", "LUNGS_MINUS_GTV"}) & set(images.masks))
    with timer.step("optimisation"):
        planner = MapPlanner.build(context, images.masks["GTV"], images.masks["PTV"], painting.beamlet_mm, painting.organ_weight, painting.spill_weight,
                                   evaluated=[images.masks[n] for n in sampled] + [images.masks["PTV"]])
        painted: dict[str, PaintedPlan] = planner.plans({n: shape_on_dose_grid(context, m.shape) for n, m in maps.items()})

    # one set of sample points, every component's dose on it
    gtv = images.masks["GTV"]
    with timer.step("sampling"):
        component_names = ["boost_A", "boost_B", *painted]
        component_doses = [array(units[u]).astype(float) for u in ("base", "boost_A", "boost_B")] + [p.dose.astype(float) for p in painted.values()]
        doses = [(d, dose_grid) for d in component_doses]
        samples = {n: sample_structure(n, images.masks[n], ct_grid, doses, tuple(settings.supersample)) for n in sampled}
        component_gtv = [array(resample_to(to_image(dose_grid, d.astype(np.float32)), images.ct)).astype(float)[gtv] for d in component_doses]

    n = int(protocol["fractionation"]["fractions"])
    base_total = float(protocol["boost"]["base_total_gy"])
    ceiling = boost_ceiling_gy(protocol)
    step = painting.escalation_step_gy
    by_name = {s.name: s for s in painting.strategies}
    voxel_cc = float(np.prod(ct_grid.spacing)) / 1000.0
    evaluator = _Evaluator(samples, component_doses, component_gtv, dose_grid, images, protocol, _tcp_model(images, painting, voxel_cc), timer)
    rows: dict[str, dict[str, Any]] = {}
    detail: dict[str, dict[str, Any]] = {}
    qvh_curves, total_doses, dose_maps = {}, {}, {}
    strategies: list[_Strategy] = []
    for name in list(PLAN_STRATEGIES) + [s.name for s in painting.strategies]:
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
            rows[name] = {"strategy": name, "feasible": False, "note": "not evaluated: " + next((f for f in flags if f.startswith(name)), "")}
            continue
        with timer.step("search"):
            esc = escalate(samples, protocol, component, base_total, n, max(top_gy - base_total, 0.0), step)
        if pmap is not None and component is None:
            esc.note = (esc.note + "; " if esc.note else "") + "nothing to paint (no GTV voxel above the low level): the uniform plan"
        strategy = _Strategy(name, component, pmap, esc)
        strategies.append(strategy)
        row: dict[str, Any] = {"strategy": name, "feasible": esc.feasible, "limiting_constraint": esc.limiting,
                               "base_total_gy": esc.candidate.total_gy if esc.candidate else None,
                               "top_dose_gy": (esc.candidate.total_gy + esc.candidate.boost_increment_gy) if esc.candidate else None,
                               "fractions": esc.candidate.fractions if esc.candidate else None, "note": esc.note}
        if esc.candidate is not None:
            point = evaluator.point(strategy, esc.candidate, esc.with_component)
            row.update(point["figures"], q_factor=point["q_factor"], tcp=point["tcp"])
            total_doses[name] = point["total"].astype(np.float32)
            qvh_curves[name] = qvh(point["on_ct"], point["prescribed"], gtv)
            dose_maps[name] = (point["on_ct"], point["prescribed"])
        rows[name] = row
        detail[name] = {"constraints": esc.values, "note": esc.note, **({"painted": painted[name].summary(), "i_low": maps[name].i_low,
                        "i_high": maps[name].i_high, "image_max": maps[name].image_max} if name in painted else {})}
    equal_points = _equal_toxicity(strategies, evaluator, painting.equal_toxicity_measure, base_total, n, rows, detail)
    order = list(PLAN_STRATEGIES) + [s.name for s in painting.strategies]
    table = pd.DataFrame([rows[name] for name in order if name in rows]).reindex(columns=COLUMNS)
    table.insert(0, "patient_id", patient)
    level = next((d["equal_toxicity"]["level"] for d in detail.values() if "equal_toxicity" in d), None)
    setter = next((d["equal_toxicity"]["set_by"] for d in detail.values() if "equal_toxicity" in d), None)

    meta = json.loads((patient_dir / "ingest" / "metadata.json").read_text()) if (patient_dir / "ingest" / "metadata.json").exists() else {}
    with timer.step("write"), atomic_path(out_dir) as out:
        for sub in ("dose", "maps", "qc", "dicom"):
            (out / sub).mkdir(parents=True)
        table.to_csv(out / "strategies.tsv", sep="\t", index=False, float_format="%.5g")
        (pd.concat([c.assign(strategy=n) for n, c in qvh_curves.items()], ignore_index=True)[["strategy", "q", "volume_percent"]] if qvh_curves
         else pd.DataFrame(columns=["strategy", "q", "volume_percent"])).to_csv(out / "qvh.tsv", sep="\t", index=False, float_format="%.5g")
        for name, total in total_doses.items():
            sitk.WriteImage(to_image(dose_grid, total), str(out / "dose" / f"{name}.nii.gz"), useCompression=True)
        for name, point in equal_points.items():
            sitk.WriteImage(to_image(dose_grid, point["total"].astype(np.float32)), str(out / "dose" / f"{name}{EQUAL_TOXICITY_SUFFIX}.nii.gz"),
                            useCompression=True)
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
            with timer.step("figures"):
                strategy_figure(array(images.ct).astype(float), {n: d for n, (d, _) in dose_maps.items()}, gtv,
                                qvh_curves,
                                out / "qc" / "strategies.png", f"{patient}: strategies at the isotoxic limit ({protocol['name']})")
        doc = {"patient_id": patient, "protocol": protocol["name"], "painting_file": str(painting_path), "hx4_session": painting.hx4_session,
               "base_total_gy": base_total, "ceiling_gy": ceiling, "escalation_step_gy": step, "tcp_parameters": painting.tcp.__dict__,
               "equal_toxicity": {"measure": painting.equal_toxicity_measure, "level": level, "set_by": setter,
                                  "tolerance_gy": INCREMENT_TOLERANCE_GY},
               "sources": painting.sources, "strategies": detail, "flags": flags}  # no timing: a rerun writes the same file (times go to the log)
        (out / "strategies.json").write_text(json.dumps(json_ready(doc), indent=2) + "\n", encoding="utf-8")
    log.info("%s: %d strategies in %.1f s (painted plans: setup %.1f s, %d plans %.1f s); steps %s", patient, len(table),
             time.perf_counter() - started, planner.setup_seconds, len(painted), timer.steps.get("optimisation", {}).get("wall_s", 0.0) - planner.setup_seconds,
             json.dumps(timer.summary()))
    return table
