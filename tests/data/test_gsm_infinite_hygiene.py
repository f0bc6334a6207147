"""GSM-Infinite rows: a byte that is not UTF-8 is named with its file and line; test files that
share a file or a problem with the train files are refused naming both, unless allowed (then
logged once)."""

from __future__ import annotations

import logging
import shutil

import pytest

import sleepjax.data as data
from sleepjax.data import gsm_infinite
from support.gsm_infinite import published_row, write_jsonl

ROWS = [published_row(i) for i in range(8)]


@pytest.fixture
def train(tmp_path):
    gsm_infinite._load.cache_clear()
    gsm_infinite._prepare.cache_clear()
    return write_jsonl(tmp_path / "train.jsonl", ROWS)


def _config(train_files, test_files="", **overrides):
    return data.task_config("gsm", gsm_infinite_files=train_files,
                            gsm_infinite_test_files=test_files, seq_len=240, window=64,
                            min_ops=1, max_ops=4, eval_ops=(1, 2, 3, 4), **overrides)


def test_a_non_utf8_byte_names_the_file_and_line(train, tmp_path):
    lines = open(train, "rb").read().split(b"\n")
    lines[3] = lines[3].replace(b"Maple", b"Ma\xe4ple", 1)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b"\n".join(lines))
    column = lines[3].index(b"\xe4") + 1
    with pytest.raises(ValueError, match=rf"^task\.gsm_infinite_files: {latin1}: line 4 is not "
                                         rf"UTF-8 text \(byte 0xe4 at column {column}\)"):
        data.make_source(_config(str(latin1)), "train", seed=0)


def test_overlapping_train_and_test_files_are_refused_naming_both(train, tmp_path):
    copy = str(tmp_path / "copy.jsonl")
    shutil.copy(train, copy)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [published_row(i) for i in (20, 5, 21)])
    for test_files, named in (
            (train, rf"{train} is task\.gsm_infinite_files's file {train}"),
            (copy, rf"{copy} has the bytes of task\.gsm_infinite_files's file {train}"),
            (mixed, rf"1 of its 3 rows have the question and problem of a task\."
                    rf"gsm_infinite_files row \(first: {mixed}: row 1 \(id 5\) = {train}: row 5 "
                    r"\(id 5\)\)")):
        with pytest.raises(ValueError, match=rf"^task\.gsm_infinite_test_files: {named}.*"
                                             r"task\.gsm_infinite_allow_overlap=True"):
            _config(train, test_files)
    clean = write_jsonl(tmp_path / "clean.jsonl", [published_row(i) for i in range(20, 24)])
    # accepted: no overlap error (rows the window layout cannot place are skipped and logged)
    assert 0 < len(data.make_source(_config(train, clean), "test", seed=0)) <= 4


def test_allowed_overlap_is_logged_once(train, tmp_path, caplog):
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [published_row(i) for i in (20, 5, 21)])
    cfg = _config(train, mixed, gsm_infinite_allow_overlap=True)
    with caplog.at_level(logging.WARNING):
        for split in data.SPLITS:
            data.make_source(cfg, split, seed=0)
    warned = [r.getMessage() for r in caplog.records if "allowed by" in r.getMessage()]
    assert len(warned) == 1 and "task.gsm_infinite_allow_overlap" in warned[0]
    with pytest.raises(ValueError, match=r"task\.gsm_infinite_allow_overlap: is only used with"):
        data.task_config("gsm", gsm_infinite_allow_overlap=True)
