"""A commissioned photon beam: depth dose in radiological depth and the lateral dose spread.

The model is a primary + scatter decomposition (the classic TMR / scatter-maximum-ratio split of
Khan's *Physics of Radiation Therapy*, ch. 9-10), written so that the product of the tissue-maximum
ratio and the phantom-scatter factor has one closed form::

    D(d, s) / D_ref  =  P(d) * (1 + S(d, s)) / (1 + S(d_max, s_ref))

    P(d)    = exp(-mu (d - d_max)) * (1 - exp(-beta d)) / (1 - exp(-beta d_max))     primary
    S(d, s) = A (1 - exp(-s / s_c)) (1 - exp(-d / lam))                                scatter

``d`` is the radiological (water-equivalent) depth in cm and ``s`` the side of the equivalent square
field *at that depth* (cm). The primary attenuates exponentially after the electron build-up
(``beta`` is solved so the reference field's maximum lies at ``d_max``); the scatter builds up with
depth over ``lam`` and grows with the field, saturating over ``s_c``. The five parameters mu, A, lam,
s_c, beta are *commissioned*, as in any TPS, from the beam data a physicist has for every linac: the
depth of maximum, the 10 x 10 cm2 PDD at SSD 100 cm and PDD(10) of a small and a large field
(``commission``). The geometry (inverse square,
field divergence) is applied by the engine, not folded into the model.

Lateral spread: the dose profile across a field edge is the aperture convolved with a double
Gaussian: a narrow core sigma(d) = sqrt(sigma0^2 + (k d)^2 + sigma_e^2 (1/rho^2 - 1)) (source size,
phantom scatter growing with depth, and the lateral range of secondary electrons, which scales as
1/density and widens the penumbra in lung) and a broad, low scatter tail that carries the dose
outside the field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import optimize

FloatArray = NDArray[np.float64]

#: 80-20 % width of an edge blurred by a Gaussian of sigma 1: 2 x 0.8416 (the normal quantiles).
PENUMBRA_80_20_PER_SIGMA = 1.6832


def _real(values: Any) -> NDArray[np.floating]:
    """``values`` as a floating array: float32 arrays stay float32 (the engine evaluates the model on
    millions of fan voxels in float32), anything else becomes float64."""
    array = np.asarray(values)
    return array if array.dtype in (np.float32, np.float64) else array.astype(float)


@dataclass(frozen=True)
class BeamData:
    """What the user supplies for a beam (``config/beams/*.yaml``): reference data and lateral terms."""

    name: str
    source_axis_distance_mm: float
    d_max_cm: float
    pdd_10x10: dict[float, float]  # depth (cm) -> percent depth dose, 10 x 10 cm2 at SSD 100 cm
    pdd10_by_field: dict[float, float]  # square field side (cm) -> PDD at 10 cm, SSD 100 cm
    sigma0_mm: float  # lateral core at the surface (source size, collimation)
    sigma_depth_mm_per_cm: float  # growth of the core with depth in water
    sigma_electron_mm: float  # lateral range of secondary electrons in water (scaled by 1/density)
    tail_fraction: float  # share of the broad scatter tail in the lateral kernel
    tail_sigma_mm: float
    source: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BeamData":
        lateral = data["lateral"]
        return cls(
            name=str(data["name"]), source_axis_distance_mm=float(data["source_axis_distance_mm"]), d_max_cm=float(data["d_max_cm"]),
            pdd_10x10={float(k): float(v) for k, v in data["pdd_10x10_ssd100"].items()},
            pdd10_by_field={float(k): float(v) for k, v in data.get("pdd10_ssd100_by_field", {}).items()},
            sigma0_mm=float(lateral["sigma0_mm"]), sigma_depth_mm_per_cm=float(lateral["sigma_depth_mm_per_cm"]),
            sigma_electron_mm=float(lateral["sigma_electron_mm"]), tail_fraction=float(lateral["tail_fraction"]),
            tail_sigma_mm=float(lateral["tail_sigma_mm"]),
            source=str(data.get("source", "")),
        )


@dataclass(frozen=True)
class BeamModel:
    """Commissioned parameters; every method takes depths in cm (water-equivalent) and fields in cm."""

    data: BeamData
    mu_per_cm: float
    beta_per_cm: float
    scatter_amplitude: float
    scatter_buildup_cm: float
    scatter_saturation_cm: float
    residual_pdd_percent: float = 0.0  # worst |fit - data| of the commissioning PDD points

    def primary(self, depth_cm: FloatArray) -> FloatArray:
        d = np.maximum(_real(depth_cm), 0.0)
        dm, mu, beta = float(self.data.d_max_cm), float(self.mu_per_cm), float(self.beta_per_cm)  # Python floats keep float32 float32
        return np.exp(-mu * (d - dm)) * (1.0 - np.exp(-beta * d)) / (1.0 - float(np.exp(-beta * dm)))

    def scatter(self, depth_cm: FloatArray, field_cm: FloatArray) -> FloatArray:
        d = np.maximum(_real(depth_cm), 0.0)
        s = np.maximum(_real(field_cm), 0.0)
        return float(self.scatter_amplitude) * (1.0 - np.exp(-s / float(self.scatter_saturation_cm))) * (1.0 - np.exp(-d / float(self.scatter_buildup_cm)))

    def depth_dose(self, depth_cm: FloatArray, field_cm: FloatArray) -> FloatArray:
        """Dose per unit fluence at radiological depth d for the equivalent square s at that depth,
        relative to d_max of the 10 x 10 reference field (TMR x Sp in the classic formalism)."""
        ref = 1.0 + float(self.scatter(self.data.d_max_cm, 10.0))
        return self.primary(depth_cm) * (1.0 + self.scatter(depth_cm, field_cm)) / ref

    def pdd(self, depth_cm: FloatArray, field_cm: float = 10.0, ssd_cm: float = 100.0) -> FloatArray:
        """Percent depth dose on the central axis in water at ``ssd_cm`` (field defined at the surface)."""
        d = np.asarray(depth_cm, dtype=float)
        dm = self.data.d_max_cm
        def dose(x: FloatArray) -> FloatArray:
            return self.depth_dose(x, field_cm * (ssd_cm + x) / ssd_cm) / (ssd_cm + x) ** 2
        return 100.0 * dose(d) / dose(np.asarray(dm))

    def core_sigma_mm(self, depth_cm: FloatArray, density: FloatArray | float = 1.0) -> FloatArray:
        """Lateral core sigma at depth; ``density`` (relative electron density) widens it in lung."""
        b = self.data
        # sigma0^2 + (k d)^2 + sigma_e^2 max(1 / rho^2 - 1, 0), in place: the engine calls it on millions of fan voxels
        electron = np.asarray(np.clip(_real(density), 0.05, None))
        np.square(electron, out=electron)
        np.divide(1.0, electron, out=electron)
        electron -= 1.0
        np.maximum(electron, 0.0, out=electron)
        electron *= b.sigma_electron_mm**2
        variance = np.asarray(b.sigma_depth_mm_per_cm * _real(depth_cm))
        np.square(variance, out=variance)
        variance += b.sigma0_mm**2
        variance = np.asarray(variance + electron)  # broadcast shapes of depth and density
        return np.sqrt(variance, out=variance)[()]  # a scalar for scalar arguments, as before

    def summary(self) -> dict[str, Any]:
        return {"beam": self.data.name, "mu_per_cm": self.mu_per_cm, "beta_per_cm": self.beta_per_cm, "scatter_amplitude": self.scatter_amplitude,
                "scatter_buildup_cm": self.scatter_buildup_cm,
                "scatter_saturation_cm": self.scatter_saturation_cm, "commissioning_residual_pdd_percent": self.residual_pdd_percent,
                "source": self.data.source}


def _beta_for_dmax(mu: float, amplitude: float, lam: float, saturation: float, data: BeamData) -> float:
    """The build-up coefficient that puts the reference field's maximum at d_max (derivative zero)."""
    dm = data.d_max_cm

    def slope(beta: float) -> float:
        model = BeamModel(data, mu, beta, amplitude, lam, saturation)
        h = 1e-4
        return float(model.pdd(dm + h) - model.pdd(dm - h))

    return float(optimize.brentq(slope, 0.3, 30.0))


def commission(data: BeamData) -> BeamModel:
    """Fit mu, A, lam and s_c (least squares) to the reference PDD points deeper than d_max and to the
    PDD(10) of other field sizes; beta follows from d_max.

    The build-up region is not fitted: the model has no electron contamination, so its surface dose
    is not meaningful (the engine states this)."""
    depths = np.array(sorted(d for d in data.pdd_10x10 if d > data.d_max_cm))
    measured = np.array([data.pdd_10x10[d] for d in depths])
    fields = np.array(sorted(data.pdd10_by_field))
    measured_fields = np.array([data.pdd10_by_field[f] for f in fields])
    if depths.size + fields.size < 4 or depths.size < 2:
        raise ValueError(f"beam {data.name}: commissioning needs >= 2 PDD depths beyond d_max and >= 4 points in all")

    def model_for(p: FloatArray) -> BeamModel:
        mu, amplitude, lam, saturation = p
        beta = _beta_for_dmax(mu, amplitude, lam, saturation, data)
        return BeamModel(data, mu, beta, amplitude, lam, saturation)

    def residual(p: FloatArray) -> FloatArray:
        model = model_for(p)
        by_field = [float(model.pdd(10.0, f)) for f in fields]
        return np.concatenate([model.pdd(depths) - measured, np.asarray(by_field) - measured_fields])

    fit = optimize.least_squares(residual, x0=[0.045, 0.3, 8.0, 12.0], bounds=([0.01, 0.0, 0.5, 1.0], [0.1, 3.0, 60.0, 60.0]))
    model = model_for(fit.x)
    return replace(model, residual_pdd_percent=float(np.max(np.abs(residual(fit.x)))))


def penumbra_80_20_mm(sigma_mm: float | FloatArray) -> float | FloatArray:
    return PENUMBRA_80_20_PER_SIGMA * sigma_mm
