"""GSM-Infinite records in windows (paper §5.3): each starts at its question, the question and the
first part of the problem sleep, the prediction window holds the rest and the answer, padding
only follows the answer; rows that cannot be laid out so are skipped and counted."""

from __future__ import annotations

import os
import types

import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer

import sleepjax.data as data
from sleepjax import inference
from sleepjax.data import gsm_infinite
from sleepjax.data.layout import (RecordSpans, check_window_layout, evicted_fraction,
                                  prediction_window_start)
from sleepjax.training.config import validate_config
from sleepjax.training.experiment_files import apply_overrides, load_config
from support.gsm_infinite import long_row, published_row, write_jsonl, write_tokenizer
from support.model import forward, max_rel_err, model_config, params_for, sleep_config
from support.training import REPO

SHORT = [published_row(i) for i in range(16)]           # prompts of 58 / 79 / 100 / 121 tokens
# rows of the paper's lengths: prompts of 1950..3289 tokens (ops 1..4 as published_row's)
LONG = [long_row(i, fillers) for i, fillers in enumerate((172, 175, 178, 200, 235, 260, 285, 288))]


@pytest.fixture
def files(tmp_path):
    gsm_infinite._load.cache_clear()
    gsm_infinite._prepare.cache_clear()
    tokenizer = write_tokenizer(tmp_path, SHORT + LONG)
    return (write_jsonl(tmp_path / "short.jsonl", SHORT), write_jsonl(tmp_path / "long.jsonl", LONG),
            tokenizer)


def source_for(rows_path, tokenizer, split="train", **task):
    values = dict(gsm_infinite_files=rows_path, tokenizer_path=tokenizer, min_ops=1, max_ops=4,
                  eval_ops=(1, 2, 3, 4))
    return data.make_source(data.task_config("gsm", **{**values, **task}), split, 0)


def both_splits(rows_path, tokenizer, **task):
    return [source_for(rows_path, tokenizer, split, **task) for split in data.SPLITS]


def lengths_by_hand(tokenizer_path, row) -> tuple[int, int, int]:
    """(question, prompt, answer) token counts, encoded here without the source."""
    hf = Tokenizer.from_file(tokenizer_path)
    count = lambda text: len(hf.encode(text, add_special_tokens=False).ids)   # noqa: E731
    question = count(f"Question: {row['question']}")
    prompt = question + count(f"{row['problem']}\n\nAnswer:")
    return question, prompt, count(" " + row["solution"].split("Answer: ")[1].rstrip("."))


def row_of(source, index, rows):
    identity = source.example(index).identity
    return next(r for r in rows if identity.endswith((r["question"] + "\0" + r["problem"]).encode()))


@pytest.mark.parametrize("seq_len,window", [(128, 64), (240, 48), (128, 32)])
def test_records_start_at_the_question_and_padding_follows_the_answer(files, seq_len, window):
    rows_path, _, tokenizer = files
    pad = None
    for source in both_splits(rows_path, tokenizer, seq_len=seq_len, window=window):
        pad = source.tokenizer.pad_id
        spans = source.record_spans()
        assert len(source) and (spans.question_end <= prediction_window_start(
            spans.first_loss, window)).all()
        for i in range(len(source)):
            record = source[i]
            question, prompt, answer = lengths_by_hand(tokenizer, row_of(source, i, SHORT))
            tokens = np.append(record["inputs"], record["targets"][-1])
            on_answer = np.flatnonzero(record["loss_mask"])
            # the question opens input 0; the first answer token is predicted from the last
            # prompt token; the answer ends the row and padding fills the rest
            assert spans.question_end[i] == question and on_answer[0] == prompt - 1
            assert on_answer[-1] == prompt + answer - 2
            assert pad not in tokens[:prompt + answer] and (tokens[prompt + answer:] == pad).all()
            # every window before the answer's (each sleeps) is all problem, no padding; the
            # answer's window holds the rest of the prompt and the whole answer
            start = on_answer[0] // window * window
            assert start >= window and on_answer[-1] < start + window
            assert start >= question
    assert pad is not None


def test_fraction_evicted_per_row_on_the_fixture_rows(files):
    """T = 128, L = 64 (the tiny recipe): prompts of 79, 100 and 121 tokens keep the first 64 in
    the sleeping window; 58-token prompts (1 op) cannot evict their question and are skipped."""
    rows_path, _, tokenizer = files
    fractions, too_short = {}, 0
    for source in both_splits(rows_path, tokenizer, seq_len=128, window=64):
        spans = source.record_spans()
        evicted = evicted_fraction(spans.first_loss, 64, "hard")
        for i in range(len(source)):
            _, prompt, _ = lengths_by_hand(tokenizer, row_of(source, i, SHORT))
            fractions[prompt] = evicted[i]
            # what lies before the prediction window, counted on the record itself
            record_inputs = source[i]["inputs"]
            assert np.count_nonzero(record_inputs[:64] != source.tokenizer.pad_id) == 64
        too_short += source.skipped["too_short"]
    assert too_short == sum(row["op"] == 1 for row in SHORT)
    assert fractions == pytest.approx({79: 64 / 79, 100: 64 / 100, 121: 64 / 121})


@pytest.mark.parametrize("window,eviction", [(2000, "hard"), (512, "hard"), (512, "sliding")])
def test_fraction_evicted_on_rows_of_the_papers_length(files, window, eviction):
    """T = 3328 (the retrofit recipes): every 2001-3300-token prompt is used; L = 2000 evicts
    2000 / P of it, sliding L = 512 (P - 512) / P; a 1990-token prompt (no eviction at L = 2000)
    is skipped and counted."""
    _, rows_path, tokenizer = files
    prompts = {lengths_by_hand(tokenizer, row)[1]: row for row in LONG}
    assert min(prompts) < 2000 < sorted(prompts)[1] and 3200 < max(prompts) <= 3300
    seen = {}
    for source in both_splits(rows_path, tokenizer, seq_len=3328, window=window):
        spans = source.record_spans()
        for i, fraction in enumerate(evicted_fraction(spans.first_loss, window, eviction)):
            prompt = lengths_by_hand(tokenizer, row_of(source, i, LONG))[1]
            seen[prompt] = fraction
        assert source.skipped["too_long"] == 0
    expected = {p: ((p - 1) // window * window if eviction == "hard" else p - window) / p
                for p in prompts if window < p}
    assert seen == pytest.approx(expected)
    if window == 2000:
        assert min(seen.values()) > 0.6 and len(seen) == len(LONG) - 1
    else:
        assert min(seen.values()) > 0.73 and len(seen) == len(LONG)


def test_layout_problem_names_each_reason():
    layout = gsm_infinite.layout_problem
    assert layout(13, 100, 2, 128, 64) is None                       # question in window 0
    assert layout(13, 100, 40, 128, 64) == "too_long"                # 140 > T + 1
    assert layout(13, 64, 1, 128, 64) == "too_short"                 # answer in window 0
    assert layout(70, 100, 1, 128, 64) == "too_short"                # question past L
    assert layout(13, 128, 2, 200, 64) == "answer_split"             # inputs 127, 128
    assert layout(13, 65, 1, 128, 64) is None                        # input 64: window 1


def test_a_split_no_row_of_fits_names_the_window(files):
    rows_path, _, tokenizer = files
    with pytest.raises(ValueError, match=r"^task\.window: none of the train rows .*too_short"):
        source_for(rows_path, tokenizer, seq_len=128, window=127)


def spans_source(first, last, question=None, seq_len=64):
    spans = RecordSpans(np.asarray(first), np.asarray(last),
                        None if question is None else np.asarray(question))
    return types.SimpleNamespace(seq_len=seq_len, record_spans=lambda: spans)


def test_window_layout_rule():
    # T = 64, L = 16: windows 0, 1, 2 sleep, 3 is final.
    check_window_layout(spans_source([50], [60]), 16)              # answers in the final window
    check_window_layout(spans_source([20, 40], [30, 47], [5, 16]), 16)   # then loss-free windows
    with pytest.raises(ValueError, match=r"^sleep\.window: .* record 1 has answers from input 40 "
                                         r"\(window 2\) to input 50 \(window 3\)"):
        check_window_layout(spans_source([20, 40], [30, 50]), 16)
    with pytest.raises(ValueError, match=r"^sleep\.window: .* the question of record 1 ends at "
                                         r"input 17 but its answer window starts at input 16"):
        check_window_layout(spans_source([40, 20], [41, 21], [5, 17]), 16)


def test_validation_refuses_a_model_window_that_leaves_a_question_awake(files):
    rows_path, _, tokenizer = files
    cfg = load_config(os.path.join(REPO, "experiments", "gsm.py") + ":tiny")
    overrides = {"task.gsm_infinite_files": rows_path, "task.tokenizer_path": tokenizer,
                 "task.eval_ops": (2, 3, 4), "task.min_ops": 2, "task.seq_len": 128,
                 "task.window": 64}
    validate_config(apply_overrides(cfg, overrides), num_devices=1)
    bad = apply_overrides(cfg, {**overrides, "sleep.window": 96})   # 79-token prompts
    with pytest.raises(ValueError, match=r"^sleep\.window: with L=96 .* the question of record"):
        validate_config(bad, num_devices=1)


@pytest.mark.slow
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_streaming_the_row_equals_training_on_its_padded_record(files, eviction):
    """Inference reads the problem from its first token and sleeps every L tokens, without any
    padding; the training forward on the right-padded record gives the same logits at every
    position up to the answer, and what follows the answer cannot change them. The record is
    one whose answer window sleeps and is followed by a window of padding (T = 128, L = 32)."""
    rows_path, _, tokenizer = files
    source = source_for(rows_path, tokenizer, seq_len=128, window=32)
    spans = source.record_spans()
    index = int(np.flatnonzero(spans.last_loss < 95)[0])          # answer in window 1 or 2
    record = source[index]
    end = int(spans.last_loss[index]) + 1                           # inputs up to the answer
    model_cfg = model_config(vocab_size=source.vocab_size, layer_pattern="AG")
    sleep_cfg = sleep_config(window=32, passes=2, eviction=eviction)
    params = params_for(model_cfg)
    padded = jnp.asarray(record["inputs"][None])
    assert (record["inputs"][96:] == source.tokenizer.pad_id).all()
    trained = np.asarray(forward(params, padded, model_cfg=model_cfg, sleep_cfg=sleep_cfg))
    state = inference.init_state(model_cfg, sleep_cfg, 1)
    streamed, _, slept = inference.feed(params, state, padded[:, :end], model_cfg=model_cfg,
                                        sleep_cfg=sleep_cfg)
    assert np.flatnonzero(np.asarray(slept)).tolist() == [31, 63, 95][:end // 32]
    assert max_rel_err(streamed, trained[:, :end]) < 1e-4
    other = padded.at[:, end:].set(np.arange(128 - end) % source.vocab_size)
    after = np.asarray(forward(params, other, model_cfg=model_cfg, sleep_cfg=sleep_cfg))
    np.testing.assert_array_equal(after[:, :end], trained[:, :end])
