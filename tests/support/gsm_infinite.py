"""GSM-Infinite rows in the published format and a tokenizer trained on them (test fixtures)."""

from __future__ import annotations

import json
import os

PLACES = ("Maple Creek", "Pine Ridge", "Oak Hollow", "Cedar Falls")
ANIMALS = ("owl", "eagle", "fox", "deer", "crow")


def published_row(i: int) -> dict:
    """One row shaped like InfiniAILab/gsm_infinite_medium_*: a chain of `op` operations among
    distractor sentences, a question, and a solution (chain of thought + "Answer: n.")."""
    op = 1 + i % 4
    names = [f"adult {ANIMALS[(i + k) % 5]} in {PLACES[(i + k) % 4]}" for k in range(op + 1)]
    value = 3 + 7 * i
    facts = [f"The number of {names[0]} equals {value}."]
    steps = [f"Define {names[0]} as V0; so V0 = {value}."]
    for k in range(1, op + 1):
        extra = 2 * k + i
        facts.append(f"The number of {names[k]} equals {extra} more than the number of "
                     f"{names[k - 1]}.")
        steps.append(f"Define {names[k]} as V{k}; so V{k} = V{k - 1} + {extra} = "
                     f"{value + extra}.")
        value += extra
    facts.insert(1, f"The number of newborn crow in {PLACES[i % 4]} equals {i + 5}.")  # distractor
    return {"id": i, "template": "crazy_zootopia", "mode": "normal", "length": 0, "d": 2,
            "op": op, "problem": " ".join(facts),
            "question": f"What is the number of {names[-1]}?",
            "solution": " ".join(steps) + f" Answer: {value}.",
            "messages": [{"role": "user", "content": "..."}]}


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def write_tokenizer(tmp_path, rows) -> str:
    """A tiny WordLevel tokenizer (whitespace pre-tokenizer) trained on the fixture's text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [r[k] for r in rows for k in ("problem", "question", "solution")]
    texts.append("Question Answer :")
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "[UNK]"])
    tokenizer.train_from_iterator(texts, trainer)
    path = os.path.join(tmp_path, "tokenizer.json")
    tokenizer.save(path)
    return path


def long_row(i: int, fillers: int) -> dict:
    """``published_row(i)`` with ``fillers`` more distractor sentences in its problem (about 11
    word-level tokens each), for rows of the paper's 2000-3300 tokens."""
    row = published_row(i)
    extra = [f"The number of newborn {ANIMALS[k % 5]} in {PLACES[(i + k) % 4]} equals {k % 97}."
             for k in range(fillers)]
    first, rest = row["problem"].split(". ", 1)
    return {**row, "id": f"long-{i}-{fillers}", "problem": " ".join([first + "."] + extra + [rest])}
