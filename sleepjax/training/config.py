"""Experiment configuration: the ConfigDict layout and its single validation point.

An experiment is an ``ml_collections.ConfigDict`` with six sections:

* ``task``  -- the data generator's settings (``sleepjax.data.task_config``),
* ``model`` -- :class:`sleepjax.models.config.ModelConfig` fields; ``vocab_size`` is the task
  tokenizer's unless set to a larger value (a checkpoint's padded head),
* ``sleep`` -- :class:`sleepjax.models.config.SleepConfig` fields (``window`` may be left
  ``None``: the task's natural window is used),
* ``optim`` -- :class:`OptimConfig` fields,
* ``train`` -- :class:`TrainConfig` fields,
* ``mesh``  -- device-mesh settings (:mod:`sleepjax.parallel.mesh`),
* ``init``  -- optional: start from pretrained / another run's weights, insert GDN blocks
  (:mod:`sleepjax.training.initialization`).

:func:`validate_config` checks every section before anything is built or traced and raises
one ``ValueError`` naming the full key (``sleep.window``, ``task.t``, ...).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import ml_collections

from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.validation import check_configs
from sleepjax.parallel.mesh import mesh_config_defaults, validate_mesh_config
from sleepjax.training.config_io import flatten_config
from sleepjax.training.initialization import InitConfig, init_section_defaults, resolve_model

SECTIONS = ("task", "model", "sleep", "optim", "train", "mesh")
OPTIONAL_SECTIONS = ("init",)   # absent = its defaults (configs saved before it existed)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad(key: str, msg: str, value: Any) -> ValueError:
    return ValueError(f"{key}: {msg} (got {value!r})")


def _check_keys(cls, prefix: str, values: Mapping[str, Any], exclude=()) -> None:
    known = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{prefix}: unknown key(s) {[f'{prefix}.{k}' for k in unknown]}; "
                         f"known keys are {sorted(known)}")


def _section_from_dict(cls, prefix: str, values: Mapping[str, Any]):
    _check_keys(cls, prefix, values)
    return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Muon (hidden matrices) + AdamW (everything else), clipping and a warmup-stable-decay schedule.

    Both learning rates follow the same schedule multiplier: linear warm-up from 0 over
    ``warmup_fraction`` of the steps, constant, then linear decay to ``min_lr_ratio`` times the
    peak over the last ``decay_fraction`` of the steps.
    """

    muon_lr: float = 2e-3
    adam_lr: float = 5e-5
    muon_beta: float = 0.95          # Muon momentum
    muon_ns_steps: int = 5           # Newton-Schulz iterations
    weight_decay: float = 1e-4       # Muon group
    adam_weight_decay: float = 1e-4  # AdamW group
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8
    clip_norm: float = 1.0           # global-norm clipping; 0 disables it
    warmup_fraction: float = 0.0025
    decay_fraction: float = 0.6
    min_lr_ratio: float = 1e-3
    # Parameter groups that train; empty = all. Regexes over '/'-joined parameter paths
    # ("blocks_3/gdn/wq"), each matching a whole path or a leading run of whole components:
    # "blocks_1" selects blocks_1/... (not blocks_10/...), r"blocks_(2|5)/gdn" two GDN mixers.
    # The rest is frozen: exactly zero updates, no optimiser moments (optimizer.make_optimizer).
    trainable: tuple[str, ...] = ()

    def __post_init__(self):
        p = "optim"
        from sleepjax.training.param_groups import check_trainable_patterns
        object.__setattr__(self, "trainable", check_trainable_patterns(self.trainable))
        for name in ("muon_lr", "adam_lr"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0 or not math.isfinite(value):
                raise _bad(f"{p}.{name}", "must be a positive finite number", value)
        for name in ("weight_decay", "adam_weight_decay", "clip_norm", "adam_eps"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise _bad(f"{p}.{name}", "must be a finite number >= 0", value)
        for name in ("muon_beta", "adam_b1", "adam_b2"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise _bad(f"{p}.{name}", "must be in [0, 1)", value)
        if not _is_int(self.muon_ns_steps) or self.muon_ns_steps < 1:
            raise _bad(f"{p}.muon_ns_steps", "must be a positive int", self.muon_ns_steps)
        for name in ("warmup_fraction", "decay_fraction", "min_lr_ratio"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= 1:
                raise _bad(f"{p}.{name}", "must be in [0, 1]", value)
        if self.warmup_fraction + self.decay_fraction > 1:
            raise _bad(f"{p}.warmup_fraction", "warmup_fraction + decay_fraction must be <= 1",
                       (self.warmup_fraction, self.decay_fraction))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "OptimConfig":
        return _section_from_dict(cls, "optim", values)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Length, batch, seeds, and how often to log, evaluate and checkpoint."""

    steps: int = 100
    batch_size: int = 32             # global batch, in sequences
    seed: int = 0                    # parameter init and data order
    log_every: int = 10
    eval_every: int = 0              # 0: evaluate only at the end
    eval_examples: int = 256         # held-out test examples per evaluation
    eval_batch_size: int = 64
    checkpoint_every: int = 50       # 0: only at the end
    keep_checkpoints: int = 2        # the last K checkpoints are kept
    async_checkpointing: bool = True
    progress_bar: bool = True

    def __post_init__(self):
        p = "train"
        for name in ("steps", "batch_size", "eval_examples", "eval_batch_size", "keep_checkpoints"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise _bad(f"{p}.{name}", "must be a positive int", value)
        for name in ("seed", "log_every", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise _bad(f"{p}.{name}", "must be an int >= 0", value)
        if self.log_every == 0:
            raise _bad(f"{p}.log_every", "must be a positive int", self.log_every)
        for name in ("async_checkpointing", "progress_bar"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(f"{p}.{name}", "must be a bool", getattr(self, name))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        return _section_from_dict(cls, "train", values)


@dataclasses.dataclass(frozen=True)
class ResolvedConfig:
    """Validated, typed view of an experiment ConfigDict (see :func:`validate_config`)."""

    task: ml_collections.ConfigDict  # validated by the data package; read-only use
    model: ModelConfig
    sleep: SleepConfig
    optim: OptimConfig
    train: TrainConfig
    mesh: ml_collections.ConfigDict
    seq_len: int                     # T of every example of the task
    data_parallel_size: int          # devices the batch is split over
    init: InitConfig = InitConfig()  # where step-0 parameters come from (default: init_params)


def base_config() -> ml_collections.ConfigDict:
    """The section skeleton with defaults for model/sleep/optim/train/mesh (task left empty).

    Experiment files fill ``task`` with ``sleepjax.data.task_config(...)`` and override fields.
    ``sleep.window`` is a typed placeholder so that ``--config.sleep.window=24`` works on the
    command line; ``None`` means the task's natural window.
    """
    model_defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)
                      if f.name != "vocab_size"}
    model_defaults["vocab_size"] = ml_collections.config_dict.placeholder(int)   # None: the task's
    sleep_defaults = {f.name: f.default for f in dataclasses.fields(SleepConfig)}
    sleep_defaults["window"] = ml_collections.config_dict.placeholder(int)
    sleep_defaults["loop_range"] = ml_collections.config_dict.placeholder(tuple)
    model_defaults["gdn_norm_eps"] = ml_collections.config_dict.placeholder(float)
    cfg = ml_collections.ConfigDict()
    cfg.task = ml_collections.ConfigDict()
    cfg.model = ml_collections.ConfigDict(model_defaults)
    cfg.sleep = ml_collections.ConfigDict(sleep_defaults)
    cfg.optim = ml_collections.ConfigDict(dataclasses.asdict(OptimConfig()))
    cfg.train = ml_collections.ConfigDict(dataclasses.asdict(TrainConfig()))
    cfg.mesh = mesh_config_defaults()
    cfg.init = init_section_defaults()
    return cfg


def flat_defaults(cfg) -> dict[str, Any]:
    """Every key's default value, flattened (``config_io.flatten_config``): the sections'
    defaults and those of the task of ``cfg`` (nested or flat)."""
    from sleepjax import data   # lazy: the data package is heavy and only this needs it

    defaults = flatten_config(base_config())
    name = flatten_config(cfg).get("task.name")
    if isinstance(name, str):
        try:
            defaults.update(flatten_config({"task": data.task_config(name).to_dict()}))
        except ValueError:          # an unknown task: validate_config names it elsewhere
            pass
    return defaults


def _as_dict(section) -> dict:
    if isinstance(section, ml_collections.ConfigDict):
        return section.to_dict()
    if isinstance(section, Mapping):
        return dict(section)
    raise TypeError(f"expected a ConfigDict or mapping, got {type(section).__name__}")


def validate_config(cfg: ml_collections.ConfigDict, num_devices: int | None = None
                    ) -> ResolvedConfig:
    """Check every section of an experiment config; return the typed, resolved configs.

    Raises one ``ValueError`` naming the full key for: unknown keys (in any section),
    wrong types, impossible values (e.g. ``sleep.window`` > the task's sequence length,
    ``sleep.passes`` < 1, a batch not divisible by the data-parallel size), a task field
    that belongs to another task. Builds no model and traces nothing. ``num_devices``
    (default: this job's device count) lets a config be checked for another machine.
    """
    from sleepjax import data
    from sleepjax.data.layout import check_window_layout

    if not isinstance(cfg, (ml_collections.ConfigDict, Mapping)):
        raise ValueError(f"config: expected an ml_collections.ConfigDict, got {type(cfg).__name__}")
    keys = set(cfg.keys())
    unknown = sorted(keys - set(SECTIONS) - set(OPTIONAL_SECTIONS))
    if unknown:
        raise ValueError(f"config: unknown section(s) {unknown}; known sections are "
                         f"{list(SECTIONS + OPTIONAL_SECTIONS)}")
    missing = [s for s in SECTIONS if s not in keys]
    if missing:
        raise ValueError(f"config: missing section(s) {missing}")

    task_cfg = cfg["task"]
    data.validate_task_config(task_cfg)

    model_values = _as_dict(cfg["model"])
    # The model's vocabulary is the task tokenizer's unless set larger (a checkpoint's head is
    # often padded beyond its tokenizer: Qwen3.5's 248320 rows for ~248k tokens).
    vocab_size = model_values.pop("vocab_size", None)
    _check_keys(ModelConfig, "model", model_values, exclude=("vocab_size",))
    sleep_values = _as_dict(cfg["sleep"])
    _check_keys(SleepConfig, "sleep", sleep_values)
    window_from_task = sleep_values.get("window") is None
    if window_from_task:
        sleep_values["window"] = data.default_window(task_cfg)
    if isinstance(sleep_values.get("loop_range"), list):
        sleep_values["loop_range"] = tuple(sleep_values["loop_range"])
    optim = OptimConfig.from_dict(_as_dict(cfg["optim"]))
    train = TrainConfig.from_dict(_as_dict(cfg["train"]))
    sleep = SleepConfig.from_dict(sleep_values)
    init = InitConfig.from_dict(_as_dict(cfg["init"])) if "init" in keys else InitConfig()

    source = data.make_source(task_cfg, "train", train.seed)
    task_vocab = int(source.vocab_size)
    if vocab_size is not None and (not _is_int(vocab_size) or vocab_size < task_vocab):
        raise _bad("model.vocab_size", f"must be None (the task's vocabulary) or an int >= the "
                   f"task's vocabulary {task_vocab}", vocab_size)
    if init.active:   # the architecture comes from the source (initialization.resolve_model)
        model = resolve_model(init, model_values, task_vocab, vocab_size)
    else:
        model = ModelConfig.from_dict({**model_values, "vocab_size": vocab_size or task_vocab})
    check_configs(model, sleep)  # names model.layer_pattern (no 'G') or sleep.loop_range
    _check_trainable(optim, model)
    seq_len = int(source.seq_len)
    if sleep.window > seq_len:
        raise ValueError(f"sleep.window: must be <= the task's sequence length {seq_len} "
                         f"(got {sleep.window})")
    # Algorithm 1: an answer's window gets one pass and the windows before it consolidate, so
    # no record may have its answers across windows or its question outside a sleeping window.
    check_window_layout(source, sleep.window)
    check_window_layout(data.make_source(task_cfg, "test", train.seed), sleep.window)

    mesh_cfg = cfg["mesh"]
    mesh_shape = validate_mesh_config(mesh_cfg, num_devices=num_devices)
    dp = mesh_shape["data"] * mesh_shape["fsdp"]   # the batch is split over both
    if train.batch_size % dp:
        raise ValueError(f"train.batch_size: must be divisible by the data-parallel size {dp} "
                         f"(got {train.batch_size})")
    if train.eval_batch_size % dp:
        raise ValueError(f"train.eval_batch_size: must be divisible by the data-parallel size {dp} "
                         f"(got {train.eval_batch_size})")
    return ResolvedConfig(task=task_cfg, model=model, sleep=sleep, optim=optim, train=train,
                          mesh=mesh_cfg, seq_len=seq_len, data_parallel_size=dp, init=init)


def _check_trainable(optim: OptimConfig, model: ModelConfig) -> None:
    """``optim.trainable``: every pattern must select a parameter of ``model``."""
    if not optim.trainable:
        return
    from sleepjax.models.params import flatten_layout, layout_options, lm_layout
    from sleepjax.training.param_groups import unmatched_patterns

    paths = [path for path, _ in flatten_layout(
        lm_layout(model.layer_pattern, model.tie_embeddings, layout_options(model)))]
    unmatched = unmatched_patterns(paths, optim.trainable)
    if unmatched:
        raise ValueError(f"optim.trainable: {unmatched} select(s) no parameter of the model "
                         f"(layer_pattern {model.layer_pattern!r}; paths look like "
                         f"'blocks_0/mixer_norm/scale', 'embed/embedding')")
