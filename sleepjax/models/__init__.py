"""Models: the sleeping hybrid LM (:class:`SleepLM`), its configs, and a full-attention baseline.

Public surface: :class:`ModelConfig`, :class:`SleepConfig`, :class:`SleepLM`, :func:`init_params`,
:func:`forward_sequence` (the pure forward; :func:`forward_hidden` stops before the head),
:func:`validate_tokens`,
:class:`FullAttentionLM` (benchmark baseline). Streaming lives in :mod:`sleepjax.inference`.

Parameter tree (float32 leaves; every kernel is ``[in, out]``; ``H*D`` dims are head-major so
heads can be sharded along the out dim of wq/wk/wv/wg and the in dim of wo). Each parameter's
shape, initialiser, logical axes and optimiser group are declared once, in the layout tables of
:mod:`sleepjax.models.params`; the table at the end of this docstring is generated from them.

Initialisation: truncated normal with std 1/sqrt(fan_in) for projections, the residual
out-projections (attn/gdn ``wo``, mlp ``w_down``) further scaled by 1/sqrt(2 * num_layers),
embedding std 1/sqrt(d), conv U(+-1/sqrt(conv_size)), A = exp(A_log) ~ U(0, 16),
dt_bias = softplus^-1(dt) with dt ~ logU[1e-3, 0.1], norm scales 1 (fla's GatedDeltaNet recipe).

A block is pre-norm: ``h += mixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h))``. Attention uses RoPE
with positions counted from its window's start. GDN: q, k, v projections -> causal depthwise
conv -> SiLU; q, k L2-normalised per head; beta = sigmoid(x wb); the gated delta rule
(:mod:`sleepjax.ops`) from the carried S; RMSNorm(o) * SiLU(x wg); wo.

Options for pretrained architectures (Qwen3.5; every default keeps the model above): attention
with fewer key/value heads (``attn_kv_heads``), an output gate ``o * sigmoid(x wg)``
(``attn_output_gate``), per-head q/k RMSNorm (``attn_qk_norm``), partial rotary
(``rope_fraction``) or no positions (``position_encoding="none"``); norms that scale by
``1 + w`` (``zero_centered_norms``); GDN with more value heads than key heads
(``gdn_value_heads``), a value head dim of its own (``gdn_value_head_dim``) and its own output
norm eps (``gdn_norm_eps``).

Parameters (path, shape, logical axes: see :mod:`sleepjax.parallel.logical_axes`, optimiser
group: see :mod:`sleepjax.training.optimizer`):

"""

from sleepjax.models.baseline import FullAttentionLM
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.params import param_table
from sleepjax.models.sleep_lm import SleepLM, forward_hidden, forward_sequence, init_params
from sleepjax.models.validation import validate_tokens

if __doc__:   # None under python -OO
    __doc__ += param_table() + "\n"   # derived from the declarations, so it cannot drift

__all__ = ["ModelConfig", "SleepConfig", "SleepLM", "FullAttentionLM", "forward_sequence",
           "forward_hidden",
           "init_params", "validate_tokens"]
