"""A 4D planning CT: ten respiratory phases over one breathing cycle, and their average.

Clinics that plan on 4D CT export the phase series (0 %, 10 %, ... 90 %), an average intensity
projection (AVE-IP) and often a maximum intensity projection (MIP), all in one study and one frame
of reference; the plan and the contours are on the average. The pipeline must then pick the
average as the planning CT (not a phase, not the MIP), and the tumour it registers the PETs onto
is blurred along its motion path. The sample writes that export for some patients.

Model: the planning frame's anatomy is the mid-position (the cycle's time-mean state), phase
``k`` of ``n`` is the breathing state ``a_k * S`` with ``a_k = cos(2 pi k / n) / 2`` (:class:`
isotox.sample.breathing.Breathing`), so the phase amplitudes sum to zero over the cycle: 0 % is
peak inspiration (``S`` points caudal: the diaphragm descends), 50 % peak expiration, and the
peak-to-peak tumour motion is ``|push_0(c) - push_{n/2}(c)|``. Real breathing dwells longer at
expiration; a symmetric cycle keeps the mid-position at the contoured anatomy, so the contours
and every other truth stay those of the planning frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from isotox.sample.breathing import Breathing, draw_breathing

PHASES = 10


def has_four_d(index: int) -> bool:
    """Patients 4, 16, 28...: planned on the average of a 4D CT (all their structures are contoured,
    so the contours on the average are the only ones; every cohort of 4 or more has one). One in
    twelve: ten more planning CTs cost ~55 CPU s per small patient (twice a patient's generation)."""
    return index % 12 == 4


@dataclass(frozen=True)
class BreathingCycle:
    """One breathing cycle: the full inspiration-to-expiration state and the number of phases."""

    full: Breathing  # the breathing state at a = 1 (peak inspiration is a = +1/2)
    phases: int = PHASES

    @classmethod
    def draw(cls, rng: np.random.Generator, rib_a: float, rib_b: float, y_vertebra: float, y_posterior: float,
             tumour_centre: tuple[float, float, float]) -> "BreathingCycle":
        """Peak-to-peak tumour motion 5-15 mm (as :func:`draw_breathing` draws a session's offset),
        oriented so that inspiration moves the content caudally (-z)."""
        state = draw_breathing(rng, rib_a, rib_b, y_vertebra, y_posterior, tumour_centre)
        if state.shift_mm[2] > 0:
            state = replace(state, shift_mm=tuple(-v for v in state.shift_mm))  # type: ignore[arg-type]
        return cls(state)

    def amplitude(self, k: int) -> float:
        return 0.5 * math.cos(2.0 * math.pi * k / self.phases)

    def phase(self, k: int) -> Breathing:
        """Phase ``k`` (0 = peak inspiration) as a breathing state relative to the mid-position."""
        a = self.amplitude(k)
        return replace(self.full, shift_mm=tuple(a * v for v in self.full.shift_mm))  # type: ignore[arg-type]

    def label(self, k: int) -> str:
        return f"{round(100 * k / self.phases)}%"

    def tumour_positions(self, centre: tuple[float, float, float]) -> NDArray[np.float64]:
        """The tumour centre in every phase (planning mm), (phases, 3)."""
        c = np.asarray(centre, dtype=float)
        return np.array([self.phase(k).push(c) for k in range(self.phases)])

    def truth(self, centre: tuple[float, float, float]) -> dict[str, Any]:
        positions = self.tumour_positions(centre)
        half = self.phases // 2
        return {
            "phases": self.phases, "phase_labels": [self.label(k) for k in range(self.phases)],
            "phase_amplitudes": [self.amplitude(k) for k in range(self.phases)],
            "full_state": self.full.as_dict(),
            "model": "phase k: breathing state shift = a_k * full_state.shift_mm, a_k = cos(2 pi k / phases) / 2, "
                     "relative to the planning frame (the mid-position); see isotox/sample/four_d.py",
            "tumour_centre_by_phase_mm": positions.tolist(),
            "tumour_peak_to_peak_mm": float(np.linalg.norm(positions[0] - positions[half])),
            "tumour_mean_position_mm": positions.mean(axis=0).tolist(),
        }
