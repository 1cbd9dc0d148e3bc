"""Map the ROI names clinics use onto canonical structure names.

Clinics spell the same organ many ways ('Esophagus', 'Oesophagus', 'ESO', 'Slokdarm'); every
later stage asks for canonical names only, so the mapping happens once, from config/roi_names.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from isotox.errors import ConfigError
from isotox.settings.documents import load_validated_yaml


def normalise_roi_name(name: str) -> str:
    """Case-fold and drop spaces, underscores, hyphens and dots: 'Lung_L' == 'lung l' == 'LUNG-L'."""
    return re.sub(r"[\s_\-.]+", "", name).casefold()


@dataclass(frozen=True)
class RoiNameMap:
    """Synonym table; ``canonical(name)`` gives the canonical name or None when unmapped."""

    lookup: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RoiNameMap":
        doc = load_validated_yaml(path, "roi_names")
        lookup: dict[str, str] = {}
        for canonical, entry in doc["structures"].items():
            for synonym in [canonical, *entry["synonyms"]]:
                key = normalise_roi_name(synonym)
                previous = lookup.get(key)
                if previous is not None and previous != canonical:
                    raise ConfigError(path, f"synonym {synonym!r} maps to both {previous} and {canonical}", f"structures.{canonical}")
                lookup[key] = canonical
        return cls(lookup)

    def canonical(self, name: str) -> str | None:
        return self.lookup.get(normalise_roi_name(name))
