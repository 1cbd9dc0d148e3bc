"""Accuracy of a finished sample run against the generator's ground truth: one row per patient and figure.

    python benchmarks/sample_accuracy.py RESULTS_DIR

Reads only what the workflow wrote (results/patients/PID/...) and results/sample/PID/ground_truth.json,
and prints the figures the README quotes: registration error of the global (bony) and the tumour-focused
transform at the tumour and at the spine, with each session's breathing shift, the
threshold volumes against the as-measured truth (and the unblurred one), TBRmax, the AIF choice (RMS
against the aorta and against the earlier venous curves), the aorta found on the CT, the tumour's
perfusion parameters against the truth range, and PTV coverage. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk


def _affine_apply(affine: list[list[float]], pts: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, float)
    return pts @ a[:3, :3].T + a[:3, 3]


def _registration(truth: dict, patient: Path) -> dict[str, float]:
    """Per session (PET/CT and DCE): the breathing shift at the tumour, and the error of the global
    (bony, ``{session}_global.tfm``) and the tumour-focused (``{session}.tfm``) transforms at the true
    tumour centre (pose after the breathing) and at the spine landmarks (the rigid pose)."""
    out: dict[str, float] = {}
    centre = np.array(truth["tumour"]["centre_mm"], float)
    spine = np.array(truth.get("spine_landmarks_mm", []), float)
    for session in ("fdg", "hx4_2h", "hx4_4h", "dce"):
        s = truth["perfusion"] if session == "dce" else truth["sessions"][session]
        at_tumour = np.asarray(s.get("tumour_centre_session_mm") or _affine_apply(s["planning_to_session"]["affine"], centre[None])[0])
        at_spine = np.asarray(s.get("spine_landmarks_session_mm") or _affine_apply(s["planning_to_session"]["affine"], spine))
        if "breathing" in s:
            out[f"breathing_{session}_tumour_shift_mm"] = float(s["breathing"]["tumour_shift_magnitude_mm"])
        files = {"global": patient / "register" / f"{session}_global.tfm", "tumour": patient / "register" / f"{session}.tfm"}
        if not files["global"].exists():  # a run from before the two-stage registration
            files = {"global": files["tumour"]}
        for name, path in files.items():
            tx = sitk.ReadTransform(str(path))
            out[f"reg_{session}_{name}_at_tumour_mm"] = float(np.linalg.norm(np.asarray(tx.TransformPoint(tuple(map(float, centre)))) - at_tumour))
            if len(spine):
                got = np.array([tx.TransformPoint(tuple(map(float, p))) for p in spine])
                out[f"reg_{session}_{name}_spine_max_mm"] = float(np.linalg.norm(got - at_spine, axis=1).max())
    return out


def _segmentation(truth: dict, patient: Path) -> dict[str, float]:
    f = json.loads((patient / "segment" / "segment.json").read_text())["figures"]
    t = truth["tumour"]
    m = t.get("as_measured", {})
    out = {"boost_cc": f.get("gtv_suv50_cc"), "boost_true_blurred_cc": m.get("boost_pet_volume_cc"), "boost_true_unblurred_cc": t["boost_volume_cc"],
           "pet40_cc": f.get("gtv_pet40_cc"), "pet40_true_blurred_cc": m.get("pet40_pet_volume_cc"), "pet40_true_unblurred_cc": t["pet40_volume_cc"]}
    for tag in ("2h", "4h"):
        out[f"hv_{tag}_cc"] = f.get(f"hx4_{tag}_hv_cc")
        out[f"hv_{tag}_true_blurred_cc"] = m.get(f"hypoxic_hx4_{tag}_pet_volume_cc")
        out[f"tbrmax_{tag}"] = f.get(f"hx4_{tag}_tbrmax")
        out[f"tbrmax_{tag}_true_blurred"] = m.get(f"tbrmax_hx4_{tag}_pet")
    masks = patient / "segment" / "masks"
    if (masks / "AORTA_CT.nii.gz").exists() and "landmarks_mm" in truth:
        image = sitk.ReadImage(str(masks / "AORTA_CT.nii.gz"))
        kk, jj, ii = np.nonzero(sitk.GetArrayFromImage(image))
        pts = np.array([image.TransformIndexToPhysicalPoint((int(i), int(j), int(k))) for i, j, k in zip(ii, jj, kk)])
        out["aorta_ct_centre_error_mm"] = float(np.linalg.norm(pts[:, :2].mean(axis=0) - truth["landmarks_mm"]["descending_aorta_centre_xy"]))
    return out


def _perfusion(truth: dict, patient: Path) -> dict[str, float]:
    stage = patient / "perfusion"
    if not (stage / "perfusion.json").exists():
        return {}
    p = truth["perfusion"]
    aif = pd.read_csv(stage / "aif.tsv", sep="\t")["blood_hu"].to_numpy()
    out: dict[str, float] = {}
    for name, curve in p.get("blood_curves_hu", {}).items():
        c = np.asarray(curve)
        out[f"aif_rms_vs_{name}_percent_of_aorta_peak"] = float(100 * np.sqrt(np.mean((aif - c) ** 2)) / np.max(p["blood_curves_hu"]["blood"]))
    roi = pd.read_csv(stage / "tumour_roi_fits.tsv", sep="\t").set_index("model")
    tissues = p["tissues"]
    for key, col in (("ktrans_per_min", "ktrans"), ("ve", "ve"), ("vp", "vp")):
        out[f"etofts_{col}"] = float(roi.loc["etofts", col])
        out[f"true_{col}_range"] = f"{tissues['tumour_hypoxic'][key]:.3f}-{tissues['tumour_viable'][key]:.3f}"  # type: ignore[assignment]
    if "2cxm" in roi.index:
        out["2cxm_fp"] = float(roi.loc["2cxm", "fp"])
        out["true_fp_range"] = f"{tissues['tumour_hypoxic'].get('fp_ml_100ml_min', float('nan')):.1f}-{tissues['tumour_viable'].get('fp_ml_100ml_min', float('nan')):.1f}"  # type: ignore[assignment]
    return out


def _plan(patient: Path) -> dict[str, float]:
    plan = patient / "plan" / "plan.json"
    if not plan.exists():
        return {}
    coverage = json.loads(plan.read_text()).get("coverage", {})
    return {f"{name}_D95_percent": c.get("D95_percent") for name, c in coverage.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    rows = {}
    for gt in sorted((args.results / "sample").glob("SAMPLE*/ground_truth.json")):
        truth = json.loads(gt.read_text())
        patient = args.results / "patients" / truth["patient_id"]
        row: dict[str, object] = {"not_contoured": ",".join(truth.get("structures_not_contoured", []))}
        for part in (_registration, _segmentation, _perfusion):
            try:
                row.update(part(truth, patient))
            except FileNotFoundError as exc:
                row[part.__name__] = f"missing: {exc.filename}"
        row.update(_plan(patient))
        rows[truth["patient_id"]] = row
    table = pd.DataFrame(rows)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.to_string())


if __name__ == "__main__":
    main()
