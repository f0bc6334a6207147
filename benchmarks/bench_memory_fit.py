"""Memory fit of fine-tuning a Qwen3.5-0.8B-shaped sleeping model.

A random-weight model shaped like Qwen3.5-0.8B (d_model 1024, 24 layers "GGGA" x 6, vocab
248,320, attention 8 heads x 256, GDN 16 heads x 128, MLP 3584, tied head) at the paper's
GSM-Infinite lengths (T = 3300 inputs; window L = 2000, the Jet-style hard-eviction setting,
and L = 512), batch 1, for N = 1, 2, 4 passes. Two losses side by side:

* ``full``: the loss from full logits, float32 logits ``[B, T, vocab]`` of every position;
* ``gathered``: the head and cross-entropy only at loss positions, in chunks
  (``sleepjax.training.loss.gathered_token_losses``), from ``forward_hidden``.

Primary number: XLA's ``memory_analysis()`` of the compiled loss + gradient (deterministic,
no run): temp (activations, logits, gradient work buffers), arguments (parameters, batch),
outputs (gradients). Compiling the 24-layer model takes minutes on 2 cores, so by default
the compile runs at depth 4 and 8 (one and two "GGGA" groups; the groups are identical, so
memory is affine in the number of groups) and at batch 2 (depth 4), and the table gives the
24-layer, batch-1 value from the fit ``temp = a + B * (b + groups * c)``;
``--verify-depth`` also compiles the 24-layer model once and prints the direct number.
The optimizer update is not compiled: its state is counted analytically from the parameter
tree (Muon: one float32 momentum per hidden matrix; AdamW: two moments for the rest,
embedding included; sleepjax.training.optimizer).

Tokens/s: the best of two steps (loss + gradient, already compiled) of a 4-layer ("GGGA") model
of the same widths and vocabulary, L = 2000 only; a step of the 24-layer model takes minutes
on this CPU.

Note on XLA:CPU: it computes bfloat16 matmuls in float32 (float normalisation), so many
activation buffers of the "bfloat16" rows are float32 here; a GPU keeps them in bfloat16.
The CPU numbers are therefore an upper bound for the accelerator's activations.

  python benchmarks/bench_memory_fit.py              # ~20 min on 2 loaded cores (24 compiles)
  python benchmarks/bench_memory_fit.py --quick      # L = 2000, N = 1 and 4, no timing (~3 min)
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine_info import machine_description  # noqa: E402  (benchmarks/, beside this script)
from sleepjax.models import (ModelConfig, SleepConfig, SleepLM, forward_sequence,  # noqa: E402
                             init_params)
from sleepjax.training.loss import (full_logits_token_losses, reduce_answer_loss,  # noqa: E402
                                   token_losses)

GIB = 2 ** 30
SEQ = 3300          # the paper's GSM lengths are 2000-3300 tokens
ANSWER_TOKENS = 32  # loss positions per sequence, all in the final window
ACCELERATOR_GIB = 80.0

# Qwen3.5-0.8B's shape as sleepjax.pretrained maps it: gated GQA attention (8 query / 2 kv
# heads of 256, q/k norm, rotary on a quarter of each head), GDN with 16 key and 16 value heads
# of 128, zero-centred norms, tied head.
QWEN35_08B = dict(vocab_size=248320, d_model=1024, attn_heads=8, attn_head_dim=256,
                  attn_kv_heads=2, attn_output_gate=True, attn_qk_norm=True, rope_fraction=0.25,
                  gdn_heads=16, gdn_head_dim=128, gdn_value_heads=16, gdn_value_head_dim=128,
                  zero_centered_norms=True, mlp_hidden=3584, tie_embeddings=True,
                  gdn_impl="chunked", gdn_chunk_size=64)
SHAPE_NOTE = ["attn_kv_heads=2", "gdn_value_heads=16", "attn_output_gate", "attn_qk_norm"]


def model_config(layers: int, dtype: str, shape=QWEN35_08B) -> tuple[ModelConfig, list[str]]:
    """``layers`` blocks "GGGA" x layers/4 of ``shape``'s widths (another shape: the accelerator
    check's dry run at toy size)."""
    pattern = "GGGA" * (layers // 4)
    return ModelConfig(layer_pattern=pattern, dtype=dtype, **shape), SHAPE_NOTE


def batch_specs(bsz, seq=SEQ):
    ids = jax.ShapeDtypeStruct((bsz, seq), jnp.int32)
    return {"inputs": ids, "targets": ids, "loss_mask": jax.ShapeDtypeStruct((bsz, seq), jnp.float32)}


def real_batch(bsz, vocab, seq=SEQ):
    rng = np.random.RandomState(0)
    mask = np.zeros((bsz, seq), np.float32)
    mask[:, -ANSWER_TOKENS:] = 1.0
    return {"inputs": jnp.asarray(rng.randint(0, vocab, (bsz, seq)), jnp.int32),
            "targets": jnp.asarray(rng.randint(0, vocab, (bsz, seq)), jnp.int32),
            "loss_mask": jnp.asarray(mask)}


_COMPILED = {}


def compiled_grad(layers, window, passes, full, bsz, dtype="bfloat16", shape=QWEN35_08B, seq=SEQ):
    """``(compiled loss + gradient, temp bytes, compile seconds)``; cached per arguments."""
    key = (layers, window, passes, full, bsz, dtype, tuple(sorted(shape.items())), seq)
    if key not in _COMPILED:
        _COMPILED[key] = _compile_grad(layers, window, passes, full, bsz, dtype, shape, seq)
    return _COMPILED[key]


def _compile_grad(layers, window, passes, full, bsz, dtype, shape, seq):
    model_cfg, _ = model_config(layers, dtype, shape)
    model = SleepLM(model_cfg, SleepConfig(window=window, passes=passes, eviction="hard"))
    params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.PRNGKey(0)))

    def loss(params, batch):
        if full:
            logits = forward_sequence(params, batch["inputs"], model_cfg, model.sleep_cfg)
            ce, correct = full_logits_token_losses(logits, batch["targets"])
        else:
            ce, correct, _ = token_losses(model, params, batch)
        return reduce_answer_loss(ce, correct, batch["loss_mask"])[0]

    started = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, batch_specs(bsz, seq)).compile()
    mem = compiled.memory_analysis()
    return compiled, mem.temp_size_in_bytes, time.perf_counter() - started


def state_bytes(layers=24):
    """Parameters, and optimizer moments (Muon: 1 per hidden matrix, AdamW: 2), in elements."""
    from sleepjax.training.optimizer import ADAMW, MUON, param_labels  # needs ml_collections

    model_cfg, _ = model_config(layers, "float32")
    params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.PRNGKey(0)))
    labels = param_labels(params)
    sizes = {MUON: 0, ADAMW: 0}
    for leaf, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
        sizes[label] += int(np.prod(leaf.shape))
    return sizes


def timed_steps(compiled, layers, dtype, steps=2, shape=QWEN35_08B, seq=SEQ):
    """Tokens/s of the best of ``steps`` calls of an already compiled batch-1 step."""
    model_cfg, _ = model_config(layers, dtype, shape)
    params = init_params(model_cfg, jax.random.PRNGKey(0))
    batch = real_batch(1, model_cfg.vocab_size, seq)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        jax.block_until_ready(compiled(params, batch))
        times.append(time.perf_counter() - started)
    return seq / min(times)   # already compiled: the best of the steps


def main():
    from sleepjax.training.optimizer import ADAMW, MUON  # needs ml_collections (not the check's sections)

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="L=2000, N=1 and 4, no timing")
    parser.add_argument("--verify-depth", action="store_true",
                        help="also compile the 24-layer model once (L=2000, N=1, gathered)")
    args = parser.parse_args()

    print(f"# bench_memory_fit  {datetime.date.today()}  {machine_description()}")
    cfg24, _ = model_config(24, "bfloat16")
    print(f"model: Qwen3.5-0.8B-shaped, random weights: {cfg24}")
    print(f"T = {SEQ} inputs, {ANSWER_TOKENS} loss positions in the final window, hard eviction")

    bf16 = "bfloat16"
    cases = [(2000, 1, bf16), (2000, 4, bf16)] if args.quick else \
        [(2000, 1, bf16), (2000, 2, bf16), (2000, 4, bf16), (512, 1, bf16), (512, 4, bf16),
         (2000, 1, "float32")]
    rows = []
    for window, passes, dtype in cases:
        _, g41, s1 = compiled_grad(4, window, passes, False, 1, dtype)
        _, g81, s2 = compiled_grad(8, window, passes, False, 1, dtype)
        _, g42, s3 = compiled_grad(4, window, passes, False, 2, dtype)
        _, f41, s4 = compiled_grad(4, window, passes, True, 1, dtype)
        # temp(groups, B) = a + B * (b + groups * c)
        c = g81 - g41
        b = g42 - g41 - c
        a = g41 - b - c
        per_seq = b + 6 * c
        head_extra = f41 - g41           # full logits and their gradient, per sequence
        row = dict(window=window, passes=passes, dtype=dtype, const=a, per_seq=per_seq,
                   full_per_seq=per_seq + head_extra, gathered24=a + per_seq,
                   full24=a + per_seq + head_extra, compile_s=s1 + s2 + s3 + s4)
        rows.append(row)
        print(f"  L={window} N={passes} {dtype}: depth-4 temp gathered {g41 / GIB:.2f} GiB, full "
              f"{f41 / GIB:.2f} GiB; depth 8 {g81 / GIB:.2f}; batch 2 {g42 / GIB:.2f} "
              f"(compiles {row['compile_s']:.0f} s)", flush=True)

    if args.verify_depth:
        _, direct, secs = compiled_grad(24, 2000, 1, False, 1)
        fit = rows[0]["gathered24"]
        print(f"  verify: 24-layer L=2000 N=1 gathered, compiled directly: temp {direct / GIB:.2f} "
              f"GiB (fit {fit / GIB:.2f} GiB; {secs:.0f} s)")

    sizes = state_bytes()
    n_params = sizes[MUON] + sizes[ADAMW]
    states = {  # bytes: params + grads + optimizer moments (float32 moments in both)
        "f32 params": n_params * 4 + n_params * 4 + (sizes[MUON] * 1 + sizes[ADAMW] * 2) * 4,
        "bf16 params": n_params * 2 + n_params * 2 + (sizes[MUON] * 1 + sizes[ADAMW] * 2) * 4,
    }
    print(f"\nparameters {n_params / 1e6:.1f} M (Muon {sizes[MUON] / 1e6:.1f} M, AdamW "
          f"{sizes[ADAMW] / 1e6:.1f} M incl. the {cfg24.vocab_size} x {cfg24.d_model} "
          f"embedding); state = params + grads + moments: f32 params "
          f"{states['f32 params'] / GIB:.2f} GiB, bf16 params/grads (f32 moments) "
          f"{states['bf16 params'] / GIB:.2f} GiB")

    tps = {}
    if not args.quick:
        for passes in (1, 2, 4):
            for full in (False, True):
                if full and passes != 1:
                    continue
                compiled, _, _ = compiled_grad(4, 2000, passes, full, 1)
                tps[(passes, full)] = timed_steps(compiled, 4, "bfloat16")
                print(f"  tokens/s 4 layers L=2000 N={passes} {'full' if full else 'gathered'}: "
                      f"{tps[(passes, full)]:.1f}", flush=True)

    print("\n24 layers, float32 params; temp = XLA temp buffers of loss + "
          "gradient at batch 1 (fit, see docstring); fit B = largest batch on one 80 GB "
          "accelerator with f32 params + grads + optimizer (+ 1 GiB margin)")
    print("| L | N | compute | temp full GiB | temp gathered GiB | full / gathered | per-seq full GiB "
          "| per-seq gathered GiB | max B full | max B gathered | tok/s gathered (4 layers) "
          "| max B gathered, bf16 params | tok/s full / gathered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def max_batch(per_seq, state=states["f32 params"]):
            return max(0, int((ACCELERATOR_GIB * 1e9 - state - GIB - r["const"]) // per_seq))
        timed = r["window"] == 2000 and r["dtype"] == bf16
        t_new = tps.get((r["passes"], False)) if timed else None
        t_old = tps.get((r["passes"], True)) if timed else None
        print(f"| {r['window']} | {r['passes']} | {r['dtype']} | {r['full24'] / GIB:.2f} | "
              f"{r['gathered24'] / GIB:.2f} | {r['full24'] / r['gathered24']:.2f} | "
              f"{r['full_per_seq'] / GIB:.2f} | {r['per_seq'] / GIB:.2f} | "
              f"{max_batch(r['full_per_seq'])} | {max_batch(r['per_seq'])} | "
              f"{'%.1f' % t_new if t_new else '-'} | "
              f"{max_batch(r['per_seq'], states['bf16 params'])} | "
              f"{'%.2f' % (t_old / t_new) if t_old and t_new else '-'} |")


if __name__ == "__main__":
    main()
