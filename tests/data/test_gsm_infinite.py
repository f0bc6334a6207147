"""GSM-Infinite as published: records from rows in the released format (fixtures written here)."""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest

import sleepjax.data as data
from sleepjax.data import gsm_infinite
from sleepjax.data.gsm import GsmSource
from sleepjax.data.gsm_infinite_rows import parse_answer
from sleepjax.data.layout import check_window_layout
from support.data import check_record_contract
from support.gsm_infinite import published_row, write_jsonl, write_tokenizer
from support.training import REPO

ROWS = [published_row(i) for i in range(8)]


@pytest.fixture
def files(tmp_path):
    gsm_infinite._load.cache_clear()
    gsm_infinite._prepare.cache_clear()
    return write_jsonl(tmp_path / "ops.jsonl", ROWS), write_tokenizer(tmp_path, ROWS)


def config(rows_path, tokenizer_path="", **overrides):
    # L = 48: every fixture prompt (58-121 tokens) has its question in a window that sleeps
    values = dict(gsm_infinite_files=rows_path, tokenizer_path=tokenizer_path, seq_len=240,
                  window=48, min_ops=1, max_ops=4, eval_ops=(1, 2, 3, 4))
    return data.task_config("gsm", **{**values, **overrides})


def all_records(cfg):
    return [(split, data.make_source(cfg, split, seed=0)) for split in data.SPLITS]


def row_of(identity: bytes) -> dict:
    return next(r for r in ROWS
                if identity.endswith((r["question"] + "\0" + r["problem"]).encode()))


def test_question_first_no_chain_of_thought_answer_is_the_only_loss(files):
    rows_path, tokenizer_path = files
    from tokenizers import Tokenizer
    hf = Tokenizer.from_file(tokenizer_path)
    solution_only = {hf.token_to_id(w) for w in ("Define", "so", "V0", "V1")}
    seen = []
    for split, source in all_records(config(rows_path, tokenizer_path)):
        assert source.difficulty_name == "ops" and source.vocab_size == hf.get_vocab_size()
        for i in range(len(source)):
            record, example = source[i], source.example(i)
            check_record_contract(source, record, num_answers=1)
            row = row_of(example.identity)
            seen.append((split, row["id"]))
            length = np.flatnonzero(record["loss_mask"])[-1] + 2     # the answer ends the row
            content = np.append(record["inputs"], record["targets"][-1])[:length]
            assert source.tokenizer.pad_id not in content             # padding only follows it
            assert (record["inputs"][length:] == source.tokenizer.pad_id).all()
            question = hf.encode("Question: " + row["question"], add_special_tokens=False).ids
            np.testing.assert_array_equal(content[:len(question)], question)   # question first
            problem = hf.encode(row["problem"], add_special_tokens=False).ids
            np.testing.assert_array_equal(content[len(question):len(question) + len(problem)],
                                          problem)
            assert not solution_only & set(content.tolist())       # no chain of thought
            on_answer = np.flatnonzero(record["loss_mask"])
            # The answer tokens end the row and are exactly the loss positions.
            assert on_answer[-1] == content.size - 2
            answer = str(row["solution"].split("Answer: ")[1].rstrip("."))
            assert hf.decode(record["targets"][on_answer].tolist()) == answer
            assert hf.decode(record["inputs"][on_answer[0] - 1:on_answer[0] + 1].tolist()) \
                == "Answer :"
            assert set(record["difficulty"][on_answer].tolist()) == {row["op"]}
    # The hash split divides the rows: each in exactly one split, both splits non-empty.
    assert sorted(i for _, i in seen) == list(range(8)) and len({s for s, _ in seen}) == 2


def test_records_are_deterministic_and_picklable(files):
    rows_path, tokenizer_path = files
    cfg = config(rows_path, tokenizer_path)
    first = [data.make_source(cfg, "train", seed=0)[i] for i in range(3)]
    gsm_infinite._load.cache_clear()
    gsm_infinite._prepare.cache_clear()
    again = data.make_source(cfg, "train", seed=7)      # the seed orders batches only
    copy = pickle.loads(pickle.dumps(again))
    for i, record in enumerate(first):
        for key in record:
            np.testing.assert_array_equal(record[key], again[i][key])
            np.testing.assert_array_equal(record[key], copy[i][key])


def test_separate_test_files_op_filter_and_fitted_word_tokenizer(files, tmp_path):
    rows_path, _ = files
    test_path = write_jsonl(tmp_path / "test.jsonl", [published_row(i) for i in range(8, 14)])
    cfg = config(rows_path, gsm_infinite_test_files=test_path, eval_ops=(2, 4))
    train, test = (data.make_source(cfg, s, 0) for s in data.SPLITS)
    assert len(train) == 8 and train.skipped == dict.fromkeys(gsm_infinite.SKIP_REASONS, 0)
    assert len(test) == 3 and test.skipped["ops"] == 3 and test.eval_difficulties == (2, 4)
    # No tokenizer: a word vocabulary fitted on both file lists, numbers spelled in digits.
    assert isinstance(test.tokenizer, gsm_infinite.FittedWordTokenizer)
    assert train.vocab_size == test.vocab_size
    for i in range(len(test)):
        record, row = test[i], row_of_any(test.example(i).identity)
        on_answer = np.flatnonzero(record["loss_mask"])
        assert test.tokenizer.decode(record["targets"][on_answer]).replace(" ", "") \
            == row["solution"].split("Answer: ")[1].rstrip(".")
        assert test.tokenizer.decode(record["inputs"], skip_pad=True).startswith(
            "Question : What is the number of")


def row_of_any(identity: bytes) -> dict:
    return next(r for r in (published_row(i) for i in range(14))
                if identity.endswith((r["question"] + "\0" + r["problem"]).encode()))


def test_rows_longer_than_seq_len_are_skipped_and_counted_never_truncated(files):
    rows_path, tokenizer_path = files
    full = [data.make_source(config(rows_path, tokenizer_path, seq_len=200), s, 0)
            for s in data.SPLITS]
    used = [np.flatnonzero(s[i]["loss_mask"])[-1] + 2 for s in full for i in range(len(s))]
    cut = sorted(used)[4]
    short = [data.make_source(config(rows_path, tokenizer_path, seq_len=cut - 1, window=16), s, 0)
             for s in data.SPLITS]
    assert sum(len(s) for s in short) == sum(u <= cut for u in used)
    assert sum(s.skipped["too_long"] for s in short) == sum(u > cut for u in used)
    with pytest.raises(ValueError, match=r"task\.seq_len: none of the .* rows fits"):
        data.make_source(config(rows_path, tokenizer_path, seq_len=20, window=16), "train", 0)


def test_the_layout_check_uses_every_record(files):
    rows_path, _ = files
    source = data.make_source(config(rows_path), "test", 0)    # digit tokens: answers of 1-3
    spans = source.record_spans()
    for i in range(len(source)):
        on_answer = np.flatnonzero(source[i]["loss_mask"])
        assert (spans.first_loss[i], spans.last_loss[i]) == (on_answer[0], on_answer[-1])
    check_window_layout(source, source.window)
    # L = seq_len - 1: one sleeping window, which holds every fixture row whole
    with pytest.raises(ValueError, match=r"^sleep\.window: .* the question of record 0 ends"):
        check_window_layout(source, source.seq_len - 1)


@pytest.mark.parametrize("row,message", [
    ({k: v for k, v in ROWS[0].items() if k != "question"},
     r"row 2 \(id 0\): missing field.*question"),
    ({**ROWS[0], "solution": "Define x as 3. Answer: unknown."},
     r"row 2 \(id 0\): cannot parse the answer"),
    ({**ROWS[0], "op": "four"}, r"row 2 \(id 0\): field 'op' must be an int"),
    ("{not json", r"line 3 is not valid JSON"),
])
def test_bad_rows_name_the_key_file_and_row(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", ROWS[1:3] + [row])
    with pytest.raises(ValueError, match=r"task\.gsm_infinite_files: .*bad\.jsonl: " + message):
        data.make_source(config(path), "train", 0)


def test_bad_paths_name_the_key(files, tmp_path):
    rows_path, _ = files
    cases = [(dict(gsm_infinite_files=str(tmp_path / "nope.jsonl")),
              r"task\.gsm_infinite_files: no such"),
             (dict(gsm_infinite_files=str(tmp_path / "*.parq")),
              r"task\.gsm_infinite_files: the pattern"),
             (dict(tokenizer_path=str(tmp_path / "none")),
              r"task\.tokenizer_path: no tokenizer file"),
             (dict(gsm_infinite_files="", gsm_infinite_test_files=rows_path),
              r"task\.gsm_infinite_test_files: is only used with gsm_infinite_files")]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            config(rows_path, **overrides)


def test_parquet_rows_give_the_same_records(files, tmp_path):
    import pyarrow as pa              # a test dependency (setup.cfg [test])
    import pyarrow.parquet as pq
    rows_path, tokenizer_path = files
    columns = {k: [r[k] for r in ROWS] for k in ("id", "problem", "question", "solution", "op")}
    pq.write_table(pa.table(columns), tmp_path / "ops.parquet")
    a = data.make_source(config(rows_path, tokenizer_path), "train", 0)
    b = data.make_source(config(str(tmp_path / "ops.parquet"), tokenizer_path), "train", 0)
    assert len(a) == len(b)
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["inputs"], b[i]["inputs"])


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    # None in sys.modules makes `import pyarrow...` raise ImportError, installed or not
    for name in ("pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)
    (tmp_path / "ops.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"task\.gsm_infinite_files: .*pip install pyarrow"):
        data.make_source(config(str(tmp_path / "ops.parquet")), "train", 0)


def test_parse_answer():
    assert parse_answer("so x = 3 + 4 = 7. Answer: 7.") == "7"
    assert parse_answer("answer: 1,234") == "1234"
    assert parse_answer("so x = 12, nothing else 5 then 13") == "13"
    assert parse_answer("Answer: 2. Re-check... Answer: -3.") == "-3"
    assert parse_answer("Answer: none") is None and parse_answer("no numbers") is None


def test_without_files_the_generator_is_used():
    source = data.make_source(data.task_config("gsm"), "train", 0)
    assert isinstance(source, GsmSource)


def test_experiment_config_and_trainer_batches(files):
    from sleepjax.training import experiment_files as common
    from sleepjax.training.config import validate_config
    from sleepjax.training.experiment_files import load_config

    rows_path, tokenizer_path = files
    tiny = load_config(os.path.join(REPO, "experiments", "gsm.py") + ":tiny")
    cfg = common.apply_overrides(tiny, {
        "task.gsm_infinite_files": rows_path, "task.tokenizer_path": tokenizer_path,
        "task.eval_ops": (1, 2, 3, 4), "task.window": 48})
    rc = validate_config(cfg, num_devices=1)
    from tokenizers import Tokenizer
    assert rc.model.vocab_size == Tokenizer.from_file(tokenizer_path).get_vocab_size()
    source = data.make_source(rc.task, "train", rc.train.seed)
    batch = next(iter(data.make_dataset(source, batch_size=4, seed=0)))
    assert batch["inputs"].shape == (4, rc.seq_len) and batch["loss_mask"].sum() >= 4
    bad = common.apply_overrides(cfg, {"task.gsm_infinite_files": rows_path + "x"})
    with pytest.raises(ValueError, match=r"^task\.gsm_infinite_files: no such file"):
        validate_config(bad, num_devices=1)
