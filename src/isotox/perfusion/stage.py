"""Stage 4 for one patient: ``PATIENT_DIR/{ingest,register,segment}`` -> ``PATIENT_DIR/perfusion``.

Writes ``aif.tsv`` and ``qc/aif.png`` (the arterial input, blood and plasma), ``maps/*.nii.gz``
(parametric maps on the planning CT grid: ``{model}_{parameter}``, ``{model}_r2``,
``{model}_failed``, ``{model}_at_bound`` (1 where a parameter was clipped to its bound),
``bf_maxslope``), ``tumour_perfusion.tsv`` (per tumour region and parameter: voxels, coverage
by the slab, median, mean, IQR over the voxels *not* at a bound, failed and at-bound
fractions), ``tumour_roi_fits.tsv`` (the ROI-mean-curve fits, with ``at_bound``, ``undetermined`` and 95 % interval columns),
``perfusion.json`` and ``qc/ktrans.png``.

Fits run on the motion-corrected DCE grid (where the data are) and the maps are carried onto
the planning CT with the DCE registration; voxels outside the slab are NaN there.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from isotox.atomic import atomic_path  # noqa: E402
from isotox.errors import InputDataError  # noqa: E402
from isotox.images import array, body_mask, centroid_mm, like, read_image, resample_to, write_image  # noqa: E402
from isotox.perfusion.curves import arterial_input, bolus_arrival_s, detect_baseline_frames, enhancement, find_aif_roi  # noqa: E402
from isotox.perfusion.fit import MODELS, PARAMETERS, fit  # noqa: E402
from isotox.perfusion.flow import max_slope_flow  # noqa: E402
from isotox.perfusion.uncertainty import MAX_CI_FACTOR, ci95_factors, undetermined  # noqa: E402
from isotox.qcplots import three_planes  # noqa: E402
from isotox.registration.dce import frames_of  # noqa: E402
from isotox.segmentation.margins import expand, shrink  # noqa: E402

log = logging.getLogger(__name__)
STAGE = "perfusion"
TUMOUR_REGIONS = ("GTV", "GTV_SUV50", "HYPOXIC_2H", "HYPOXIC_4H")


@dataclass(frozen=True)
class PerfusionSettings:
    """The ``perfusion`` section of the config."""

    models: tuple[str, ...] = ("patlak", "tofts", "etofts", "2cxm")
    hematocrit: float = 0.45
    baseline_frames: int | str = "auto"
    aif: str = "auto"  # auto | structure (the RTSTRUCT's AORTA)
    delay: float | str = 0.0  # seconds, or "fit"
    delay_max_s: float = 10.0
    fit_region: str = "body"  # body | tumour: where the linear models are fitted voxel by voxel
    nonlinear_region: str = "tumour"  # where 2CXM is fitted voxel by voxel (it is ~100x slower)
    tumour_margin_mm: float = 10.0
    smoothing_fwhm_mm: float = 5.0  # spatial Gaussian per frame before voxel fits (0 = none); the ROI-mean fits use raw data

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> "PerfusionSettings":
        section = dict(section or {})
        if "models" in section:
            section["models"] = tuple(section["models"])
            unknown = set(section["models"]) - set(MODELS)
            if unknown:
                raise ValueError(f"perfusion.models: unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
        return cls(**section)


def _to_dce(mask: NDArray[np.bool_], planning: sitk.Image, dce_ref: sitk.Image, planning_to_dce: sitk.Transform) -> NDArray[np.bool_]:
    """A planning-grid mask on the DCE grid (nearest neighbour through the inverse transform)."""
    image = like(planning, mask.astype(np.uint8))
    return array(resample_to(image, dce_ref, planning_to_dce.GetInverse(), sitk.sitkNearestNeighbor, 0)) > 0


def _to_planning(values: NDArray[np.floating], dce_ref: sitk.Image, planning: sitk.Image, planning_to_dce: sitk.Transform) -> sitk.Image:
    """A DCE-grid map on the planning grid, nearest neighbour: every planning voxel takes one
    fitted voxel's parameters (interpolating parameters of different voxels is not a fit, and
    would spread each failed voxel's NaN to its neighbours)."""
    image = like(dce_ref, np.asarray(values, dtype=np.float32))
    return resample_to(image, planning, planning_to_dce, sitk.sitkNearestNeighbor, float("nan"))


def _load(patient: str, patient_dir: Path) -> tuple[sitk.Image, NDArray[np.float64], NDArray[np.float64], sitk.Transform, sitk.Image]:
    ingest, register = patient_dir / "ingest", patient_dir / "register"
    needed = [register / "dce_mc.nii.gz", register / "dce.tfm", ingest / "dce_frames.tsv", ingest / "planning_ct.nii.gz"]
    missing = [p for p in needed if not p.exists()]
    if missing:
        raise InputDataError(patient, missing[0], "no registered DCE-CT for this patient",
                             "check ingest/metadata.json (problems.dce_ct) and run `isotox register` first")
    frames = frames_of(read_image(register / "dce_mc.nii.gz"))
    t = pd.read_csv(ingest / "dce_frames.tsv", sep="\t")["time_s"].to_numpy(dtype=float)
    if len(t) != len(frames) or len(t) < 5:
        raise InputDataError(patient, ingest / "dce_frames.tsv", f"{len(t)} frame times for {len(frames)} frames (need >= 5, one per frame)",
                             "re-export the DCE series with one AcquisitionTime per frame")
    stack = np.stack([array(f) for f in frames]).astype(np.float32)  # float32: a clinical slab is ~0.4 GB per copy
    return frames[0], stack, t, sitk.ReadTransform(str(register / "dce.tfm")), read_image(ingest / "planning_ct.nii.gz")


def _plot_aif(path: Path, t: NDArray[np.float64], blood: NDArray[np.float64], plasma: NDArray[np.float64], arrival: float, n_base: int, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(t, blood, "o-", label="blood (ROI mean)")
    ax.plot(t, plasma, "s--", label="plasma = blood / (1 - Hct)")
    ax.axvline(arrival, color="k", ls=":", label=f"bolus arrival {arrival:.1f} s")
    ax.axvspan(t[0], t[n_base - 1], color="0.85", label=f"baseline ({n_base} frames)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("enhancement (HU)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


FLAG_MAPS = ("failed", "reduced", "at_bound")


def _summaries(values: dict[tuple[str, str], NDArray[np.float32]], voxels: dict[str, int]) -> pd.DataFrame:
    """Per region and map: coverage, median, mean, IQR, and the model's failed/reduced/at-bound fractions.

    ``values[(region, map)]`` holds the map's planning-grid values inside the region. Voxels
    whose fit ended at a parameter bound (``{model}_at_bound``) are left out of every statistic
    of that model's maps: a clipped value is the edge of the search box, not a measurement (a
    2CXM median Fp of exactly 500 ml/100 ml/min is the bound, not the tumour). Their share of
    the fitted voxels is ``at_bound_fraction``, which is the fraction excluded.
    """
    rows = []
    for (region, name), v_all in values.items():
        if name.endswith(tuple(f"_{kind}" for kind in FLAG_MAPS)):
            continue
        inside = np.isfinite(v_all)
        row: dict[str, Any] = {"region": region, "map": name, "voxels": voxels[region], "coverage": float(inside.mean())}
        model = name.split("_")[0]
        for kind in FLAG_MAPS:
            flags = values.get((region, f"{model}_{kind}"))
            if flags is not None:
                row[f"{kind}_fraction"] = float(np.nanmean(flags)) if np.isfinite(flags).any() else float("nan")
        bound = values.get((region, f"{model}_at_bound"))
        if bound is not None:
            inside &= ~(bound > 0)
        v = v_all[inside]
        row.update({"median": float(np.median(v)) if v.size else float("nan"), "mean": float(v.mean()) if v.size else float("nan"),
                    "q25": float(np.percentile(v, 25)) if v.size else float("nan"), "q75": float(np.percentile(v, 75)) if v.size else float("nan")})
        rows.append(row)
    return pd.DataFrame(rows)


def perfusion_patient(patient_dir: str | Path, settings: PerfusionSettings | None = None, patient_id: str | None = None) -> dict[str, Any]:
    """Run stage 4 for one patient; returns what ``perfusion/perfusion.json`` holds."""
    patient_dir = Path(patient_dir)
    patient = patient_id or patient_dir.name
    settings = settings or PerfusionSettings()
    dce_ref, stack, t, planning_to_dce, planning = _load(patient, patient_dir)
    spacing = tuple(float(s) for s in dce_ref.GetSpacing())
    body = body_mask(like(dce_ref, stack.mean(axis=0)))
    segment = patient_dir / "segment" / "masks"
    planning_masks = {name: array(read_image(segment / f"{name}.nii.gz")) > 0 for name in (*TUMOUR_REGIONS, "AORTA") if (segment / f"{name}.nii.gz").exists()}
    flags: list[str] = []

    # arterial input ---------------------------------------------------------------------------
    rough = enhancement(stack, 2)
    aif_qc: dict[str, Any] = {"method": "AORTA structure"}
    if settings.aif == "structure":
        if "AORTA" not in planning_masks:
            raise InputDataError(patient, segment / "AORTA.nii.gz", "perfusion.aif is 'structure' but there is no AORTA structure",
                                 "contour the aorta, or set perfusion.aif: auto")
        roi = shrink(_to_dce(planning_masks["AORTA"], planning, dce_ref, planning_to_dce), spacing, 3.0)  # type: ignore[arg-type]
        source = "AORTA structure (eroded 3 mm)"
    else:
        choice = find_aif_roi(rough, t, body, stack[:2].mean(axis=0), dce_ref)
        roi, aif_qc = choice.mask, choice.qc
        flags.extend(choice.flags)
        source = "automatic: descending aorta by anatomy"
    if not roi.any():
        raise InputDataError(patient, patient_dir / "register" / "dce_mc.nii.gz",
                             "no arterial input: no round enhancing vessel left of the spine (the descending aorta) in the DCE slab",
                             "check that the slab contains the descending aorta and contrast was given, or set perfusion.aif: structure")
    n_base = detect_baseline_frames(t, rough[:, roi].mean(axis=1)) if settings.baseline_frames == "auto" else int(settings.baseline_frames)
    del rough
    enh = enhancement(stack, n_base)
    del stack
    aif = arterial_input(enh, t, roi, source)
    arrival = bolus_arrival_s(t, aif.blood_hu, n_base)
    plasma = aif.blood_hu / (1.0 - settings.hematocrit)
    if aif.peak_hu < 50.0:
        flags.append(f"weak arterial input: peak enhancement {aif.peak_hu:.0f} HU (< 50 HU); parameters will be noisy")

    # voxel-wise fits (on spatially smoothed frames, as perfusion-CT software does) ---------------
    enh_raw = enh
    if settings.smoothing_fwhm_mm > 0:
        sigma = settings.smoothing_fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        enh = np.stack([array(sitk.SmoothingRecursiveGaussian(like(dce_ref, e), sigma)) for e in enh]).astype(np.float32)
    tumour_dce = _to_dce(planning_masks["GTV"], planning, dce_ref, planning_to_dce) if "GTV" in planning_masks else np.zeros_like(body)
    tumour_region = expand(tumour_dce, spacing, settings.tumour_margin_mm) & body  # type: ignore[arg-type]
    if not tumour_dce.any():
        flags.append("the GTV is not inside the DCE slab: no tumour perfusion figures")
    regions = {"body": body, "tumour": tumour_region if tumour_region.any() else body}
    delay: float | str = "fit" if settings.delay == "fit" else float(settings.delay)
    dce_maps: dict[str, NDArray[np.float64]] = {}
    fit_stats: dict[str, Any] = {}
    for model in settings.models:
        where = regions[settings.nonlinear_region if model == "2cxm" else settings.fit_region]
        curves = enh[:, where].T
        result = fit(t, curves, plasma, model, delay=delay, delay_range_s=(0.0, settings.delay_max_s))
        extra = {"r2": result.r2, "failed": result.failed.astype(float), "at_bound": result.at_bound.astype(float)}
        if result.reduced is not None and model in ("tofts", "etofts"):
            extra["reduced"] = result.reduced.astype(float)
        for name in (*PARAMETERS[model], *extra) + (("delay",) if delay == "fit" else ()):
            values = extra[name] if name in extra else result.params[name]
            full = np.full(body.shape, np.nan, dtype=np.float32)
            full[where] = values
            dce_maps[f"{model}_{name}"] = full
        fit_stats[model] = {"voxels": int(where.sum()), "failed_fraction": float(result.failed.mean()), "median_r2": float(np.nanmedian(result.r2)),
                            "reduced_fraction": float(result.reduced.mean()) if result.reduced is not None else 0.0,
                            "at_bound_fraction": float(result.at_bound.mean())}
    bf = np.full(body.shape, np.nan)
    padded = np.pad(enh[:, body].T, ((0, 0), (1, 1)), mode="edge")
    curves_s = (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3.0  # 3-frame moving average against slope noise
    bf[body] = max_slope_flow(t, curves_s, aif.blood_hu)
    dce_maps["bf_maxslope"] = bf

    # onto the planning CT, tumour summaries ---------------------------------------------------
    regions_plan = {n: m for n, m in planning_masks.items() if n in TUMOUR_REGIONS and m.any()}
    roi_fits = []
    if tumour_dce.any():
        mean_curve = enh_raw[:, tumour_dce].mean(axis=1)
        for model in settings.models:
            r = fit(t, mean_curve, plasma, model, delay=delay, delay_range_s=(0.0, settings.delay_max_s))
            values = {k: float(v[0]) for k, v in r.params.items()}
            factors = ci95_factors(t, mean_curve, plasma, model, values, values["delay"], delay == "fit")
            loose = undetermined(factors)
            delay_at_edge = delay == "fit" and values["delay"] in (0.0, settings.delay_max_s)
            if delay_at_edge:
                flags.append(f"GTV ROI {model}: the fitted delay sits at the edge of the search ({values['delay']:g} s of "
                             f"0-{settings.delay_max_s:g} s): the best fit lies outside it (input before the AIF, or partial "
                             "volume with lung); marked at_bound: a limit of the search, not a measurement")
            roi_fits.append({"region": "GTV", "curve": "ROI mean", "model": model, **values, "r2": float(r.r2[0]),
                             "at_bound": bool(r.at_bound[0]) or delay_at_edge, "delay_at_search_edge": delay_at_edge,
                             "undetermined": ",".join(loose), **{f"{k}_ci95_factor": f for k, f in factors.items()}})
            if loose:
                flags.append(f"GTV ROI {model}: {', '.join(loose)} not determined by the curve (95 % interval wider than a factor "
                             f"{MAX_CI_FACTOR:g} either way): reported with its interval, not as a measurement")
        roi_fits.append({"region": "GTV", "curve": "ROI mean", "model": "maxslope", "bf": float(max_slope_flow(t, mean_curve[None, :], aif.blood_hu)[0])})
    summary = {"patient_id": patient, "settings": asdict(settings), "frames": int(len(t)), "baseline_frames": int(n_base),
               "aif": {"source": aif.source, "voxels": int(aif.mask.sum()), "peak_blood_hu": aif.peak_hu, "time_to_peak_s": aif.time_to_peak_s,
                       "bolus_arrival_s": arrival, "hematocrit": settings.hematocrit, "qc": aif_qc},
               "fits": fit_stats, "roi_mean_fits": roi_fits, "flags": flags,
               "units": {"ktrans": "/min", "ps": "/min", "fp": "ml/100 ml/min", "bf": "ml/100 ml/min", "ve": "fraction", "vp": "fraction", "delay": "s"}}
    with atomic_path(patient_dir / STAGE) as out:
        (out / "maps").mkdir(parents=True)
        (out / "qc").mkdir()
        region_values: dict[tuple[str, str], NDArray[np.float32]] = {}
        key = next((f"{m}_ktrans" for m in ("etofts", "tofts", "patlak") if f"{m}_ktrans" in dce_maps), None)
        shown = None
        for name in list(dce_maps):  # one planning-grid map in memory at a time (a 512 x 512 CT grid is 0.1 GB each)
            image = _to_planning(dce_maps.pop(name), dce_ref, planning, planning_to_dce)
            write_image(image, out / "maps" / f"{name}.nii.gz")
            values = array(image)
            region_values.update({(region, name): values[mask] for region, mask in regions_plan.items()})
            shown = image if name == key else shown
        table = _summaries(region_values, {r: int(m.sum()) for r, m in regions_plan.items()})
        write_image(like(dce_ref, aif.mask.astype(np.uint8)), out / "aif_roi_dce_grid.nii.gz")
        pd.DataFrame({"time_s": t, "blood_hu": aif.blood_hu, "plasma_hu": plasma}).to_csv(out / "aif.tsv", sep="\t", index=False, float_format="%.4f")
        table.to_csv(out / "tumour_perfusion.tsv", sep="\t", index=False, float_format="%.5g")
        pd.DataFrame(roi_fits).to_csv(out / "tumour_roi_fits.tsv", sep="\t", index=False, float_format="%.5g")
        (out / "perfusion.json").write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
        _plot_aif(out / "qc" / "aif.png", t, aif.blood_hu, plasma, arrival, n_base, f"{patient}: arterial input ({source})")
        if shown is not None:
            centre = centroid_mm(planning, planning_masks["GTV"]) if "GTV" in planning_masks else centroid_mm(planning, array(planning) > -400)
            three_planes(planning, centre, out / "qc" / "ktrans.png", f"{patient}: {key} (/min)", overlay=shown, overlay_label="Ktrans (/min)",
                         contours={n: m for n, m in regions_plan.items() if n in ("GTV", "GTV_SUV50")})
    for flag in flags:
        log.warning("%s: %s", patient, flag)
    return summary
