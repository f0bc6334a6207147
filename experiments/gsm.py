"""GSM-Infinite-style math (paper §5.3, Fig. 4): question first, distractors, no chain of
thought, hard eviction; accuracy by number of operations.

The paper fine-tunes pretrained 1.4-2B models (Jet-Nemotron, Ouro) on 2000-3300-token
problems; sleepjax trains from scratch on its own procedural generator, so ``paper`` is a
scaled setting (d=512, 12 layers, T=2048, L=1536: most of the problem is evicted before the
answer; batch 256, Muon lr 1e-3 as in the paper's GSM runs, AdamW 5e-5).

Published GSM-Infinite rows instead of the generator (``sleepjax.data.gsm_infinite``):
``--config.task.gsm_infinite_files=train/*.jsonl`` (optionally ``gsm_infinite_test_files``,
else a hash split) and ``--config.task.tokenizer_path=<checkpoint>/tokenizer.json`` (else a
word vocabulary fitted on the files). The paper's problems have 2000-3300 tokens: raise
``task.seq_len`` to fit them (longer rows are skipped and counted, never truncated). Each record
starts at its question, so rows whose prompt is too short for the question to leave the window
before the answer's (at most ``task.window`` tokens) are skipped and counted too
(``experiments/README.md``, "GSM-Infinite rows: the layout").
"""

from sleepjax import data
from sleepjax.training import experiment_files as common
from sleepjax.training.config import base_config

VARIANTS = ("tiny", "cpu", "paper")


def get_config(arg: str | None = None):
    variant = common.parse_variant(arg, VARIANTS, default="tiny")
    cfg = base_config()
    if variant == "tiny":
        cfg.task = data.task_config("gsm", min_ops=1, max_ops=4, eval_ops=(2, 4), seq_len=160,
                                    window=96, num_test=256)
        cfg.model.update(d_model=64, layer_pattern="AG", attn_heads=2, attn_head_dim=32,
                         gdn_heads=2, gdn_head_dim=32, mlp_hidden=128, gdn_chunk_size=32)
        cfg.optim.update(muon_lr=1e-2, adam_lr=3e-3, warmup_fraction=0.05, decay_fraction=0.3)
        cfg.train.update(steps=300, batch_size=16, log_every=10, eval_every=30,
                         eval_examples=256, eval_batch_size=64, checkpoint_every=100)
    elif variant == "cpu":
        cfg.task = data.task_config("gsm", seq_len=320, window=192, num_test=512)
        cfg.model.update(d_model=128, layer_pattern="AGAG", attn_heads=2, attn_head_dim=64,
                         gdn_heads=2, gdn_head_dim=64, gdn_chunk_size=64)
        cfg.optim.update(muon_lr=5e-3, adam_lr=1e-3, warmup_fraction=0.02, decay_fraction=0.3)
        cfg.train.update(steps=3000, batch_size=32, log_every=25, eval_every=300,
                         eval_examples=512, eval_batch_size=64, checkpoint_every=500)
    else:  # paper (scaled)
        cfg.task = data.task_config("gsm", seq_len=2048, window=1536)
        cfg.model.update(d_model=512, layer_pattern="AGAGAGAGAGAG", attn_heads=8,
                         attn_head_dim=64, gdn_heads=8, gdn_head_dim=64, gdn_chunk_size=64)
        cfg.optim.update(muon_lr=1e-3, adam_lr=5e-5)
        cfg.train.update(steps=1_000, batch_size=256, log_every=10, eval_every=100,
                         eval_examples=1600, eval_batch_size=64, checkpoint_every=100)
    cfg.lock()
    return cfg


def get_sweep():
    """Fig. 4 (Ouro) compares N in {1, 2, 4}; the sweep covers {1, 2, 3, 4}."""
    return common.passes_sweep((1, 2, 3, 4))


def get_seeds():
    """Seeds every N is trained with (init and data order); the sweep reports mean ± std."""
    return (0, 1, 2)
