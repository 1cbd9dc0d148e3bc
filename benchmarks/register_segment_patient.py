"""Registration + segmentation time and peak memory for one patient, with accuracy vs the truth.

Generates and ingests a sample patient (default preset 'realistic'), or uses an existing
patient results folder (``--patient-dir``, with ``ingest/`` inside, and ``--truth`` for the
sample's ground_truth.json). Then runs ``isotox register`` and ``isotox segment`` as child
processes (time and peak RSS of each alone) and prints the seconds per registration session
(from the stage's log), the registration error per session (global vs the pose: tumour centre + 200
points at 10 cm; tumour-focused at the true tumour centre) and the volumes against the truth. ``--repeat-register`` runs register a second time
with the same threads and reports whether every output file is byte-identical.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from _child import REPO, generate_patient, isotox, measure, run_measured

from isotox.registration.qc import registration_error_mm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="realistic", choices=["small", "realistic"])
    parser.add_argument("--patient-dir", type=Path, help="an existing results/patients/PID folder with ingest/")
    parser.add_argument("--truth", type=Path, help="the sample patient's ground_truth.json (for the accuracy lines)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat-register", action="store_true", help="run register twice and compare the outputs byte by byte")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        patient, truth_file = args.patient_dir, args.truth
        if patient is None:
            seconds = generate_patient(Path(tmp) / "P", args.preset)
            print(f"generated preset={args.preset} in {seconds:.1f} s")
            patient, truth_file = Path(tmp) / "out" / "P", Path(tmp) / "P" / "ground_truth.json"
            seconds, peak = measure(isotox("ingest", str(Path(tmp) / "P" / "dicom"), str(patient), "--roi-names", str(REPO / "config" / "roi_names.yaml")))
            print(f"isotox ingest: time_s={seconds:.1f} peak_rss_mb={peak:.0f}")
        truth = json.loads(truth_file.read_text()) if truth_file else None
        config = str(REPO / "config" / "config.yaml")
        log = Path(tmp) / "register.log"
        m = run_measured(isotox("register", str(patient), "--config", config, "--threads", str(args.threads)), log=log)
        print(f"isotox register ({args.threads} threads): time_s={m.wall_s:.1f} cpu_s={m.cpu_s:.1f} peak_rss_mb={m.peak_mb:.0f}")
        for session, secs in re.findall(r"(\w+) registered in ([0-9.]+) s", log.read_text()):
            print(f"  register {session}: time_s={secs}")
        if args.repeat_register:
            first = {p.relative_to(patient / "register"): p.read_bytes() for p in sorted((patient / "register").rglob("*")) if p.is_file()}
            shutil.rmtree(patient / "register")
            run_measured(isotox("register", str(patient), "--config", config, "--threads", str(args.threads)))
            second = {p.relative_to(patient / "register"): p.read_bytes() for p in sorted((patient / "register").rglob("*")) if p.is_file()}
            differ = sorted(str(k) for k in first.keys() | second.keys() if first.get(k) != second.get(k))
            print(f"register repeated: {len(first)} files, byte-identical: {not differ}" + (f" (differ: {', '.join(differ)})" if differ else ""))
        histology = truth["histology"] if truth else "nsclc_nos"
        seconds, peak = measure(isotox("segment", str(patient), "--histology", histology, "--config", config))
        print(f"isotox segment: time_s={seconds:.1f} peak_rss_mb={peak:.0f}")
        if truth is None:
            return
        for session in ("fdg", "hx4_2h", "hx4_4h", "dce"):
            s = truth["perfusion"] if session == "dce" else truth["sessions"][session]
            bony = sitk.ReadTransform(str(patient / "register" / f"{session}_global.tfm"))
            tumour = sitk.ReadTransform(str(patient / "register" / f"{session}.tfm"))
            at_tumour = np.linalg.norm(np.asarray(tumour.TransformPoint(tuple(truth["tumour"]["centre_mm"]))) - np.asarray(s["tumour_centre_session_mm"]))
            print(f"registration error {session}: global vs pose (10 cm sphere) {registration_error_mm(bony, s['planning_to_session']['affine'], truth['tumour']['centre_mm']):.2f} mm, "
                  f"tumour-focused at the tumour {at_tumour:.2f} mm (breathing shift {s['breathing']['tumour_shift_magnitude_mm']:.1f} mm)")
        figures = json.loads((patient / "segment" / "segment.json").read_text())["figures"]
        t = truth["tumour"]
        for label, got, want in (("GTV_PET40 vs true >=40% uptake", figures["gtv_pet40_cc"], t.get("pet40_volume_cc", np.nan)),
                                 ("boost GTV_SUV50 vs true >=50% uptake", figures["gtv_suv50_cc"], t["boost_volume_cc"]),
                                 ("hypoxic 2h vs true", figures.get("hx4_2h_hv_cc", np.nan), t["hypoxic_volume_cc"]),
                                 ("hypoxic 4h vs true", figures.get("hx4_4h_hv_cc", np.nan), t["hypoxic_volume_cc"])):
            print(f"{label}: {got:.2f} cc vs {want:.2f} cc")


if __name__ == "__main__":
    main()
