"""Task configs: defaults per task, validation with errors naming ``task.<key>``, natural windows.

A task config is an ``ml_collections.ConfigDict`` holding ``name`` plus exactly the fields of that
task (see each task module's ``FIELDS``). Validation happens before any data is generated or any
model is compiled: unknown keys, fields of another task, wrong types and impossible values all
raise one ``ValueError`` naming the key.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

import ml_collections

from sleepjax.data import depo, gsm, rule110
from sleepjax.data import fields as F

TASKS: dict[str, ModuleType] = {rule110.NAME: rule110, depo.NAME: depo, gsm.NAME: gsm}


def _as_dict(task_cfg: Any) -> dict[str, Any]:
    if isinstance(task_cfg, ml_collections.ConfigDict):
        return dict(task_cfg.items())
    if isinstance(task_cfg, Mapping):
        return dict(task_cfg)
    raise ValueError(f"task: must be a ConfigDict or a mapping (got {type(task_cfg).__name__})")


def _task_module(name: Any) -> ModuleType:
    if name not in TASKS:
        raise F.fail("name", f"must be one of {sorted(TASKS)}", name)
    return TASKS[name]


def validate_task_config(task_cfg: Any) -> dict[str, Any]:
    """Checks a task config and returns it as a plain dict with every field present.

    Missing fields take the task's defaults. Raises ValueError naming ``task.<key>`` on an unknown
    key, a field that belongs to another task, a wrong type, or an impossible value.
    """
    values = _as_dict(task_cfg)
    if "name" not in values:
        raise ValueError(f"task.name: missing; must be one of {sorted(TASKS)}")
    name = values["name"]
    module = _task_module(name)
    for key in sorted(values):
        if key == "name" or key in module.FIELDS:
            continue
        owners = [other for other, m in TASKS.items() if key in m.FIELDS]
        if owners:
            raise ValueError(f"task.{key} is a {' / '.join(owners)} field but task.name is "
                             f"{name!r}; {name} fields are {sorted(module.FIELDS)}")
    return F.validate_fields(name, module.FIELDS, module.check, values)


def task_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The default config of task ``name`` ('rule110', 'depo' or 'gsm') with ``overrides``."""
    module = _task_module(name)
    values = {"name": name, **{k: f.default for k, f in module.FIELDS.items()}}
    if "name" in overrides:
        raise ValueError("task.name: pass the task as the first argument, not as an override")
    values.update(overrides)
    return ml_collections.ConfigDict(validate_task_config(values))


def default_window(task_cfg: Any) -> int:
    """The task's natural attention window L (Rule 110: cells; Depo / GSM: task.window)."""
    cfg = validate_task_config(task_cfg)
    return TASKS[cfg["name"]].default_window(cfg)


def seq_len(task_cfg: Any) -> int:
    """T, the length of the records' ``inputs`` / ``targets`` for this task config."""
    cfg = validate_task_config(task_cfg)
    return TASKS[cfg["name"]].seq_len(cfg)


def describe_fields(name: str) -> str:
    """A human-readable table of a task's fields, defaults and meanings."""
    module = _task_module(name)
    return "\n".join(f"{key} = {field.default!r}  ({field.kind}) {field.doc}"
                     for key, field in module.FIELDS.items())
