"""Default data files that ship with isotox: ROI-name map, beam data, protocols, schemas, config.

Why this module: the library must work after a plain ``pip install`` from any folder, so no code
may find its defaults through the current directory or through ``parents[N]`` of a source file.
The files have one home in the repository (``config/``, where the workflow and its users edit
them); the wheel carries a copy as package data under ``isotox/_defaults`` (``pyproject.toml``,
``force-include``), read here with :mod:`importlib.resources`. In a source checkout or an
editable install, where the package data folder is absent, the checkout's ``config/`` is used,
recognised by the ``pyproject.toml`` that names this project beside it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from isotox.errors import ConfigError

PACKAGE_DATA = "_defaults"
#: Relative paths (inside ``config/`` and inside the package data) of the shipped defaults.
ROI_NAMES = "roi_names.yaml"
BEAM_DATA = "beams/generic_6mv.yaml"
CONFIG = "config.yaml"
PAINTING = "painting.yaml"
PROTOCOLS = "protocols"
SCHEMAS = "schemas"


def _checkout_config() -> Path | None:
    """``config/`` of the source checkout this module was imported from, if it is one."""
    here = Path(__file__).resolve()
    for parent in here.parents[:4]:
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file() and 'name = "isotox"' in pyproject.read_text(encoding="utf-8") and (parent / "config").is_dir():
            return parent / "config"
    return None


@cache
def defaults_root() -> Path:
    """The folder holding the shipped defaults: the wheel's package data, else the checkout's config/."""
    packaged = Path(str(resources.files("isotox") / PACKAGE_DATA))
    if packaged.is_dir():
        return packaged
    checkout = _checkout_config()
    if checkout is not None:
        return checkout
    raise FileNotFoundError("isotox default data not found: neither isotox/_defaults (wheel) nor a source checkout's config/; "
                            "reinstall isotox")


def default_file(relative: str) -> Path:
    """Path of one shipped default, e.g. ``default_file(ROI_NAMES)``."""
    path = defaults_root() / relative
    if not path.exists():
        raise FileNotFoundError(f"isotox default {relative} missing from {defaults_root()}: reinstall isotox")
    return path


def shipped_protocols() -> dict[str, Path]:
    """Protocol name (file stem) -> path, for every protocol that ships with isotox."""
    return {p.stem: p for p in sorted((defaults_root() / PROTOCOLS).glob("*.yaml"))}


def resolve_protocol(value: str | Path) -> Path:
    """A protocol given as a file path, or as the name of a shipped protocol (``pet_boost``).

    A path that exists wins; a bare name (no folder, with or without ``.yaml``) selects the
    shipped protocol of that name. Anything else is an error that lists the shipped names, never
    a silent fallback to another file."""
    path = Path(value)
    if path.is_file():
        return path
    shipped = shipped_protocols()
    if path.parent == Path(".") and path.stem in shipped and path.suffix in ("", ".yaml"):
        return shipped[path.stem]
    raise ConfigError(path, f"protocol file not found; give a path, or one of the protocols that ship with isotox: {', '.join(shipped)}")
