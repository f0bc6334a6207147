"""experiments/gsm_retrofit.py: sleep fine-tuning of pretrained models on GSM-Infinite rows.

Every variant is validated against sources shaped like the ones it is written for (tiny-width
random checkpoints made here with transformers, of the variant's depth), and the ``tiny``
variant runs end to end: a tiny random Qwen3.5 loaded from its Hugging Face directory, the
middle blocks looped, trained on published-format rows with the rows' own tokenizer; the loss
falls, a killed run resumes from its checkpoint, evaluation is by #ops. The paper-size variants
are validated on rows of the paper's 2000-3300 tokens, all of which they keep.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3_5ForCausalLM, Qwen3_5TextConfig

from sleepjax.training.checkpointing import Checkpointer
from sleepjax.training.config import validate_config
from sleepjax.training.experiment_files import apply_overrides, load_config, load_config_module
from sleepjax.training.trainer import train_and_evaluate
from sleepjax import data
from sleepjax.data.layout import evicted_fraction
from support.gsm_infinite import long_row, published_row, write_jsonl, write_tokenizer
from support.training import REPO

# One worker runs the module (its pretrained sources and the tiny recipe run are built once).
pytestmark = pytest.mark.xdist_group("test_gsm_retrofit")

RECIPE = os.path.join(REPO, "experiments", "gsm_retrofit.py")
PADDED_HEAD = 5        # checkpoint heads are often padded beyond their tokenizer (Qwen3.5: 248320)
# prompts of 2004..3289 tokens (11 per filler sentence), ops 1..4 (1-op rows are outside 2..8)
LONG_FILLERS = (175, 190, 205, 220, 235, 250, 265, 280, 178, 193, 208, 223, 238, 253, 268, 283)


def _qwen3_5(path, vocab, layers):
    torch.manual_seed(0)
    types = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)]
    config = Qwen3_5TextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
        layer_types=types, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
        linear_value_head_dim=8, tie_word_embeddings=True, initializer_range=0.05)
    Qwen3_5ForCausalLM(config).save_pretrained(path)
    return str(path)


def _llama(path, vocab, layers):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrofit")
    rows = [published_row(i) for i in range(48)]
    long_rows = [long_row(i, fillers) for i, fillers in enumerate(LONG_FILLERS)]
    tokenizer = write_tokenizer(root, rows + long_rows)
    vocab = Tokenizer.from_file(tokenizer).get_vocab_size() + PADDED_HEAD
    return {
        "rows": write_jsonl(root / "rows.jsonl", rows), "tokenizer": tokenizer, "root": root,
        "long_rows": write_jsonl(root / "long_rows.jsonl", long_rows),
        "qwen_tiny": _qwen3_5(root / "qwen4", vocab, 4),
        "qwen_24": _qwen3_5(root / "qwen24", vocab, 24),
        "llama_24": _llama(root / "llama24", vocab, 24),
    }


def _recipe(variant, sources, source_key, source, **overrides):
    cfg = load_config(f"{RECIPE}:{variant}")
    rows = sources["rows"] if variant == "tiny" else sources["long_rows"]
    return apply_overrides(cfg, {"task.gsm_infinite_files": rows,
                                 "task.tokenizer_path": sources["tokenizer"],
                                 source_key: source, **overrides})


class _Killed(Exception):
    """Stands in for the process being killed between two steps."""


@pytest.fixture(scope="module")
def tiny_run(sources, tmp_path_factory):
    """The tiny recipe, killed after step 25 and resumed from its step-20 checkpoint."""
    cfg = _recipe("tiny", sources, "init.checkpoint_dir", sources["qwen_tiny"],
                  **{"train.progress_bar": False})
    workdir = str(tmp_path_factory.mktemp("tiny_run"))

    def kill_after_25(step, metrics):
        if step == 25:
            raise _Killed

    with pytest.raises(_Killed):
        train_and_evaluate(cfg, workdir, step_callback=kill_after_25)
    with open(os.path.join(workdir, "train_log.jsonl")) as f:
        first_losses = [json.loads(line)["loss"] for line in f]
    resumed = train_and_evaluate(cfg, workdir)
    return cfg, workdir, first_losses, resumed


def test_tiny_recipe_fine_tunes_a_pretrained_qwen3_5_end_to_end(tiny_run, sources):
    cfg, workdir, first_losses, resumed = tiny_run
    rc = validate_config(cfg, num_devices=1)
    assert rc.model.layer_pattern == "GGGA" and rc.sleep.loop_range == (1, 2)
    assert rc.model.vocab_size == Tokenizer.from_file(sources["tokenizer"]).get_vocab_size() + PADDED_HEAD
    assert rc.sleep.passes == 2 and rc.sleep.coda == "after_loop"
    # the killed run checkpointed step 20; the rerun resumed there and finished
    assert resumed["start_step"] == 20
    assert [s for s, _ in resumed["losses"]] == list(range(21, cfg.train.steps + 1))
    with Checkpointer(os.path.join(workdir, "checkpoints"), keep=3, async_save=False) as ck:
        assert ck.all_steps()[-1] == cfg.train.steps
    # the loss falls over a few dozen steps
    start, end = np.mean(first_losses[:5]), np.mean([l for _, l in resumed["losses"]][-5:])
    assert np.isfinite(end) and end < 0.7 * start, (start, end)
    # evaluation by #ops
    final = resumed["final_eval"]
    assert resumed["difficulty_name"] == "ops"
    assert set(final["accuracy"]) == {"2", "3", "4", "all"}


def test_every_recipe_variant_validates_on_sources_of_its_shape(sources, tiny_run):
    """The recipe's block indices fit the depth it is written for: loop ranges, inserted
    positions and the warm-up's trainable regex all resolve, and answers sit in the last window."""
    module = load_config_module(RECIPE)
    sources_by_variant = {
        "tiny": ("init.checkpoint_dir", sources["qwen_tiny"]),
        "jet": ("init.checkpoint_dir", sources["qwen_24"]),
        "ouro": ("init.checkpoint_dir", sources["llama_24"]),
        "ouro_sliding_warmup": ("init.checkpoint_dir", sources["llama_24"]),
        "ouro_sliding": ("init.from_run", tiny_run[1]),
    }
    assert set(sources_by_variant) == set(module.VARIANTS)
    for variant, (key, source) in sources_by_variant.items():
        assert key in module.REQUIRED_PATHS[variant]
        rc = validate_config(_recipe(variant, sources, key, source), num_devices=1)
        expected_layers = module.SOURCE_LAYERS[variant] + len(rc.init.insert_gdn_at)
        if key == "init.checkpoint_dir":
            assert rc.model.num_layers == expected_layers, variant
    jet = validate_config(_recipe("jet", sources, "init.checkpoint_dir", sources["qwen_24"]))
    assert jet.sleep.loop_range == (6, 18) and jet.sleep.eviction == "hard" and jet.sleep.window == 2000
    ouro = validate_config(_recipe("ouro", sources, "init.checkpoint_dir", sources["llama_24"]))
    assert ouro.model.layer_pattern.count("g") == 6 and ouro.sleep.loop_range is None
    warmup = validate_config(_recipe("ouro_sliding_warmup", sources, "init.checkpoint_dir",
                                     sources["llama_24"]))
    assert warmup.sleep.eviction == "hard" and warmup.optim.trainable
    sliding = validate_config(_recipe("ouro_sliding", sources, "init.from_run", tiny_run[1]))
    assert sliding.sleep.eviction == "sliding" and sliding.sleep.window == 512
    for rc in (jet, ouro, warmup, sliding):       # the paper's #ops, rows of up to 3300 tokens
        assert (rc.task.min_ops, rc.task.max_ops, rc.task.eval_ops) == (2, 8, (2, 4, 6, 8))
        assert rc.seq_len == module.PAPER_SEQ_LEN >= 3300
    _check_every_paper_length_row_is_used_and_evicted(jet, sliding)


def _check_every_paper_length_row_is_used_and_evicted(jet, sliding):
    """Both layouts keep every row of 2004-3289 tokens with #ops in range (none skipped as too
    long, too short or split): the question sleeps, and most of the problem is out of attention
    when the answer is predicted."""
    for rc, eviction, least in ((jet, "hard", 0.6), (sliding, "sliding", 0.74)):
        for split in data.SPLITS:
            source = data.make_source(rc.task, split, 0)
            assert not any(count for reason, count in source.skipped.items() if reason != "ops")
            spans = source.record_spans()
            fractions = evicted_fraction(spans.first_loss, rc.sleep.window, eviction)
            assert len(source) and fractions.min() > least
            assert (spans.question_end < rc.sleep.window).all()


@pytest.mark.parametrize("variant", ["jet", "ouro_sliding"])
def test_a_recipe_without_its_sources_names_the_key_to_set(variant, sources):
    module = load_config_module(RECIPE)
    for missing in module.REQUIRED_PATHS[variant]:
        given = {key: sources["long_rows"] if key == "task.gsm_infinite_files" else
                 sources["tokenizer"] if key == "task.tokenizer_path" else sources["qwen_24"]
                 for key in module.REQUIRED_PATHS[variant] if key != missing}
        cfg = apply_overrides(load_config(f"{RECIPE}:{variant}"), given)
        with pytest.raises(ValueError, match=rf"^{missing.replace('.', '[.]')}: .*set it on the command line"):
            validate_config(cfg, num_devices=1)
