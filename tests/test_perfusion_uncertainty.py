"""The 95 % intervals of ROI fits (``isotox.perfusion.uncertainty``) against scipy's ``curve_fit``
covariance on a textbook model written here, and the identifiability verdicts they give."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

from isotox.perfusion import fit
from isotox.perfusion.uncertainty import MAX_CI_FACTOR, ci95_factors, undetermined

T = np.arange(0.0, 150.0, 0.5)


def _plasma(t: np.ndarray) -> np.ndarray:
    """A gamma-variate first pass plus a slow recirculation (mM), arriving at 10 s."""
    s = np.clip(t - 10.0, 0.0, None)
    return 6.0 * (s / 6.0) ** 2 * np.exp(2.0 - s / 3.0) / 4.0 + 0.6 * (1.0 - np.exp(-s / 30.0))


def _etofts_textbook(t: np.ndarray, ktrans_min: float, ve: float, vp: float) -> np.ndarray:
    """vp Cp(t) + Ktrans int_0^t Cp(u) exp(-Ktrans/ve (t - u)) du, by the trapezoid rule per t."""
    cp = _plasma(t)
    k, kep = ktrans_min / 60.0, ktrans_min / ve / 60.0
    out = np.empty_like(t)
    for i, ti in enumerate(t):
        out[i] = vp * cp[i] + k * np.trapezoid(cp[: i + 1] * np.exp(-kep * (ti - t[: i + 1])), t[: i + 1])
    return out


def test_interval_matches_curve_fit_covariance_on_a_textbook_model() -> None:
    """Extended Tofts, Ktrans 0.2 /min, ve 0.3, vp 0.05, 300 frames, noise sd 0.004 mM (seeded).
    The reference is scipy ``curve_fit`` (absolute_sigma=False: the residual variance scales the
    covariance) on the textbook model above; its SE(log p) = SE(p) / p. Tolerance 10 % of SE (the
    two discretisations of the convolution differ by < 1e-4 of the signal).

    Nearest wrong answer: the unscaled covariance (J^T J)^-1 without the residual variance, i.e.
    an interval that ignores the noise: off by a factor 1/s = 250 here, rejected."""
    rng = np.random.default_rng(5)
    truth = (0.2, 0.3, 0.05)
    y = _etofts_textbook(T, *truth) + rng.normal(0.0, 0.004, T.size)
    popt, pcov = curve_fit(_etofts_textbook, T, y, p0=truth)
    ref_se = np.sqrt(np.diag(pcov)) / popt
    result = fit(T, y, _plasma(T), "etofts")
    values = {k: float(v[0]) for k, v in result.params.items()}
    factors = ci95_factors(T, y, _plasma(T), "etofts", values, 0.0, delay_fitted=False)
    ours = {n: np.log(factors[n]) / 1.959964 for n in ("ktrans", "ve", "vp")}
    for i, name in enumerate(("ktrans", "ve", "vp")):
        assert values[name] == pytest.approx(popt[i], rel=0.01), name
        assert ours[name] == pytest.approx(ref_se[i], rel=0.10), (name, ours[name], ref_se[i])
        resid = y - result.fitted[0]
        s = float(np.sqrt(resid @ resid / (T.size - 3)))
        assert abs(ours[name] / s - ref_se[i]) > 0.5 * ref_se[i]  # the unscaled interval is far off
    assert undetermined(factors) == []


def test_a_parameter_the_curve_cannot_see_is_undetermined() -> None:
    """2CXM on a curve made with a very high plasma flow (the extended Tofts limit): Fp changes the
    curve by far less than the noise, so its interval spans more than a factor 2 (or is infinite),
    while PS (~Ktrans) and ve are determined. Nearest wrong answer: Fp reported as a measurement."""
    rng = np.random.default_rng(11)
    cp = _plasma(T)
    y = _etofts_textbook(T, 0.2, 0.3, 0.05) + rng.normal(0.0, 0.01, T.size)
    result = fit(T, y, cp, "2cxm")
    values = {k: float(v[0]) for k, v in result.params.items()}
    factors = ci95_factors(T, y, cp, "2cxm", values, 0.0, delay_fitted=False)
    loose = undetermined(factors)
    assert "fp" in loose, factors
    assert factors["ve"] <= MAX_CI_FACTOR and "ve" not in loose, factors


def test_fitted_delay_widens_the_intervals() -> None:
    """The same curve with the delay as a free parameter: every interval is at least as wide as with
    the delay known (adding a parameter can only add variance in the linearised covariance)."""
    rng = np.random.default_rng(3)
    cp = _plasma(T)
    y = _etofts_textbook(T, 0.2, 0.3, 0.05) + rng.normal(0.0, 0.004, T.size)
    values = {k: float(v[0]) for k, v in fit(T, y, cp, "etofts").params.items()}
    known = ci95_factors(T, y, cp, "etofts", values, 1.0, delay_fitted=False)
    free = ci95_factors(T, y, cp, "etofts", values, 1.0, delay_fitted=True)
    for name in ("ktrans", "ve", "vp"):
        assert free[name] >= known[name] * (1 - 1e-9), name
