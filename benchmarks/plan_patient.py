"""Planning time and memory for one patient: engine per unit plan, DVH sampling, the search.

Uses an existing patient results folder (``--patient-dir``, with ``ingest/`` and ``segment/``),
or generates, ingests, registers and segments a sample patient (default preset 'realistic',
~15 min). Then:

1. ``isotox plan`` as a child process (wall time, peak RSS alone), PET-boost protocol;
2. in-process, the parts: density + dose grid, each unit plan (7 beams + NNLS), sub-voxel
   sampling of every structure, and the search itself for each shipped protocol;
3. the independent audit (``isotox.planning.audit``): every candidate of the scan re-scored by a
   separate DVH implementation; its time and the largest difference per constraint.

``--synthetic-search``: only the search, on realistic-size synthetic unit doses (seconds, no patient).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _child import REPO, generate_patient, isotox, measure

from isotox.dose.dvh import sample_structure
from isotox.images import read_image
from isotox.planning.prescription import prescribe
from isotox.planning.settings import PlanningSettings
from isotox.planning.stage import ORGANS, TARGETS, _read_masks
from isotox.planning.unit_plans import PlanningContext, engine_plan
from isotox.planning.audit import audit_plan, summary
from isotox.settings import load_protocol

PROTOCOLS = sorted((REPO / "config" / "protocols").glob("*.yaml"))


def _prepare(tmp: Path, preset: str) -> Path:
    seconds = generate_patient(tmp / "P", preset)
    print(f"generated preset={preset} in {seconds:.1f} s")
    patient = tmp / "out" / "P"
    config = str(REPO / "config" / "config.yaml")
    truth = json.loads((tmp / "P" / "ground_truth.json").read_text())
    for args in (("ingest", str(tmp / "P" / "dicom"), str(patient), "--roi-names", str(REPO / "config" / "roi_names.yaml")),
                 ("register", str(patient), "--config", config, "--threads", "2"),
                 ("segment", str(patient), "--histology", truth["histology"], "--config", config)):
        seconds, peak = measure(isotox(*args))
        print(f"isotox {args[0]}: time_s={seconds:.1f} peak_rss_mb={peak:.0f}")
    return patient


def _parts(patient: Path) -> None:
    settings = PlanningSettings()
    ct = read_image(patient / "ingest" / "planning_ct.nii.gz")
    print(f"planning CT {ct.GetSize()} voxels of {tuple(round(s, 2) for s in ct.GetSpacing())} mm")
    masks = _read_masks("bench", patient / "segment" / "masks", set(TARGETS) | set(ORGANS) | {"BODY"})
    start = time.perf_counter()
    model = settings.beam_model()
    print(f"commissioning the beam model: {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    context = PlanningContext.build(ct, masks["BODY"], [masks[n] for n in ("LUNGS_MINUS_GTV", "HEART", "ESOPHAGUS", "SPINAL_CORD") if n in masks],
                                    [masks["PTV"]], settings, model)
    print(f"density, dose grid {context.dose_grid.size} ({context.calc_mask.sum():,} body voxels): {time.perf_counter() - start:.1f} s")
    units = {}
    for name, target in (("base", "PTV"), ("boost_A", "PTV_BOOST_A"), ("boost_B", "PTV_BOOST_B")):
        units[name] = engine_plan(context, name, target, masks[target])
        w = units[name].weights
        print(f"engine {name} ({target}, {len(settings.angles())} beams, {settings.weights} weights by NNLS): {units[name].seconds:.1f} s; "
              f"D95 {100 * w.d95:.1f} %, Dmax {100 * w.dmax:.1f} %")
    one_weight_per_field = dataclasses.replace(context, settings=dataclasses.replace(settings, weights="beam"))
    crt = engine_plan(one_weight_per_field, "base", "PTV", masks["PTV"])
    print(f"engine base with one weight per field (planning.weights: beam): {crt.seconds:.1f} s; "
          f"D95 {100 * crt.weights.d95:.1f} %, Dmax {100 * crt.weights.dmax:.1f} %")
    doses = [(units[p].dose, context.dose_grid) for p in ("base", "boost_A", "boost_B")]
    samples, times = {}, {}
    for name, mask in masks.items():
        if name == "BODY":
            continue
        start = time.perf_counter()
        samples[name] = sample_structure(name, mask, context.ct_grid, doses, tuple(settings.supersample))
        times[name] = time.perf_counter() - start
    for name in ("PTV", "LUNGS_MINUS_GTV", "HEART", "SPINAL_CORD"):
        if name in samples:
            print(f"DVH sampling {name} ({samples[name].volume_cc.sum():.0f} cc, {samples[name].volume_cc.size:,} samples x 3 plans): {times[name]:.2f} s")
    for path in PROTOCOLS:
        protocol = load_protocol(path)
        start = time.perf_counter()
        result = prescribe(samples, protocol, "B")
        seconds = time.perf_counter() - start
        print(f"search {protocol['name']}: {len(result.scan)} candidates in {seconds:.2f} s -> "
              f"{result.result['total_gy']} Gy / {result.result['fractions']} fx, limiting {result.result['limiting_constraints']}")


def _audit(patient: Path) -> None:
    protocol = load_protocol(REPO / "config" / "protocols" / "pet_boost.yaml")
    plan = json.loads((patient / "plan" / "plan.json").read_text())
    start = time.perf_counter()
    table = audit_plan(patient / "plan", patient / "segment" / "masks", protocol)
    seconds = time.perf_counter() - start
    result = summary(table, plan["boost_total_gy"] or plan["prescribed_dose_gy"])
    candidates = table["candidate"].nunique() if len(table) else 0
    print(f"independent audit: {candidates} candidates x {len(protocol['constraints'])} constraints in {seconds:.1f} s; "
          f"passed {result['passed']}, feasibility agrees {result['feasibility_agrees']}, same prescription {result['chosen_agrees']}")
    for cid, worst in result["worst"].items():
        print(f"  {cid}: largest |isotox - independent| {abs(worst['difference']):.4g} (tolerance {worst['tolerance']:.3g}) at {worst['target_gy']:g} Gy")


#: sub-voxel sample counts of a realistic patient's structures (0.98 x 0.98 x 3 mm CT, 2 x 2 x 2 samples)
REALISTIC_SAMPLES = {"LUNGS_MINUS_GTV": 8_400_000, "HEART": 1_700_000, "ESOPHAGUS": 110_000, "SPINAL_CORD": 150_000, "PTV": 700_000}


def synthetic_search(seed: int = 0) -> None:
    """The PET-boost search on realistic-size synthetic unit doses (no patient needed): the fast
    evaluation, and the old one (a sorted ``Dvh`` per structure and candidate, as before issue 16)
    timed on a few candidates and scaled to the number of evaluations it made."""
    from isotox.dose.search import constraint_dvh
    from isotox.dose.dvh import StructureSamples

    rng = np.random.default_rng(seed)
    cc = 0.98 * 0.98 * 3.0 / 8 / 1000.0
    samples = {}
    for name, n in REALISTIC_SAMPLES.items():
        base = rng.beta(0.6, 2.5, n) * {"PTV": 1.05, "SPINAL_CORD": 0.55, "ESOPHAGUS": 0.8}.get(name, 0.9)  # organs below their limits at 66 Gy
        samples[name] = StructureSamples(name, [base, 0.3 * rng.uniform(0, 1, n) * base, 0.2 * rng.uniform(0, 1, n) * base], np.full(n, cc), 0.0)
    protocol = load_protocol(REPO / "config" / "protocols" / "pet_boost.yaml")
    start, cpu = time.perf_counter(), time.process_time()
    result = prescribe(samples, protocol, "B")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"search (PET-boost, {sum(REALISTIC_SAMPLES.values()):,} samples x 3 plans, lungs {REALISTIC_SAMPLES['LUNGS_MINUS_GTV']:,}): "
          f"{len(result.scan)} candidates in the scan, {wall:.2f} s wall, {cpu:.2f} s CPU -> {result.result['boost_total_gy']} Gy boost, "
          f"stopped by {result.result.get('boost_stopped_by')}")
    # the old evaluation: one sorted DVH per constrained structure and candidate
    view = {n: StructureSamples(n, [s.doses[0], s.doses[2]], s.volume_cc, 0.0) for n, s in samples.items()}
    cands = list(result.scan.itertuples())[-2:]
    start = time.process_time()
    for c in cands:
        for name in {k["structure"] for k in protocol["constraints"]}:
            dvh = view[name].dvh((c.total_gy, c.boost_increment_gy) if c.boost_increment_gy else (c.total_gy,))
            for k in protocol["constraints"]:
                if k["structure"] == name:
                    constraint_dvh(dvh, k, c.fractions).metric(k["metric"])
    per_candidate = (time.process_time() - start) / len(cands)
    # before: pet_boost_search for the shown arm, once per arm again for escalation_by_arm, then the scan table
    evaluations = 2 * len(result.scan) + len(result.scan) - 1
    print(f"old evaluation (sorted DVH per structure and candidate): {per_candidate:.2f} s CPU per candidate, "
          f"~{per_candidate * evaluations:.0f} s CPU for the ~{evaluations} evaluations the old rule made")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="realistic", choices=["small", "realistic"])
    parser.add_argument("--patient-dir", type=Path, help="an existing results/patients/PID folder with ingest/ and segment/")
    parser.add_argument("--synthetic-search", action="store_true", help="only the search, on realistic-size synthetic unit doses")
    args = parser.parse_args()
    if args.synthetic_search:
        synthetic_search()
        return
    with tempfile.TemporaryDirectory() as tmp:
        patient = args.patient_dir or _prepare(Path(tmp), args.preset)
        seconds, peak = measure(isotox("plan", str(patient), "--protocol", str(REPO / "config" / "protocols" / "pet_boost.yaml"),
                                       "--config", str(REPO / "config" / "config.yaml"), "--arm", "B"))
        print(f"isotox plan (PET-boost, 3 unit plans, export): time_s={seconds:.1f} peak_rss_mb={peak:.0f}")
        _parts(patient)
        _audit(patient)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
