"""The run config beyond its schema: the files it names must exist, and its cohort must be complete.

The schema says a key is a string; only a look at the file system says the protocol, ROI-name map
or cohort sheet it names is there. ``isotox validate config`` checks both, so a typo in a path
fails before a cohort run, with the key named, not hours later in one rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from isotox.errors import ConfigError
from isotox.resources import resolve_protocol
from isotox.settings.documents import load_validated_yaml


def check_run_config(doc: dict[str, Any], file: str | Path) -> None:
    """Raise :class:`ConfigError` (file and key named) for a file the config names that is missing,
    or a cohort source without its section. Relative paths are read from the working directory,
    as Snakemake reads them."""
    try:
        resolve_protocol(doc["protocol"])
    except ConfigError:
        raise ConfigError(file, f"protocol file {doc['protocol']!r} not found (give a path from the working directory, or the name of a "
                          "shipped protocol)", "protocol") from None
    if not Path(doc["roi_names"]).is_file():
        raise ConfigError(file, f"ROI-name map {doc['roi_names']!r} not found (a path from the working directory)", "roi_names")
    cohort = doc["cohort"]
    if cohort["source"] == "sheet":
        if "sheet" not in cohort:
            raise ConfigError(file, "cohort.source is 'sheet' but cohort.sheet is not set", "cohort.sheet")
        if not Path(cohort["sheet"]).is_file():
            raise ConfigError(file, f"cohort sheet {cohort['sheet']!r} not found", "cohort.sheet")
    elif "sample" not in doc:
        raise ConfigError(file, "cohort.source is 'sample' but there is no 'sample' section", "sample")


def load_run_config(path: str | Path) -> dict[str, Any]:
    """The validated run config at ``path``, with the files it names checked (:func:`check_run_config`)."""
    doc = load_validated_yaml(path, "config")
    check_run_config(doc, path)
    return doc
