"""Start a run from pretrained or previously trained weights (the ``init`` config section).

Retrofitting recipe (the paper's §3.3, §6.4 and §7; route 2, Ouro-style): insert Gated DeltaNet
layers without MLP into a pretrained model, warm up only them, then train the full model::

    # stage 1: warm-up of the new layers only (hard eviction, as the paper needs for N > 1)
    cfg.init.checkpoint_dir = "/data/qwen3.5-0.8b"   # local Hugging Face directory
    cfg.init.insert_gdn_at = (4, 9, 14, 19, 24, 29)  # indices in the resulting model
    cfg.init.insert_with_mlp = False                  # 'g' blocks
    cfg.optim.trainable = (r"blocks_(4|9|14|19|24|29)",)
    # stage 2 (another workdir): the full model, from stage 1's final checkpoint
    cfg.init.from_run = "runs/stage1"                 # insert_gdn_at = (), trainable = ()

Keys (:class:`InitConfig`; all off by default, so a run starts from ``init_params``):

* ``checkpoint_dir``: a local Hugging Face checkpoint directory, read with
  ``sleepjax.pretrained.load_pretrained`` (``config.json`` + safetensors).
* ``from_run``: a previous sleepjax run's workdir; its parameters of checkpoint
  ``from_run_step`` (None: the latest) via :func:`sleepjax.training.checkpointing.load_params`.
  Only the parameters are taken: optimiser state, step and data position start afresh.
* ``insert_gdn_at``: indices, in the resulting model, of new GDN blocks
  (:func:`sleepjax.models.surgery.insert_blocks`); ``insert_with_mlp``: 'G' blocks with a
  SwiGLU MLP instead of 'g' blocks without; ``insert_zero_output`` (default True): their
  out-projections start at zero, so the initial model computes exactly the source model.
  The new blocks get the values a from-scratch run with the same ``train.seed`` would give
  blocks of those names.

With a source, the architecture comes from it (plus the inserted blocks): the ``model`` section
may set only :data:`NON_ARCHITECTURE_KEYS` freely; an architecture key left at its
``ModelConfig`` default is taken from the source, one set to another value than the source's
is an error naming it. With an attention-only source (no GDN block) the
GDN shape keys (:data:`GDN_KEYS`: heads, head dims, conv size) of the inserted blocks are the
run's own too. The task's vocabulary must fit in the source's ``vocab_size`` (the model keeps
the source's, often padded beyond its tokenizer). The
trainer saves the config with the resolved architecture written into its ``model`` section
(:func:`explicit_model_section`), so the run's checkpoints are self-describing
(``load_params`` never needs the source again). A run that resumes from its own checkpoint
ignores the source. The step-0 parameters are built by :mod:`sleepjax.training.warm_start`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import ml_collections

from sleepjax.models.config import ModelConfig
from sleepjax.training import paths
from sleepjax.training.config_io import CHECKPOINT_SUBDIR, saved_run_configs

# ModelConfig fields a run may choose whatever its source: how it computes, not what.
NON_ARCHITECTURE_KEYS = ("dtype", "gdn_impl", "gdn_chunk_size")
# The shape of GDN blocks: the run's own when the source has none (an attention-only model
# that GDN blocks are inserted into), the source's otherwise.
GDN_KEYS = ("gdn_heads", "gdn_head_dim", "gdn_expand_v", "gdn_value_heads", "gdn_value_head_dim",
            "conv_size", "gdn_norm_eps")


def run_keys(source: ModelConfig) -> tuple[str, ...]:
    """The ModelConfig fields the run's ``model`` section sets when starting from ``source``."""
    has_gdn = any(kind in source.layer_pattern for kind in "Gg")
    return NON_ARCHITECTURE_KEYS + (() if has_gdn else GDN_KEYS)


@dataclasses.dataclass(frozen=True)
class InitConfig:
    """Where a run's step-0 parameters come from (module docstring)."""

    checkpoint_dir: str | None = None
    from_run: str | None = None
    from_run_step: int | None = None
    insert_gdn_at: tuple[int, ...] = ()
    insert_with_mlp: bool = False
    insert_zero_output: bool = True

    def __post_init__(self):
        for name in ("checkpoint_dir", "from_run"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"init.{name}: must be None or a directory path (got {value!r})")
        if self.checkpoint_dir and self.from_run:
            raise ValueError(f"init.from_run: set either it or init.checkpoint_dir, not both "
                             f"(got {self.from_run!r} and {self.checkpoint_dir!r})")
        step = self.from_run_step
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ValueError(f"init.from_run_step: must be None or an int >= 0 (got {step!r})")
        if step is not None and not self.from_run:
            raise ValueError(f"init.from_run_step: needs init.from_run (got {step!r})")
        positions = self.insert_gdn_at
        if isinstance(positions, list):
            positions = tuple(positions)
            object.__setattr__(self, "insert_gdn_at", positions)
        if not isinstance(positions, tuple) or not all(
                isinstance(p, int) and not isinstance(p, bool) for p in positions):
            raise ValueError(f"init.insert_gdn_at: must be a tuple of block indices (got "
                             f"{positions!r})")
        if positions and not self.active:
            raise ValueError(f"init.insert_gdn_at: needs init.checkpoint_dir or init.from_run "
                             f"(got {positions!r})")
        for name in ("insert_with_mlp", "insert_zero_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"init.{name}: must be a bool (got {getattr(self, name)!r})")

    @property
    def active(self) -> bool:
        """Whether the run starts from a source rather than from ``init_params``."""
        return bool(self.checkpoint_dir or self.from_run)

    @property
    def source_key(self) -> str:
        return "init.checkpoint_dir" if self.checkpoint_dir else "init.from_run"

    @property
    def insert_kind(self) -> str:
        return "G" if self.insert_with_mlp else "g"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "InitConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"init: unknown key(s) {[f'init.{k}' for k in unknown]}; known keys "
                             f"are {sorted(known)}")
        return cls(**dict(values))


def init_section_defaults() -> ml_collections.ConfigDict:
    """The ``init`` section of ``base_config`` (typed placeholders, so the CLI can set them)."""
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict({
        "checkpoint_dir": placeholder(str), "from_run": placeholder(str),
        "from_run_step": placeholder(int), "insert_gdn_at": (), "insert_with_mlp": False,
        "insert_zero_output": True})


# --------------------------------------------------------------------------- the source

def pretrained_model_config(path: str) -> ModelConfig:
    """The ModelConfig of a Hugging Face directory's ``config.json`` (no weights read)."""
    from sleepjax.pretrained.checkpoint import config_of   # lazy: heavy optional deps
    return config_of(path)[2]


def load_pretrained_params(path: str):
    """``(params, model_cfg)`` of a Hugging Face directory, float32 parameters."""
    from sleepjax.pretrained import load_pretrained
    return load_pretrained(path, dtype=None)


def _run_model_config(workdir: str, step: int | None) -> ModelConfig:
    """The ModelConfig of a sleepjax run's checkpoint, from the config saved with it (read with
    orbax directly: ``checkpointing`` imports this module's users)."""
    import orbax.checkpoint as ocp

    directory = paths.as_path(workdir) / CHECKPOINT_SUBDIR
    if not directory.is_dir():
        raise ValueError(f"init.from_run: {workdir!r} holds no checkpoint (no "
                         f"{CHECKPOINT_SUBDIR}/ of a sleepjax run)")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                                    item_handlers={"config": ocp.JsonCheckpointHandler()})
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise ValueError(f"init.from_run: {workdir!r} holds no checkpoint")
        if step is not None and step not in steps:
            raise ValueError(f"init.from_run_step: {workdir!r} has no checkpoint of step {step}; "
                             f"saved steps: {steps}")
        saved = dict(manager.restore(steps[-1] if step is None else step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"])
    finally:
        manager.close()
    try:
        return saved_run_configs(saved)[0]
    except (ValueError, TypeError) as error:
        raise ValueError(f"init.from_run: the config saved in {workdir!r} does not give a "
                         f"model ({error})") from None


def source_model_config(init: InitConfig) -> ModelConfig:
    """The architecture of the source before insertion; errors name ``init.*`` keys."""
    if init.checkpoint_dir:
        path = init.checkpoint_dir
        if not os.path.isdir(path):
            raise ValueError(f"init.checkpoint_dir: no such directory {path!r}")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"init.checkpoint_dir: no config.json in {path!r} (expected a "
                             "local Hugging Face checkpoint directory)")
        try:
            return pretrained_model_config(path)
        except ValueError as error:
            raise ValueError(f"init.checkpoint_dir: {path!r}: {error}") from None
    if not paths.as_path(init.from_run).is_dir():
        raise ValueError(f"init.from_run: no such run directory {init.from_run!r}")
    return _run_model_config(init.from_run, init.from_run_step)


def architecture(cfg: ModelConfig, exclude=NON_ARCHITECTURE_KEYS) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)
            if f.name not in exclude and f.name != "vocab_size"}


def resolve_model(init: InitConfig, model_values: Mapping[str, Any], task_vocab: int,
                  vocab_size: int | None = None) -> ModelConfig:
    """The run's ModelConfig: the source's architecture with the inserted blocks, the
    non-architecture keys of ``model_values`` (the ``model`` section), the vocabulary checked:
    the task's tokenizer must fit in the source's (which may be padded beyond it), and a set
    ``model.vocab_size`` must be the source's."""
    from sleepjax.models.surgery import inserted_pattern, validate_positions

    source = source_model_config(init)
    if source.vocab_size < task_vocab:
        raise ValueError(f"{init.source_key}: the source's vocab_size {source.vocab_size} is "
                         f"smaller than the task's vocabulary {task_vocab}; use a task whose "
                         "tokenizer is the source's")
    if vocab_size is not None and vocab_size != source.vocab_size:
        raise ValueError(f"model.vocab_size: {vocab_size} conflicts with the source's vocab_size "
                         f"{source.vocab_size} ({init.source_key}); leave it unset")
    vocab_size = source.vocab_size
    own = run_keys(source)
    final = architecture(source, exclude=own)
    if init.insert_gdn_at:
        positions = validate_positions(init.insert_gdn_at, source.num_layers,
                                       key="init.insert_gdn_at")
        final["layer_pattern"] = inserted_pattern(source.layer_pattern, positions,
                                                  init.insert_kind)
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for key, value in model_values.items():
        if key in final and value != final[key] and value != defaults.get(key):
            raise ValueError(
                f"model.{key}: {value!r} conflicts with the architecture from {init.source_key} "
                f"({final[key]!r}); with a source only {list(own)} may be set: "
                f"leave model.{key} at its default or set it to {final[key]!r}")
    run_values = {k: model_values[k] for k in own if k in model_values}
    return ModelConfig.from_dict({**final, **run_values, "vocab_size": vocab_size})


def explicit_model_section(cfg, model: ModelConfig) -> ml_collections.ConfigDict:
    """A copy of the experiment ``cfg`` whose ``model`` section holds ``model``'s every field:
    what the trainer saves for a run with an ``init`` source."""
    values = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    values = dict(values)
    values["model"] = {f.name: getattr(model, f.name) for f in dataclasses.fields(ModelConfig)}
    return ml_collections.ConfigDict(values)
