"""Validate YAML documents against the JSON schemas (``config/schemas``, shipped with the package).

Why our own wrapper and not ``snakemake.utils.validate``: the user needs the *file* and the
*key path* of a mistake ("config/config.yaml, key 'sample.preset': 'smal' is not one of ...").
The library must also validate protocols passed to the CLI, where Snakemake is not involved.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from isotox.errors import ConfigError

def schema_dir() -> Path:
    """Folder holding ``*.schema.yaml`` (shipped as package data; see :mod:`isotox.resources`)."""
    from isotox.resources import SCHEMAS, default_file

    return default_file(SCHEMAS)


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load ``<name>.schema.yaml`` (cached: schemas are read once per process)."""
    path = schema_dir() / f"{name}.schema.yaml"
    with path.open(encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message}; allowed keys here: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    return error.message


def validate_document(doc: Any, schema_name: str, file: str | Path) -> None:
    """Raise :class:`ConfigError` naming ``file`` and the key path of every violation."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    first = errors[0]
    problems = "; ".join(f"key '{_key_path(e)}': {_describe(e)}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    raise ConfigError(file, f"does not match {schema_name}.schema.yaml: {problems}{more}", _key_path(first))


def table_row_errors(table: Any, schema_name: str) -> Any:
    """Validate every row of a text table (a pandas DataFrame of str) against a row schema.

    Yields ``(line number in the file, record, [(column, message), ...])`` per row; empty cells
    count as absent. The caller decides whether a bad row stops the run (cohort sheet) or is
    left out and reported (clinical table).
    """
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    for line_no, row in zip(range(2, len(table) + 2), table.to_dict(orient="records")):
        record = {k: str(v).strip() for k, v in row.items() if str(v).strip() != ""}
        errors = [(".".join(map(str, e.absolute_path)) or "(row)", e) for e in validator.iter_errors(record)]
        yield line_no, record, [(column, _describe(e)) for column, e in errors]


def load_validated_yaml(path: str | Path, schema_name: str) -> dict[str, Any]:
    """Read a YAML file and validate it; errors name the file (and line, for YAML syntax)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, f"file not found (expected a {schema_name} YAML file)")
    try:
        with path.open(encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(path, f"is not valid YAML{where}: {problem}") from exc
    validate_document(doc, schema_name, path)
    return doc
