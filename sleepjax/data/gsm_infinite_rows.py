"""Reading GSM-Infinite rows as published (Zhou et al.; HF ``InfiniAILab/gsm_infinite_*``).

A published row holds (among ``id``, ``template``, ``mode``, ``length``, ``d``, ``messages``):

* ``problem``  -- the long context: the story of assignments, with distractor sentences;
* ``question`` -- the query ("What is the number of adult owl in Maple Creek?");
* ``solution`` -- the chain of thought, ending with the answer ("... Answer: 7.");
* ``op``       -- the number of operations (the difficulty).

Only these four are read. The answer is the number after the last "Answer:" of the solution
(or, without one, its last integer); the rest of the solution (the chain of thought) is dropped.
Errors name the config key, the file and the row (or line), so that a bad file fails before
compute.

Held-out rows must stay held out: :func:`check_disjoint` refuses train and test file lists that
share a file (the same path, or the same bytes under another name) or a problem (the same
question and problem text, compared by hash), naming both sides, unless overlap is explicitly
allowed, which is logged.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import logging
import os
import re
from typing import Any, Iterator

ROW_FIELDS = ("problem", "question", "solution", "op")
SUFFIXES = (".jsonl", ".json", ".parquet")
_GLOB_CHARS = re.compile(r"[*?\[]")
_ANSWER_MARKER = re.compile(r"answer\s*:\s*", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Row:
    """One published row, reduced to what the record needs."""

    question: str
    problem: str
    answer: str        # canonical decimal integer, e.g. "7" or "-3"
    op: int
    where: str         # "<file>: row <0-based index>" for messages

    @property
    def identity(self) -> bytes:
        """What the train/test hash split is computed on: the problem as the model sees it."""
        return ("gsm_infinite:" + self.question + "\0" + self.problem).encode()


def _fail(key: str, message: str) -> ValueError:
    return ValueError(f"task.{key}: {message}")


def expand_paths(key: str, spec: str) -> tuple[str, ...]:
    """The files named by a comma-joined list of paths, globs and directories, in a fixed order.

    A glob expands to its sorted matches and a directory to its ``.jsonl`` / ``.json`` /
    ``.parquet`` files, sorted, so that the row order (hence every record) is a pure function of
    the spec and the files. Raises ValueError naming ``task.<key>`` for a path that names nothing.
    """
    files: list[str] = []
    for entry in (p.strip() for p in spec.split(",")):
        if not entry:
            continue
        if _GLOB_CHARS.search(entry):
            matches = sorted(p for p in glob.glob(entry) if os.path.isfile(p))
            if not matches:
                raise _fail(key, f"the pattern {entry!r} matches no file")
        elif os.path.isdir(entry):
            matches = sorted(os.path.join(entry, name) for name in os.listdir(entry)
                             if name.endswith(SUFFIXES))
            if not matches:
                raise _fail(key, f"the directory {entry!r} holds no {'/'.join(SUFFIXES)} file")
        elif os.path.isfile(entry):
            matches = [entry]
        else:
            raise _fail(key, f"no such file or directory {entry!r}")
        for path in matches:
            if not path.endswith(SUFFIXES):
                raise _fail(key, f"{path!r}: unsupported file type; expected one of {SUFFIXES}")
            if path not in files:
                files.append(path)
    return tuple(files)


def _read_text(key: str, path: str) -> str:
    """The file decoded as UTF-8; a byte that is not names the file, line and byte."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise _fail(key, f"{path}: line {line} is not UTF-8 text (byte 0x"
                         f"{raw[error.start]:02x} at column {column}); re-encode the file as "
                         "UTF-8") from None


def _read_json_rows(key: str, path: str) -> Iterator[Any]:
    text = _read_text(key, path)
    if text.lstrip().startswith("["):       # a .json file holding one array of rows
        try:
            yield from json.loads(text)
        except json.JSONDecodeError as e:
            raise _fail(key, f"{path}: not valid JSON ({e})") from None
        return
    for number, line in enumerate(text.splitlines()):   # JSON lines
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise _fail(key, f"{path}: line {number + 1} is not valid JSON ({e})") from None


def _read_parquet_rows(key: str, path: str) -> list[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise _fail(key, f"{path}: reading parquet needs pyarrow; run `pip install pyarrow` or "
                         f"convert the file to JSON lines") from None
    schema = pq.read_schema(path)
    columns = [name for name in ROW_FIELDS + ("id",) if name in schema.names]
    return pq.read_table(path, columns=columns).to_pylist()


def parse_answer(solution: str) -> str | None:
    """The final number of a solution: after its last "Answer:", else its last integer."""
    markers = list(_ANSWER_MARKER.finditer(solution))
    if markers:
        found = _NUMBER.match(solution, markers[-1].end())
    else:
        numbers = list(_NUMBER.finditer(solution))
        found = numbers[-1] if numbers else None
    if found is None:
        return None
    digits = found.group().replace(",", "")
    return str(int(digits)) if re.fullmatch(r"-?\d+", digits) else None


def _check_row(key: str, raw: Any, where: str) -> Row:
    if not isinstance(raw, dict):
        raise _fail(key, f"{where}: must be an object with fields {list(ROW_FIELDS)} "
                         f"(got {type(raw).__name__})")
    if raw.get("id") is not None:
        where = f"{where} (id {raw['id']!r})"
    missing = [name for name in ROW_FIELDS if name not in raw or raw[name] is None]
    if missing:
        raise _fail(key, f"{where}: missing field(s) {missing}; a GSM-Infinite row needs "
                         f"{list(ROW_FIELDS)}")
    for name in ("problem", "question", "solution"):
        if not isinstance(raw[name], str) or not raw[name].strip():
            raise _fail(key, f"{where}: field {name!r} must be a non-empty string "
                             f"(got {raw[name]!r:.60})")
    op = raw["op"]
    if isinstance(op, str) and op.strip().isdigit():
        op = int(op)
    if isinstance(op, bool) or not isinstance(op, int) or op < 0:
        raise _fail(key, f"{where}: field 'op' must be an int >= 0 (got {raw['op']!r})")
    answer = parse_answer(raw["solution"])
    if answer is None:
        raise _fail(key, f"{where}: cannot parse the answer from the solution (expected "
                         f"'Answer: <integer>' or a final integer; got "
                         f"...{raw['solution'][-80:]!r})")
    return Row(question=raw["question"].strip(), problem=raw["problem"].strip(), answer=answer,
               op=int(op), where=where)


def read_rows(key: str, paths: tuple[str, ...]) -> list[Row]:
    """Every row of ``paths`` in file order, checked; ValueError naming ``task.<key>`` if bad.
    Parsed once per (key, file contents): config validation and the sources share the rows."""
    return list(_read_rows_cached(key, file_stamps(tuple(paths))))


@functools.lru_cache(maxsize=8)
def _read_rows_cached(key: str, stamps: tuple) -> tuple[Row, ...]:
    rows: list[Row] = []
    for path, _, _ in stamps:
        raws = _read_parquet_rows(key, path) if path.endswith(".parquet") \
            else _read_json_rows(key, path)
        count = 0
        for number, raw in enumerate(raws):
            rows.append(_check_row(key, raw, f"{path}: row {number}"))
            count += 1
        if count == 0:
            raise _fail(key, f"{path}: holds no rows")
    return tuple(rows)


def file_stamps(paths: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) per file: a cache key that changes when a file is rewritten."""
    return tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)


def _content_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def overlap(train_key: str, train_paths: tuple[str, ...], test_key: str,
            test_paths: tuple[str, ...]) -> str | None:
    """How the test files overlap the train files, in words naming both sides, or None.

    Files are compared by content (a copy or a link under another name is the same file), then
    rows by the hash of their identity (question and problem text, what the model reads).
    """
    train_files = {}
    for path in train_paths:
        train_files.setdefault(_content_digest(path), path)
    for path in test_paths:
        same = train_files.get(_content_digest(path))
        if same is not None:
            how = "is" if os.path.realpath(same) == os.path.realpath(path) else "has the bytes of"
            return (f"task.{test_key}: {path} {how} task.{train_key}'s file {same}: every test "
                    "row would also be trained on")
    seen = {hashlib.sha256(row.identity).digest(): row for row in read_rows(train_key, train_paths)}
    test_rows = read_rows(test_key, test_paths)
    shared = [(seen[h], row) for row in test_rows
              if (h := hashlib.sha256(row.identity).digest()) in seen]
    if not shared:
        return None
    train_row, test_row = shared[0]
    return (f"task.{test_key}: {len(shared)} of its {len(test_rows)} rows have the question and "
            f"problem of a task.{train_key} row (first: {test_row.where} = {train_row.where}): "
            "those test rows would also be trained on")


def check_disjoint(train_key: str, train_paths: tuple[str, ...], test_key: str,
                   test_paths: tuple[str, ...], allow: bool, allow_key: str) -> None:
    """Refuse overlapping train and test files (:func:`overlap`) unless ``allow``, in which case
    the overlap is logged as a warning."""
    found = _overlap_of_files(train_key, file_stamps(train_paths), test_key,
                              file_stamps(test_paths))
    if found is None:
        return
    if not allow:
        raise ValueError(f"{found}; use disjoint files, or set task.{allow_key}=True to "
                         "evaluate on them anyway")
    if found not in _warned:    # config validation runs once per source built
        _warned.add(found)
        logger.warning("%s (allowed by task.%s)", found, allow_key)


_warned: set[str] = set()


@functools.lru_cache(maxsize=8)
def _overlap_of_files(train_key: str, train_stamps: tuple, test_key: str, test_stamps: tuple):
    return overlap(train_key, tuple(p for p, _, _ in train_stamps), test_key,
                   tuple(p for p, _, _ in test_stamps))
