"""Exception types a user can trigger with their data or configuration.

Each carries enough context (patient, file, what to do) for the message to stand alone in a
Snakemake rule log: the person reading it has no traceback context and often no Python.
"""

from __future__ import annotations

from pathlib import Path


class IsotoxError(Exception):
    """Base class of every error isotox raises on purpose."""


class ConfigError(IsotoxError):
    """A configuration, cohort sheet or protocol file does not validate.

    The message names the file, the key path inside it and the rule that failed.
    """

    def __init__(self, file: str | Path, problem: str, key: str = "") -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        where = f"{self.file}" + (f", key '{key}'" if key else "")
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        """Picklable with its fields (the default would call ``__init__`` with the message alone),
        so an error raised in a worker process arrives intact."""
        return type(self), (self.file, self.problem, self.key)


class InputDataError(IsotoxError):
    """Patient data cannot be used as given (corrupt file, missing tag, missing structure...).

    ``fix`` tells the user what to do about it; the patient id and file make it actionable
    in a cohort of hundreds.
    """

    def __init__(self, patient: str, file: str | Path, problem: str, fix: str = "") -> None:
        self.patient = patient
        self.file = str(file)
        self.problem = problem
        self.fix = fix
        text = f"patient {patient}: {self.file}: {problem}"
        if fix:
            text += f" -> {fix}"
        super().__init__(text)

    def __reduce__(self) -> tuple[type, tuple[str, str, str, str]]:
        """Picklable with its fields, as :class:`ConfigError`."""
        return type(self), (self.patient, self.file, self.problem, self.fix)
