"""Stage 3 for one patient: ``PATIENT_DIR/{ingest,register}`` -> ``PATIENT_DIR/segment``.

Writes ``masks/*.nii.gz`` on the planning CT grid (GTV_PET and its per-method variants, GTV,
GTV_SUV50, CTV, PTV, PTV_BOOST_A/B, HYPOXIC_2H/4H, the organs at risk, LUNGS_MINUS_GTV),
``tbr_2h.nii.gz`` / ``tbr_4h.nii.gz``, ``features.tsv`` (one row: the patient's figures),
``segment.json`` (settings, where each structure came from, flags) and ``qc/contours.png``.

Flags (registration QC, a volume touching its search region, no hypoxia data) are recorded and
the patient goes on; a patient without any usable tumour definition stops with an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from numpy.typing import NDArray

from isotox.atomic import atomic_path
from isotox.errors import InputDataError
from isotox.images import array, body_mask, centroid_mm, lung_mask, mask_image, inside_image, read_image, split_lungs, voxel_cc, write_image
from isotox.qcplots import three_planes
from isotox.segmentation.aorta import locate_descending_aorta
from isotox.segmentation.features import pet_features
from isotox.segmentation.hypoxia import blood_roi, blood_suv, hypoxia_metrics
from isotox.segmentation.margins import expand
from isotox.segmentation.pet import boost_volume, search_region, threshold_volume

log = logging.getLogger(__name__)
STAGE = "segment"
#: Organs at risk carried from the RTSTRUCT under their canonical names (when present).
OARS = ("BODY", "LUNG_L", "LUNG_R", "SPINAL_CORD", "ESOPHAGUS", "HEART", "AORTA")


@dataclass(frozen=True)
class SegmentationSettings:
    """The ``segmentation`` section of the config plus the protocol's margins."""

    gtv_method: str = "percent"
    gtv_level: float = 40.0
    percent_levels: tuple[float, ...] = (40.0, 50.0)
    absolute_suv: float = 2.5
    adaptive_fraction: float = 0.5
    search_margin_mm: float = 10.0
    seed_radius_mm: float = 40.0
    gtv_source: str = "ct"
    exclude_from_search: tuple[str, ...] = ("HEART", "AORTA")
    boost_percent: float = 50.0
    hypoxia_tbr: float = 1.4
    aorta_erode_mm: float = 6.0
    min_component_cc: float = 0.1
    ctv_margin_mm: float = 6.0
    node_margin_mm: float = 4.0
    ptv_margin_mm: float = 10.0
    boost_ptv_margin_mm: float = 5.0
    histology: str = ""

    @classmethod
    def from_config(cls, section: dict[str, Any] | None, protocol: dict[str, Any], histology: str) -> "SegmentationSettings":
        section = dict(section or {})
        for key in ("percent_levels", "exclude_from_search"):
            if key in section:
                section[key] = tuple(section[key])
        margins = protocol["margins"]
        ctv = margins["ctv_mm"]
        if histology not in ctv:
            raise ValueError(f"histology {histology!r} has no CTV margin in the protocol (known: {', '.join(sorted(ctv))})")
        return cls(**section, ctv_margin_mm=float(ctv[histology]), node_margin_mm=float(ctv.get("node", ctv[histology])),
                   ptv_margin_mm=float(margins["ptv_mm"]), boost_ptv_margin_mm=float(margins.get("boost_ptv_mm", margins["ptv_mm"])),
                   histology=histology)


@dataclass
class _Work:
    """What the steps share: the planning grid, masks made so far, figures and flags."""

    patient: str
    planning: sitk.Image
    spacing: tuple[float, float, float]
    masks: dict[str, NDArray[np.bool_]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    images: dict[str, sitk.Image] = field(default_factory=dict)

    def add(self, name: str, mask: NDArray[np.bool_], source: str) -> None:
        self.masks[name] = np.asarray(mask, dtype=bool)
        self.source[name] = source

    def cc(self, name: str) -> float:
        return float(self.masks[name].sum()) * voxel_cc(self.planning) if name in self.masks else float("nan")


def _structures(work: _Work, ingest: Path) -> None:
    """Organs at risk from the RTSTRUCT; body and lungs from the CT where it has none."""
    masks_dir = ingest / "masks"
    for name in (*OARS, "GTV", "GTV_NODE"):
        path = masks_dir / f"{name}.nii.gz"
        if path.exists():
            work.add(name, array(read_image(path)) > 0, "rtstruct")
    if "BODY" not in work.masks:
        work.add("BODY", body_mask(work.planning), "ct-threshold")
    if "LUNG_L" not in work.masks or "LUNG_R" not in work.masks:
        left, right = split_lungs(lung_mask(work.planning, work.masks["BODY"]), work.planning, work.masks["BODY"])
        for name, mask in (("LUNG_L", left), ("LUNG_R", right)):
            if name not in work.masks:
                work.add(name, mask, "ct-threshold")
        work.flags.append("lungs segmented from the CT (no lung structure in the RTSTRUCT)")


def _seed_box(work: _Work, seed_point_mm: tuple[float, float, float], radius_mm: float) -> tuple[slice, slice, slice]:
    centre = np.asarray(work.planning.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in seed_point_mm)))
    half = radius_mm / np.asarray(work.spacing)
    lo = np.maximum(np.floor(centre - half), 0).astype(int)
    hi = np.minimum(np.ceil(centre + half) + 1, work.planning.GetSize()).astype(int)
    if np.any(hi <= lo):
        raise InputDataError(work.patient, "cohort sheet (seed_point_mm)", f"seed point {seed_point_mm} lies outside the planning CT", "give the point in planning-CT LPS millimetres")
    return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))


def _gtv_pet(work: _Work, fdg: NDArray[np.floating], settings: SegmentationSettings, seed_point_mm: tuple[float, float, float] | None, fdg_path: Path) -> None:
    body = work.masks["BODY"]
    box = _seed_box(work, seed_point_mm, settings.seed_radius_mm) if seed_point_mm is not None else None
    ct_gtv = work.masks.get("GTV")
    if (ct_gtv is None or not ct_gtv.any()) and box is None:
        raise InputDataError(work.patient, fdg_path, "no search region for the PET tumour: the RTSTRUCT has no GTV and the cohort sheet no seed_point_mm",
                             "add a GTV to the RTSTRUCT or a seed_point_mm (x,y,z in planning-CT mm) to the cohort sheet")
    exclude = np.zeros_like(body)
    for organ in settings.exclude_from_search:
        if organ in work.masks:
            exclude |= work.masks[organ]
    region = search_region(ct_gtv, box, work.spacing, settings.search_margin_mm, body, exclude)
    work.add("SEARCH_REGION", region, "GTV + margin" if ct_gtv is not None and ct_gtv.any() else "seed point box")
    variants = [("percent", p, f"GTV_PET{p:g}") for p in settings.percent_levels]
    variants += [("absolute", settings.absolute_suv, "GTV_PET_ABS"), ("adaptive", settings.adaptive_fraction, "GTV_PET_ADAPTIVE")]
    if (settings.gtv_method, settings.gtv_level) not in {(m, lv) for m, lv, _ in variants}:
        variants.append((settings.gtv_method, settings.gtv_level, f"GTV_PET_{settings.gtv_method.upper()}"))
    for method, level, name in variants:
        result = threshold_volume(fdg, region, work.spacing, method, level, body, settings.min_component_cc, core=ct_gtv,
                                  excluded=exclude & ~region)
        work.add(name, result.mask, f"{method} {level:g} (threshold SUV {result.threshold_suv:.2f})")
        work.figures[f"{name.lower()}_cc"] = work.cc(name)
        if not result.mask.any():
            work.flags.append(f"{name}: no uptake above the {method} threshold {result.threshold_suv:.2f} SUV in the search region")
        if (method, level) == (settings.gtv_method, settings.gtv_level):
            work.add("GTV_PET", result.mask, work.source[name])
            work.flags.extend(f"GTV_PET: {f}" for f in result.flags)
            work.figures["gtv_pet_threshold_suv"] = result.threshold_suv


def _targets(work: _Work, fdg: NDArray[np.floating] | None, settings: SegmentationSettings) -> None:
    """Primary GTV, the Arm B boost region, CTV, PTV and the boost PTVs."""
    ct_gtv, pet_gtv = work.masks.get("GTV"), work.masks.get("GTV_PET")
    has_ct, has_pet = ct_gtv is not None and ct_gtv.any(), pet_gtv is not None and pet_gtv.any()
    if settings.gtv_source == "pet" and has_pet or not has_ct:
        if not has_pet:
            raise InputDataError(work.patient, "segment", "no GTV: the RTSTRUCT has none and the PET threshold found no tumour",
                                 "check the FDG PET and the search region, or delineate a GTV")
        primary, origin = pet_gtv, "GTV_PET"
    elif settings.gtv_source == "union" and has_pet:
        primary, origin = ct_gtv | pet_gtv, "GTV (RTSTRUCT) | GTV_PET"
    else:
        primary, origin = ct_gtv, "GTV (RTSTRUCT)"
    work.add("GTV", primary, origin)
    body = work.masks["BODY"]
    if fdg is not None:
        boost, cut = boost_volume(fdg, primary, settings.boost_percent)
        work.add("GTV_SUV50", boost, f">= {settings.boost_percent:g} % SUVmax of the primary GTV ({cut:.2f} SUV)")
    ctv = expand(primary, work.spacing, settings.ctv_margin_mm, clip=body)
    if "GTV_NODE" in work.masks:
        ctv |= expand(work.masks["GTV_NODE"], work.spacing, settings.node_margin_mm, clip=body)
    work.add("CTV", ctv, f"GTV + {settings.ctv_margin_mm:g} mm ({settings.histology}); nodes + {settings.node_margin_mm:g} mm")
    work.add("PTV", expand(ctv, work.spacing, settings.ptv_margin_mm, clip=body), f"CTV + {settings.ptv_margin_mm:g} mm")
    work.add("PTV_BOOST_A", expand(primary, work.spacing, settings.boost_ptv_margin_mm, clip=body), f"GTV + {settings.boost_ptv_margin_mm:g} mm")
    if "GTV_SUV50" in work.masks:
        work.add("PTV_BOOST_B", expand(work.masks["GTV_SUV50"], work.spacing, settings.boost_ptv_margin_mm, clip=body),
                 f"GTV_SUV50 + {settings.boost_ptv_margin_mm:g} mm")
    lungs = work.masks["LUNG_L"] | work.masks["LUNG_R"]
    tumour = primary | work.masks.get("GTV_PET", np.zeros_like(primary)) | work.masks.get("GTV_NODE", np.zeros_like(primary))
    work.add("LUNGS", lungs, "LUNG_L | LUNG_R")
    work.add("LUNGS_MINUS_GTV", lungs & ~tumour, "lungs minus every GTV (for the mean lung dose)")


def _blood_roi(work: _Work) -> NDArray[np.bool_] | None:
    """The RTSTRUCT's AORTA, else the descending aorta found on the (contrast) planning CT."""
    if "AORTA" in work.masks and work.masks["AORTA"].any():
        return work.masks["AORTA"]
    finding = locate_descending_aorta(work.planning, work.masks["BODY"])
    found = finding.mask
    if not found.any():
        return None
    q = finding.as_dict()
    work.add("AORTA_CT", found, f"descending aorta found on the planning CT by anatomy (no AORTA structure): {q['slices']} slices, "
             f"{q['mean_area_cm2']:.1f} cm2, {q['left_of_spine_mm']:.0f} mm left of the spine")
    work.flags.append("blood ROI: descending aorta found on the planning CT (the RTSTRUCT has no AORTA); check qc/contours.png")
    return found


def _blood_in_fov(work: _Work, ingest: Path, register: Path, session: str, aorta: NDArray[np.bool_], suv: NDArray[np.floating],
                  settings: SegmentationSettings) -> float | None:
    """Blood SUV: the mean of the registered PET over the eroded aorta ROI voxels that lie inside
    the session PET's field of view; None when the transform or the ingested PET is not there.

    The PET's axial field of view (15-26 cm, placed for the tumour) often ends inside the aorta
    contour, and ROI voxels beyond it carry the resampler's 0 (SAMPLE003 2 h: 2 of 15 slices,
    blood SUV 15.6 % low, hypoxic volume +55 %). The registered PET (tumour-focused transform) is
    used rather than the bony pose: on the 4 sample patients its blood SUV is within 2.6 % of the
    truth, the bony pose's within 4.2 % (the contoured arch breathes with the heart).
    """
    tfm, native = register / f"{session}.tfm", ingest / f"{session}_pet_suv.nii.gz"
    if not tfm.exists() or not native.exists():
        return None
    roi = blood_roi(aorta, work.spacing, settings.aorta_erode_mm)
    kk, jj, ii = np.nonzero(roi)
    lo = [int(ii.min()), int(jj.min()), int(kk.min())]
    size = [int(ii.max()) - lo[0] + 1, int(jj.max()) - lo[1] + 1, int(kk.max()) - lo[2] + 1]
    box = sitk.RegionOfInterest(work.planning, size, lo)
    window = (slice(lo[2], lo[2] + size[2]), slice(lo[1], lo[1] + size[1]), slice(lo[0], lo[0] + size[0]))
    seen = roi[window] & inside_image(read_image(native), box, sitk.ReadTransform(str(tfm)))
    _note_blood_coverage(work, session, float(seen.sum()) / float(roi[window].sum()))
    if not seen.any():
        return float("nan")
    return float(np.mean(np.asarray(suv[window], dtype=np.float64)[seen]))


#: Below this fraction of the blood ROI inside the PET's field of view the blood SUV is flagged.
MIN_BLOOD_ROI_IN_FOV = 0.5


def _note_blood_coverage(work: _Work, session: str, fraction: float) -> None:
    """Record how much of the blood ROI the session's PET covers; flag when it is little."""
    work.figures[f"{session}_blood_roi_in_fov"] = fraction
    if fraction < MIN_BLOOD_ROI_IN_FOV:
        work.flags.append(f"hypoxia {session}: only {100 * fraction:.0f} % of the blood ROI is inside the PET field of view: "
                          "check the blood SUV, or contour the aorta within the PET's axial range")


def _hypoxia(work: _Work, ingest: Path, register: Path, settings: SegmentationSettings) -> None:
    tumour = work.masks["GTV"]
    needs_blood = any((register / f"{s}_pet_suv.nii.gz").exists() for s in ("hx4_2h", "hx4_4h"))
    aorta = _blood_roi(work) if needs_blood else None
    for session, tag in (("hx4_2h", "2h"), ("hx4_4h", "4h")):
        path = register / f"{session}_pet_suv.nii.gz"
        if not path.exists():
            work.flags.append(f"hypoxia {tag}: no registered HX4 PET ({session})")
            continue
        if aorta is None or not aorta.any():
            work.flags.append(f"hypoxia {tag}: no aorta ROI for the blood activity (no AORTA structure and none found on the CT, "
                              "e.g. without contrast): add an AORTA structure; TBR not computed")
            continue
        pet = read_image(path)
        suv = array(pet)
        blood = _blood_in_fov(work, ingest, register, session, aorta, suv, settings)
        if blood is None:
            blood = blood_suv(suv, aorta, work.spacing, settings.aorta_erode_mm)
            work.flags.append(f"hypoxia {tag}: {session}.tfm or the ingested PET is missing, so the blood ROI's field-of-view "
                              "coverage is unknown: voxels outside the PET would lower the blood SUV")
        if not np.isfinite(blood) or blood <= 0:
            work.flags.append(f"hypoxia {tag}: the aorta ROI has no activity (blood SUV {blood:.3f}); is the HX4 PET registered?")
            continue
        tbr = suv / blood
        work.images[f"tbr_{tag}"] = sitk.Cast(pet / blood, sitk.sitkFloat32)
        hypoxic, figures = hypoxia_metrics(tbr, tumour, voxel_cc(work.planning), settings.hypoxia_tbr)
        work.add(f"HYPOXIC_{tag.upper()}", hypoxic, f"TBR >= {settings.hypoxia_tbr:g} inside the GTV (blood SUV {blood:.3f})")
        work.figures.update({f"hx4_{tag}_blood_suv": blood, **{f"hx4_{tag}_{k}": v for k, v in figures.items()}})
    if "HYPOXIC_2H" in work.masks and "HYPOXIC_4H" in work.masks:
        work.figures["hx4_hv_change_cc"] = work.figures["hx4_4h_hv_cc"] - work.figures["hx4_2h_hv_cc"]
        work.figures["hx4_tbrmax_change"] = work.figures["hx4_4h_tbrmax"] - work.figures["hx4_2h_tbrmax"]


def _overlap(work: _Work) -> None:
    """How much of the FDG boost region is hypoxic on HX4 (the dose-painting question)."""
    boost = work.masks.get("GTV_SUV50")
    for tag in ("2H", "4H"):
        hyp = work.masks.get(f"HYPOXIC_{tag}")
        if boost is None or hyp is None:
            continue
        both = float((boost & hyp).sum()) * voxel_cc(work.planning)
        work.figures[f"boost_hypoxic_{tag.lower()}_overlap_cc"] = both
        work.figures[f"boost_hypoxic_{tag.lower()}_dice"] = float(2 * both / (work.cc("GTV_SUV50") + work.cc(f"HYPOXIC_{tag}"))) if (boost.any() or hyp.any()) else float("nan")


def segment_patient(patient_dir: str | Path, settings: SegmentationSettings, patient_id: str | None = None,
                    seed_point_mm: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Run stage 3 for one patient; returns what ``segment/segment.json`` holds."""
    patient_dir = Path(patient_dir)
    patient = patient_id or patient_dir.name
    ingest, register = patient_dir / "ingest", patient_dir / "register"
    for needed in (ingest / "planning_ct.nii.gz", register / "qc.json"):
        if not needed.exists():
            raise InputDataError(patient, needed, "an earlier stage's output is missing", "run `isotox ingest` and `isotox register` for this patient first")
    planning = read_image(ingest / "planning_ct.nii.gz")
    work = _Work(patient, planning, tuple(float(s) for s in planning.GetSpacing()))  # type: ignore[arg-type]
    reg_qc = json.loads((register / "qc.json").read_text())
    work.flags.extend(f"registration {s} flagged: {'; '.join(reg_qc['sessions'][s]['qc']['flags'])}" for s in reg_qc.get("flagged", []))
    _structures(work, ingest)

    fdg_path = register / "fdg_pet_suv.nii.gz"
    fdg = array(read_image(fdg_path)).astype(float) if fdg_path.exists() else None
    if fdg is not None:
        _gtv_pet(work, fdg, settings, seed_point_mm, fdg_path)
    else:
        work.flags.append("no registered FDG PET: no GTV_PET and no Arm B boost region")
    _targets(work, fdg, settings)
    if fdg is not None:
        for name, prefix in (("GTV_PET", "gtv_pet_"), ("GTV", "gtv_")):
            if name in work.masks:
                work.figures.update(pet_features(fdg, work.masks[name], work.spacing, prefix))
    _hypoxia(work, ingest, register, settings)
    _overlap(work)
    for name in ("GTV", "GTV_PET", "GTV_SUV50", "CTV", "PTV", "PTV_BOOST_A", "PTV_BOOST_B", "LUNGS", "LUNGS_MINUS_GTV"):
        work.figures[f"{name.lower()}_cc"] = work.cc(name)

    row = {"patient_id": patient, "histology": settings.histology, **work.figures, "flags": " | ".join(work.flags)}
    summary = {"patient_id": patient, "settings": asdict(settings), "structures": work.source, "figures": work.figures, "flags": work.flags}
    with atomic_path(patient_dir / STAGE) as out:
        (out / "masks").mkdir(parents=True)
        (out / "qc").mkdir()
        for name, mask in work.masks.items():
            write_image(mask_image(planning, mask), out / "masks" / f"{name}.nii.gz")
        for name, image in work.images.items():
            write_image(image, out / f"{name}.nii.gz")
        pd.DataFrame([row]).to_csv(out / "features.tsv", sep="\t", index=False, float_format="%.4g")
        (out / "segment.json").write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
        shown = {n: work.masks[n] for n in ("GTV", "GTV_PET", "GTV_SUV50", "HYPOXIC_4H", "CTV", "PTV", "SPINAL_CORD", "ESOPHAGUS", "AORTA_CT") if n in work.masks}
        overlay = sitk.GetImageFromArray(fdg.astype(np.float32)) if fdg is not None else None
        if overlay is not None:
            overlay.CopyInformation(planning)
        three_planes(planning, centroid_mm(planning, work.masks["GTV"]), out / "qc" / "contours.png", f"{patient}: targets and organs at risk",
                     overlay=overlay, contours=shown)
    for flag in work.flags:
        log.warning("%s: %s", patient, flag)
    return summary
