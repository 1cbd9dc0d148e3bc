"""Arterial delay: the OSIPI reference curves with the tissue arriving 2-8 s after the AIF.

The OSIPI curves (tests/data/dce_reference) are sampled every 0.5 s (QIBA extended-Tofts DRO:
1 s), so a delay that is a multiple of the sampling interval is an exact shift: the tissue
curve moves later by whole frames (zero before, the last frames dropped), which is what the
same tissue fed by an AIF arriving that much earlier would show. The reference parameters do
not change. Pass criterion, OSIPI's: |fit - ref| <= atol + rtol |ref| with the tolerances of
tests/test_perfusion_fit.py (Ktrans/PS 0.005 /min + 10 %, ve 0.05, vp 0.025, Fp 5 + 10 %), the
arterial delay within 1 s.

Nearest wrong answer: ignoring the delay (delay 0). The smallest true delay is 2 s, so the
1 s delay tolerance rejects it for every voxel (asserted), and for the models whose
parameters the delay biases (Patlak, extended Tofts, 2CXM) an undelayed fit of the same
curves fails the OSIPI tolerance (asserted too), so these tests can tell the two apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from isotox.perfusion import fit
from tests.test_perfusion_fit import OSIPI_TOL, _osipi

CASES = {
    "patlak": ("patlak_sd_0.02_delay_0.csv", "C_t", "cp_aif", {"ps": "ktrans", "vp": "vp"}),
    "tofts": ("dce_DRO_data_tofts.csv", "C", "ca", {"Ktrans": "ktrans", "ve": "ve"}),
    "etofts": ("dce_DRO_data_extended_tofts.csv", "C", "ca", {"Ktrans": "ktrans", "ve": "ve", "vp": "vp"}),
    "2cxm": ("2cxm_sd_0.001_delay_0.csv", "C_t", "cp_aif", {"fp": "fp", "ps": "ps", "vp": "vp", "ve": "ve"}),
}


def _delays(n: int, dt: float) -> np.ndarray:
    """2-8 s, spread over the voxels, as whole frames."""
    return np.round((2.0 + (np.arange(n) * 1.5) % 6.5) / dt) * dt


def _delayed(tissue: np.ndarray, frames: np.ndarray) -> np.ndarray:
    return np.stack([np.concatenate([np.zeros(m), c[: c.size - m]]) for c, m in zip(tissue, frames, strict=True)])


def _within(name: str, got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    atol, rtol = OSIPI_TOL[name]
    return np.abs(got - ref) <= atol + rtol * np.abs(ref)


def _fit_all(t: np.ndarray, tissue: np.ndarray, aifs: np.ndarray, model: str, delay: float | str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One batch where the voxels share an AIF (the 2CXM and Patlak sets), else one call per voxel."""
    if np.allclose(aifs, aifs[0]):
        r = fit(t, tissue, aifs[0], model, delay=delay)
        return r.params, r.failed
    results = [fit(t, c, a, model, delay=delay) for c, a in zip(tissue, aifs, strict=True)]
    return {k: np.concatenate([r[k] for r in results]) for k in results[0].params}, np.concatenate([r.failed for r in results])


@pytest.mark.parametrize("model", list(CASES))
def test_delayed_osipi_curves_pass_osipi_tolerances(model: str) -> None:
    csv, tissue_col, aif_col, columns = CASES[model]
    table, t, tissue, aifs = _osipi(csv, tissue_col, aif_col)
    dt = float(t[1] - t[0])
    true_delay = _delays(len(tissue), dt)
    delayed = _delayed(tissue, np.round(true_delay / dt).astype(int))
    got, failed = _fit_all(t, delayed, aifs, model, "fit")
    assert not failed.any()
    assert _within("delay", got["delay"], true_delay).all(), (true_delay, got["delay"])
    assert not _within("delay", np.zeros_like(true_delay), true_delay).any()  # the nearest wrong answer is rejected
    for ref_col, ours in columns.items():
        ref = table[ref_col].to_numpy()
        ok = _within(ours, got[ours], ref)
        assert ok.all(), f"{model} {ours}: ref {ref[~ok]}, fit {got[ours][~ok]}"
    if model != "tofts":  # the QIBA Tofts DRO's slow curves barely notice 2-8 s; the delay itself is the check there
        undelayed, _ = _fit_all(t, delayed, aifs, model, 0.0)
        assert not all(_within(ours, undelayed[ours], table[ref].to_numpy()).all() for ref, ours in columns.items())


def test_patlak_without_uptake_is_clipped_at_zero_not_failed() -> None:
    """Delayed Patlak curves whose true PS is 0: half of such noisy fits want Ktrans < 0. The fit
    must return Ktrans = 0 (flagged at the bound) with the blood volume refitted, not NaN for both.
    Nearest wrong answers: NaN (a failed fit, the old behaviour) and the unconstrained vp of a
    negative slope; vp must be within the OSIPI 0.025 of the reference."""
    table, t, tissue, aifs = _osipi("patlak_sd_0.02_delay_0.csv", "C_t", "cp_aif")
    zero = np.flatnonzero(table["ps"].to_numpy() == 0.0)
    assert zero.size >= 3
    delayed = _delayed(tissue[zero], np.full(zero.size, 10))  # 5 s
    result = fit(t, delayed, aifs[0], "patlak", delay="fit")
    assert not result.failed.any()
    assert result.at_bound is not None and result.at_bound.any()
    assert np.all(result["ktrans"][result.at_bound] == 0.0)
    assert _within("ktrans", result["ktrans"], np.zeros(zero.size)).all()
    assert _within("vp", result["vp"], table["vp"].to_numpy()[zero]).all()
    assert _within("delay", result["delay"], np.full(zero.size, 5.0)).all()
