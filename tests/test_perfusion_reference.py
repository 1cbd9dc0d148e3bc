"""Perfusion building blocks against published references.

* Parker AIF: OSIPI DCE-DSC-MRI CodeCollection reference values (tests/data/dce_reference, vendored,
  Apache-2.0), OSIPI tolerance atol 1e-4 mM, rtol 0.01.
* The exponential convolution: against the closed form for a step input, where
  ``∫_0^t c e^{-k(t-u)} du = c (1 - e^{-kt}) / k`` exactly (our recursion is exact for
  piecewise-linear input, so only rounding error remains).
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isotox.perfusion.aif import parker_aif
from isotox.perfusion.kinetics import exp_convolution, extended_tofts, patlak
from tests.reference_data import dce_csv



def test_parker_aif_matches_osipi_reference() -> None:
    ref = pd.read_csv(dce_csv("ParkerAIF_ref.csv"))
    assert len(ref) > 1000, "reference table incomplete"
    values = parker_aif(ref["time"].to_numpy(), delay_min=0.0)
    np.testing.assert_allclose(values, ref["Cb"].to_numpy(), atol=1e-4, rtol=0.01)


@settings(max_examples=40, deadline=None)
@given(st.floats(1e-4, 0.2), st.floats(0.1, 5.0))
def test_exp_convolution_of_step_is_exact(rate: float, level: float) -> None:
    t = np.array([0.0, 0.5, 3.0, 7.0, 20.0, 60.0, 180.0])  # irregular frames
    cp = np.full(t.size, level)
    cp_step = cp.copy()
    got = exp_convolution(t, cp_step, rate)[0]
    want = level * (1 - np.exp(-rate * t)) / rate
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_tofts_reduces_to_patlak_when_ve_is_huge() -> None:
    t = np.linspace(0, 180, 61)
    cp = parker_aif(t / 60.0, delay_min=0.2)
    a = extended_tofts(t, cp, [0.2], [1e6], [0.05])
    b = patlak(t, cp, [0.2], [0.05])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_model_is_linear_in_the_input() -> None:
    t = np.linspace(0, 150, 51)
    cp = parker_aif(t / 60.0)
    one = extended_tofts(t, cp, [0.25], [0.3], [0.05])
    three = extended_tofts(t, 3 * cp, [0.25], [0.3], [0.05])
    np.testing.assert_allclose(three, 3 * one, rtol=1e-12)
    assert one[0, -1] > 0 and one[0, 0] == pytest.approx(0.05 * cp[0])
