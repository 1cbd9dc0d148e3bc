"""Logging for one workflow step: everything (progress and errors) goes to the rule's log file.

A cluster user reads ``results/logs/...`` when a patient fails; the message there must say which
patient, which file and what to do, so :class:`~isotox.errors.IsotoxError` is logged as one line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def log_to_file(path: str | Path, level: int = logging.INFO) -> logging.Logger:
    """Send the ``isotox`` logger and stderr to ``path`` (created with its folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the step
    sys.stderr = stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("isotox")
    root.handlers[:] = [handler]
    root.setLevel(level)
    return root
