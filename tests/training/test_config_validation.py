"""validate_config: every bad input is one ValueError naming the full key, before any compute."""

from __future__ import annotations

import re

import pytest

from sleepjax import data
from sleepjax.training.config import flat_defaults, validate_config
from sleepjax.training.config_io import config_differences, flatten_config
from sleepjax.training.experiment_files import apply_overrides

from support.training import RULE110, tiny_config
from sleepjax.training.experiment_files import load_config


def _error(cfg, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        validate_config(cfg, **kwargs)
    return str(info.value)


def test_shipped_variants_validate():
    for variant in ("tiny", "cpu", "paper"):
        rc = validate_config(load_config(f"{RULE110}:{variant}"))
        assert rc.model.vocab_size == 3 and rc.sleep.window == 24 and rc.seq_len == 100
    paper = validate_config(load_config(f"{RULE110}:paper"))
    assert (paper.model.d_model, paper.model.layer_pattern, paper.task["t"]) == (256, "AGAG", 32)
    assert (paper.train.batch_size, paper.optim.muon_lr, paper.optim.adam_lr) == (512, 2e-3, 5e-5)


@pytest.mark.parametrize("task", ["depo", "gsm"])
def test_other_experiments_validate(task):
    path = RULE110.replace("rule110", task)
    for variant in ("tiny", "cpu", "paper"):
        rc = validate_config(load_config(f"{path}:{variant}"))
        assert rc.task["name"] == task and rc.sleep.window < rc.seq_len


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="config variant"):
        load_config(f"{RULE110}:huge")


@pytest.mark.parametrize("section,key", [("model", "d_modle"), ("sleep", "pases"),
                                         ("optim", "lr"), ("train", "epochs")])
def test_unknown_key_names_it(section, key):
    cfg = tiny_config()
    cfg.unlock()
    cfg[section][key] = 1
    assert f"{section}.{key}" in _error(cfg)


def test_unknown_key_rejected_by_locked_config():
    with pytest.raises(ValueError, match="sleep.pases"):
        apply_overrides(tiny_config(), {"sleep.pases": 2})


def test_unknown_section_is_named():
    cfg = tiny_config()
    cfg.unlock()
    cfg.extra = 1
    assert "extra" in _error(cfg)


@pytest.mark.parametrize("key,value", [
    ("sleep.passes", "2"), ("sleep.passes", 1.5), ("train.batch_size", 8.0),
    ("train.async_checkpointing", 1), ("optim.muon_lr", "fast"), ("model.d_model", True),
])
def test_wrong_type_names_the_key(key, value):
    cfg = tiny_config()
    section, leaf = key.split(".")
    # Bypass ConfigDict's own type safety to reach validate_config (as a programmatic caller can).
    raw = cfg.to_dict()
    raw[section][leaf] = value
    assert re.search(rf"\b{re.escape(key)}\b", _error(raw)), _error(raw)


@pytest.mark.parametrize("key,value", [
    ("sleep.passes", 0), ("optim.clip_norm", -1.0), ("optim.adam_b2", 1.0),
    ("train.steps", 0), ("optim.warmup_fraction", 0.8), ("model.layer_pattern", "AA"),
])
def test_impossible_values_name_the_key(key, value):
    cfg = tiny_config(**{key.replace(".", "__"): value})
    assert key in _error(cfg)


def test_window_larger_than_sequence():
    message = _error(tiny_config(sleep__window=19))   # tiny task: T = 18
    assert "sleep.window" in message and "18" in message


def test_task_field_of_another_task():
    others = {key for name, module in data.TASKS.items() if name != "rule110"
              for key in module.FIELDS} - set(data.TASKS["rule110"].FIELDS)
    assert others, "the data package should define at least one other task"
    key = sorted(others)[0]
    cfg = tiny_config()
    cfg.task.unlock()
    cfg.task[key] = data.TASKS[[n for n, m in data.TASKS.items() if key in m.FIELDS][0]].FIELDS[key].default
    assert f"task.{key}" in _error(cfg)


def test_task_value_error_names_task_key():
    cfg = tiny_config()
    cfg.task.t = -1
    assert "task.t" in _error(cfg)


def test_batch_not_divisible_by_data_parallel_size():
    cfg = tiny_config(train__batch_size=9, mesh__data=2)
    assert "train.batch_size" in _error(cfg, num_devices=2)
    cfg = tiny_config(train__batch_size=8, train__eval_batch_size=15, mesh__data=2)
    assert "train.eval_batch_size" in _error(cfg, num_devices=2)
    validate_config(tiny_config(train__batch_size=8, mesh__data=2), num_devices=2)


def test_model_vocab_size_is_the_tasks_or_larger():
    cfg = tiny_config()
    assert validate_config(cfg).model.vocab_size == 3            # the task tokenizer's
    cfg.model.vocab_size = 8                                      # a padded head
    assert validate_config(cfg).model.vocab_size == 8
    cfg.model.vocab_size = 2
    assert "model.vocab_size: must be None (the task's vocabulary) or an int >= the task's" in _error(cfg)


def test_config_differences_ignore_resumable_keys():
    a = tiny_config()
    b = tiny_config(train__steps=60, train__eval_every=5, model__d_model=48, sleep__passes=2)
    diffs = config_differences(a, b, flat_defaults(b))
    assert [d.split(":")[0] for d in diffs] == ["model.d_model", "sleep.passes"]


def test_a_key_added_since_the_checkpoint_resumes_only_at_its_default():
    """A checkpoint written before an option existed lacks its key: equal at the default
    (which keeps the old behaviour), a difference otherwise."""
    saved = flatten_config(tiny_config())
    del saved["sleep.coda"], saved["model.attn_kv_heads"]
    assert config_differences(saved, tiny_config(), flat_defaults(tiny_config())) == []
    wake_only = tiny_config(sleep__coda="wake_only")
    diffs = config_differences(saved, wake_only, flat_defaults(wake_only))
    assert [d.split(":")[0] for d in diffs] == ["sleep.coda"]
    assert "checkpoint has '<absent>'" in diffs[0]
