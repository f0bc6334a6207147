"""Models: the sleeping hybrid LM (:class:`SleepLM`), its configs, and a full-attention baseline.

Public surface: :class:`ModelConfig`, :class:`SleepConfig`, :class:`SleepLM`, :func:`init_params`,
:func:`forward_sequence` (the pure forward), :func:`validate_tokens`, :func:`masked_cross_entropy`,
:class:`FullAttentionLM` (benchmark baseline). Streaming lives in :mod:`sleepjax.inference`.

Parameter tree (float32 leaves; every kernel is ``[in, out]``; ``H*D`` dims are head-major so
heads can be sharded along the out dim of wq/wk/wv/wg and the in dim of wo)::

    embed/embedding                    [vocab, d]          (also the head when tie_embeddings)
    blocks_{i}/mixer_norm/scale        [d]
    blocks_{i}/attn/wq, wk, wv         [d, Ha*Da]           (pattern[i] == "A")
    blocks_{i}/attn/wo                 [Ha*Da, d]
    blocks_{i}/gdn/wq, wk              [d, Hg*K]            (pattern[i] == "G")
    blocks_{i}/gdn/wv, wg              [d, Hg*V]            (wg: output gate)
    blocks_{i}/gdn/wa, wb              [d, Hg]              (decay input, write strength beta)
    blocks_{i}/gdn/wo                  [Hg*V, d]
    blocks_{i}/gdn/conv_q, conv_k      [conv_size, Hg*K]    (depthwise causal short conv)
    blocks_{i}/gdn/conv_v              [conv_size, Hg*V]
    blocks_{i}/gdn/A_log, dt_bias      [Hg]                 (g = -exp(A_log) softplus(x wa + dt_bias))
    blocks_{i}/gdn/out_norm/scale      [V]                  (gated RMSNorm, shared by heads)
    blocks_{i}/mlp_norm/scale          [d]
    blocks_{i}/mlp/w_gate, w_up        [d, F]               (SwiGLU)
    blocks_{i}/mlp/w_down              [F, d]
    final_norm/scale                   [d]
    head/kernel                        [d, vocab]           (only when not tie_embeddings)

Initialisation: truncated normal with std 1/sqrt(fan_in) for projections, the residual
out-projections (attn/gdn ``wo``, mlp ``w_down``) further scaled by 1/sqrt(2 * num_layers),
embedding std 1/sqrt(d), conv U(+-1/sqrt(conv_size)), A = exp(A_log) ~ U(0, 16),
dt_bias = softplus^-1(dt) with dt ~ logU[1e-3, 0.1], norm scales 1 (fla's GatedDeltaNet recipe).

A block is pre-norm: ``h += mixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h))``. Attention uses RoPE
with positions counted from its window's start. GDN: q, k, v projections -> causal depthwise
conv -> SiLU; q, k L2-normalised per head; beta = sigmoid(x wb); the gated delta rule
(:mod:`sleepjax.ops`) from the carried S; RMSNorm(o) * SiLU(x wg); wo.
"""

from sleepjax.models.baseline import FullAttentionLM
from sleepjax.models.config import ModelConfig, SleepConfig
from sleepjax.models.losses import masked_cross_entropy
from sleepjax.models.sleep_lm import SleepLM, forward_sequence, init_params
from sleepjax.models.validation import validate_tokens

__all__ = ["ModelConfig", "SleepConfig", "SleepLM", "FullAttentionLM", "forward_sequence",
           "init_params", "validate_tokens", "masked_cross_entropy"]
