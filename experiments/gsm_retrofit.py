"""Sleep fine-tuning of a pretrained model on GSM-Infinite (paper §3.3, §4.3, §4.4, §6.3-6.5).

The paper retrofits sleep onto pretrained models in two ways; both need a local checkpoint
(``--config.init.checkpoint_dir``, read by ``sleepjax.pretrained``), the published
GSM-Infinite rows (``--config.task.gsm_infinite_files``, optionally
``gsm_infinite_test_files``) and the checkpoint's tokenizer (``--config.task.tokenizer_path``).
Nothing is downloaded. Variants:

* ``jet``: a pretrained GDN / attention hybrid fine-tuned with sleep, looping only its middle
  half (prelude once, loop N times, coda once: ``sleep.coda = "after_loop"``), hard eviction,
  L = 2000. The paper uses Jet-Nemotron-2B (28 blocks, loop 7..20); its modeling code is not in
  transformers, so the recipe is written for **Qwen3.5-0.8B** (24 blocks, ``GGGA`` x 6: loop
  blocks 6..17). For another depth D set ``--config.sleep.loop_range=(D//4, 3*D//4)``.
* ``ouro``: a pretrained attention-only model with 6 new GDN blocks inserted (no MLP, output
  projection zero so step 0 is the pretrained model), looping all blocks, hard eviction,
  L = 2000. The paper uses Ouro-1.4B (looped LM, custom code); the recipe is written for a
  24-block **Llama / Qwen3-style** checkpoint (``sleepjax.pretrained`` loads both): the new
  blocks sit at 2, 7, 12, 17, 22, 27 of the 30-block result.
* ``ouro_sliding_warmup`` then ``ouro_sliding``: sliding eviction, L = 512, at the hard-eviction
  recipes' T = 3328 (the paper's rows have 2000-3300 tokens, 4-6.5 windows). Stage 1 trains
  only the inserted GDN blocks for one epoch **under hard eviction** (the paper: without it
  the new layers do not learn to refine the fast weights); stage 2 starts from stage 1's run
  (``--config.init.from_run=<stage-1 workdir>``, no insertion: the blocks are in its
  parameters) and trains the full model for two epochs with sliding eviction.
* ``tiny``: the ``jet`` recipe at toy size, for CI (``tests/training/test_gsm_retrofit.py``
  builds a tiny random Qwen3.5 with transformers and a GSM-Infinite fixture): a 4-block hybrid,
  loop 1..2, L = 64, T = 128 (the fixture's 2-4-op prompts have 79-121 tokens: one sleeping
  window holding the question, like L = 2000 for the paper's 2000-3300-token rows).

Data layout (``sleepjax.data.gsm_infinite``): each record starts at its question and is
right-padded, so the question and the first L tokens of the problem sleep and the prediction
window holds the rest and the answer. Rows are never truncated: rows longer than T + 1 tokens,
rows too short for the question to leave the window before the answer's (here P <= L prompt
tokens) and rows whose answer straddles a window boundary are skipped, counted and logged.
With L = 2000 and P prompt tokens, 2000 / P of the prompt is evicted when the answer is
predicted (61-100 % over 2001-3300 tokens); with sliding L = 512, (P - 512) / P (74-84 %).
#ops: the paper samples U[1, 8]; the published rows start at 2 ops, so training uses 2..8 and
evaluation the paper's {2, 4, 6, 8}.

Optimiser as in the paper's GSM runs: Muon lr 1e-3 (not tuned), AdamW lr 5e-5, batch 256
sequences (lower ``train.batch_size`` to fit; ``benchmarks/bench_memory_fit.py`` estimates what
fits on one accelerator), about 700 (Jet) / 1000 (Ouro) steps. Sweeps: N in {1, 2, 4, 6}
(Jet) and {1, 2, 4} (Ouro, memory-bound in the paper).

Example (one N of the Jet-style sweep)::

    python -m sleepjax.train --config=experiments/gsm_retrofit.py:jet --workdir=runs/jet_n4 \\
        --config.init.checkpoint_dir=ckpt/qwen3.5-0.8b \\
        --config.task.tokenizer_path=ckpt/qwen3.5-0.8b \\
        --config.task.gsm_infinite_files='gsm_inf/medium/*.jsonl' --config.sleep.passes=4
"""

from sleepjax import data
from sleepjax.training import experiment_files as common
from sleepjax.training.config import base_config

VARIANTS = ("tiny", "jet", "ouro", "ouro_sliding_warmup", "ouro_sliding")

# The keys a user must point at local files. They hold UNSET, which validation refuses as a
# missing path naming the key.
UNSET = "<local path: set it on the command line>"
REQUIRED_PATHS = {
    "tiny": ("init.checkpoint_dir", "task.gsm_infinite_files", "task.tokenizer_path"),
    "jet": ("init.checkpoint_dir", "task.gsm_infinite_files", "task.tokenizer_path"),
    "ouro": ("init.checkpoint_dir", "task.gsm_infinite_files", "task.tokenizer_path"),
    "ouro_sliding_warmup": ("init.checkpoint_dir", "task.gsm_infinite_files", "task.tokenizer_path"),
    "ouro_sliding": ("init.from_run", "task.gsm_infinite_files", "task.tokenizer_path"),
}

# The depth each variant's block indices are written for (the source's, before insertion).
SOURCE_LAYERS = {"tiny": 4, "jet": 24, "ouro": 24, "ouro_sliding_warmup": 24, "ouro_sliding": 30}

OURO_INSERTED = (2, 7, 12, 17, 22, 27)      # six GDN blocks spread over the 30-block result
GSM_OPS = dict(min_ops=2, max_ops=8, eval_ops=(2, 4, 6, 8))    # paper: U[1, 8]; rows start at 2
PAPER_SEQ_LEN = 3328       # the paper's rows have 2000-3300 tokens; longer ones are skipped


def _paper_optim(cfg, steps, batch_size=256):
    cfg.optim.update(muon_lr=1e-3, adam_lr=5e-5, warmup_fraction=0.05, decay_fraction=0.2)
    cfg.train.update(steps=steps, batch_size=batch_size, log_every=10, eval_every=50,
                     eval_examples=1024, eval_batch_size=16, checkpoint_every=50)


def get_config(arg: str | None = None):
    variant = common.parse_variant(arg, VARIANTS, default="tiny")
    cfg = base_config()
    if variant == "tiny":
        cfg.task = data.task_config("gsm", seq_len=128, window=64, min_ops=2, max_ops=4,
                                    eval_ops=(2, 3, 4), num_test=64)
        cfg.sleep.update(passes=2, loop_range=(1, 2), eviction="hard")
        cfg.model.update(gdn_impl="chunked", gdn_chunk_size=16)
        cfg.optim.update(muon_lr=2e-2, adam_lr=3e-3, warmup_fraction=0.05, decay_fraction=0.2)
        cfg.train.update(steps=40, batch_size=8, log_every=5, eval_every=10, eval_examples=32,
                         eval_batch_size=16, checkpoint_every=20)
    elif variant == "jet":
        cfg.task = data.task_config("gsm", seq_len=PAPER_SEQ_LEN, window=2000, **GSM_OPS)
        cfg.sleep.update(passes=2, loop_range=(6, 18), eviction="hard")
        _paper_optim(cfg, steps=700)
    elif variant == "ouro":
        cfg.task = data.task_config("gsm", seq_len=PAPER_SEQ_LEN, window=2000, **GSM_OPS)
        cfg.init.insert_gdn_at = OURO_INSERTED
        cfg.sleep.update(passes=2, eviction="hard")
        _paper_optim(cfg, steps=1000)
    elif variant == "ouro_sliding_warmup":
        cfg.task = data.task_config("gsm", seq_len=PAPER_SEQ_LEN, window=512, **GSM_OPS)
        cfg.init.insert_gdn_at = OURO_INSERTED
        cfg.sleep.update(passes=2, eviction="hard")            # hard eviction while warming up
        cfg.optim.trainable = ("blocks_(" + "|".join(map(str, OURO_INSERTED)) + ")",)
        _paper_optim(cfg, steps=200)                           # ~1 epoch of the paper's data
    else:  # ouro_sliding: stage 2, the full model from stage 1's run
        cfg.task = data.task_config("gsm", seq_len=PAPER_SEQ_LEN, window=512, **GSM_OPS)
        cfg.sleep.update(passes=2, eviction="sliding")
        _paper_optim(cfg, steps=400)                           # ~2 epochs
    if variant != "tiny":
        cfg.model.update(gdn_impl="chunked", gdn_chunk_size=64, dtype="bfloat16")
    for key in REQUIRED_PATHS[variant]:
        section, name = key.split(".")
        cfg[section][name] = UNSET
    if variant.startswith("ouro") and variant != "ouro_sliding":
        # the shape of the GDN blocks inserted into the attention-only source
        cfg.model.update(gdn_heads=16, gdn_head_dim=128, conv_size=4)
    cfg.lock()
    return cfg


def get_sweep():
    """Fig. 4: N in {1, 2, 4, 6} (Jet); Ouro runs {1, 2, 4} (``--passes=1,2,4``)."""
    return common.passes_sweep((1, 2, 4, 6))


def get_seeds():
    return (0,)
