"""Depo multi-hop retrieval (paper §5.2, Fig. 3): a shuffled cycle spread over 4 windows, then
queries "k hops after x". Reported by k (test loss in the paper; here also exact match).

Variants: ``tiny`` (CPU smoke scale), ``cpu`` (a small CPU ablation), ``paper`` (d=512,
10 layers, L=75, T=359, batch 128, Muon lr 2e-3, AdamW 5e-5, 100k steps).
"""

from sleepjax import data
from sleepjax.training import experiment_files as common
from sleepjax.training.config import base_config

VARIANTS = ("tiny", "cpu", "paper")


def get_config(arg: str | None = None):
    variant = common.parse_variant(arg, VARIANTS, default="tiny")
    cfg = base_config()
    if variant == "tiny":
        # 18 nodes at most: 72 context tokens in 3 windows of 24 (each sleeps), then 4 queries
        # (23 input tokens) in the final, non-sleeping window.
        cfg.task = data.task_config("depo", min_nodes=6, max_nodes=18, num_node_symbols=24,
                                    context_tokens=72, num_queries=4, k_min=1, k_max=4,
                                    eval_k=(1, 2, 4), window=24, num_test=256)
        cfg.model.update(d_model=64, layer_pattern="AG", attn_heads=2, attn_head_dim=32,
                         gdn_heads=2, gdn_head_dim=32, mlp_hidden=128, gdn_chunk_size=8)
        cfg.optim.update(muon_lr=1e-2, adam_lr=3e-3, warmup_fraction=0.05, decay_fraction=0.3)
        cfg.train.update(steps=300, batch_size=32, log_every=10, eval_every=30,
                         eval_examples=256, eval_batch_size=64, checkpoint_every=150)
    elif variant == "cpu":
        # 25 nodes at most: 100 context tokens in 4 windows of 25 (as the paper's 300 in 4 of
        # 75), then 4 queries (23 input tokens) in the final, non-sleeping window.
        cfg.task = data.task_config("depo", min_nodes=9, max_nodes=25, num_node_symbols=32,
                                    context_tokens=100, num_queries=4, k_min=1, k_max=8,
                                    eval_k=(1, 2, 4, 8), window=25, num_test=512)
        cfg.model.update(d_model=128, layer_pattern="AGAG", attn_heads=2, attn_head_dim=64,
                         gdn_heads=2, gdn_head_dim=64, gdn_chunk_size=25)
        cfg.optim.update(muon_lr=5e-3, adam_lr=1e-3, warmup_fraction=0.02, decay_fraction=0.3)
        cfg.train.update(steps=3000, batch_size=64, log_every=25, eval_every=300,
                         eval_examples=512, eval_batch_size=128, checkpoint_every=600)
    else:  # paper
        cfg.task = data.task_config("depo")
        cfg.model.update(d_model=512, layer_pattern="AGAGAGAGAG", attn_heads=8, attn_head_dim=64,
                         gdn_heads=8, gdn_head_dim=64, gdn_chunk_size=75)
        cfg.optim.update(muon_lr=2e-3, adam_lr=5e-5)
        cfg.train.update(steps=100_000, batch_size=128, log_every=100, eval_every=2_500,
                         eval_examples=2000, eval_batch_size=128, checkpoint_every=5_000)
    cfg.lock()
    return cfg


def get_sweep(name: str | None = None):
    """Fig. 3 compares N in {1, 2, 4}; the sweep covers {1, 2, 3, 4}.

    ``get_sweep("recipes")`` (``--sweep=recipes``): the stable-training recipes against fixed
    N = 4 (truncated backprop, random N, the curriculum; see
    :func:`sleepjax.training.experiment_files.stable_training_recipes`).
    """
    return common.named_sweep(name, passes=(1, 2, 3, 4), recipe_passes=4)


def get_seeds():
    """Seeds every N is trained with (init and data order); the sweep reports mean ± std."""
    return (0, 1, 2)
