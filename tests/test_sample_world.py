"""The sample generator is an independent world: it referees isotox, so it must not share isotox's analysis.

* No import from the analysis packages (perfusion, segmentation, registration, dose, planning, the
  vessel finder, the image helpers): checked statically over every generator module and at run
  time (what importing the generator loads).
* Its tissue curves are the numerical solution of the compartment equations; here they are
  checked against a deliberately separate solution of the same equations: the impulse response
  from the eigen-decomposition of the 2CXM system matrix, convolved with the input by the
  trapezoidal rule on a fine grid (no isotox code at all).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isotox.sample.kinetics import BloodPools, TissueKinetics, parker_blood_mM, tissue_curve

SAMPLE_PACKAGE = Path(__file__).resolve().parents[1] / "src" / "isotox" / "sample"
FORBIDDEN = ("isotox.perfusion", "isotox.segmentation", "isotox.registration", "isotox.dose", "isotox.planning",
             "isotox.vessels", "isotox.images", "isotox.outcomes")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_generator_imports_nothing_from_the_analysis_packages() -> None:
    modules = sorted(SAMPLE_PACKAGE.glob("*.py"))
    assert len(modules) >= 8
    offending = {p.name: sorted(n for n in _imports(p) if n.startswith(FORBIDDEN)) for p in modules}
    assert not any(offending.values()), offending
    loaded = subprocess.run([sys.executable, "-c", "import sys, isotox.sample, isotox.sample.cohort, isotox.sample.kinetics;"
                             "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('isotox.'))))"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in loaded if m.startswith(FORBIDDEN)], loaded


def _two_compartment_reference(t: np.ndarray, ca: np.ndarray, fp: float, ps: float, ve: float, vp: float) -> np.ndarray:
    """C(t) = integral of h(s) Ca(t - s) ds with h(s) = c^T exp(A s) b, A from the 2CXM equations (per s)."""
    fp_s, ps_s = fp / 6000.0, ps / 6000.0
    a = np.array([[-(fp_s + ps_s) / vp, ps_s / vp], [ps_s / ve, -ps_s / ve]])
    b = np.array([fp_s / vp, 0.0])
    c = np.array([vp, ve])
    lam, vec = np.linalg.eig(a)
    weights = (c @ vec) * np.linalg.solve(vec, b)  # h(s) = sum_i weights_i exp(lam_i s)
    h = np.real(np.exp(np.outer(t, lam)) @ weights)
    dt = t[1] - t[0]
    full = np.convolve(ca, h)[: t.size] * dt
    return full - 0.5 * dt * (ca * h[0] + ca[0] * h)  # trapezoid end corrections


def test_2cxm_curves_solve_the_compartment_equations() -> None:
    """Generator 2CXM (RK4) vs the eigen-decomposition solution: max difference <= 0.5 % of the peak.

    Nearest wrong answer: the extended Tofts curve with the same Ktrans (= E Fp), ve and vp, i.e.
    the infinite-flow limit a fitter without Fp assumes; it differs by more than 3 % of the peak,
    so the tolerance rejects it (asserted below).
    """
    t = np.arange(0.0, 150.0 + 1e-9, 0.05)
    pools = BloodPools(aorta_arrival_s=10.0, pulmonary_transit_s=5.0, svc_lead_s=2.0)
    plasma = pools.aorta(t) / 0.55
    kin = TissueKinetics("2cxm", vp=0.05, ve=0.35, fp=40.0, ps=15.0)
    generated = tissue_curve(kin, t, plasma)
    reference = _two_compartment_reference(t, plasma, kin.fp, kin.ps, kin.ve, kin.vp)
    peak = reference.max()
    assert np.abs(generated - reference).max() <= 0.005 * peak
    infinite_flow = tissue_curve(TissueKinetics("etofts", vp=kin.vp, ve=kin.ve, ktrans_per_min=kin.ktrans), t, plasma)
    assert np.abs(infinite_flow - reference).max() > 0.03 * peak


def test_delay_and_dispersion_shift_and_smooth_the_input() -> None:
    """Delay d: the curve is the undelayed curve moved by d (to 0.2 % of the peak). Dispersion:
    tracer is conserved (for an uptake-only tissue the trapped amount lags by exactly tau x the
    input, to 5 %) while the early rise is slower. Nearest wrong answers: no delay (differs by > 5 % of the peak
    on the upslope) and a dispersion that loses tracer (area off by the kernel's integral)."""
    t = np.arange(0.0, 150.0 + 1e-9, 0.05)
    plasma = parker_blood_mM(t, 12.0) / 0.55
    base = TissueKinetics("2cxm", vp=0.05, ve=0.3, fp=60.0, ps=20.0)
    delayed = TissueKinetics("2cxm", vp=0.05, ve=0.3, fp=60.0, ps=20.0, delay_s=4.0)
    c0, c4 = tissue_curve(base, t, plasma), tissue_curve(delayed, t, plasma)
    shift = int(round(4.0 / 0.05))
    assert np.abs(c4[shift:] - c0[:-shift]).max() <= 0.002 * c0.max()
    assert np.abs(c4 - c0).max() > 0.05 * c0.max()
    patlak = TissueKinetics("patlak", vp=0.0, ktrans_per_min=0.2)
    dispersed = TissueKinetics("patlak", vp=0.0, ktrans_per_min=0.2, dispersion_s=3.0)
    p0, p3 = tissue_curve(patlak, t, plasma), tissue_curve(dispersed, t, plasma)
    # trapped tracer = Ktrans x area of the input; a unit-area kernel only lags it: the integrals
    # differ by tau x the (slowly varying) input at the end, to 5 %
    assert p0[-1] - p3[-1] == pytest.approx(0.2 / 60.0 * 3.0 * plasma[-1], rel=0.05)
    early = np.searchsorted(t, 16.0)
    assert p3[early] < 0.9 * p0[early]


def test_contrast_reaches_the_venous_side_first() -> None:
    """The superior vena cava peaks before the right heart, which peaks a pulmonary transit before
    the aorta, and both peak higher: the order an AIF finder must not be fooled by."""
    t = np.arange(0.0, 60.0, 0.05)
    pools = BloodPools(aorta_arrival_s=10.0, pulmonary_transit_s=5.0, svc_lead_s=2.0)
    peaks = {name: t[np.argmax(getattr(pools, name)(t))] for name in ("svc", "right_heart", "aorta")}
    assert peaks["svc"] == pytest.approx(peaks["right_heart"] - 2.0, abs=0.2)
    assert peaks["right_heart"] == pytest.approx(peaks["aorta"] - 5.0, abs=0.2)
    assert pools.svc(t).max() > pools.right_heart(t).max() > pools.aorta(t).max()


@pytest.mark.parametrize("vendor", ["standard", "ge", "philips"])
def test_pet_vendor_encodings_decode_to_the_written_suv(tmp_path: Path, vendor: str) -> None:
    """The generator's GE and Philips PET encodings, written from the vendors' conventions, come back
    as the same SUV through isotox's conversion (to 1e-4: int16 storage with a per-slice slope).

    Nearest wrong answers, rejected: for GE, decay-correcting to the SeriesTime (the reconstruction
    time, 40 min after the scan start) gives SUVs 29 % high; for Philips, reading the counts as
    Bq/ml is off by the count calibration (7.5x)."""
    from datetime import datetime

    import pydicom

    from isotox.dicomio.image_series import PHILIPS_BQML_PER_COUNT, PetAcquisition, write_pet_series
    from isotox.dicomio.modules import PatientStudy, SeriesInfo
    from isotox.dicomio.suv import rescaled, suv_conversion
    from isotox.geometry import ImageGrid
    from isotox.sample.timeline import dt, plus, tm

    grid = ImageGrid.centred((8, 8, 4), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    suv = np.random.default_rng(3).uniform(0.5, 12.0, size=grid.shape)
    injection = datetime(2024, 3, 4, 9, 0, 0)
    start = plus(injection, 3600.0)
    dose, weight, half_life = 300e6, 70.0, 6586.2
    bqml_per_suv = dose * np.exp(-np.log(2) * 3600.0 / half_life) / (weight * 1000.0)
    acq = PetAcquisition("FDG", dose, half_life, dt(injection), weight, 1.75, 180000.0, vendor=vendor,
                         reconstruction_time=tm(plus(start, 2400.0)), scan_datetime=dt(start), suv_per_bqml=1.0 / bqml_per_suv)
    who = PatientStudy("P1", "P^1", "19500101", "M", "1.2.3.4", "20240304", "080000")
    series = SeriesInfo("PT", "1.2.3.4.5", 1, "PET AC", "20240304", tm(start), "1.2.3.4.6")
    write_pet_series(tmp_path, grid, suv * bqml_per_suv, who, series, acq, uid_key=("vendor-test", vendor))
    slices = sorted((pydicom.dcmread(f) for f in tmp_path.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    conversion = suv_conversion(slices, "P1", tmp_path)
    decoded = np.stack([rescaled(d) * f for d, f in zip(slices, np.broadcast_to(conversion.factors, (len(slices),)))])
    np.testing.assert_allclose(decoded, suv, rtol=1e-4, atol=1e-3)
    if vendor == "ge":
        assert slices[0].SeriesTime > slices[0].AcquisitionTime
        wrong = np.exp(np.log(2) * 2400.0 / half_life)  # SUV ratio when decay-corrected to the reconstruction time
        assert wrong - 1.0 > 0.25
        assert "GE private" in conversion.reference_source
    if vendor == "philips":
        assert slices[0].Units == "CNTS"
        counts_as_bqml = np.stack([rescaled(d) for d in slices]) / bqml_per_suv
        assert np.median(counts_as_bqml / suv) == pytest.approx(1.0 / PHILIPS_BQML_PER_COUNT, rel=1e-3)


def _cohort_anatomies(n: int = 40, seed: int = 20240101):
    """(anatomy, breathing state) of the first ``n`` sample patients, drawn as the generator draws them."""
    from isotox.sample.anatomy import Anatomy, draw_anatomy
    from isotox.sample.breathing import draw_breathing
    from isotox.sample.patient import _draw_histology

    out = []
    for index in range(1, n + 1):
        rng = np.random.default_rng([seed, index])
        histology = _draw_histology(rng)
        params = draw_anatomy(rng, histology, bool(rng.random() < 0.4))
        anatomy = Anatomy(params)
        state = draw_breathing(np.random.default_rng([seed, index, 29]), 0.93 * params.body_a - 9.0, 0.93 * params.body_b - 9.0,
                               anatomy.y_vertebra, anatomy.y_posterior, params.tumour.centre)
        out.append((anatomy, state))
    return out


def test_breathing_moves_the_tumour_5_to_15_mm_and_leaves_bone_where_it_is() -> None:
    """The breathing field of 40 sample patients: at the tumour centre 5-15 mm, cranio-caudal at least
    90 % of it and antero-posterior a few mm (<= 5 mm); exactly 0 on the spine (the landmarks), the ribs
    and the chest wall; never folding (Jacobian determinant of the pull-back > 0.5); and the generator's
    two directions (pull-back for rendering, Newton push for the truth) invert each other to 1e-9 mm.

    Nearest wrong answers, rejected: a rigid shift of the whole patient (moves the spine: the spine
    weight must be 0) and a field that moves the tumour less than 5 mm (what the registration tests
    could not tell from a bony match)."""
    rng = np.random.default_rng(7)
    for anatomy, state in _cohort_anatomies():
        p = anatomy.p
        c = np.asarray(p.tumour.centre)
        d = state.push(c) - c
        assert 5.0 - 1e-6 <= np.linalg.norm(d) <= 15.0 + 1e-6, np.linalg.norm(d)
        assert abs(d[2]) >= 0.9 * np.linalg.norm(d) and abs(d[1]) <= 5.0 and abs(d[0]) <= 1.5
        spine = np.array([(0.0, anatomy.y_vertebra + dy, z) for z in (-60.0, 0.0, 60.0) for dy in (-18.0, 0.0, 18.0)])
        assert np.all(state.displacement(spine) == 0.0)
        angle = rng.uniform(0, 2 * np.pi, 200)
        ribs = np.stack([0.93 * p.body_a * np.cos(angle) * 0.97, 0.93 * p.body_b * np.sin(angle) * 0.97, rng.uniform(-150, 150, 200)], axis=-1)
        skin = np.stack([p.body_a * np.cos(angle), p.body_b * np.sin(angle), rng.uniform(-150, 150, 200)], axis=-1)
        assert np.all(state.displacement(ribs) == 0.0) and np.all(state.displacement(skin) == 0.0)
        grid = np.stack(np.meshgrid(np.linspace(-180, 180, 37), np.linspace(-130, 130, 27), np.linspace(-150, 150, 7), indexing="ij"), -1).reshape(-1, 3)
        assert state.jacobian_determinant(grid).min() > 0.5
        np.testing.assert_allclose(state.pull_back(state.push(grid)), grid, atol=1e-9)
        # around the tumour, where the registration's region lies, the field does not fold either
        u = rng.normal(size=(300, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        around = state.push(c) + (p.tumour.radius(u)[:, None] + rng.uniform(-10.0, 20.0, (300, 1))) * u
        assert state.jacobian_determinant(around).min() > 0.5


def test_sample_sessions_record_their_breathing_and_show_it(sample_run: Path) -> None:
    """Per session of the sample run: the recorded breathing state reproduces the recorded tumour centre
    (pose after the breathing push, 1e-6 mm) and the rigid spine landmarks, and the images show it: the
    FDG PET's uptake-weighted tumour centroid (voxels >= 50 % of the local maximum) lies within 2.5 mm
    of ``tumour_centre_session_mm`` along the breathing direction.

    2.5 mm, half the smallest shift: the centroid of a 5.3 mm-voxel PET of a lobulated tumour with
    heterogeneous uptake (hot rim around an off-centre necrosis, or hot core) lies up to ~4 mm from the
    centre, 0.2-1.4 mm along the breathing direction (measured, SAMPLE001-002). Nearest wrong answer,
    rejected: the rigid pose alone (a generator that ignores the breathing when rendering), off by the
    whole shift (>= 5 mm) along that direction (asserted)."""
    import json

    import SimpleITK as sitk

    from isotox.geometry import RigidTransform
    from isotox.sample.breathing import Breathing

    from tests.conftest import sample_patients

    for truth, patient in sample_patients(sample_run):
        c = np.asarray(truth["tumour"]["centre_mm"])
        for key in ("fdg", "hx4_2h", "hx4_4h", "dce"):
            s = truth["perfusion"] if key == "dce" else truth["sessions"][key]
            t = s["planning_to_session"]
            pose = RigidTransform(tuple(np.radians(t["angles_deg"])), tuple(t["translation_mm"]), tuple(t["centre_mm"]))
            state = Breathing.from_dict(s["breathing"]["state"])
            np.testing.assert_allclose(pose.apply(state.push(c)), s["tumour_centre_session_mm"], atol=1e-6)
            np.testing.assert_allclose(pose.apply(np.asarray(truth["spine_landmarks_mm"])), s["spine_landmarks_session_mm"], atol=1e-9)
            assert 5.0 - 1e-6 <= s["breathing"]["tumour_shift_magnitude_mm"] <= 15.0 + 1e-6
            if key != "fdg":  # HX4 uptake peaks in the off-centre hypoxic part: its centroid is not the tumour centre
                continue
            pet = sitk.ReadImage(str(patient / "ingest" / f"{key}_pet_suv.nii.gz"))
            suv = sitk.GetArrayFromImage(pet).astype(float)
            kk, jj, ii = np.indices(suv.shape)
            pts = np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(float)
            phys = np.array(pet.GetOrigin()) + (pts * np.array(pet.GetSpacing())) @ np.array(pet.GetDirection()).reshape(3, 3).T
            centre_s = np.asarray(s["tumour_centre_session_mm"])
            near = np.linalg.norm(phys - centre_s, axis=1) <= truth["tumour"]["equivalent_radius_mm"] + 4.0
            values = suv.reshape(-1)[near]
            hot = values >= 0.5 * values.max()
            centroid = (phys[near][hot] * values[hot, None]).sum(0) / values[hot].sum()
            along = np.asarray(s["breathing"]["tumour_shift_session_mm"]) / s["breathing"]["tumour_shift_magnitude_mm"]
            assert abs((centroid - centre_s) @ along) < 2.5, (truth["patient_id"], key, centroid, centre_s)
            rigid_only = pose.apply(c)  # where a render without the breathing would put it
            assert abs((rigid_only - centre_s) @ along) >= 5.0 - 1e-6
            json.dumps(s["breathing"])  # plain JSON


def test_arms_down_sessions_show_the_arms_that_the_planning_ct_has_not(sample_run: Path) -> None:
    """A PET/CT scanned with the arms down shows a humerus beside the chest where the planning CT
    (arms raised) has air: per arms-down session, at the recorded humerus axes (planning mm, carried by
    the session's pose; z at the tumour and 40 mm either side), the session CT reads > 400 HU (bone,
    700 HU in the model, low-dose noise ~22 HU), wherever the point is inside its field of view (the
    small preset's 450 mm field cuts a wide patient's arms), and the planning CT reads < -900 HU.

    Nearest wrong answers, rejected: a generator that ignores the arm position (the session reads air or
    the field-of-view edge, < -900 HU) or draws the arms on every scan (the planning CT reads bone).
    The sample run must hold at least one arms-down session with a humerus inside its field of view,
    so the registration tests run over a scan whose body differs from the planning CT's."""
    import SimpleITK as sitk

    from isotox.geometry import RigidTransform

    from tests.conftest import sample_patients

    def hu_at(image: sitk.Image, point: np.ndarray) -> float | None:
        index = image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point))
        size = image.GetSize()
        if not all(0 <= round(i) < n for i, n in zip(index, size)):
            return None
        return float(image.GetPixel([int(round(i)) for i in index]))

    seen = 0
    for truth, patient in sample_patients(sample_run):
        planning = sitk.ReadImage(str(patient / "ingest" / "planning_ct.nii.gz"))
        z0 = truth["tumour"]["centre_mm"][2]
        for key, s in truth["sessions"].items():
            if s["arms"]["position"] != "down":
                continue
            t = s["planning_to_session"]
            pose = RigidTransform(tuple(np.radians(t["angles_deg"])), tuple(t["translation_mm"]), tuple(t["centre_mm"]))
            session_ct = sitk.ReadImage(str(patient / "ingest" / f"{key}_ct.nii.gz"))
            for x, y in s["arms"]["humerus_axes_xy_mm"]:
                for z in (z0 - 40.0, z0, z0 + 40.0):
                    point = np.array([x, y, z])
                    planning_hu = hu_at(planning, point)
                    assert planning_hu is None or planning_hu < -900.0, (truth["patient_id"], key, point, planning_hu)
                    session_hu = hu_at(session_ct, pose.apply(point[None, :])[0])
                    if session_hu is not None:
                        assert session_hu > 400.0, (truth["patient_id"], key, point, session_hu)
                        seen += 1
    assert seen >= 1, "no arms-down session with a humerus inside its field of view in the sample run"
