"""Trial protocols as data: load, validate against the schema, then check the rules that a schema cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from isotox.errors import ConfigError
from isotox.resources import resolve_protocol
from isotox.settings.documents import load_validated_yaml

#: structures the segmentation stage derives (not in any RTSTRUCT, so not in the ROI-name map)
DERIVED_STRUCTURES = frozenset({"GTV_PET", "GTV_SUV50", "CTV", "PTV", "PTV_BOOST_A", "PTV_BOOST_B", "LUNGS", "LUNGS_MINUS_GTV",
                                "HYPOXIC_2H", "HYPOXIC_4H", "AORTA_CT", "BODY"})


def _check_structures(doc: dict[str, Any], file: Path, roi_names: str | Path | None) -> None:
    """Every structure a constraint or NTCP model names must be one isotox can have: a canonical
    name of the ROI-name map or a derived structure. A typo ('LUNG_TOTAL') would otherwise make
    every patient 'not prescribable' (a missing organ), or skip the constraint where it is optional."""
    from isotox.resources import ROI_NAMES, default_file
    from isotox.settings.roi_names import RoiNameMap

    known = DERIVED_STRUCTURES | set(RoiNameMap.from_yaml(roi_names or default_file(ROI_NAMES)).lookup.values())
    named = [(f"constraints.{k}.structure", c["structure"]) for k, c in enumerate(doc["constraints"])]
    named += [(f"ntcp.{name}.structure", model["structure"]) for name, model in (doc.get("ntcp") or {}).items()]
    for key, structure in named:
        if structure not in known:
            raise ConfigError(file, f"{structure!r} is not a known structure: use a canonical name of the ROI-name map or a derived "
                              f"structure ({', '.join(sorted(known))})", key)


def _check_range(doc: dict[str, Any], key: str, file: Path) -> None:
    rng = doc
    for part in key.split("."):
        rng = rng[part]
    if isinstance(rng, dict) and rng["min"] > rng["max"]:
        raise ConfigError(file, f"min ({rng['min']}) is greater than max ({rng['max']})", key)


def boost_ceiling_gy(protocol: dict[str, Any]) -> float:
    """Total boost dose (Gy) the isotoxic escalation may reach: the lower of ``max_total_gy`` and
    ``max_dose_per_fraction_gy`` x fractions (the protocol gives one or both)."""
    boost = protocol["boost"]
    caps = [float(boost["max_total_gy"])] if "max_total_gy" in boost else []
    if "max_dose_per_fraction_gy" in boost:
        caps.append(float(boost["max_dose_per_fraction_gy"]) * int(protocol["fractionation"]["fractions"]))
    return min(caps)


def load_protocol(path: str | Path, roi_names: str | Path | None = None) -> dict[str, Any]:
    """Return the validated protocol mapping.

    Beyond the schema: ranges ordered, the boost levels ordered (base <= test <= max) and the
    boost base equal to the protocol's maximum PTV dose, constraint ids unique, every structure
    known (to ``roi_names``, default the shipped ROI-name map, or derived by segmentation).
    """
    path = resolve_protocol(path)  # a file, or the name of a protocol that ships with isotox
    doc = load_validated_yaml(path, "protocol")
    _check_range(doc, "total_dose_gy", path)
    _check_range(doc, "fractionation.dose_per_fraction_gy", path)
    _check_range(doc, "fractionation.fractions", path)
    boost = doc.get("boost")
    if boost:
        ceiling = boost_ceiling_gy(doc)
        if not boost["base_total_gy"] <= boost["test_total_gy"] <= ceiling + 1e-9:
            raise ConfigError(path, f"boost levels must satisfy base_total_gy <= test_total_gy <= the escalation ceiling ({ceiling:g} Gy)", "boost")
        if abs(boost["base_total_gy"] - doc["total_dose_gy"]["max"]) > 1e-9:
            raise ConfigError(path, "boost.base_total_gy must equal total_dose_gy.max (the PTV dose when boosted)", "boost.base_total_gy")
    ids = [c["id"] for c in doc["constraints"]]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(path, f"constraint ids must be unique; repeated: {', '.join(dupes)}", "constraints")
    _check_structures(doc, path, roi_names)
    simon = doc.get("safety", {}).get("simon")
    if simon and simon["n1"] >= simon["n"]:
        raise ConfigError(path, "simon.n1 must be smaller than simon.n", "safety.simon.n1")
    return doc
