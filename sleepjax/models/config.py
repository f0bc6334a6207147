"""Model and sleep hyper-parameters as frozen, validated dataclasses.

These are the static (hashable) arguments of the model; the experiment ConfigDicts in
``experiments/`` are converted to them with ``from_dict`` so that a bad value fails with an
error naming the config key before anything is traced.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

from sleepjax.models.pass_law import is_fixed, parse_train_passes

_DTYPES = ("float32", "bfloat16")
_GDN_IMPLS = ("recurrent", "chunked", "pallas")
_EVICTIONS = ("hard", "sliding")
_POSITION_ENCODINGS = ("rope", "none")
_CODAS = ("after_loop", "wake_only")


def _fail(prefix: str, field: str, msg: str, value: Any) -> ValueError:
    return ValueError(f"{prefix}.{field}: {msg} (got {value!r})")


def _check_positive_int(prefix, name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(prefix, name, "must be a positive int", value)


def _from_dict(cls, prefix: str, values: Mapping[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{prefix}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    return cls(**dict(values))


# ModelConfig fields whose 0 / None default is derived from other fields.
_DERIVED_FIELDS = ("attn_kv_heads", "gdn_expand_v", "gdn_value_heads", "gdn_value_head_dim",
                   "gdn_norm_eps", "mlp_hidden")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the hybrid attention / Gated DeltaNet stack."""

    vocab_size: int
    d_model: int = 256
    layer_pattern: str = "AGAG"      # A = sliding-window attention block, G = Gated DeltaNet block;
                                     # lowercase a / g: the same block without its MLP
    attn_heads: int = 4
    attn_head_dim: int = 64
    attn_kv_heads: int = 0           # grouped-query attention: key/value heads (0 = attn_heads)
    attn_output_gate: bool = False   # o * sigmoid(x wg) per head and feature, before wo (Qwen3.5)
    attn_qk_norm: bool = False       # per-head RMSNorm of q and k before RoPE (Qwen3 / Qwen3.5)
    position_encoding: str = "rope"  # "rope" or "none" (attention sees no positions at all)
    rope_fraction: float = 1.0       # partial rotary: RoPE on the first int(D * fraction) features
    gdn_heads: int = 4               # key (and query) heads of a GDN block
    gdn_head_dim: int = 64           # K, the key dimension of each fast-weight matrix
    gdn_expand_v: int = 1            # V = K * gdn_expand_v (unless gdn_value_head_dim is set)
    gdn_value_heads: int = 0         # value heads = fast-weight matrices (0 = gdn_heads); a key
                                     # head serves gdn_value_heads / gdn_heads consecutive ones
    gdn_value_head_dim: int = 0      # V set directly (0 = gdn_head_dim * gdn_expand_v)
    mlp_hidden: int = 0              # 0 means round_up(8/3 * d_model, 64) (SwiGLU)
    conv_size: int = 4               # causal depthwise short convolution on q, k, v
    tie_embeddings: bool = True
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    gdn_norm_eps: float | None = None   # eps of the GDN output norm (None = norm_eps)
    zero_centered_norms: bool = False   # block, final and q/k norms scale by (1 + w), w init 0;
                                        # the GDN output norm always scales by w
    gdn_impl: str = "chunked"        # fast-weight op implementation (sleepjax.ops.IMPLS)
    gdn_chunk_size: int = 64
    dtype: str = "float32"           # activation / matmul dtype; fast weights stay float32

    def __post_init__(self):
        p = "model"
        for name in ("vocab_size", "d_model", "attn_heads", "attn_head_dim", "gdn_heads",
                     "gdn_head_dim", "gdn_expand_v", "conv_size", "gdn_chunk_size"):
            _check_positive_int(p, name, getattr(self, name))
        for name in ("attn_kv_heads", "gdn_value_heads", "gdn_value_head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _fail(p, name, "must be an int >= 0 (0 = the default)", value)
        if self.gdn_value_head_dim and self.gdn_expand_v != 1:
            raise _fail(p, "gdn_value_head_dim", "set either it or gdn_expand_v, not both",
                        self.gdn_value_head_dim)
        # The 0 / None defaults resolve here, once: from now on each field holds its value.
        # What was given is kept (not a field: equality and hashing see resolved values only)
        # so that ``replace`` can derive the defaults again from the changed fields.
        resolve = functools.partial(object.__setattr__, self)
        resolve("_given", {name: getattr(self, name) for name in _DERIVED_FIELDS})
        resolve("attn_kv_heads", self.attn_kv_heads or self.attn_heads)
        resolve("gdn_value_heads", self.gdn_value_heads or self.gdn_heads)
        resolve("gdn_value_head_dim", self.gdn_value_head_dim or self.gdn_head_dim * self.gdn_expand_v)
        resolve("gdn_expand_v", 1)
        if self.attn_heads % self.attn_kv_heads:
            raise _fail(p, "attn_kv_heads", f"must divide attn_heads={self.attn_heads}",
                        self.attn_kv_heads)
        if self.gdn_value_heads % self.gdn_heads:
            raise _fail(p, "gdn_value_heads", f"must be a multiple of gdn_heads={self.gdn_heads}",
                        self.gdn_value_heads)
        for name in ("attn_output_gate", "attn_qk_norm", "zero_centered_norms"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(p, name, "must be a bool", getattr(self, name))
        if self.position_encoding not in _POSITION_ENCODINGS:
            raise _fail(p, "position_encoding", f"must be one of {_POSITION_ENCODINGS}",
                        self.position_encoding)
        fraction = self.rope_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0 < fraction <= 1:
            raise _fail(p, "rope_fraction", "must be a number in (0, 1]", fraction)
        if self.position_encoding == "rope" and (self.rotary_dim < 2 or self.rotary_dim % 2):
            if fraction == 1:
                raise _fail(p, "attn_head_dim", "must be even (RoPE rotates pairs of features)",
                            self.attn_head_dim)
            raise _fail(p, "rope_fraction", f"must leave an even number >= 2 of rotated features "
                        f"(int(attn_head_dim * rope_fraction) = {self.rotary_dim})", fraction)
        if self.gdn_norm_eps is not None and (isinstance(self.gdn_norm_eps, bool) or not isinstance(
                self.gdn_norm_eps, (int, float)) or self.gdn_norm_eps <= 0):
            raise _fail(p, "gdn_norm_eps", "must be None or a positive number", self.gdn_norm_eps)
        if isinstance(self.mlp_hidden, bool) or not isinstance(self.mlp_hidden, int) or self.mlp_hidden < 0:
            raise _fail(p, "mlp_hidden", "must be an int >= 0 (0 = default 8/3 d_model)", self.mlp_hidden)
        pattern = self.layer_pattern
        if not isinstance(pattern, str) or not pattern or set(pattern) - set("AGag"):
            raise _fail(p, "layer_pattern", "must be a non-empty string of 'A' and 'G' (lowercase: "
                        "the block without its MLP)", pattern)
        # An attention-only pattern is a valid architecture (a pretrained model to load, and
        # then to insert GDN blocks into); the sleeping model refuses it (validation.check_configs).
        if self.gdn_impl not in _GDN_IMPLS:
            raise _fail(p, "gdn_impl", f"must be one of {_GDN_IMPLS}", self.gdn_impl)
        if self.dtype not in _DTYPES:
            raise _fail(p, "dtype", f"must be one of {_DTYPES}", self.dtype)
        if not isinstance(self.tie_embeddings, bool):
            raise _fail(p, "tie_embeddings", "must be a bool", self.tie_embeddings)
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise _fail(p, name, "must be a positive number", value)
        resolve("gdn_norm_eps", self.norm_eps if self.gdn_norm_eps is None else self.gdn_norm_eps)
        resolve("mlp_hidden", self.mlp_hidden or -(-(8 * self.d_model // 3) // 64) * 64)

    def replace(self, **changes) -> "ModelConfig":
        """This config with ``changes``; the fields left at their defaults (value heads and
        dims, KV heads, MLP width, GDN norm eps) are derived again from the new values, where
        ``dataclasses.replace`` would keep the old derived ones (e.g. a new ``gdn_heads``
        with the old ``gdn_value_heads``)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return ModelConfig(**{**values, **self._given, **changes})

    @property
    def num_layers(self) -> int:
        return len(self.layer_pattern)

    @property
    def mixer_pattern(self) -> str:
        """``layer_pattern`` by mixer only (``A`` / ``G``), whether or not a block has an MLP."""
        return self.layer_pattern.upper()

    @property
    def rotary_dim(self) -> int:
        """Features of each attention head that RoPE rotates (0 without positions)."""
        if self.position_encoding == "none":
            return 0
        return int(self.attn_head_dim * self.rope_fraction)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        return _from_dict(cls, "model", values)


@dataclasses.dataclass(frozen=True)
class SleepConfig:
    """How the model consolidates a full window into its fast weights (Algorithm 1)."""

    window: int = 24                 # L: tokens held by attention before a sleep
    passes: int = 1                  # N: passes over a full window, the wake pass included
    eviction: str = "hard"           # "hard": clear the KV cache; "sliding": keep the last L-1 tokens
    loop_range: tuple[int, int] | None = None   # blocks [start, end) re-run by sleep passes; None = all
    # With a loop_range ending before the top: "after_loop" = the coda blocks [end, D) run once
    # more after the last sleep pass, on its features, from their window-start fast weights
    # (prelude once, loop N times, coda once); "wake_only" = the coda runs in the wake pass only.
    coda: str = "after_loop"
    remat: bool = True               # rematerialise each sleep pass (memory flat in N)
    # Sliding eviction only: whether sleep passes 2..N also attend to the previous window's
    # wake-pass K/V (the paper leaves this open). False = within-window only.
    sleep_sees_previous_window: bool = False
    # Training only (evaluation and streaming use ``passes``; see sleepjax.models.pass_law):
    # the law of each step's N ("fixed" = ``passes``), ...
    train_passes: str = "fixed"
    # ... how many of the last passes of a sleeping window carry gradient (0 = all; the earlier
    # ones run without it), and the fraction of the steps over which N ramps up from 1.
    backprop_passes: int = 0
    passes_warmup_fraction: float = 0.0
    # Inference only: > 0 stops a window's sleep (per batch row) once every looped GDN layer's
    # fast weights change by less than this, relatively, between two passes; ``passes`` caps it.
    adaptive_tol: float = 0.0

    def __post_init__(self):
        p = "sleep"
        _check_positive_int(p, "window", self.window)
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or self.passes < 1:
            raise _fail(p, "passes", "must be an int >= 1 (1 = the plain hybrid, no extra passes)",
                        self.passes)
        if self.eviction not in _EVICTIONS:
            raise _fail(p, "eviction", f"must be one of {_EVICTIONS}", self.eviction)
        if self.loop_range is not None:
            lr = tuple(self.loop_range)
            if len(lr) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in lr) \
                    or not 0 <= lr[0] < lr[1]:
                raise _fail(p, "loop_range", "must be None or (start, end) with 0 <= start < end", self.loop_range)
            object.__setattr__(self, "loop_range", lr)
        if self.coda not in _CODAS:
            raise _fail(p, "coda", f"must be one of {_CODAS}", self.coda)
        if not isinstance(self.remat, bool):
            raise _fail(p, "remat", "must be a bool", self.remat)
        if not isinstance(self.sleep_sees_previous_window, bool):
            raise _fail(p, "sleep_sees_previous_window", "must be a bool", self.sleep_sees_previous_window)
        parse_train_passes(self.train_passes)
        if isinstance(self.backprop_passes, bool) or not isinstance(self.backprop_passes, int) \
                or self.backprop_passes < 0:
            raise _fail(p, "backprop_passes", "must be an int >= 0", self.backprop_passes)
        fraction = self.passes_warmup_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0 <= fraction <= 1:
            raise _fail(p, "passes_warmup_fraction", "must be a number in [0, 1]", fraction)
        tol = self.adaptive_tol
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < float("inf"):
            raise _fail(p, "adaptive_tol", "must be a finite number >= 0 (0 = off)", tol)

    @property
    def sleep_attends_previous(self) -> bool:
        """Sleep passes 2..N attend to the previous window's K/V (sliding eviction with
        ``sleep_sees_previous_window``)."""
        return self.eviction == "sliding" and self.sleep_sees_previous_window

    @property
    def train_pass_law(self):
        """``train_passes`` parsed (:class:`sleepjax.models.pass_law.PassLaw`)."""
        return parse_train_passes(self.train_passes)

    @property
    def fixed_training_passes(self) -> bool:
        """Every training step runs ``passes`` (no law, no curriculum)."""
        return is_fixed(self.train_pass_law, self.passes_warmup_fraction)

    def resolved_loop_range(self, num_layers: int) -> tuple[int, int]:
        if self.loop_range is None:
            return (0, num_layers)
        if self.loop_range[1] > num_layers:
            raise _fail("sleep", "loop_range", f"end must be <= the number of layers ({num_layers})",
                        self.loop_range)
        return self.loop_range

    def coda_range(self, num_layers: int, max_passes: int | None = None) -> tuple[int, int] | None:
        """Blocks re-run once after the sleep passes (``[end, D)``), or None.

        ``max_passes``: the most passes the forward may run (default ``passes``); with one
        pass there is no sleep, so nothing to re-run."""
        end = self.resolved_loop_range(num_layers)[1]
        most = self.passes if max_passes is None else max_passes
        if most == 1 or self.coda != "after_loop" or end == num_layers:
            return None
        return (end, num_layers)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SleepConfig":
        return _from_dict(cls, "sleep", values)
