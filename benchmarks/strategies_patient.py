"""Dose-painting strategies time and memory for one patient: `isotox strategies` and its steps.

Needs a patient results folder whose plan stage ran with a boost protocol (``--patient-dir``,
with ``ingest/ register/ segment/ plan/``; e.g. a sample run's ``results/patients/SAMPLE001``).
Runs ``isotox strategies PATIENT_DIR --out TMP`` once as a child process (wall, CPU = user + sys,
peak RSS of that child alone, from ``os.wait4``) and prints the per-step times the command
reports (``isotox.painting.stage.StepTimes``: exclusive wall and CPU seconds per step, and the
child's peak RSS when the step last ended):

  read (images, unit plans), setup (density and dose grid of the plan stage's context), maps
  (prescription maps), optimisation (GTV beamlet matrices, factorisation, NNLS per painted map),
  sampling (sub-voxel DVH samples of every component), search (isotoxic escalation of every
  strategy), evaluation (DVH figures, dose on the CT grid and Q at each isotoxic point),
  equal_toxicity (common level, bisection, the constraint check, DVH figures and Q at it), tcp
  (every TCP evaluation: isotoxic points, equal-toxicity points and their scans), figures (the
  per-patient PNG), write (NIfTI, DICOM map export, TSV/JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _child import REPO, isotox, run_measured

STEPS = ("read", "setup", "maps", "optimisation", "sampling", "search", "evaluation", "equal_toxicity", "tcp", "figures", "write")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patient-dir", type=Path, required=True, help="results/patients/PID with ingest/ register/ segment/ plan/")
    parser.add_argument("--protocol", default=str(REPO / "config" / "protocols" / "pet_boost.yaml"))
    parser.add_argument("--painting", default=str(REPO / "config" / "painting.yaml"))
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"), help="config whose 'planning' section the plan stage used")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out, log = Path(tmp) / "strategies", Path(tmp) / "child.log"
        stdout = Path(tmp) / "stdout.json"
        command = isotox("strategies", str(args.patient_dir), "--out", str(out), "--protocol", args.protocol, "--painting", args.painting,
                         "--config", args.config)
        load = os.getloadavg()[0]
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        # stdout (the JSON summary) and stderr (the log) go to one file; the JSON is the last '{'-started block
        m = run_measured(command, log=log)
        text = log.read_text()
        stdout.write_text(text[text.rindex("\n{") + 1:] if "\n{" in text else text[text.index("{"):])
        summary = json.loads(stdout.read_text())
    print(f"isotox strategies {args.patient_dir.name} ({started}, load average {load:.1f}): wall {m.wall_s:.1f} s, "
          f"CPU {m.cpu_s:.1f} s (user {m.user_s:.1f}, sys {m.sys_s:.1f}), peak RSS {m.peak_mb:.0f} MB")
    print(f"{'step':<16}{'wall s':>9}{'CPU s':>9}{'calls':>7}{'peak RSS MB':>13}")
    seconds = summary["seconds"]
    for step in [s for s in STEPS if s in seconds] + [s for s in seconds if s not in STEPS]:
        r = seconds[step]
        print(f"{step:<16}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{int(r['calls']):>7}{r['peak_rss_mb']:>13.0f}")
    total_cpu = sum(r["cpu_s"] for r in seconds.values())
    print(f"{'sum of steps':<16}{sum(r['wall_s'] for r in seconds.values()):>9.2f}{total_cpu:>9.2f}"
          f"   (the rest of the child's CPU: interpreter start and imports, {m.cpu_s - total_cpu:.1f} s)")
    for row in summary["strategies"]:
        print(f"  {row['strategy']:<20} limit {row.get('limiting_constraint') or '-':<22} TCP {row.get('tcp')}  "
              f"equal toxicity: {row.get('eqtox_status')}, TCP {row.get('eqtox_tcp')}")


if __name__ == "__main__":
    main()
