"""Faults of the YAML documents: the run config and the trial protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def _rewrite(good: Path, out: Path, change) -> Path:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(good.read_text())
    change(doc)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


# --- config ---------------------------------------------------------------------------------------

def config_unknown_key(good: Path, out: Path) -> Path:
    return _rewrite(good, out, lambda d: d.update(protocoll=d["protocol"]))


def config_wrong_type(good: Path, out: Path) -> Path:
    return _rewrite(good, out, lambda d: d["sample"].update(patients="twelve"))


def config_missing_protocol_file(good: Path, out: Path) -> Path:
    return _rewrite(good, out, lambda d: d.update(protocol=str(out.parent / "protocols" / "pet_boost_v2.yaml")))


def config_missing_roi_names_file(good: Path, out: Path) -> Path:
    return _rewrite(good, out, lambda d: d.update(roi_names=str(out.parent / "roi_names_local.yaml")))


def config_sheet_source_without_sheet(good: Path, out: Path) -> Path:
    def change(doc: dict[str, Any]) -> None:
        doc["cohort"] = {"source": "sheet"}
    return _rewrite(good, out, change)


def config_invalid_yaml(good: Path, out: Path) -> Path:
    out.write_text(good.read_text().replace("results:", "results: [unclosed", 1))
    return out


def config_empty_file(good: Path, out: Path) -> Path:
    out.write_text("")
    return out


# --- protocol -------------------------------------------------------------------------------------

def _constraint(index: int, **changes: Any):  # type: ignore[no-untyped-def]
    def change(doc: dict[str, Any]) -> None:
        doc["constraints"][index].update(changes)
    return change


def protocol_negative_limit(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _constraint(0, limit=-50.0))


def protocol_unknown_structure(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _constraint(1, structure="LUNG_TOTAL"))


def protocol_unknown_dose_type(good: Path, out: Path) -> Path:
    return _rewrite(good, out, _constraint(1, dose_type="biological"))


def protocol_min_above_max(good: Path, out: Path) -> Path:
    def change(doc: dict[str, Any]) -> None:
        doc["total_dose_gy"]["min"] = doc["total_dose_gy"]["max"] + 10
    return _rewrite(good, out, change)


def protocol_duplicate_constraint_id(good: Path, out: Path) -> Path:
    def change(doc: dict[str, Any]) -> None:
        doc["constraints"][1]["id"] = doc["constraints"][0]["id"]
    return _rewrite(good, out, change)


def protocol_unknown_ntcp_structure(good: Path, out: Path) -> Path:
    def change(doc: dict[str, Any]) -> None:
        first = next(iter(doc["ntcp"].values())) if isinstance(doc.get("ntcp"), dict) else doc["ntcp"][0]
        first["structure"] = "LUNG_BOTH"
    return _rewrite(good, out, change)
