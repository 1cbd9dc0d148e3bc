"""Planning time and memory for one patient: engine per unit plan, DVH sampling, the search.

Uses an existing patient results folder (``--patient-dir``, with ``ingest/`` and ``segment/``),
or generates, ingests, registers and segments a sample patient (default preset 'realistic',
~15 min). Then:

1. ``isotox plan`` as a child process (wall time, peak RSS alone), PET-boost protocol;
2. in-process, the parts: density + dose grid, each unit plan (7 beams + NNLS), sub-voxel
   sampling of every structure, and the search itself for each shipped protocol;
3. a brute-force check: every candidate of the scan re-evaluated from full dose volumes.
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
from isotox.planning.verify import reevaluate_scan
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


def _brute_force(patient: Path) -> None:
    protocol = load_protocol(REPO / "config" / "protocols" / "pet_boost.yaml")
    start = time.perf_counter()
    scan = reevaluate_scan(patient, protocol)
    worst = max(float(np.nanmax(np.abs(scan[f"{c['id']}_recomputed"].astype(float) - scan[c["id"]].astype(float)))) for c in protocol["constraints"])
    agree = int((scan["feasible_recomputed"] == (scan["feasible"].astype(str) == "True")).sum())
    print(f"brute force: {len(scan)} candidates x {len(protocol['constraints'])} constraints from full dose volumes in "
          f"{time.perf_counter() - start:.1f} s; feasibility agrees on {agree}/{len(scan)}, largest value difference {worst:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="realistic", choices=["small", "realistic"])
    parser.add_argument("--patient-dir", type=Path, help="an existing results/patients/PID folder with ingest/ and segment/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        patient = args.patient_dir or _prepare(Path(tmp), args.preset)
        seconds, peak = measure(isotox("plan", str(patient), "--protocol", str(REPO / "config" / "protocols" / "pet_boost.yaml"),
                                       "--config", str(REPO / "config" / "config.yaml"), "--arm", "B"))
        print(f"isotox plan (PET-boost, 3 unit plans, export): time_s={seconds:.1f} peak_rss_mb={peak:.0f}")
        _parts(patient)
        _brute_force(patient)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
