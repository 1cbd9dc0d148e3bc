"""Matrix sizes and noise levels of the two sample presets.

'small' keeps a 12-patient cohort to a few minutes on 2 cores (CI, tutorials); 'realistic' uses
clinical matrices (planning CT 512x512x120 at 3 mm, PET ~4 mm, DCE slab 512x512x16 x 26 frames)
for benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

Size = tuple[int, int, int]
Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class Preset:
    name: str
    planning_size: Size
    planning_spacing: Spacing
    planning_supersample: int
    session_ct_size: Size
    session_ct_spacing: Spacing
    pet_size: Size
    pet_spacing: Spacing
    pet_supersample: int
    dce_size: Size
    dce_spacing: Spacing
    dce_supersample: int
    planning_noise_hu: float = 10.0
    lowdose_noise_hu: float = 22.0
    dce_noise_hu: float = 12.0
    pet_cv_at_suv1: float = 0.08
    psf_fwhm_mm: float = 6.0


PRESETS: dict[str, Preset] = {
    "small": Preset(
        name="small",
        planning_size=(112, 112, 60), planning_spacing=(4.0, 4.0, 4.0), planning_supersample=2,
        session_ct_size=(100, 100, 56), session_ct_spacing=(4.5, 4.5, 4.5),
        pet_size=(84, 84, 52), pet_spacing=(5.3, 5.3, 5.0), pet_supersample=2,
        dce_size=(96, 96, 8), dce_spacing=(3.5, 3.5, 5.0), dce_supersample=2,
    ),
    "realistic": Preset(
        name="realistic",
        planning_size=(512, 512, 120), planning_spacing=(0.977, 0.977, 3.0), planning_supersample=1,
        session_ct_size=(512, 512, 120), session_ct_spacing=(1.17, 1.17, 3.0),
        pet_size=(144, 144, 90), pet_spacing=(4.07, 4.07, 4.0), pet_supersample=3,
        dce_size=(512, 512, 16), dce_spacing=(0.977, 0.977, 5.0), dce_supersample=1,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown sample preset {name!r}; choose one of {', '.join(PRESETS)}") from None
