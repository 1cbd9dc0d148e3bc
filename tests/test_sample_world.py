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
