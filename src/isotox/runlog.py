"""Logging and exit codes for one workflow step: everything (progress and errors) goes to the rule's log file.

A cluster user reads ``results/logs/...`` when a patient fails; the message there must say which
patient, which file and what to do, so :class:`~isotox.errors.IsotoxError` is logged as one line,
the last line of the log, and the step exits with code 2 (bad input). Anything else is a bug: the
traceback goes to the log and the step exits with code 1.

Each failure also leaves a small record next to the log (``<log>.error.json``: stage, kind, the
first line of the error). Snakemake deletes a failed job's outputs but not this file, so the cohort
table can list the patient as failed and why; a later successful attempt removes it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from isotox.errors import IsotoxError

BAD_INPUT_EXIT, BUG_EXIT = 2, 1


def failure_record_path(log_path: str | Path) -> Path:
    """Where the failure record of the step logging to ``log_path`` lives."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name + ".error.json")


def read_failure(log_path: str | Path) -> dict[str, Any] | None:
    """The failure record of a step (None if its last attempt did not fail, or never ran)."""
    path = failure_record_path(log_path)
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):  # a record cut by a kill: the step failed, the reason is in the log
        return {"kind": "unknown", "error": f"see {log_path}", "exit_code": None}


def _write_failure(log_path: Path, kind: str, exit_code: int, error: str) -> None:
    from isotox.atomic import write_text

    record = {"stage": log_path.parent.name, "patient": log_path.stem, "kind": kind, "exit_code": exit_code, "error": error,
              "log": str(log_path), "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_text(failure_record_path(log_path), json.dumps(record, indent=2) + "\n")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def log_to_file(path: str | Path, level: int = logging.INFO) -> logging.Logger:
    """Send the ``isotox`` logger and stderr to ``path`` (created with its folder), and make an
    uncaught exception end the step with the right exit code (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    failure_record_path(path).unlink(missing_ok=True)  # a new attempt: the old failure is history
    stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the step
    sys.stderr = stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("isotox")
    root.handlers[:] = [handler]
    root.setLevel(level)

    def finish(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if isinstance(exc, IsotoxError):
            code, label = BAD_INPUT_EXIT, "bad_input"
            stream.write(f"ERROR (bad input, exit code {code}): {exc}\n")
        else:
            code, label = BUG_EXIT, "bug"
            stream.write("".join(traceback.format_exception(kind, exc, tb)))
            stream.write(f"ERROR (a bug in isotox, exit code {code}: please report it with this log): {_first_line(exc)}\n")
        stream.flush()
        _write_failure(path, label, code, _first_line(exc))
        os._exit(code)  # the interpreter would exit with 1 whatever the exception

    sys.excepthook = finish
    return root
