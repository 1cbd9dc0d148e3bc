"""The dose-painting document (``config/painting.yaml``, schema ``painting``) as typed settings.

Why a dataclass per part: the map, the optimiser and the TCP model read only their own part,
and a typo in the YAML fails at load time (schema) instead of deep inside a patient's run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from isotox.settings.documents import load_validated_yaml

Unit = Literal["absolute", "percent_of_max"]


@dataclass(frozen=True)
class Level:
    """An image level: in image units (SUV, TBR) or in percent of the GTV maximum."""

    value: float
    unit: Unit = "absolute"

    def resolve(self, image_max: float) -> float:
        return self.value * image_max / 100.0 if self.unit == "percent_of_max" else self.value

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "Level":
        return cls(float(doc["value"]), doc["unit"])


@dataclass(frozen=True)
class Strategy:
    """One painted strategy of the YAML: how its prescription map is drawn from an image."""

    name: str
    kind: Literal["numbers", "contours", "subvolume"]
    image: Literal["fdg_suv", "hx4_tbr"]
    description: str = ""
    low: Level | None = None
    high: Level | None = None
    levels: int = 5
    threshold: Level | None = None
    boost_percent: float = 0.0
    max_total_gy: float | None = None

    @classmethod
    def from_doc(cls, name: str, doc: dict[str, Any]) -> "Strategy":
        lv = {k: Level.from_doc(doc[k]) for k in ("low", "high", "threshold") if k in doc}
        return cls(name, doc["kind"], doc["image"], doc.get("description", ""), lv.get("low"), lv.get("high"), int(doc.get("levels", 5)),
                   lv.get("threshold"), float(doc.get("boost_percent", 0.0)), doc.get("max_total_gy"))


@dataclass(frozen=True)
class TcpParameters:
    """Poisson LQ TCP, population-averaged over alpha, with an Alper-Howard-Flanders oxygen effect."""

    alpha_gy: float = 0.35
    alpha_sd_gy: float = 0.0
    alpha_beta_gy: float = 10.0
    clonogen_density_per_cc: float = 1e7
    clonogens: Literal["fdg", "uniform"] = "uniform"
    oer_m: float = 3.0
    oer_k_mmhg: float = 3.0
    tbr_max: float = 3.0
    tbr_k_mmhg: float = 2.5
    po2_max_mmhg: float = 60.0

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "TcpParameters":
        return cls(float(doc["alpha_gy"]), float(doc.get("alpha_sd_gy", 0.0)), float(doc["alpha_beta_gy"]), float(doc["clonogen_density_per_cc"]),
                   doc["clonogens"], float(doc["oer"]["m"]), float(doc["oer"]["k_mmhg"]), float(doc["tbr_to_po2"]["tbr_max"]),
                   float(doc["tbr_to_po2"]["k_mmhg"]), float(doc["tbr_to_po2"]["po2_max_mmhg"]))


@dataclass(frozen=True)
class PaintingSettings:
    strategies: tuple[Strategy, ...]
    tcp: TcpParameters
    hx4_session: str = "4h"
    escalation_step_gy: float = 0.5
    beamlet_mm: float = 5.0
    organ_weight: float = 0.3
    spill_weight: float = 0.5
    sources: dict[str, str] = field(default_factory=dict)
    equal_toxicity_measure: str = "mld_gy"  # the toxicity measure the strategies are compared at (isotox.painting.equal_toxicity)

    @classmethod
    def load(cls, path: str | Path) -> "PaintingSettings":
        doc = load_validated_yaml(path, "painting")
        planning = doc.get("planning", {})
        equal = doc.get("equal_toxicity", {})
        return cls(tuple(Strategy.from_doc(n, s) for n, s in doc["strategies"].items()), TcpParameters.from_doc(doc["tcp"]),
                   doc.get("hx4_session", "4h"), float(doc.get("escalation_step_gy", 0.5)), float(planning.get("beamlet_mm", 5.0)),
                   float(planning.get("organ_weight", 0.3)), float(planning.get("spill_weight", 0.5)),
                   {"painting": doc.get("source", ""), "tcp": doc["tcp"]["source"], "oer": doc["tcp"]["oer"]["source"],
                    "tbr_to_po2": doc["tcp"]["tbr_to_po2"]["source"], "equal_toxicity": equal.get("source", "")},
                   equal.get("measure", "mld_gy"))
