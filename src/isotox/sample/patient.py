"""Write one synthetic patient: planning CT + RTSTRUCT, FDG PET/CT, HX4 PET/CT at 2 h and 4 h,
DCE-CT, and ``ground_truth.json``.

Everything is drawn from ``numpy.random.default_rng([seed, patient_index])``, and DICOM UIDs are
hashes of the same key, so the same seed always gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray
from pydicom import config as dicom_config
from scipy import ndimage
from threadpoolctl import threadpool_limits

from isotox.atomic import atomic_path, write_text
from isotox.dicomio.contours import contours_from_field
from isotox.dicomio.image_series import CT_IMAGE_STORAGE, CT_INTERCEPT, CtFrame, PetAcquisition, write_ct_series, write_pet_series
from isotox.dicomio.modules import PatientStudy, SeriesInfo
from isotox.dicomio.rtstruct_writer import ReferencedImages, RoiContours, write_rtstruct
from isotox.dicomio.uids import stable_uid
from isotox.geometry import ImageGrid, RigidTransform
from isotox.sample import appearance, scanner
from isotox.sample.clinical import enrolment
from isotox.sample.anatomy import TUMOUR_TISSUES, Anatomy, AnatomyParams, ArmsDown, Tissue, TumourShape, draw_anatomy
from isotox.sample.breathing import Breathing, draw_breathing
from isotox.sample.four_d import BreathingCycle, has_four_d
from isotox.sample.kinetics import STEP_S, BloodPools, tissue_curve
from isotox.sample.presets import Preset, get_preset
from isotox.sample.timeline import at, da, dt, plus, tm

log = logging.getLogger(__name__)

F18_HALF_LIFE_S = 6586.2
HISTOLOGIES = ("adenocarcinoma", "squamous", "large_cell", "nsclc_nos")
HISTOLOGY_P = (0.45, 0.40, 0.10, 0.05)

#: How clinics name the structures (the sample varies them so ROI mapping gets exercised).
ROI_NAME_VARIANTS = {
    "BODY": ["BODY", "External", "Body", "Outer Contour"],
    "LUNG_L": ["Lung_L", "Lung L", "LUNG_LT", "Long links"],
    "LUNG_R": ["Lung_R", "Lung R", "LUNG_RT", "Long rechts"],
    "SPINAL_CORD": ["SpinalCord", "Spinal Cord", "Myelum", "CORD"],
    "ESOPHAGUS": ["Esophagus", "Oesophagus", "ESO", "Oesofagus"],
    "HEART": ["Heart", "HEART", "Hart"],
    "AORTA": ["Aorta", "AORTA", "Aorta_desc"],
    "GTV": ["GTV", "GTVp", "GTV_primary", "GTV1"],
    "GTV_NODE": ["GTVn", "GTV_node", "GTV_LN"],
}
ROI_COLOURS = {
    "BODY": (0, 255, 0), "LUNG_L": (0, 128, 255), "LUNG_R": (0, 200, 255), "SPINAL_CORD": (255, 255, 0),
    "ESOPHAGUS": (255, 128, 0), "HEART": (255, 0, 128), "AORTA": (200, 0, 0), "GTV": (255, 0, 0), "GTV_NODE": (255, 60, 60),
}


def patient_id(index: int) -> str:
    """Sample patient ids: SAMPLE001, SAMPLE002, ..."""
    return f"SAMPLE{index:03d}"


@dataclass(frozen=True)
class Session:
    """One scanner visit: its own study, frame of reference, pose and date."""

    key: str
    study_uid: str
    frame_uid: str
    pose: RigidTransform
    day: datetime
    fov_offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # scanner field of view not centred on the planning point
    breathing: Breathing | None = None  # the session's breathing state relative to the planning CT (None: the planning CT's)
    arms: ArmsDown | None = None  # arms by the sides (None: raised above the head, as on the planning CT)

    def to_session(self, points: NDArray[np.float64]) -> NDArray[np.float64]:
        """The true planning -> session mapping: breathing displacement, then the rigid pose."""
        pts = np.asarray(points, dtype=float)
        return self.pose.apply(self.breathing.push(pts) if self.breathing is not None else pts)


def _arms_truth(s: Session, params: AnatomyParams) -> dict[str, Any]:
    """The session's arm position as a test needs it: the humerus axes (x, y) in planning-CT mm,
    parallel to z (the session's pose carries them into the session)."""
    if s.arms is None:
        return {"position": "up"}
    return {"position": "down", "gap_mm": s.arms.gap_mm, "radii_mm": list(s.arms.radii_mm), "humerus_radius_mm": s.arms.humerus_radius_mm,
            "humerus_axes_xy_mm": [list(c) for c in s.arms.centres(params.body_a, params.body_b)]}


def _draw_pose(rng: np.random.Generator, max_shift: tuple[float, float, float], max_deg: float) -> RigidTransform:
    shift = tuple(float(rng.uniform(-m, m)) for m in max_shift)
    angles = tuple(float(np.radians(rng.uniform(-max_deg, max_deg))) for _ in range(3))
    return RigidTransform(angles, shift, (0.0, 0.0, 0.0))  # type: ignore[arg-type]


def _session_grid(size: tuple[int, int, int], spacing: tuple[float, float, float], pose: RigidTransform, z_centre: float,
                  offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> ImageGrid:
    """Scanner grid centred ``offset`` mm away from where the planning point (0, 0, z_centre) lands, on a 0.5 mm raster."""
    centre = pose.apply(np.array([0.0, 0.0, z_centre])) + np.asarray(offset)
    centre = tuple(float(np.round(c * 2) / 2) for c in centre)
    return ImageGrid.centred(size, spacing, centre)  # type: ignore[arg-type]


def _noise(rng: np.random.Generator, sd: float, shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Gaussian image noise in float32 (a realistic planning CT is 31 M voxels: float64 doubles the memory)."""
    return rng.standard_normal(size=shape, dtype=np.float32) * np.float32(sd)


def _breathing_truth(s: Session, tumour_centre: tuple[float, float, float]) -> dict[str, Any]:
    """What a test needs to compute the true mapping anywhere (``isotox.sample.breathing.Breathing.from_dict``
    of ``state``, then the pose) and the breathing shift at the tumour centre."""
    assert s.breathing is not None
    c = np.asarray(tumour_centre, dtype=float)
    shift = s.breathing.push(c) - c
    return {
        "model": "x_session = pose(q) with q - shift * w(q) = x_planning; w in [0, 1] is 1 in the thorax content and 0 at "
                 "bone (chest wall, ribs, spine): see isotox/sample/breathing.py",
        "state": s.breathing.as_dict(),
        "tumour_shift_mm": shift.tolist(),  # planning axes, before the pose
        "tumour_shift_session_mm": (s.pose.matrix @ shift).tolist(),  # the same vector in the session's axes
        "tumour_shift_magnitude_mm": float(np.linalg.norm(shift)),
        "tumour_weight": float(s.breathing.weight(c)),
    }


def _grid_dict(grid: ImageGrid) -> dict[str, Any]:
    return {"size": list(grid.size), "spacing_mm": list(grid.spacing), "origin_mm": list(grid.origin), "direction": list(grid.direction)}


def _fine_tumour_measures(anatomy: Anatomy, fdg: appearance.FdgUptake, step: float = 0.5) -> dict[str, float]:
    """Ground-truth tumour volumes on a 0.5 mm raster over the tumour's bounding box.

    ``boost`` and ``pet40`` are the tumour points whose *true* (unblurred, noiseless) FDG uptake
    is >= 50 % and >= 40 % of the true peak: what a threshold segmentation estimates.
    """
    t = anatomy.p.tumour
    half = 1.6 * t.r0
    axis = np.arange(-half, half + step / 2, step)
    voxel_cc = step**3 / 1000.0
    counts = {"gtv": 0, "boost": 0, "pet40": 0, "hypoxic": 0, "necrotic": 0}
    for z in axis:
        yy, xx = np.meshgrid(axis, axis, indexing="ij")
        pts = np.stack([xx + t.centre[0], yy + t.centre[1], np.full_like(xx, z + t.centre[2])], axis=-1)
        s = anatomy.evaluate_tumour(pts)  # only tumour points are counted
        tum = np.isin(s.tissue, [int(x) for x in TUMOUR_TISSUES])
        suv = fdg.suv(s)
        counts["gtv"] += int(tum.sum())
        counts["boost"] += int((tum & (suv >= 0.5 * fdg.tumour_peak)).sum())
        counts["pet40"] += int((tum & (suv >= 0.4 * fdg.tumour_peak)).sum())
        counts["hypoxic"] += int((s.tissue == Tissue.TUMOUR_HYPOXIC).sum())
        counts["necrotic"] += int((s.tissue == Tissue.TUMOUR_NECROTIC).sum())
    return {f"{k}_volume_cc": v * voxel_cc for k, v in counts.items()}


def _as_measured_pet_truth(anatomy: Anatomy, fdg: appearance.FdgUptake, hx4: dict[str, appearance.Hx4Uptake], fwhm_mm: float,
                           search_margin_mm: float = 10.0, step: float = 1.5) -> dict[str, float]:
    """Threshold volumes as a perfect scanner of this resolution shows them: on the noiseless PET
    blurred by the PSF (1.5 mm raster around the contoured GTV), by the protocols' definitions.

    * ``boost_pet_volume_cc``: contoured GTV voxels >= 50 % of the GTV's blurred SUVmax (Arm B);
    * ``pet40_pet_volume_cc``: the voxels >= 40 % of the GTV's blurred SUVmax within the GTV +
      ``search_margin_mm`` search region minus heart and aorta, in regions reaching into the GTV (GTV_PET);
    * ``hypoxic_{tag}_pet_volume_cc`` / ``tbrmax_{tag}_pet``: contoured GTV voxels with blurred
      HX4 tumour-to-blood ratio >= 1.4, and the blurred maximum TBR.

    The blur moves a threshold boundary by a predictable amount (a 6 mm PSF on a 25 cc tumour
    makes the measured 50 % volume look like the true 40 % one), so accuracy tests compare with
    these, and keep the unblurred volumes as what the biology holds.
    """
    gtv = anatomy.p.observer_gtv
    half = 1.6 * max(gtv.r0, anatomy.p.tumour.r0) + search_margin_mm + 3.0 * fwhm_mm
    axis = np.arange(-half, half + step / 2, step)
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    pts = np.stack([xx, yy, zz], axis=-1) + np.asarray(gtv.centre)
    sample = anatomy.evaluate(pts)
    inside = sample.structures["GTV"] < 0
    region = ndimage.distance_transform_edt(~inside, sampling=step) <= search_margin_mm
    region &= inside | ((sample.structures["HEART"] >= 0) & (sample.structures["AORTA"] >= 0))  # physiological uptake kept out
    sigma = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / step
    voxel_cc = step**3 / 1000.0
    fdg_blurred = ndimage.gaussian_filter(fdg.suv(sample), sigma, mode="nearest")
    out: dict[str, float] = {}
    peak = float(fdg_blurred[inside].max())
    out["boost_pet_volume_cc"] = float((inside & (fdg_blurred >= 0.5 * peak)).sum() * voxel_cc)
    labels, _ = ndimage.label(region & (fdg_blurred >= 0.4 * peak))
    touching = np.setdiff1d(np.unique(labels[inside]), [0])
    out["pet40_pet_volume_cc"] = float(np.isin(labels, touching).sum() * voxel_cc)
    for tag, uptake in hx4.items():
        tbr = ndimage.gaussian_filter(uptake.suv(sample), sigma, mode="nearest") / uptake.blood_suv
        out[f"hypoxic_{tag}_pet_volume_cc"] = float((inside & (tbr >= 1.4)).sum() * voxel_cc)
        out[f"tbrmax_{tag}_pet"] = float(tbr[inside].max())
    return out


def _observer_deviation(true: TumourShape, drawn: TumourShape, n_dirs: int = 4000) -> dict[str, Any]:
    """How far the contoured GTV lies from the true tumour outline, measured along rays from the
    true centre (outward positive): what an observer-drawn contour costs a method that trusts it."""
    i = np.arange(n_dirs) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n_dirs), np.pi * (1 + 5**0.5) * i
    u = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=-1)
    c = np.asarray(true.centre)
    r_true = true.radius(u)
    # the drawn surface along each ray: bisection on the drawn level set between 0.5 R and 1.5 R
    lo, hi = 0.5 * r_true, 1.5 * r_true + 6.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        inside = drawn.levelset(c + mid[:, None] * u) < 0
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    dev = 0.5 * (lo + hi) - r_true
    return {"shift_mm": (np.asarray(drawn.centre) - c).tolist(), "volume_cc": drawn.volume_cc(),
            "mean_deviation_mm": float(dev.mean()), "max_abs_deviation_mm": float(np.abs(dev).max())}


def _planimetric_volume_cc(anatomy: Anatomy, grid: ImageGrid, name: str, inside_field: NDArray[np.float64]) -> float:
    """Sum over planning-CT slices of the structure's cross-section area x slice spacing.

    This is the volume a TPS reports for slice-wise contours. Areas are sampled on a fine raster
    (0.5 mm for structures under 100 cm^2 per slice, 2 mm above) inside the slice's bounding box,
    so thin organs (spinal cord, 5 mm radius) are as exact as large ones (< 0.5 % error).
    ``inside_field`` is the negated level set on the grid (k, j, i), used to find the boxes.
    The raster points are counted by :func:`_count_inside`, all slices at once.
    """
    coarse_step = max(grid.spacing[0], grid.spacing[1])
    rasters = []
    for k in range(grid.size[2]):
        pts = grid.slice_points(k)
        inside = inside_field[k] > -coarse_step
        if not inside.any():
            continue
        box = pts[inside]
        lo, hi = box.min(axis=0)[:2] - coarse_step, box.max(axis=0)[:2] + coarse_step
        step = 0.5 if np.prod(hi - lo) < 1e4 else 2.0
        xs, ys = np.arange(lo[0], hi[0], step) + step / 2, np.arange(lo[1], hi[1], step) + step / 2
        rasters.append(_Raster(xs, ys, float(pts[0, 0, 2]), step))
    total_mm3 = 0.0
    for n, r in zip(_count_inside(anatomy, name, rasters), rasters):
        total_mm3 += float(n) * r.step * r.step * grid.spacing[2]
    return total_mm3 / 1000.0


@dataclass(frozen=True)
class _Raster:
    """A plane's fine raster: points (xs[i], ys[j], z), ``step`` mm apart."""

    xs: NDArray[np.float64]
    ys: NDArray[np.float64]
    z: float
    step: float

    CELL_MM = 4.0

    def cells(self) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """The raster in square cells of ~``CELL_MM``: (n_cells, c*c, 3) points and which are real
        (the raster is padded to whole cells; the padding points are not counted)."""
        c = max(1, int(round(self.CELL_MM / self.step)))
        axes = [np.concatenate([a, a[-1] + self.step * np.arange(1, -len(a) % c + 1)]) for a in (self.xs, self.ys)]
        yy, xx = np.meshgrid(axes[1], axes[0], indexing="ij")
        points = np.stack([xx, yy, np.full_like(xx, self.z)], axis=-1)
        real = np.zeros(xx.shape, bool)
        real[: len(self.ys), : len(self.xs)] = True
        ny, nx = xx.shape[0] // c, xx.shape[1] // c
        return (points.reshape(ny, c, nx, c, 3).transpose(0, 2, 1, 3, 4).reshape(ny * nx, c * c, 3),
                real.reshape(ny, c, nx, c).transpose(0, 2, 1, 3).reshape(ny * nx, c * c))


def _count_inside(anatomy: Anatomy, name: str, rasters: list[_Raster], chunk: int = 250_000) -> list[int]:
    """How many points of each raster lie inside structure ``name`` (level set < 0): exact counts.

    Why: evaluating the whole thorax at every raster point took 3 of the 26 CPU seconds of a small
    sample patient (3.6 M points). Each ~4 mm cell is evaluated at its centre first; if the
    structure's sign cannot change within the cell (:meth:`Anatomy.clearance` exceeds the
    distance to its farthest point) all its points count alike, else they are evaluated one by
    one, as before. Evaluations are batched over all slices (one call per ``chunk`` points).
    """
    counts = [0] * len(rasters)
    for step in {r.step for r in rasters}:
        same = [i for i, r in enumerate(rasters) if r.step == step]  # one cell size per batch
        for i, n in zip(same, _count_cells(anatomy, name, [rasters[i].cells() for i in same], chunk)):
            counts[i] = n
    return counts


def _count_cells(anatomy: Anatomy, name: str, cells: list[tuple[NDArray[np.float64], NDArray[np.bool_]]], chunk: int) -> list[int]:
    """:func:`_count_inside` for rasters cut into cells of one size (:meth:`_Raster.cells`)."""
    points = np.concatenate([p for p, _ in cells])
    real = np.concatenate([m for _, m in cells])
    centres = points.mean(axis=1)
    inside = np.zeros(len(points), bool)
    mixed = np.zeros(len(points), bool)
    for i in range(0, len(points), chunk):
        part = slice(i, i + chunk)
        field = anatomy.evaluate(centres[part]).structures[name]
        inside[part] = field < 0
        spread2 = ((points[part] - centres[part, None, :]) ** 2).sum(-1).max(-1)
        mixed[part] = ~(anatomy.clearance(centres[part], [field]) ** 2 > spread2)
    per_cell = np.where(inside, real.sum(axis=1), 0)
    todo = points[mixed][real[mixed]]
    counted = np.concatenate([anatomy.evaluate(todo[i : i + chunk]).structures[name] < 0 for i in range(0, len(todo), chunk)]) if len(todo) else np.zeros(0, bool)
    per_cell[mixed] = 0
    cell_of = np.repeat(np.flatnonzero(mixed), real[mixed].sum(axis=1))
    np.add.at(per_cell, cell_of, counted.astype(per_cell.dtype))
    bounds = np.cumsum([0] + [len(p) for p, _ in cells])
    return [int(per_cell[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]


def _draw_histology(rng: np.random.Generator) -> str:
    return str(rng.choice(HISTOLOGIES, p=HISTOLOGY_P))


def sample_histology(index: int, seed: int) -> str:
    """Histology of sample patient ``index`` without generating it (the workflow needs it to pick margins)."""
    return _draw_histology(np.random.default_rng([seed, index]))


def _not_contoured(index: int) -> list[str]:
    """What the clinic did not contour, in a fixed rotation so every cohort of 2 or more patients
    exercises both fallbacks: patient 1, 5, 9...: no AORTA (the aorta finder runs); 2, 6, 10...: no
    lungs (CT lung segmentation); 3, 7, 11...: neither; 4, 8, 12...: everything contoured."""
    return {1: ["AORTA"], 2: ["LUNGS"], 3: ["AORTA", "LUNGS"], 0: []}[index % 4]


def _arms_down_sessions(index: int, rng: np.random.Generator) -> set[str]:
    """The PET/CT sessions scanned with the arms down: the diagnostic FDG PET/CT of every odd
    patient (so every cohort of 1 or more patients has one), each HX4 scan with probability 0.25.
    The planning CT and the DCE-CT are in the treatment position (arms raised)."""
    down = {"fdg"} if index % 2 == 1 else set()
    return down | {name for name in ("hx4_2h", "hx4_4h") if rng.random() < 0.25}


def _dce_frame_times() -> NDArray[np.float64]:
    """4 baseline frames, 3-s sampling through the first pass, then sparser to 150 s (26 frames)."""
    return np.concatenate([[0.0, 3.0, 6.0, 9.0], np.arange(12.0, 61.0, 3.0), [75.0, 90.0, 105.0, 120.0, 150.0]])


def write_sample_patient(out_dir: str | Path, index: int, seed: int, preset: str = "small") -> dict[str, Any]:
    """Write patient number ``index`` (1-based) of the cohort with ``seed`` into ``out_dir``.

    ``out_dir`` receives ``dicom/`` (opaque folder and file names) and ``ground_truth.json``;
    it is created atomically (all or nothing). Returns the ground truth.
    """
    out_dir = Path(out_dir)
    # every DICOM value here comes from the generator's own formatters, so pydicom's per-value
    # checks (a regex per element) only cost time: ~0.7 of the 13 CPU seconds of the 749 files.
    # One BLAS thread: the generator's products are (n, 3) @ (3, k) point maps, where OpenBLAS
    # goes multi-threaded above ~50 000 rows and, on a loaded machine, spins: 24 ms of CPU for a
    # 74 000-point pose map that takes 0.5 ms on one thread (same results)
    with atomic_path(out_dir) as staged, dicom_config.disable_value_validation(), threadpool_limits(limits=1, user_api="blas"):
        truth = _write_patient(staged, index, seed, get_preset(preset))
        write_enrolment(staged / ENROLMENT_FILE, truth, seed)
    return truth


#: the patient's enrolment record next to its DICOM: a one-row cohort sheet (arm, stage, chemotherapy)
ENROLMENT_FILE = "enrolment.tsv"


def write_enrolment(path: Path, truth: dict[str, Any], seed: int) -> None:
    """Write the registration record of one patient as a one-row cohort sheet.

    Why per patient: the plan needs the patient's PET-boost allocation, and a record that needs the
    whole cohort (results/sample/cohort.tsv) would make every plan wait for every patient (on a
    cluster, a second job per patient). The cohort sheet is these rows, concatenated. Its
    ``dicom_dir`` is ``dicom``, relative to the record's own folder, so the patient folder's bytes do
    not depend on where it was written (the generator is byte-deterministic)."""
    row = enrolment(truth, seed).sheet_row("dicom")
    write_text(path, "\t".join(row) + "\n" + "\t".join(row.values()) + "\n")


def _write_patient(out: Path, index: int, seed: int, preset: Preset) -> dict[str, Any]:
    rng = np.random.default_rng([seed, index])
    pid = patient_id(index)
    key: tuple[object, ...] = (seed, preset.name, pid)

    histology = _draw_histology(rng)  # the first draw: sample_histology() repeats it without the rest
    with_node = bool(rng.random() < 0.4)
    params = draw_anatomy(rng, histology, with_node)
    anatomy = Anatomy(params)
    fdg = appearance.FdgUptake.draw(rng, hot_rim=params.necrotic_fraction > 0)
    hx4 = appearance.draw_hx4(rng)
    hct = 0.45
    kinetics = appearance.draw_kinetics(rng)
    look = appearance.CtLook.draw(rng)
    # PET encoding of this patient's scanner: most export BQML; some GE-like (SeriesTime rewritten
    # at reconstruction, the scan start in a private tag) and Philips-like (CNTS + SUV factor)
    vendor = str(rng.choice(["standard", "ge", "philips"], p=[0.6, 0.2, 0.2]))
    missing = _not_contoured(index)
    weight_kg = float(np.round(rng.uniform(52, 98), 1))
    height_m = float(np.round(rng.uniform(1.55, 1.92), 2))
    sex = str(rng.choice(["M", "F"]))
    birth = datetime(1940 + int(rng.integers(0, 30)), 1 + int(rng.integers(0, 12)), 1 + int(rng.integers(0, 28)))
    planning_day = datetime(2024, 1, 8) + timedelta(days=int(14 * (index - 1) + rng.integers(0, 10)))
    roi_names = {name: str(rng.choice(options)) for name, options in ROI_NAME_VARIANTS.items()}

    vertebra_front = anatomy.y_vertebra - 18.0
    # rigid landmarks: vertebral body centres (bone does not breathe), planning-CT LPS mm
    spine_landmarks = [(0.0, anatomy.y_vertebra, z) for z in (-60.0, 0.0, 60.0)]

    def fov(max_xy: float, max_z: float) -> tuple[float, float, float]:
        return (float(rng.uniform(-max_xy, max_xy)), float(rng.uniform(-max_xy, max_xy)), float(rng.uniform(-max_z, max_z)))

    # every session breathes: its own state, from its own stream (the rest of the patient is drawn as before)
    breathing_rng = np.random.default_rng([seed, index, 29])
    rib_a, rib_b = 0.93 * params.body_a - 9.0, 0.93 * params.body_b - 9.0  # inner surface of the rib ring (anatomy.py)

    def breathe() -> Breathing:
        return draw_breathing(breathing_rng, rib_a, rib_b, anatomy.y_vertebra, anatomy.y_posterior, params.tumour.centre)

    def session(name: str, day_offset: int, shift: tuple[float, float, float], deg: float, offset: tuple[float, float, float]) -> Session:
        return Session(name, stable_uid(*key, name, "study"), stable_uid(*key, name, "for"), _draw_pose(rng, shift, deg),
                       planning_day - timedelta(days=day_offset), offset, breathe())

    # diagnostic PET/CT without the planning immobilisation: larger rotations, the field of view
    # centred wherever the technologist put it
    sessions = {
        "fdg": session("fdg", int(rng.integers(3, 10)), (15.0, 15.0, 20.0), 5.0, fov(25.0, 20.0)),
        "hx4_2h": session("hx4", int(rng.integers(1, 3)), (15.0, 15.0, 20.0), 5.0, fov(25.0, 20.0)),
        "dce": session("dce", 0, (5.0, 5.0, 5.0), 1.5, fov(5.0, 0.0)),
    }
    # the 4 h scan follows the same injection on the same day, the patient repositioned on the table
    # and scanned free-breathing again: its own pose and its own breathing state
    sessions["hx4_4h"] = Session("hx4_4h", sessions["hx4_2h"].study_uid, stable_uid(*key, "hx4_4h", "for"), _draw_pose(rng, (15.0, 15.0, 20.0), 5.0),
                                 sessions["hx4_2h"].day, fov(25.0, 20.0), breathe())
    # arm positions, from their own stream (the rest of the patient is drawn as before): arms down
    # put bone, muscle and fat beside the chest that the planning CT does not have
    arms_rng = np.random.default_rng([seed, index, 31])
    for name in sorted(_arms_down_sessions(index, arms_rng)):
        sessions[name] = replace(sessions[name], arms=ArmsDown(gap_mm=float(arms_rng.uniform(0.0, 15.0))))
    who = lambda s: PatientStudy(pid, f"Sample^{index:03d}", da(birth), sex, s.study_uid, da(s.day), "080000.000000", accession=f"A{index:03d}{s.key[:3].upper()}")  # noqa: E731
    dicom = out / "dicom"
    folder = lambda *parts: dicom / stable_uid(*key, *parts, "dir")[-12:]  # noqa: E731  opaque folder names

    log.info("%s: %s, node=%s, preset %s: planning CT and RTSTRUCT", pid, histology, with_node, preset.name)
    # ---- planning CT (contrast-enhanced) and RTSTRUCT ------------------------------------------------
    planning = ImageGrid.centred(preset.planning_size, preset.planning_spacing, (0.0, 0.0, 0.0))
    plan_session = Session("planning", stable_uid(*key, "planning", "study"), stable_uid(*key, "planning", "for"), RigidTransform(), planning_day)
    left_out = {"GTV_NODE"} if not with_node else set()
    left_out |= {"AORTA"} & set(missing) | ({"LUNG_L", "LUNG_R"} if "LUNGS" in missing else set())
    structure_names = [n for n in Anatomy.CONTOURED if n not in left_out]
    modelled = [n for n in Anatomy.CONTOURED if n != "GTV_NODE" or with_node]  # truth also for what was not contoured
    painters: dict[str, scanner.Painter] = {"hu": lambda s: look.hu(s, contrast=True)}
    # each structure's partial-volume fraction per voxel, for its partial volume; without supersampling
    # a voxel's fraction is its centre's inside/outside, which the level sets below give (at the
    # realistic preset the nine fraction arrays were 1.1 GB of the generator's ~2.9 GB peak)
    fractions_from_fields = preset.planning_supersample == 1
    for name in [] if fractions_from_fields else modelled:
        painters[f"frac:{name}"] = lambda s, n=name: (s.structures[n] < 0).astype(float)
    # the negated level sets at the voxel centres, for the contours and the planimetric volumes
    level_sets = {f"field:{name}": (lambda s, n=name: -s.structures[n]) for name in modelled}
    cycle = BreathingCycle.draw(np.random.default_rng([seed, index, 37]), rib_a, rib_b, anatomy.y_vertebra, anatomy.y_posterior,
                                params.tumour.centre) if has_four_d(index) else None
    if cycle is not None:
        painters.pop("hu")  # the planning CT is the average of the phases, rendered below
    rendered = scanner.render(planning, anatomy, None, painters, preset.planning_supersample, at_centres=level_sets)
    fields = {name: rendered.pop(f"field:{name}") for name in modelled}
    planning_noise = _noise(rng, preset.planning_noise_hu * look.noise_scale, planning.shape)  # drawn either way: the later draws stay
    description = "Planning CT thorax (contrast)"
    if cycle is None:
        ct_hu = rendered["hu"] + planning_noise
    else:
        description = "Planning CT thorax 4D AVE-IP (contrast)"
        ct_hu = _write_four_d_phases(cycle, lambda name: folder("planning", name), planning, anatomy, look, preset,
                                     who(plan_session), plan_session, key, np.random.default_rng([seed, index, 38]))
    del planning_noise
    plan_series = SeriesInfo("CT", stable_uid(*key, "planning", "series"), 2, description, da(planning_day), "081500.000000", plan_session.frame_uid)
    ct_sets = write_ct_series(folder("planning", "ct"), planning, [CtFrame(ct_hu, "081500.000000")], who(plan_session), plan_series, uid_key=(*key, "planning", "ct"))

    volumes = {name: _planimetric_volume_cc(anatomy, planning, name, field) for name, field in fields.items()}
    inside_voxels = {name: float(np.count_nonzero(fields[name] > 0) if fractions_from_fields else rendered.pop(f"frac:{name}").sum())
                     for name in modelled}
    upsample = max(1, int(round(min(planning.spacing[:2]) / 1.0)))  # ~1 mm point spacing, as clinical contours
    rois = []
    for name in structure_names:
        field = fields[name]
        rois.append(RoiContours(roi_names[name], Anatomy.CONTOURED[name], ROI_COLOURS[name], contours_from_field(planning, field, level=0.0, upsample=upsample)))
    del fields
    rs_series = SeriesInfo("RTSTRUCT", stable_uid(*key, "planning", "rtstruct-series"), 3, "Clinical contours", da(planning_day), "101500.000000", plan_session.frame_uid)
    refs = ReferencedImages(plan_session.study_uid, plan_series.series_uid, plan_session.frame_uid, str(CT_IMAGE_STORAGE), [str(d.SOPInstanceUID) for d in ct_sets])
    write_rtstruct(folder("planning", "rtstruct") / "RS.dcm", who(plan_session), rs_series, refs, rois, sop_instance_uid=stable_uid(*key, "rtstruct"), label="Clinical")

    structures_truth = {
        name: {
            "roi_name": roi_names[name] if name in structure_names else None,
            "contoured": name in structure_names,
            "volume_cc": volumes[name],
            "partial_volume_cc": inside_voxels[name] * planning.voxel_volume_mm3 / 1000.0,
        }
        for name in modelled
    }
    tumour_truth = {
        "centre_mm": list(params.tumour.centre), "equivalent_radius_mm": params.tumour.r0,
        "analytic_volume_cc": params.tumour.volume_cc(), "necrotic_radius_fraction": params.necrotic_fraction,
        "fdg_pattern": "hot_rim" if fdg.hot_rim else "hot_core", "side": "right" if params.tumour.centre[0] < 0 else "left",
        **_fine_tumour_measures(anatomy, fdg),
    }
    tumour_truth["hypoxic_fraction"] = tumour_truth["hypoxic_volume_cc"] / tumour_truth["gtv_volume_cc"]
    tumour_truth["contoured_gtv"] = _observer_deviation(params.tumour, params.observer_gtv)
    tumour_truth["as_measured"] = _as_measured_pet_truth(anatomy, fdg, hx4, preset.psf_fwhm_mm)
    descending = anatomy.aorta_line[0]

    # ---- PET/CT sessions -------------------------------------------------------------------------
    session_truth: dict[str, Any] = {}
    pets = {"fdg": ("FDG -- fluorodeoxyglucose", fdg.suv, float(rng.uniform(3.0, 4.0)) * weight_kg * 1e6, 3600.0 + float(rng.uniform(-300, 600)))}
    hx4_dose = float(rng.uniform(380e6, 420e6))
    pets["hx4_2h"] = ("HX4", hx4["hx4_2h"].suv, hx4_dose, 7200.0 + float(rng.uniform(-300, 300)))
    pets["hx4_4h"] = ("HX4", hx4["hx4_4h"].suv, hx4_dose, 14400.0 + float(rng.uniform(-300, 300)))
    hx4_injection = at(sessions["hx4_2h"].day, 8, int(rng.integers(0, 50)))
    for number, (name, (tracer, suv_painter, dose_bq, uptake_s)) in enumerate(pets.items()):
        log.info("%s: %s PET/CT", pid, name)
        s = sessions[name]
        injection = hx4_injection if name.startswith("hx4") else at(s.day, 9, int(rng.integers(0, 50)))
        start = plus(injection, uptake_s)
        z_c = float(params.tumour.centre[2]) * 0.5
        ct_grid = _session_grid(preset.session_ct_size, preset.session_ct_spacing, s.pose, z_c, s.fov_offset_mm)
        pet_grid = _session_grid(preset.pet_size, preset.pet_spacing, s.pose, z_c, s.fov_offset_mm)
        scanned = Anatomy(params, s.arms)  # this session's arm position
        lowdose = scanner.render(ct_grid, scanned, s.pose, {"hu": lambda smp: look.hu(smp, contrast=False)}, 1, s.breathing)["hu"]
        lowdose += _noise(rng, preset.lowdose_noise_hu * look.noise_scale, ct_grid.shape)
        ct_series = SeriesInfo("CT", stable_uid(*key, name, "ct-series"), 10 * number + 11, f"{tracer.split()[0]} PET/CT low-dose CT", da(s.day), tm(plus(start, -120)), s.frame_uid)
        write_ct_series(folder(name, "ct"), ct_grid, [CtFrame(lowdose, tm(plus(start, -120)))], who(s), ct_series, uid_key=(*key, name, "ct"))

        clean = scanner.psf_blur(scanner.render(pet_grid, scanned, s.pose, {"suv": suv_painter}, preset.pet_supersample, s.breathing)["suv"], pet_grid, preset.psf_fwhm_mm)
        noisy = scanner.pet_noise(rng, clean, preset.pet_cv_at_suv1)
        decayed_dose = dose_bq * math.exp(-math.log(2) * uptake_s / F18_HALF_LIFE_S)
        suv_to_bqml = decayed_dose / (weight_kg * 1000.0)
        acq = PetAcquisition(tracer, dose_bq, F18_HALF_LIFE_S, dt(injection), weight_kg, height_m, frame_duration_ms=180000.0 * 6,
                             vendor=vendor, reconstruction_time=tm(plus(start, 2400.0)), scan_datetime=dt(start), suv_per_bqml=1.0 / suv_to_bqml)
        pet_series = SeriesInfo("PT", stable_uid(*key, name, "pet-series"), 10 * number + 12, f"{tracer.split()[0]} PET AC", da(s.day), tm(start), s.frame_uid)
        write_pet_series(folder(name, "pet"), pet_grid, noisy * suv_to_bqml, who(s), pet_series, acq, uid_key=(*key, name, "pet"))
        # every study also holds the non-attenuation-corrected reconstruction: without attenuation
        # correction the centre of the body loses counts along its depth (water, 0.0096 /mm at 511 keV)
        depth_mm = ndimage.distance_transform_edt(clean > 0.1, sampling=(pet_grid.spacing[2], pet_grid.spacing[1], pet_grid.spacing[0]))
        nac = noisy * np.exp(-0.0096 * depth_mm)
        nac_series = SeriesInfo("PT", stable_uid(*key, name, "pet-nac-series"), 10 * number + 13, f"{tracer.split()[0]} PET NAC", da(s.day), tm(start), s.frame_uid)
        write_pet_series(folder(name, "pet-nac"), pet_grid, nac * suv_to_bqml, who(s), nac_series, replace(acq, attenuation_corrected=False), uid_key=(*key, name, "pet-nac"))

        centre_s = s.to_session(np.asarray(params.tumour.centre))
        near = np.linalg.norm(_grid_points(pet_grid) - centre_s, axis=-1) <= 1.2 * params.tumour.r0 + 5.0
        ci, cj, ck = np.rint(pet_grid.physical_to_index(centre_s[None, :])[0]).astype(int)
        session_truth[name] = {
            "planning_to_session": s.pose.as_dict(),
            "tumour_centre_session_mm": centre_s.tolist(),
            "fov_offset_mm": list(s.fov_offset_mm),
            "spine_landmarks_session_mm": [s.to_session(np.asarray(v)).tolist() for v in spine_landmarks],  # bone: the pose alone
            "breathing": _breathing_truth(s, params.tumour.centre),
            "arms": _arms_truth(s, params),
            "ct_grid": _grid_dict(ct_grid), "pet_grid": _grid_dict(pet_grid),
            "tracer": tracer, "injected_dose_bq": dose_bq, "injection_datetime": dt(injection),
            "series_datetime": dt(start), "uptake_time_s": uptake_s, "weight_kg": weight_kg,
            "bqml_per_suv": suv_to_bqml, "psf_fwhm_mm": preset.psf_fwhm_mm, "vendor_encoding": vendor,
            "pet_cv_at_suv1": preset.pet_cv_at_suv1,
            "nac_series_uid": nac_series.series_uid, "ac_series_uid": pet_series.series_uid,
            "tumour_suvmax_blurred_noiseless": float(clean[near].max()),
            "tumour_centre_voxel_ijk": [int(ci), int(cj), int(ck)],
            "tumour_centre_mean_suv_3x3x3_noiseless": float(clean[ck - 1 : ck + 2, cj - 1 : cj + 2, ci - 1 : ci + 2].mean()),
        }
    session_truth["fdg"].update({"tumour_suv_peak_true": fdg.tumour_peak, "blood_suv": fdg.blood, "myocardium_suv": fdg.myocardium, "node_suv": fdg.node if with_node else None})
    for name in ("hx4_2h", "hx4_4h"):
        h = hx4[name]
        session_truth[name].update({"blood_suv": h.blood_suv, "tbr_hypoxic": h.tbr_hypoxic, "tbr_normoxic_tumour": h.tbr_normoxic_tumour, "hypoxia_threshold_tbr": 1.4})

    log.info("%s: DCE-CT", pid)
    # ---- DCE-CT slab ---------------------------------------------------------------------------------
    s = sessions["dce"]
    times = _dce_frame_times()
    hu_per_mm = 40.0
    pools = BloodPools(aorta_arrival_s=float(rng.uniform(8.0, 14.0)), pulmonary_transit_s=float(rng.uniform(4.0, 7.0)),
                       svc_lead_s=float(rng.uniform(1.5, 3.0)))
    fine_t = np.arange(0.0, times[-1] + STEP_S / 2, STEP_S)
    plasma_fine = pools.aorta(fine_t) / (1.0 - hct)
    frame_index = np.rint(times / STEP_S).astype(int)
    curves = np.zeros((len(Tissue), times.size))
    for tissue, kin in kinetics.items():
        curves[int(tissue)] = hu_per_mm * tissue_curve(kin, fine_t, plasma_fine)[frame_index]
    pool_curves = {Tissue.BLOOD: pools.aorta, Tissue.BLOOD_RIGHT: pools.right_heart, Tissue.BLOOD_VENOUS: pools.svc}
    for tissue, curve in pool_curves.items():
        curves[int(tissue)] = hu_per_mm * curve(times)
    # the slab is centred on the tumour as the scout shows it: where this breathing state puts it
    dce_centre_z = float(s.breathing.push(np.asarray(params.tumour.centre))[2]) if s.breathing is not None else float(params.tumour.centre[2])
    dce_grid = _session_grid(preset.dce_size, preset.dce_spacing, s.pose, dce_centre_z, s.fov_offset_mm)
    # the unenhanced CT once, the enhancement per frame (the partial-volume mean is linear)
    frame_painters: dict[str, scanner.Painter] = {"unenhanced": lambda smp: look.hu(smp, contrast=False)}
    frame_painters.update({f"f{f}": (lambda smp, f=f: curves[smp.tissue, f]) for f in range(times.size)})
    frames_clean = scanner.render(dce_grid, anatomy, s.pose, frame_painters, preset.dce_supersample, s.breathing)
    dce_start = at(planning_day, 8, 40)
    frames = [CtFrame(frames_clean["unenhanced"] + frames_clean[f"f{f}"] + _noise(rng, preset.dce_noise_hu * look.noise_scale, dce_grid.shape), tm(plus(dce_start, float(t)))) for f, t in enumerate(times)]
    dce_series = SeriesInfo("CT", stable_uid(*key, "dce", "series"), 5, "DCE-CT perfusion thorax", da(planning_day), tm(dce_start), s.frame_uid)
    write_ct_series(folder("dce", "ct"), dce_grid, frames, who(s), dce_series, uid_key=(*key, "dce", "ct"), kvp=100.0)
    perfusion_truth = {
        "planning_to_session": s.pose.as_dict(), "grid": _grid_dict(dce_grid), "frame_times_s": times.tolist(),
        "fov_offset_mm": list(s.fov_offset_mm),
        "tumour_centre_session_mm": s.to_session(np.asarray(params.tumour.centre)).tolist(),
        "spine_landmarks_session_mm": [s.to_session(np.asarray(v)).tolist() for v in spine_landmarks],
        "breathing": _breathing_truth(s, params.tumour.centre),
        "hematocrit": hct, "hu_per_mM": hu_per_mm,
        "aif": "descending aorta: Parker 2006 population blood curve, delayed (sample/kinetics.py)",
        "bolus_arrival_s": pools.aorta_arrival_s, "pulmonary_transit_s": pools.pulmonary_transit_s, "svc_lead_s": pools.svc_lead_s,
        "blood_pool_peak_s": {t.name.lower(): float(times[int(np.argmax(curves[int(t)]))]) for t in pool_curves},
        "blood_curves_hu": {t.name.lower(): curves[int(t)].tolist() for t in pool_curves},
        "tissue_curves_hu": {t.name.lower(): curves[int(t)].tolist() for t in (Tissue.TUMOUR_VIABLE, Tissue.TUMOUR_HYPOXIC)},
        "tissues": {t.name.lower(): k.as_dict() for t, k in kinetics.items()},
        "noise_hu": preset.dce_noise_hu * look.noise_scale,
    }

    truth: dict[str, Any] = {
        "patient_id": pid, "index": index, "seed": seed, "preset": preset.name,
        "conventions": "LPS mm; planning_to_session is the session's rigid pose on the table (x_s = A @ [x_p, 1], as ITK's "
                       "registration transform with fixed = planning CT): exact for bone (spine, ribs, chest wall). The thorax "
                       "content is also displaced by the session's breathing state (sessions.*.breathing, perfusion.breathing): "
                       "the true mapping of a planning point p is A @ [q, 1] with q - shift * w(q) = p; "
                       "tumour_centre_session_mm is that mapping of tumour.centre_mm.",
        "histology": histology, "has_node": with_node, "sex": sex, "weight_kg": weight_kg, "height_m": height_m,
        "planning_date": da(planning_day), "planning_grid": _grid_dict(planning),
        "structures_not_contoured": sorted(left_out - {"GTV_NODE"}),
        "spine_landmarks_mm": [list(v) for v in spine_landmarks],
        "landmarks_mm": {"descending_aorta_centre_xy": [float(descending[0]), float(descending[1])], "descending_aorta_radius": 12.0,
                         "vertebral_body_centre_xy": [0.0, float(anatomy.y_vertebra)], "vertebral_body_front_y": float(vertebra_front),
                         "superior_vena_cava_centre_xy": [float(v) for v in anatomy.svc_line[1, :2]]},
        "ct": {"vertebra_hu": look.vertebra_hu, "planning_blood_hu": {t.name.lower(): v for t, v in look.contrast_hu.items()},
               "noise_scale": look.noise_scale,
               "planning_noise_hu": preset.planning_noise_hu * look.noise_scale / (math.sqrt(cycle.phases) if cycle is not None else 1.0)},
        "planning_ct": {"kind": "free-breathing"} if cycle is None else
                       {"kind": "average (AVE-IP) of a 4D CT, written with its phases and a MIP", **cycle.truth(params.tumour.centre)},
        "structures": structures_truth, "tumour": tumour_truth, "sessions": session_truth, "perfusion": perfusion_truth,
        "hx4_injection_datetime": dt(hx4_injection),
    }
    log.info("%s: done", pid)
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return truth


def _write_four_d_phases(cycle: BreathingCycle, folder: Callable[[str], Path], planning: ImageGrid, anatomy: Anatomy,
                         look: appearance.CtLook, preset: Preset, who: PatientStudy, plan_session: Session, key: tuple[object, ...],
                         rng: np.random.Generator) -> NDArray[np.float32]:
    """Render and write the 4D CT's phase series and its MIP; return the average (the planning CT).

    Each phase is a full scan with its own noise, so the average's noise is the phases' sd /
    sqrt(phases), as a clinical AVE-IP's; it averages the phases as stored (whole HU, air clipped
    at -1024), as the scanner does. One phase is held at a time (a realistic matrix is 126 MB)."""
    total = np.zeros(planning.shape, np.float64)
    peak = np.full(planning.shape, -np.inf, np.float32)
    for k in range(cycle.phases):
        hu = scanner.render(planning, anatomy, None, {"hu": lambda s: look.hu(s, contrast=True)}, preset.planning_supersample, cycle.phase(k))["hu"]
        hu += _noise(rng, preset.planning_noise_hu * look.noise_scale, planning.shape)
        hu = np.clip(np.rint(hu), CT_INTERCEPT, CT_INTERCEPT + 65535)  # the phase as stored: the scanner averages its images
        series = SeriesInfo("CT", stable_uid(*key, "planning", "4d", k, "series"), 101 + k, f"Thorax 4D {cycle.label(k)} (contrast)",
                            da(plan_session.day), "080500.000000", plan_session.frame_uid)
        write_ct_series(folder(f"4d-{k}"), planning, [CtFrame(hu, "080500.000000")], who, series, uid_key=(*key, "planning", "4d", k))
        total += hu
        np.maximum(peak, hu, out=peak)
    mip = SeriesInfo("CT", stable_uid(*key, "planning", "mip", "series"), 120, "Thorax 4D MIP (contrast)", da(plan_session.day), "081000.000000",
                     plan_session.frame_uid)
    write_ct_series(folder("4d-mip"), planning, [CtFrame(peak, "081000.000000")], who, mip, uid_key=(*key, "planning", "mip"))
    return (total / cycle.phases).astype(np.float32)


def _grid_points(grid: ImageGrid) -> NDArray[np.float64]:
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    ijk = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3).astype(float)
    return grid.index_to_physical(ijk).reshape(grid.shape + (3,))
