"""Per window and per pass: hidden-state scale, fast-weight norm and the loss gradient reaching it.

    python experiments/analysis/diagnose_sleep.py --config=experiments/rule110.py:tiny \
        --config.task.t=2 --config.sleep.passes=4 [--run=runs/some_run] [--batch=64]

Unrolls the training forward in Python (hard eviction, every block looped, as the Rule 110 and
Depo configs use) so that each (window, pass) can be inspected: the RMS of the residual stream
that pass ``p`` leaves (the input of pass ``p + 1``), the Frobenius norm of every GDN layer's fast
weights after it, and the norm of d(loss)/d(fast weights) there -- how much the answer loss
still depends on what that pass wrote. The unrolled loss is checked against the model's own
forward before anything is printed. Parameters are a fresh init, or a trained run's (``--run``).
Prints one JSON line per (window, pass) and a summary table; ``--out`` also writes the JSON.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sleepjax import data
from sleepjax.models import blocks, sleep_lm
from sleepjax.models.carry import fast_weight_caches
from sleepjax.training.config import validate_config
from sleepjax.training.loss import full_logits_token_losses, reduce_answer_loss

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file with variant.")
_RUN = flags.DEFINE_string("run", None, "A trained run directory (default: fresh init).")
_BATCH = flags.DEFINE_integer("batch", 64, "Training records to average over.")
_OUT = flags.DEFINE_string("out", None, "Write the per-(window, pass) rows as JSON here.")


def unrolled_loss(params, probes, batch, model_cfg, sleep_cfg):
    """The training loss with an additive probe on the fast weights after every (window, pass)."""
    tokens = batch["inputs"]
    bsz, seq = tokens.shape
    window, passes, depth = sleep_cfg.window, sleep_cfg.passes, model_cfg.num_layers
    n_sleeping = (seq - 1) // window
    names = blocks.gdn_layer_names(model_cfg)
    fast = blocks.zero_fast_weights(model_cfg, bsz)
    stats = []

    def one_pass(h, fast):
        h, caches = blocks.run_blocks(params, h, fast_weight_caches(fast), range(depth), 0,
                                      model_cfg)
        return h, blocks.fast_weights_of(caches, names)

    for w in range(n_sleeping):
        h = blocks.embed(params, tokens[:, w * window:(w + 1) * window], model_cfg)
        for p in range(passes):
            h, fast = one_pass(h, fast)
            fast = {k: v + probes[w][p][k] for k, v in fast.items()}
            stats.append({"window": w, "pass": p + 1,
                          "h_rms": jnp.sqrt(jnp.mean(jnp.square(h.astype(jnp.float32)))),
                          "fast_norm": sum(jnp.sqrt(jnp.sum(jnp.square(v))) / bsz
                                           for v in fast.values())})
    h = blocks.embed(params, tokens[:, n_sleeping * window:], model_cfg)
    h, fast = one_pass(h, fast)
    logits = blocks.output_logits(params, h, model_cfg)
    start = n_sleeping * window
    return answer_loss(logits, batch["targets"][:, start:], batch["loss_mask"][:, start:]), stats


def answer_loss(logits, targets, loss_mask):
    ce, correct = full_logits_token_losses(logits, targets)
    return reduce_answer_loss(ce, correct, loss_mask)[0]


def diagnose(cfg, run_dir: str | None, batch_size: int) -> list[dict]:
    rc = validate_config(cfg)
    if rc.sleep.eviction != "hard" or rc.sleep.loop_range not in (None, (0, rc.model.num_layers)):
        raise ValueError("sleep: the diagnosis unrolls hard eviction with every block looped")
    if run_dir:
        from sleepjax.training import load_params
        params = load_params(run_dir).params
    else:
        params = sleep_lm.init_params(rc.model, jax.random.PRNGKey(rc.train.seed))
    source = data.make_source(rc.task, "train", rc.train.seed)
    records = [source[i] for i in range(batch_size)]
    batch = {k: jnp.asarray(np.stack([r[k] for r in records]))
             for k in ("inputs", "targets", "loss_mask")}
    n_sleeping = (rc.seq_len - 1) // rc.sleep.window
    zeros = blocks.zero_fast_weights(rc.model, batch_size)
    probes = [[jax.tree.map(jnp.zeros_like, zeros) for _ in range(rc.sleep.passes)]
              for _ in range(n_sleeping)]
    (loss, stats), grads = jax.value_and_grad(unrolled_loss, argnums=1, has_aux=True)(
        params, probes, batch, rc.model, rc.sleep)
    # The unrolled forward must be the model's: compare with the training loss.
    logits = sleep_lm.forward_sequence(params, batch["inputs"], rc.model, rc.sleep)
    reference = answer_loss(logits, batch["targets"], batch["loss_mask"])
    if not np.isclose(float(loss), float(reference), rtol=1e-4, atol=1e-5):
        raise AssertionError(f"unrolled loss {float(loss)} != model loss {float(reference)}")
    rows = []
    for row in stats:
        g = grads[row["window"]][row["pass"] - 1]
        rows.append({"window": row["window"], "pass": row["pass"],
                     "h_rms": float(row["h_rms"]), "fast_norm": float(row["fast_norm"]),
                     "grad_fast_norm": float(sum(jnp.sqrt(jnp.sum(jnp.square(v)))
                                                 for v in g.values())),
                     "loss": float(loss)})
    return rows


def main(argv) -> int:
    del argv
    try:
        rows = diagnose(_CONFIG.value, _RUN.value, _BATCH.value)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"loss {rows[0]['loss']:.4f}\n| window | pass | h RMS | |S| (sum over GDN layers) | "
          f"|dL/dS| |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['window']} | {r['pass']} | {r['h_rms']:.3f} | {r['fast_norm']:.3f} | "
              f"{r['grad_fast_norm']:.3e} |")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
