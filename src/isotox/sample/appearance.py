"""What each tissue looks like in each modality: HU, FDG SUV, HX4 tumour-to-blood ratio, DCE kinetics.

Values are typical literature magnitudes (HU of lung about -850, myocardial FDG SUV 2-8, HX4
hypoxic TBR 1.5-2.4 rising from 2 h to 4 h, tumour Ktrans 0.1-0.4 /min), varied per patient so
the cohort is not twenty copies of one case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from isotox.sample.anatomy import AnatomySample, Tissue

T = Tissue

_HU = {
    T.AIR: -1000, T.SOFT: 45, T.FAT: -95, T.MEDIASTINAL_FAT: -70, T.LUNG: -840, T.RIB: 650,
    T.MYOCARDIUM: 45, T.BLOOD: 40, T.AIRWAY_WALL: 40, T.AIRWAY_LUMEN: -990, T.ESOPHAGUS: 40,
    T.VERTEBRA: 230, T.DISC: 85, T.POSTERIOR_ELEMENTS: 450, T.CANAL: 15, T.CORD: 35, T.NODE: 40,
    T.TUMOUR_VIABLE: 38, T.TUMOUR_NECROTIC: 18, T.TUMOUR_HYPOXIC: 35,
}
_TEXTURE_HU = {T.LUNG: 45.0, T.SOFT: 8.0, T.FAT: 8.0, T.MEDIASTINAL_FAT: 8.0, T.VERTEBRA: 30.0}


def _table(values: dict[Tissue, float], default: float = 0.0) -> NDArray[np.float64]:
    out = np.full(len(Tissue), default)
    for tissue, value in values.items():
        out[int(tissue)] = value
    return out


def hu(sample: AnatomySample, contrast_blood_hu: float | None = None) -> NDArray[np.float64]:
    """CT numbers (HU), noiseless; ``contrast_blood_hu`` for a contrast-enhanced planning CT."""
    table = _table(_HU)
    if contrast_blood_hu is not None:
        table[int(T.BLOOD)] = contrast_blood_hu
    texture = _table(_TEXTURE_HU)
    return table[sample.tissue] + texture[sample.tissue] * sample.texture


@dataclass(frozen=True)
class FdgUptake:
    """Patient-specific FDG SUVs; the tumour is heterogeneous (hot core, or hot rim around necrosis)."""

    tumour_peak: float
    hot_rim: bool
    myocardium: float
    blood: float
    node: float

    @classmethod
    def draw(cls, rng: np.random.Generator, hot_rim: bool) -> "FdgUptake":
        return cls(
            tumour_peak=float(rng.uniform(8.0, 18.0)), hot_rim=hot_rim,
            myocardium=float(rng.uniform(2.0, 8.0)), blood=float(rng.uniform(1.5, 2.1)),
            node=float(rng.uniform(4.0, 8.0)),
        )

    def tumour_profile(self, rho: NDArray[np.float64]) -> NDArray[np.float64]:
        """SUV of viable tumour versus normalised radius (max = tumour_peak)."""
        if self.hot_rim:
            return self.tumour_peak * (0.25 + 0.75 * np.exp(-(((rho - 0.72) / 0.25) ** 2)))
        return self.tumour_peak * (1.0 - 0.75 * np.clip(rho, 0, 1) ** 1.5)

    def suv(self, sample: AnatomySample) -> NDArray[np.float64]:
        table = _table({
            T.SOFT: 0.75, T.FAT: 0.35, T.MEDIASTINAL_FAT: 0.5, T.LUNG: 0.4, T.RIB: 0.9,
            T.MYOCARDIUM: self.myocardium, T.BLOOD: self.blood, T.AIRWAY_WALL: 0.8, T.ESOPHAGUS: 1.8,
            T.VERTEBRA: 1.7, T.DISC: 0.9, T.POSTERIOR_ELEMENTS: 1.2, T.CANAL: 0.6, T.CORD: 1.0,
            T.NODE: self.node, T.TUMOUR_NECROTIC: 0.12 * self.tumour_peak,
        })
        out = table[sample.tissue]
        viable = (sample.tissue == T.TUMOUR_VIABLE) | (sample.tissue == T.TUMOUR_HYPOXIC)
        out[viable] = self.tumour_profile(sample.rho[viable])
        return out


@dataclass(frozen=True)
class Hx4Uptake:
    """HX4 at one time point: blood SUV and tumour-to-blood ratios (TBR) per tissue."""

    blood_suv: float
    tbr_hypoxic: float
    tbr_normoxic_tumour: float

    def suv(self, sample: AnatomySample) -> NDArray[np.float64]:
        tbr = _table({
            T.SOFT: 1.0, T.FAT: 0.5, T.MEDIASTINAL_FAT: 0.6, T.LUNG: 0.45, T.RIB: 0.8, T.MYOCARDIUM: 1.05,
            T.BLOOD: 1.0, T.AIRWAY_WALL: 0.9, T.ESOPHAGUS: 1.1, T.VERTEBRA: 0.9, T.DISC: 0.8,
            T.POSTERIOR_ELEMENTS: 0.8, T.CANAL: 0.7, T.CORD: 0.9, T.NODE: 1.1,
            T.TUMOUR_VIABLE: self.tbr_normoxic_tumour, T.TUMOUR_NECROTIC: 0.7, T.TUMOUR_HYPOXIC: self.tbr_hypoxic,
        })
        return self.blood_suv * tbr[sample.tissue]


def draw_hx4(rng: np.random.Generator) -> dict[str, Hx4Uptake]:
    """HX4 at 2 h and 4 h after one injection: blood clears, hypoxic contrast rises."""
    blood_2h = float(rng.uniform(0.9, 1.2))
    tbr_2h = float(rng.uniform(1.55, 1.85))
    return {
        "hx4_2h": Hx4Uptake(blood_suv=blood_2h, tbr_hypoxic=tbr_2h, tbr_normoxic_tumour=1.10),
        "hx4_4h": Hx4Uptake(blood_suv=0.78 * blood_2h, tbr_hypoxic=tbr_2h * float(rng.uniform(1.15, 1.35)), tbr_normoxic_tumour=1.15),
    }


@dataclass(frozen=True)
class Kinetics:
    """Tracer-kinetic parameters of one tissue (Ktrans /min, ve, vp fractions)."""

    model: str  # 'etofts' or 'patlak'
    ktrans_per_min: float
    ve: float
    vp: float


def draw_kinetics(rng: np.random.Generator, hct: float) -> dict[Tissue, Kinetics]:
    """Per-tissue DCE parameters; tumour by extended Tofts, normal tissues mostly Patlak.

    Blood is modelled as 'all plasma space': C_blood = (1 - Hct) Cp, i.e. vp = 1 - Hct.
    """
    viable = Kinetics("etofts", float(rng.uniform(0.15, 0.35)), float(rng.uniform(0.25, 0.45)), float(rng.uniform(0.03, 0.07)))
    return {
        T.SOFT: Kinetics("patlak", 0.04, 0.0, 0.03), T.FAT: Kinetics("patlak", 0.01, 0.0, 0.01),
        T.MEDIASTINAL_FAT: Kinetics("patlak", 0.01, 0.0, 0.01), T.LUNG: Kinetics("patlak", 0.02, 0.0, 0.15),
        T.RIB: Kinetics("patlak", 0.03, 0.0, 0.03), T.MYOCARDIUM: Kinetics("etofts", 0.6, 0.25, 0.12),
        T.BLOOD: Kinetics("patlak", 0.0, 0.0, 1.0 - hct), T.AIRWAY_WALL: Kinetics("patlak", 0.03, 0.0, 0.03),
        T.ESOPHAGUS: Kinetics("etofts", 0.15, 0.30, 0.04), T.VERTEBRA: Kinetics("patlak", 0.03, 0.0, 0.03),
        T.DISC: Kinetics("patlak", 0.005, 0.0, 0.005), T.POSTERIOR_ELEMENTS: Kinetics("patlak", 0.03, 0.0, 0.03),
        T.CANAL: Kinetics("patlak", 0.01, 0.0, 0.02), T.CORD: Kinetics("patlak", 0.01, 0.0, 0.03),
        T.NODE: Kinetics("etofts", 0.12, 0.30, 0.04), T.TUMOUR_VIABLE: viable,
        T.TUMOUR_HYPOXIC: Kinetics("etofts", 0.5 * viable.ktrans_per_min, viable.ve, 0.5 * viable.vp),
        T.TUMOUR_NECROTIC: Kinetics("etofts", 0.01, 0.10, 0.002),
    }
