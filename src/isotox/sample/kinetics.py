"""Contrast kinetics of the synthetic patient, computed independently of the perfusion fitter.

The sample cohort referees isotox's DCE-CT analysis, so nothing here may come from
``isotox.perfusion``: the blood curves are written out from their published definitions, and
every tissue curve is the numerical solution (classical Runge-Kutta on a 0.05 s grid) of its
compartment equations, not a closed-form convolution. A fitter that used the wrong model, the
wrong units or a wrong convolution would disagree with these curves.

Conventions: time in seconds, concentrations in mM of contrast agent (CT enhancement is linear
in iodine concentration, so mM stand in for HU up to the scanner's HU-per-mM factor), flows in
ml/100 ml/min as reported clinically, volumes as fractions of tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

#: Integration step of the compartment equations (s): 1/20 of the shortest mean transit time used.
STEP_S = 0.05

#: Parker et al., Magn Reson Med 2006;56:993-1000, Table 1: population-average blood AIF
#: (amplitudes in mM min, widths and centres in min, washout in /min).
_PARKER = {"A1": 0.809, "s1": 0.0563, "T1": 0.17046, "A2": 0.330, "s2": 0.132, "T2": 0.365,
           "alpha": 1.050, "beta": 0.1685, "s": 38.078, "tau": 0.483}


def parker_blood_mM(t_s: Array, arrival_s: float) -> Array:
    """Parker's aortic blood curve (mM) at ``t_s``, its time origin moved to ``arrival_s``.

    Equation 1 of the paper: two Gaussian passes plus a sigmoid-gated exponential washout; the
    paper's time unit is the minute, so times are converted here.
    """
    p = _PARKER
    t = (np.asarray(t_s, dtype=float) - arrival_s) / 60.0
    first = p["A1"] / (p["s1"] * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((t - p["T1"]) / p["s1"]) ** 2)
    second = p["A2"] / (p["s2"] * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((t - p["T2"]) / p["s2"]) ** 2)
    washout = p["alpha"] * np.exp(-p["beta"] * t) / (1.0 + np.exp(-p["s"] * (t - p["tau"])))
    return first + second + washout


@dataclass(frozen=True)
class BloodPools:
    """Enhancement of the three blood pools a thoracic DCE slab shows, in the order contrast
    reaches them from an arm vein: superior vena cava, right heart + pulmonary artery, then
    (after the pulmonary transit) the left heart + aorta, which is the arterial input.

    The venous and right-heart first passes come earlier, narrower and higher (less mixed);
    after the first pass all pools share the recirculating, mixed-blood washout.
    """

    aorta_arrival_s: float
    pulmonary_transit_s: float  # right heart/pulmonary artery peak precedes the aorta's by this
    svc_lead_s: float  # the SVC peak precedes the right heart's by this

    def aorta(self, t_s: Array) -> Array:
        return parker_blood_mM(t_s, self.aorta_arrival_s)

    def _earlier_pass(self, t_s: Array, lead_s: float, width: float, height: float) -> Array:
        """The aortic curve with its first pass moved ``lead_s`` earlier, ``width`` x narrower
        and ``height`` x higher; recirculation and washout unchanged."""
        p = _PARKER
        t_first = (np.asarray(t_s, float) - (self.aorta_arrival_s - lead_s)) / 60.0
        s1 = p["s1"] * width
        first = height * p["A1"] / (p["s1"] * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((t_first - p["T1"]) / s1) ** 2)
        rest = self.aorta(t_s) - p["A1"] / (p["s1"] * np.sqrt(2 * np.pi)) * np.exp(-0.5 * (((np.asarray(t_s, float) - self.aorta_arrival_s) / 60.0 - p["T1"]) / p["s1"]) ** 2)
        return first + rest

    def right_heart(self, t_s: Array) -> Array:
        return self._earlier_pass(t_s, self.pulmonary_transit_s, 0.75, 1.25)

    def svc(self, t_s: Array) -> Array:
        return self._earlier_pass(t_s, self.pulmonary_transit_s + self.svc_lead_s, 0.55, 1.9)


@dataclass(frozen=True)
class TissueKinetics:
    """One tissue's exchange: the two-compartment exchange model (2CXM) with finite plasma flow.

    ``model`` 'patlak' (no efflux), 'etofts' (infinite flow: the extended Tofts limit) or
    '2cxm'. ``delay_s`` and ``dispersion_s`` shape the tissue's own arterial input (a later,
    smoother copy of the aortic plasma curve: vessels upstream of a tumour delay and disperse
    the bolus).
    """

    model: str
    vp: float
    ve: float = 0.0
    fp: float = 0.0  # plasma flow, ml/100 ml/min (2cxm)
    ps: float = 0.0  # permeability-surface product, ml/100 ml/min (2cxm)
    ktrans_per_min: float = 0.0  # patlak / etofts
    delay_s: float = 0.0
    dispersion_s: float = 0.0

    @property
    def extraction(self) -> float:
        """2CXM extraction fraction E = PS / (PS + Fp) (Sourbron & Buckley 2011)."""
        return self.ps / (self.ps + self.fp) if self.model == "2cxm" else float("nan")

    @property
    def ktrans(self) -> float:
        """Ktrans (/min): E Fp for the 2CXM, the model's own parameter otherwise."""
        if self.model == "2cxm":
            return self.extraction * self.fp / 100.0
        return self.ktrans_per_min

    def as_dict(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {"model": self.model, "vp": self.vp, "ve": self.ve, "ktrans_per_min": self.ktrans,
                                       "delay_s": self.delay_s, "dispersion_s": self.dispersion_s}
        if self.model == "2cxm":
            out.update(fp_ml_100ml_min=self.fp, ps_ml_100ml_min=self.ps, extraction=self.extraction)
        return out


def _rk4(derivative, state0: Array, t: Array) -> Array:  # type: ignore[no-untyped-def]
    """Classical fourth-order Runge-Kutta on the uniform grid ``t``; returns states (len(t), n)."""
    out = np.empty((t.size, state0.size))
    y = state0.astype(float)
    out[0] = y
    h = float(t[1] - t[0])
    for n in range(t.size - 1):
        k1 = derivative(n, 0.0, y)
        k2 = derivative(n, 0.5, y + 0.5 * h * k1)
        k3 = derivative(n, 0.5, y + 0.5 * h * k2)
        k4 = derivative(n, 1.0, y + h * k3)
        y = y + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        out[n + 1] = y
    return out


def tissue_curve(kin: TissueKinetics, t_fine: Array, plasma: Array) -> Array:
    """Tissue concentration (mM) on the uniform grid ``t_fine`` for arterial plasma ``plasma``.

    The tissue's own input is the plasma curve delayed by ``delay_s`` and passed through a
    first-order (exponential) dispersion; then, with Cp the tissue plasma and Ce the
    interstitium (rates per second):
      2CXM:   vp dCp/dt = Fp (Ca - Cp) - PS (Cp - Ce),   ve dCe/dt = PS (Cp - Ce)
      eTofts: Cp = Ca,  ve dCe/dt = Ktrans (Ca - Ce)
      Patlak: Cp = Ca,  d(ve Ce)/dt = Ktrans Ca  (no efflux)
    and C = vp Cp + ve Ce.
    """
    delayed = np.interp(t_fine - kin.delay_s, t_fine, plasma, left=0.0)
    # input at half steps by linear interpolation (RK4 needs the input at t, t + h/2, t + h)
    mid = np.concatenate([0.5 * (delayed[:-1] + delayed[1:]), delayed[-1:]])

    def ca_at(n: int, frac: float, state: Array) -> float:
        return float(delayed[n] if frac == 0.0 else mid[n] if frac == 0.5 else delayed[min(n + 1, delayed.size - 1)])

    tau = kin.dispersion_s
    fp, ps = kin.fp / 6000.0, kin.ps / 6000.0  # ml/100 ml/min -> /s
    kt = kin.ktrans_per_min / 60.0

    def deriv(n: int, frac: float, y: Array) -> Array:
        a = ca_at(n, frac, y)
        ca = y[0] if tau > 0 else a  # dispersed input
        dca = (a - y[0]) / tau if tau > 0 else 0.0
        if kin.model == "2cxm":
            dcp = (fp * (ca - y[1]) - ps * (y[1] - y[2])) / kin.vp
            dce = ps * (y[1] - y[2]) / kin.ve
            return np.array([dca, dcp, dce])
        if kin.model == "etofts":
            return np.array([dca, 0.0, kt * (ca - y[2]) / kin.ve if kin.ve > 0 else 0.0])
        return np.array([dca, 0.0, kt * ca])  # patlak: y[2] holds the trapped amount ve*Ce

    states = _rk4(deriv, np.zeros(3), t_fine)
    ca = states[:, 0] if tau > 0 else delayed
    if kin.model == "2cxm":
        return kin.vp * states[:, 1] + kin.ve * states[:, 2]
    if kin.model == "etofts":
        return kin.vp * ca + kin.ve * states[:, 2]
    return kin.vp * ca + states[:, 2]
