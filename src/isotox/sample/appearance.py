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
from isotox.sample.kinetics import TissueKinetics

T = Tissue

_HU = {
    T.AIR: -1000, T.SOFT: 45, T.FAT: -95, T.MEDIASTINAL_FAT: -70, T.LUNG: -840, T.RIB: 650,
    T.MYOCARDIUM: 45, T.BLOOD: 40, T.AIRWAY_WALL: 40, T.AIRWAY_LUMEN: -990, T.ESOPHAGUS: 40,
    T.VERTEBRA: 230, T.DISC: 85, T.POSTERIOR_ELEMENTS: 450, T.CANAL: 15, T.CORD: 35, T.NODE: 40,
    T.TUMOUR_VIABLE: 38, T.TUMOUR_NECROTIC: 18, T.TUMOUR_HYPOXIC: 35, T.BLOOD_VENOUS: 40, T.BLOOD_RIGHT: 40,
    T.HUMERUS: 700,
}
_TEXTURE_HU = {T.LUNG: 45.0, T.SOFT: 8.0, T.FAT: 8.0, T.MEDIASTINAL_FAT: 8.0, T.VERTEBRA: 30.0}


def _table(values: dict[Tissue, float], default: float = 0.0) -> NDArray[np.float64]:
    out = np.full(len(Tissue), default)
    for tissue, value in values.items():
        out[int(tissue)] = value
    return out


@dataclass(frozen=True)
class CtLook:
    """How one patient's CTs look: bone density and, on the contrast planning CT, the HU of each
    blood pool at the moment of the scan (arterial-phase aortas reach 150-400 HU; the vertebral
    body, 200-450 HU, overlaps that range, so a vessel finder must use shape and position)."""

    vertebra_hu: float
    contrast_hu: dict[Tissue, float]
    noise_scale: float  # multiplies the preset's noise (patient size, dose, kernel)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "CtLook":
        aorta = float(rng.uniform(150.0, 400.0))
        # venous side: brighter than the aorta early in the injection, similar later
        return cls(vertebra_hu=float(rng.uniform(200.0, 450.0)),
                   contrast_hu={T.BLOOD: aorta, T.BLOOD_RIGHT: aorta * float(rng.uniform(0.8, 1.3)),
                                T.BLOOD_VENOUS: aorta * float(rng.uniform(0.9, 1.6))},
                   noise_scale=float(rng.uniform(0.7, 1.5)))

    def hu(self, sample: AnatomySample, contrast: bool) -> NDArray[np.float64]:
        """CT numbers (HU), noiseless; ``contrast`` for the contrast-enhanced planning CT."""
        table = _table(_HU)
        table[int(T.VERTEBRA)] = self.vertebra_hu
        table[int(T.POSTERIOR_ELEMENTS)] = self.vertebra_hu + 200.0
        if contrast:
            for tissue, value in self.contrast_hu.items():
                table[int(tissue)] = value
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
            T.MYOCARDIUM: self.myocardium, T.BLOOD: self.blood, T.BLOOD_VENOUS: self.blood, T.BLOOD_RIGHT: self.blood, T.AIRWAY_WALL: 0.8, T.ESOPHAGUS: 1.8,
            T.VERTEBRA: 1.7, T.DISC: 0.9, T.POSTERIOR_ELEMENTS: 1.2, T.CANAL: 0.6, T.CORD: 1.0,
            T.NODE: self.node, T.TUMOUR_NECROTIC: 0.12 * self.tumour_peak, T.HUMERUS: 0.9,
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
            T.BLOOD: 1.0, T.BLOOD_VENOUS: 1.0, T.BLOOD_RIGHT: 1.0, T.AIRWAY_WALL: 0.9, T.ESOPHAGUS: 1.1, T.VERTEBRA: 0.9, T.DISC: 0.8,
            T.POSTERIOR_ELEMENTS: 0.8, T.CANAL: 0.7, T.CORD: 0.9, T.NODE: 1.1,
            T.TUMOUR_VIABLE: self.tbr_normoxic_tumour, T.TUMOUR_NECROTIC: 0.7, T.TUMOUR_HYPOXIC: self.tbr_hypoxic, T.HUMERUS: 0.8,
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


def draw_kinetics(rng: np.random.Generator) -> dict[Tissue, TissueKinetics]:
    """Per-tissue DCE exchange (blood pools excluded: they carry their own curves).

    The tumour has a finite plasma flow (2CXM truth, Fp 30-80 ml/100 ml/min, PS 10-30), its own
    bolus delay (0-5 s) and dispersion (0-3 s); its hypoxic part is the poorly perfused part:
    a third to a half of the flow, 60 % of the PS, half the vp, a little more delay. Normal
    tissues are mostly uptake-only (Patlak), myocardium, oesophagus and nodes exchange (Tofts).
    """
    fp, ps = float(rng.uniform(30.0, 80.0)), float(rng.uniform(10.0, 30.0))
    ve, vp = float(rng.uniform(0.25, 0.45)), float(rng.uniform(0.03, 0.07))
    delay, dispersion = float(rng.uniform(0.0, 5.0)), float(rng.uniform(0.0, 3.0))
    viable = TissueKinetics("2cxm", vp=vp, ve=ve, fp=fp, ps=ps, delay_s=delay, dispersion_s=dispersion)
    hypoxic = TissueKinetics("2cxm", vp=0.5 * vp, ve=ve, fp=fp * float(rng.uniform(0.33, 0.5)), ps=0.6 * ps,
                             delay_s=delay + float(rng.uniform(0.0, 1.5)), dispersion_s=dispersion + 1.0)
    patlak = lambda k, v: TissueKinetics("patlak", vp=v, ktrans_per_min=k)  # noqa: E731
    tofts = lambda k, e, v: TissueKinetics("etofts", vp=v, ve=e, ktrans_per_min=k)  # noqa: E731
    out = {
        T.SOFT: patlak(0.04, 0.03), T.FAT: patlak(0.01, 0.01), T.MEDIASTINAL_FAT: patlak(0.01, 0.01),
        T.LUNG: patlak(0.02, 0.15), T.RIB: patlak(0.03, 0.03), T.MYOCARDIUM: tofts(0.6, 0.25, 0.12),
        T.AIRWAY_WALL: patlak(0.03, 0.03), T.ESOPHAGUS: tofts(0.15, 0.30, 0.04), T.VERTEBRA: patlak(0.03, 0.03),
        T.DISC: patlak(0.005, 0.005), T.POSTERIOR_ELEMENTS: patlak(0.03, 0.03), T.CANAL: patlak(0.01, 0.02),
        T.CORD: patlak(0.01, 0.03), T.NODE: tofts(0.12, 0.30, 0.04), T.TUMOUR_VIABLE: viable, T.TUMOUR_HYPOXIC: hypoxic,
        T.TUMOUR_NECROTIC: tofts(0.01, 0.10, 0.002),
    }
    return out
