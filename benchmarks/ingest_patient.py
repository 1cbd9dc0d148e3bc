"""Ingestion time and peak memory for one sample patient, and dcm2niix on the same series.

Generates the patient first (default preset 'realistic'; or pass --dicom-dir to use an existing
patient folder), then runs ``isotox ingest`` in a child process (peak RSS of that process alone)
and dcm2niix on every image series folder of the patient, for comparison. dcm2niix converts the
images only: it does no SUV conversion, role assignment or RTSTRUCT rasterisation.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _child import REPO, dcm2niix_binary, generate_patient, isotox, run_measured

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="realistic", choices=["small", "realistic"])
    parser.add_argument("--dicom-dir", type=Path, help="an existing patient DICOM folder (skips generation)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        dicom = args.dicom_dir
        if dicom is None:
            seconds = generate_patient(tmp_path / "P", args.preset)
            print(f"generated preset={args.preset} in {seconds:.1f} s")
            dicom = tmp_path / "P" / "dicom"
        m = run_measured(isotox("ingest", str(dicom), str(tmp_path / "out" / "P"), "--roi-names", str(REPO / "config" / "roi_names.yaml")))
        print(f"isotox ingest: time_s={m.wall_s:.1f} cpu_s={m.cpu_s:.1f} peak_rss_mb={m.peak_mb:.0f}")
        dcm2niix = dcm2niix_binary()
        if dcm2niix is None:
            print("dcm2niix: not installed (pip install dcm2niix)")
            return
        import pydicom

        folders = sorted({p.parent for p in dicom.rglob("*.dcm")})
        images = [f for f in folders if pydicom.dcmread(next(f.glob("*.dcm")), stop_before_pixels=True).Modality in ("CT", "PT")]
        wall = cpu = 0.0
        for folder in images:
            out = tmp_path / "dcm2niix" / folder.name
            out.mkdir(parents=True)
            m = run_measured([dcm2niix, "-z", "y", "-o", str(out), str(folder)])
            wall, cpu = wall + m.wall_s, cpu + m.cpu_s
        print(f"dcm2niix (the {len(images)} image series, gz): time_s={wall:.1f} cpu_s={cpu:.1f}")


if __name__ == "__main__":
    main()
