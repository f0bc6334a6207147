"""Tokenizers for free text (GSM-Infinite rows): a checkpoint's ``tokenizer.json``, or a word-level
vocabulary fitted on the files when no checkpoint is used.

Both expose what the data sources need: ``vocab_size``, ``pad_id``, ``encode_text(str) -> int32
ids``, ``decode(ids) -> str`` and ``decode_tokens(ids) -> list[str]``. Special tokens are never
added by ``encode_text``: the record layout concatenates separately encoded segments, and a
post-processor's BOS / EOS inside the sequence would sit between the prompt and the answer.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

import numpy as np

from sleepjax.data.tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
# Tried in order when the tokenizer.json configures no padding: the usual names of a padding or
# end-of-text token (the padding follows the answer and carries no loss).
PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>", "<|endoftext|>",
                  "</s>", "<eos>", "<|im_end|>", "<|end_of_text|>")
WORD_PAD = "<pad>"
# Word-level pieces: single digits (so every number is spelled from 10 tokens, like the
# generator's), runs of letters, single punctuation characters.
_WORD_PIECES = re.compile(r"\d|[^\W\d_]+|[^\w\s]|_")


def tokenizer_file(key: str, path: str) -> str:
    """``path`` itself or ``path/tokenizer.json``; ValueError naming ``task.<key>`` if absent."""
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"task.{key}: no tokenizer file {path!r} (give a tokenizer.json or the "
                         f"checkpoint directory holding one)")
    return path


class PretrainedTokenizer:
    """A ``tokenizers.Tokenizer`` loaded from a checkpoint's tokenizer.json."""

    def __init__(self, path: str, key: str = "tokenizer_path"):
        import tokenizers

        self.path = tokenizer_file(key, path)
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(self.path)
        except Exception as e:   # the Rust side raises a plain Exception on a malformed file
            raise ValueError(f"task.{key}: {self.path!r} is not a tokenizers JSON file ({e})") \
                from None
        padding = self._tokenizer.padding
        pad_id = padding.get("pad_id") if padding else None
        if pad_id is None:
            found = [self._tokenizer.token_to_id(t) for t in PAD_CANDIDATES]
            pad_id = next((i for i in found if i is not None), None)
        if pad_id is None:
            raise ValueError(f"task.{key}: {self.path!r} configures no padding and has none of "
                             f"the tokens {list(PAD_CANDIDATES)} to pad with")
        self.pad_id = int(pad_id)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_text(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def decode_tokens(self, ids: Iterable[int], *, skip_pad: bool = False) -> list[str]:
        """Token strings, one per id (as the project's Tokenizer, for display)."""
        return [self._tokenizer.id_to_token(int(i)) for i in np.asarray(ids).reshape(-1)
                if not (skip_pad and int(i) == self.pad_id)]

    def decode(self, ids: Iterable[int], *, skip_pad: bool = False) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if skip_pad:
            ids = [i for i in ids if i != self.pad_id]
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"PretrainedTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def word_pieces(text: str) -> list[str]:
    return _WORD_PIECES.findall(text)


class FittedWordTokenizer:
    """The project's word-level :class:`Tokenizer` over every piece of the given texts.

    For training from scratch on published rows: the vocabulary is ``<pad>``, the ten digits,
    then the other pieces sorted, so it is a pure function of the texts (fit it on the rows of
    both splits, so that train and test share it and no test word is unknown).
    """

    def __init__(self, texts: Iterable[str]):
        pieces = set()
        for text in texts:
            pieces.update(word_pieces(text))
        digits = [str(d) for d in range(10)]
        self.words = Tokenizer([WORD_PAD] + digits + sorted(pieces - set(digits)),
                               pad_token=WORD_PAD)
        self.pad_id = self.words.pad_id

    @property
    def vocab_size(self) -> int:
        return self.words.vocab_size

    def encode_text(self, text: str) -> np.ndarray:
        return self.words.encode(word_pieces(text))

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode_text(t) for t in texts]

    def decode_tokens(self, ids: Iterable[int], *, skip_pad: bool = False) -> list[str]:
        return self.words.decode_tokens(ids, skip_pad=skip_pad)

    def decode(self, ids: Iterable[int], *, skip_pad: bool = False) -> str:
        return self.words.decode(ids, skip_pad=skip_pad)

    def __repr__(self) -> str:
        return f"FittedWordTokenizer(vocab_size={self.vocab_size})"
