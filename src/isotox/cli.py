"""Command-line entry point: ``isotox <command> ...``.

Each stage of the workflow is also a command, so one patient can be run or debugged without
Snakemake. Errors a user can cause are printed as one clear line (exit code 2), not a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from isotox import __version__
from isotox.errors import IsotoxError


def _cmd_sample_cohort(args: argparse.Namespace) -> int:
    from isotox.sample import write_sample_cohort

    summary = write_sample_cohort(args.outdir, args.patients, args.seed, args.preset, jobs=args.jobs)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from isotox.settings import RoiNameMap, load_protocol, read_cohort_sheet
    from isotox.settings.run_config import load_run_config

    kind = args.kind
    if kind == "protocol":
        load_protocol(args.file)
    elif kind == "cohort":
        read_cohort_sheet(args.file, check_dirs=True)  # here, unlike in a run, a missing DICOM folder fails the sheet
    elif kind == "roi_names":
        RoiNameMap.from_yaml(args.file)
    else:
        load_run_config(args.file)  # the schema, and the files the config names
    print(f"{args.file}: valid {kind}")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from isotox.ingest import ingest_patient

    meta = ingest_patient(args.dicom_dir, args.patient_dir, patient_id=args.patient_id, roi_names=_roi_names(args.roi_names),
                          series_roles=args.series_roles, irregular=args.irregular, accept_effective_dose=args.accept_effective_dose)
    print(json.dumps({"patient_id": meta["patient_id"], "roles": meta["roles"], "problems": meta["problems"], "warnings": meta["warnings"]}, indent=2))
    return 0


def _load_config(path: str | None) -> dict:
    """The config given with --config, else the defaults that ship with isotox (any folder works)."""
    from isotox.resources import CONFIG, default_file
    from isotox.settings import load_validated_yaml

    if path == "":
        return {}
    return load_validated_yaml(path if path is not None else default_file(CONFIG), "config")


def _protocol_path(given: str | None, config: dict, config_given: bool) -> str:
    """--protocol (a path or a shipped name), else the config's; the shipped PET-boost protocol by default."""
    from isotox.resources import resolve_protocol

    if given:
        return str(resolve_protocol(given))
    if config_given and config.get("protocol"):
        return str(resolve_protocol(config["protocol"]))
    return str(resolve_protocol("pet_boost"))


def _roi_names(path: str | None) -> str:
    from isotox.resources import ROI_NAMES, default_file

    return path if path is not None else str(default_file(ROI_NAMES))


def _config_section(path: str | None, section: str) -> dict:
    return dict(_load_config(path).get(section) or {})


def _cmd_register(args: argparse.Namespace) -> int:
    from isotox.registration.rigid import RegistrationSettings
    from isotox.registration.stage import register_patient

    settings = RegistrationSettings.from_config(_config_section(args.config, "registration"), threads=args.threads)
    summary = register_patient(args.patient_dir, settings, patient_id=args.patient_id)
    print(json.dumps({"patient_id": summary["patient_id"], "flagged": summary["flagged"],
                      "sessions": {s: r.get("status") for s, r in summary["sessions"].items()}}, indent=2))
    return 0


def parse_point(text: str | None) -> tuple[float, float, float] | None:
    """'x,y,z' in mm -> a tuple (None for empty)."""
    if text is None or not str(text).strip() or str(text) == "nan":
        return None
    values = [float(v) for v in str(text).split(",")]
    if len(values) != 3:
        raise ValueError(f"a point needs three comma-separated numbers, got {text!r}")
    return (values[0], values[1], values[2])


def _cmd_segment(args: argparse.Namespace) -> int:
    from isotox.segmentation.stage import SegmentationSettings, segment_patient
    from isotox.settings import load_protocol

    config = _load_config(args.config)
    protocol = load_protocol(_protocol_path(args.protocol, config, args.config is not None))
    settings = SegmentationSettings.from_config(config.get("segmentation"), protocol, args.histology)
    summary = segment_patient(args.patient_dir, settings, patient_id=args.patient_id, seed_point_mm=parse_point(args.seed_point))
    print(json.dumps({"patient_id": summary["patient_id"], "figures": summary["figures"], "flags": summary["flags"]}, indent=2, default=float))
    return 0


def _cmd_perfusion(args: argparse.Namespace) -> int:
    from isotox.perfusion.stage import PerfusionSettings, perfusion_patient

    settings = PerfusionSettings.from_config(_config_section(args.config, "perfusion"))
    summary = perfusion_patient(args.patient_dir, settings, patient_id=args.patient_id)
    print(json.dumps({k: summary[k] for k in ("patient_id", "aif", "fits", "flags")}, indent=2, default=float))
    return 0


def _cmd_outcomes(args: argparse.Namespace) -> int:
    from isotox.outcomes.tabulate import tabulate_outcomes
    from isotox.settings import load_protocol

    summary = tabulate_outcomes(args.clinical, args.out, load_protocol(_protocol_path(args.protocol, {}, False)), qol=args.qol, patients=args.patients)
    print(json.dumps(summary, indent=2, default=float))
    return 0


def _cmd_simon(args: argparse.Namespace) -> int:
    from isotox.outcomes.simon import evaluate, optimal_and_minimax, smallest_r

    optimal, minimax = optimal_and_minimax(args.p0, args.p1, args.alpha, args.power, n_max=args.n_max)
    result = {"optimal": optimal.as_dict(), "minimax": minimax.as_dict()}
    if args.r1 is not None and args.n1 is not None and args.n is not None:
        r = args.r if args.r is not None else smallest_r(args.r1, args.n1, args.n, args.p0, args.alpha)
        own = evaluate(args.r1, args.n1, r, args.n, args.p0, args.p1)
        result["given"] = {**own.as_dict(), "meets_alpha": own.alpha <= args.alpha, "meets_power": own.power >= args.power,
                           "is_optimal": (own.r1, own.n1, own.r, own.n) == (optimal.r1, optimal.n1, optimal.r, optimal.n)}
    print(json.dumps(result, indent=2))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from isotox.planning.settings import PlanningSettings
    from isotox.planning.stage import plan_patient

    config = _load_config(args.config)
    settings = PlanningSettings.from_config(config.get("planning"))
    if args.dose_source:
        settings.dose_source = args.dose_source
    protocol = _protocol_path(args.protocol, config, bool(args.config))
    doc = plan_patient(args.patient_dir, protocol, arm=args.arm, settings=settings, patient_id=args.patient_id)
    keys = ("patient_id", "protocol", "dose_source", "feasible", "prescribed_dose_gy", "fractions", "boost_feasible", "boost_total_gy",
            "limiting_constraints", "coverage", "dose_metrics", "radiobiology", "flags")
    print(json.dumps({k: doc.get(k) for k in keys}, indent=2, default=float))
    return 0


def _cmd_strategies(args: argparse.Namespace) -> int:
    from isotox.painting.stage import StepTimes, strategies_patient
    from isotox.planning.settings import PlanningSettings
    from isotox.resources import PAINTING, default_file

    config = _load_config(args.config)
    settings = PlanningSettings.from_config(config.get("planning"))  # the plan stage's settings: the same dose grid and beams
    protocol = _protocol_path(args.protocol, config, bool(args.config))
    painting = args.painting or (config.get("painting") if args.config and config.get("painting") else str(default_file(PAINTING)))
    timer = StepTimes()
    table = strategies_patient(args.patient_dir, protocol, painting, settings=settings, patient_id=args.patient_id, out_dir=args.out, timer=timer)
    keys = ["strategy", "feasible", "limiting_constraint", "tcp", "q_factor", "mld_gy", "eqtox_status", "eqtox_level", "eqtox_tcp", "eqtox_tcp_gain"]
    rows = json.loads(table[[k for k in keys if k in table]].to_json(orient="records"))  # NaN -> null
    print(json.dumps({"patient_id": str(table["patient_id"].iloc[0]), "out": str(args.out), "strategies": rows, "seconds": timer.summary()},
                     indent=2, default=float))
    return 0


def _single_threaded_blas() -> None:
    """One BLAS thread when numpy is not loaded yet: ``isotox dvh`` does no large matrix products,
    and OpenBLAS's idle worker threads spinning after the small ones cost ~0.1-0.2 s CPU per run.
    (An already loaded numpy, as in a test session, keeps its threads; no variable is set then.)"""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _import_pydicom_offline() -> None:
    """Import pydicom with ``requests`` and ``tqdm`` marked absent, when neither is loaded yet.

    Why: pydicom's test-data downloader imports ``requests`` when pydicom loads (0.15-0.2 s CPU,
    a sixth of ``isotox dvh``), and ``isotox dvh`` downloads nothing. pydicom treats them as not
    installed (its downloader would fall back to urllib); both can be imported normally afterwards."""
    if "pydicom" in sys.modules:
        return
    hidden = [name for name in ("requests", "tqdm") if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # None: 'import requests' raises ImportError
    try:
        import pydicom  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def _cmd_dvh(args: argparse.Namespace) -> int:
    _single_threaded_blas()
    _import_pydicom_offline()
    from isotox.dose.dvh import write_tsv
    from isotox.dose.rt_dvh import rt_dvh_table

    rows, notes = rt_dvh_table(args.rtstruct, args.rtdose, _roi_names(args.roi_names), args.roi)
    for note in notes:
        print(f"# {note}", file=sys.stderr)
    write_tsv(rows, sys.stdout)
    return 0


def _cmd_suv(args: argparse.Namespace) -> int:
    from isotox.suv_qa import suv_folder

    records = suv_folder(args.dicom_dir, args.out_dir, irregular=args.irregular)
    converted = [uid for uid, r in records.items() if "error" not in r]
    for uid, record in sorted(records.items()):
        print(f"{uid}\t" + (f"error: {record['error']}" if "error" in record else
                             f"SUVmax {record['suv_max']:.3f}, factor {record['factor'] if isinstance(record['factor'], float) else 'per slice'}, {record['slices']} slice(s)"))
    if not converted:
        print(f"isotox suv: error: no PET series could be converted (see {args.out_dir}/suv.json)", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isotox", description="NSCLC imaging to isotoxic RT prescriptions and trial outcomes.")
    parser.add_argument("--version", action="version", version=f"isotox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-cohort", help="write the deterministic synthetic sample cohort (DICOM + clinical TSV + ground truth)")
    p.add_argument("outdir", help="output folder (one sub-folder per patient, plus cohort/clinical/qol TSVs)")
    p.add_argument("--patients", type=int, default=12, help="number of patients (default 12, the first Simon stage)")
    p.add_argument("--seed", type=int, default=20240101, help="generator seed (same seed, same bytes)")
    p.add_argument("--preset", choices=["small", "realistic"], default="small", help="matrix sizes (default small)")
    p.add_argument("--jobs", type=int, default=1, help="patients generated in parallel")
    p.set_defaults(func=_cmd_sample_cohort)

    p = sub.add_parser("ingest", help="stage 1: index, classify and convert one patient's DICOM into PATIENT_DIR/ingest/")
    p.add_argument("dicom_dir", help="folder with all DICOM files of the patient (any nesting and names)")
    p.add_argument("patient_dir", help="the patient's results folder (results/patients/PID); ingest/ is written inside")
    p.add_argument("--patient-id", help="patient id for messages (default: the name of PATIENT_DIR)")
    p.add_argument("--roi-names", help="ROI name synonyms YAML (default: the map that ships with isotox)")
    p.add_argument("--series-roles", help="override roles: 'planning_ct=UID;fdg_pet=UID'")
    p.add_argument("--irregular", choices=["resample", "refuse"], default="resample",
                   help="missing slices, uneven spacing or gantry tilt: resample onto a regular grid (default) or refuse")
    p.add_argument("--accept-effective-dose", action="store_true", help="take a TPS RTDOSE of DoseType EFFECTIVE as the plan dose (refused by default)")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("suv", help="SUV QA: every PET series of a folder (no CT needed) -> OUT_DIR/<SeriesUID>.nii.gz + suv.json")
    p.add_argument("dicom_dir", help="folder with PET files (any nesting; one slice is a valid series)")
    p.add_argument("out_dir", help="output folder: one SUVbw NIfTI per convertible series, suv.json with every series' record or error")
    p.add_argument("--irregular", choices=["resample", "refuse"], default="resample", help="irregular slice stacks: resample (default) or refuse")
    p.set_defaults(func=_cmd_suv)

    p = sub.add_parser("register", help="stage 2: PET/CT and DCE-CT onto the planning CT; writes PATIENT_DIR/register/")
    p.add_argument("patient_dir", help="the patient's results folder, with ingest/ inside")
    p.add_argument("--config", help="config whose 'registration' section is used (default: the shipped defaults)")
    p.add_argument("--patient-id", help="patient id for messages (default: the name of PATIENT_DIR)")
    p.add_argument("--threads", type=int, default=1, help="threads for SimpleITK")
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("segment", help="stage 3: GTV_PET, boost and hypoxic volumes, CTV/PTV, organs at risk; writes PATIENT_DIR/segment/")
    p.add_argument("patient_dir", help="the patient's results folder, with ingest/ and register/ inside")
    p.add_argument("--histology", required=True, help="histology (selects the CTV margin of the protocol), e.g. adenocarcinoma")
    p.add_argument("--config", help="config whose 'segmentation' section is used (default: the shipped defaults)")
    p.add_argument("--protocol", help="protocol YAML, or the name of a shipped protocol (pet_boost, isotoxic_hypofractionated, ...); default: the config's")
    p.add_argument("--seed-point", help="x,y,z (planning-CT mm): search region when the RTSTRUCT has no GTV")
    p.add_argument("--patient-id", help="patient id for messages (default: the name of PATIENT_DIR)")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("perfusion", help="stage 4: DCE-CT AIF and tracer-kinetic maps; writes PATIENT_DIR/perfusion/")
    p.add_argument("patient_dir", help="the patient's results folder, with ingest/, register/ and segment/ inside")
    p.add_argument("--config", help="config whose 'perfusion' section is used (default: the shipped defaults)")
    p.add_argument("--patient-id", help="patient id for messages (default: the name of PATIENT_DIR)")
    p.set_defaults(func=_cmd_perfusion)

    p = sub.add_parser("outcomes", help="stage 6: endpoints, Kaplan-Meier, toxicity, Simon monitor, QoL for a cohort")
    p.add_argument("clinical", help="clinical TSV (one row per patient; see config/schemas/clinical.schema.yaml)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--qol", help="QoL TSV, long format: patient_id, timepoint, q1..q43")
    p.add_argument("--protocol", help="protocol YAML or shipped protocol name (endpoint definitions, Simon design; default pet_boost)")
    p.add_argument("--patients", help="per-patient imaging/dose table (TSV with patient_id), joined for toxicity and feasibility")
    p.set_defaults(func=_cmd_outcomes)

    p = sub.add_parser("simon", help="Simon two-stage optimal and minimax designs; evaluate a given rule")
    p.add_argument("--p0", type=float, required=True, help="unacceptable rate")
    p.add_argument("--p1", type=float, required=True, help="hoped-for rate")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--n-max", type=int, default=100, help="largest total size searched")
    p.add_argument("--r1", type=int, help="a given rule: stop after n1 if <= r1 responses")
    p.add_argument("--n1", type=int)
    p.add_argument("--r", type=int, help="final cut-off (default: the smallest keeping alpha)")
    p.add_argument("--n", type=int)
    p.set_defaults(func=_cmd_simon)

    p = sub.add_parser("dvh", help="DVH metrics of an RTSTRUCT's ROIs in an RTDOSE (tab-separated table on stdout)")
    p.add_argument("rtstruct")
    p.add_argument("rtdose")
    p.add_argument("--roi", action="append", help="only this ROI (clinic or canonical name; repeatable)")
    p.add_argument("--roi-names", help="ROI name synonyms YAML (default: the map that ships with isotox)")
    p.set_defaults(func=_cmd_dvh)

    p = sub.add_parser("plan", help="stage 5: unit plans, the protocol's isotoxic search, NTCP, DICOM export; writes PATIENT_DIR/plan/")
    p.add_argument("patient_dir", help="the patient's results folder, with ingest/ and segment/ inside")
    p.add_argument("--protocol", help="protocol YAML, or the name of a shipped protocol (pet_boost, isotoxic_hypofractionated, ...); default: the config's")
    p.add_argument("--arm", choices=["A", "B", "not_randomized"], help="recorded PET-boost allocation (A: whole GTV, B: 50 %% SUVmax volume, or not_randomized)")
    p.add_argument("--config", help="config whose 'planning' section is used (default: the shipped defaults; '' for built-in planning defaults)")
    p.add_argument("--dose-source", choices=["auto", "engine", "tps"], help="override planning.dose_source")
    p.add_argument("--patient-id", help="patient id for messages (default: the name of PATIENT_DIR)")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("strategies", help="dose painting: every strategy at its isotoxic limit and at equal toxicity; writes OUT")
    p.add_argument("patient_dir", help="the patient's results folder, with ingest/, register/, segment/ and plan/ (a boost protocol's unit plans)")
    p.add_argument("--out", required=True, help="output folder (written atomically; the workflow uses PATIENT_DIR/strategies)")
    p.add_argument("--protocol", help="protocol YAML with a 'boost' section, or a shipped protocol name; default: the config's, else pet_boost")
    p.add_argument("--painting", help="dose-painting strategies and TCP model YAML (default: the config's 'painting', else the shipped one)")
    p.add_argument("--config", help="config whose 'planning' section the plan stage used (default: the shipped defaults)")
    p.add_argument("--patient-id", help="patient id for messages (default: the name of PATIENT_DIR)")
    p.set_defaults(func=_cmd_strategies)

    p = sub.add_parser("validate", help="validate a config, cohort sheet, protocol or ROI-name file against its schema")
    p.add_argument("kind", choices=["config", "cohort", "protocol", "roi_names"])
    p.add_argument("file")
    p.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except (IsotoxError, ValueError) as exc:
        print(f"isotox {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
