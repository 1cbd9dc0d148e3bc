"""Planning settings (config ``planning``), with the defaults a 3-D conformal lung plan uses."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

import yaml

from isotox.dose.beam_model import BeamData, BeamModel, commission
from isotox.dose.beams import equally_spaced_gantry_angles
from isotox.dose.density import DEFAULT_HU_TO_RED, validate_curve
from isotox.resources import BEAM_DATA, default_file

DoseSource = Literal["auto", "engine", "tps"]
WeightMode = Literal["beam", "beamlet"]


@dataclass
class PlanningSettings:
    dose_source: DoseSource = "auto"  # auto: the ingested TPS RTDOSE when there is one, else the engine
    beam_data: str = field(default_factory=lambda: str(default_file(BEAM_DATA)))  # shipped generic 6 MV data
    beams: int = 7  # equally spaced coplanar beams from gantry 0 (when gantry_angles_deg is empty)
    gantry_angles_deg: list[float] = field(default_factory=list)
    dose_grid_mm: float = 3.0
    aperture_margin_mm: float = 10.0  # BEV margin from the target to the field edge (penumbra; wider in lung)
    fan_pixel_mm: float = 2.0  # lateral resolution of the ray grid on the isocentre plane
    ray_step_mm: float = 2.0
    organ_weight: float = 0.3  # NNLS penalty on organ-at-risk dose relative to target rows
    weights: WeightMode = "beamlet"  # beamlet: a fluence map per beam (IMRT-like); beam: one weight per open field (3-D CRT)
    beamlet_mm: float = 10.0  # beamlet size on the isocentre plane (an MLC leaf pair and a 1 cm step)
    fluence_smoothing: float = 0.05  # penalty on fluence differences between neighbouring beamlets
    supersample: list[int] = field(default_factory=lambda: [2, 2, 2])  # DVH sub-voxels per axis
    tumour_alpha_beta_gy: float = 10.0  # EQD2 of the prescription
    hu_to_red: list[list[float]] = field(default_factory=lambda: [list(p) for p in DEFAULT_HU_TO_RED])

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> "PlanningSettings":
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown planning setting(s): {', '.join(unknown)}")
        settings = cls(**section)
        validate_curve(settings.hu_to_red)
        return settings

    def angles(self) -> list[float]:
        return [float(a) for a in self.gantry_angles_deg] or equally_spaced_gantry_angles(self.beams)

    def beam_model(self) -> BeamModel:
        with open(self.beam_data, encoding="utf-8") as handle:
            return commission(BeamData.from_dict(yaml.safe_load(handle)))
