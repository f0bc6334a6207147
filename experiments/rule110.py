"""Rule 110 (paper §5.1, Fig. 2): 4 random 24-cell states, predict their first cells after t steps.

Variants (``--config=experiments/rule110.py:<variant>``):

* ``tiny``  -- the CPU default: the README's main command trains N in {1, 2, 3, 4} with it in
  a few minutes on 2 CPU cores. Small t so that a tiny model learns something in that budget.
* ``cpu``   -- the evidence variant (``results/README.md``): the same model at t = 2, batch 64
  (the batch with the best tokens/s on the 2-core CPU; N = 4 runs at the same tokens/s from
  batch 16 to 256), learning rate from the N = 1 grid (``python -m sleepjax.sweep --lr_grid``).
* ``paper`` -- paper scale: d=256 "AGAG", L=24, t=32, batch 512, Muon lr 2e-3, AdamW 5e-5,
  about 5 B training tokens.

``get_sweep()`` lists the ablation over the number of sleep passes N.
"""

from sleepjax.training import experiment_files as common
from sleepjax.training.config import base_config
from sleepjax import data

VARIANTS = ("tiny", "cpu", "paper")


def get_config(arg: str | None = None):
    variant = common.parse_variant(arg, VARIANTS, default="tiny")
    cfg = base_config()
    cfg.sleep.window = 24               # one state per window: each is evicted before the labels
    if variant in ("tiny", "cpu"):
        # t = 1: each label depends on 3 cells of its state (cells 23, 0, 1 of the ring), so the
        # fast weights must keep more than a retrieval of one bit, yet a 2-layer d=64 model
        # learns it within a few hundred steps on a CPU.
        cfg.task = data.task_config("rule110", t=1, num_test=512)
        cfg.model.update(d_model=64, layer_pattern="AG", attn_heads=2, attn_head_dim=32,
                         gdn_heads=2, gdn_head_dim=32, mlp_hidden=128, gdn_impl="chunked",
                         gdn_chunk_size=8)
        # Muon 1e-2 (AdamW scaled with it): the rate both variants' N = 1 grids chose
        # (results/round2/lr_grid_rule110_tiny and results/round2/lr_grid_rule110_cpu), used
        # unchanged for every N.
        cfg.optim.update(muon_lr=1e-2, adam_lr=1.5e-3, warmup_fraction=0.05, decay_fraction=0.3)
        if variant == "tiny":   # the README's main command: 4 runs in about 10 CPU-minutes
            cfg.train.update(steps=240, batch_size=16, log_every=10, eval_every=24,
                             eval_examples=256, eval_batch_size=128, checkpoint_every=120)
        else:
            cfg.task.t = 2
            cfg.train.update(steps=1000, batch_size=64, log_every=20, eval_every=100,
                             eval_examples=512, eval_batch_size=128, checkpoint_every=200)
    else:  # paper
        cfg.task = data.task_config("rule110", t=32)
        cfg.model.update(d_model=256, layer_pattern="AGAG", attn_heads=4, attn_head_dim=64,
                         gdn_heads=4, gdn_head_dim=64, gdn_impl="chunked", gdn_chunk_size=24)
        cfg.optim.update(muon_lr=2e-3, adam_lr=5e-5)
        cfg.train.update(steps=100_000, batch_size=512, log_every=100, eval_every=2_000,
                         eval_examples=4096, eval_batch_size=512, checkpoint_every=2_000)
    cfg.lock()
    return cfg


def get_sweep(name: str | None = None):
    """The ablation of the paper's Fig. 2b: N sleep passes in {1, 2, 3, 4}.

    ``get_sweep("recipes")`` (``--sweep=recipes``): the stable-training recipes against fixed
    N = 4 (truncated backprop, random N, the curriculum; see
    :func:`sleepjax.training.experiment_files.stable_training_recipes`).
    """
    return common.named_sweep(name, passes=(1, 2, 3, 4), recipe_passes=4)


def get_seeds():
    """Seeds every N is trained with (init and data order); the sweep reports mean ± std."""
    return (0, 1, 2)
