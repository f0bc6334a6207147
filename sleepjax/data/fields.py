"""Declarative task-config fields: default, type and doc, with one type checker for all tasks."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

# Field kinds.
INT = "int"
BOOL = "bool"
INTS = "tuple of ints"
STR = "str"
PATHS = "comma-separated paths / globs (str or sequence of str)"


@dataclasses.dataclass(frozen=True)
class Field:
    default: Any
    kind: str
    doc: str


def fail(key: str, message: str, value: Any) -> ValueError:
    """The one error format of task configs: ``task.<key>: <message> (got <value>)``."""
    return ValueError(f"task.{key}: {message} (got {value!r})")


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def coerce(key: str, field: Field, value: Any) -> Any:
    """Checks ``value`` against the field's kind and returns it as a plain Python value."""
    if field.kind == INT:
        if not is_int(value):
            raise fail(key, "must be an int", value)
        return int(value)
    if field.kind == BOOL:
        if not isinstance(value, (bool, np.bool_)):
            raise fail(key, "must be a bool", value)
        return bool(value)
    if field.kind == INTS:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise fail(key, "must be a tuple of ints", value)
        items = tuple(value)
        if not items or not all(is_int(v) for v in items):
            raise fail(key, "must be a non-empty tuple of ints", value)
        return tuple(int(v) for v in items)
    if field.kind == STR:
        if not isinstance(value, str):
            raise fail(key, "must be a str", value)
        return value
    if field.kind == PATHS:
        # Stored as one comma-joined str so that ConfigDict keeps one type and the command line
        # (--config.task.key=a.jsonl,b/*.parquet) can set it.
        items = [value] if isinstance(value, str) else value
        if isinstance(items, bytes) or not hasattr(items, "__iter__"):
            raise fail(key, "must be a str or a sequence of str", value)
        items = list(items)
        if not all(isinstance(v, str) for v in items):
            raise fail(key, "must be a str or a sequence of str", value)
        if not isinstance(value, str) and any("," in v for v in items):
            raise fail(key, "a path must not contain ','", value)
        return ",".join(p.strip() for v in items for p in v.split(",") if p.strip())
    raise AssertionError(f"unknown field kind {field.kind!r}")


def require(condition: bool, key: str, message: str, value: Any) -> None:
    if not condition:
        raise fail(key, message, value)


def validate_fields(name: str, fields: Mapping[str, Field], check: Callable[[dict], None],
                    values: Mapping[str, Any]) -> dict[str, Any]:
    """A task config as a plain dict: ``name`` plus every field (defaults filled in), each
    type-checked, then the task's cross-field ``check``. Raises ValueError naming ``task.<key>``
    for an unknown key, a wrong type or an impossible value."""
    for key in sorted(values):
        if key != "name" and key not in fields:
            raise ValueError(f"task.{key}: unknown key for task {name!r}; known keys are "
                             f"{['name'] + sorted(fields)}")
    checked = {"name": name}
    for key, field in fields.items():
        checked[key] = coerce(key, field, values.get(key, field.default))
    check(checked)
    return checked
