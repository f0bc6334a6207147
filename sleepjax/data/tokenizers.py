"""Fixed-vocabulary tokenizers for the procedural tasks.

Every task has a small closed vocabulary, so a tokenizer is just a list of token strings; the
token id is the position in that list. They are used for display and for the tests' independent
parsers; the generators emit ids directly.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


class Tokenizer:
    """A bijection between a fixed list of token strings and ids 0..vocab_size-1.

    Args:
      tokens: the vocabulary in id order; must be unique, non-empty strings without whitespace
        (word level) or single characters (character level).
      char_level: if True, ``encode`` splits a string into characters and ``decode`` joins with
        nothing (Rule 110's '0'/'1' alphabet); otherwise split / join on single spaces.
      pad_token: the padding token (must be in ``tokens``), or None if the task never pads.
    """

    def __init__(self, tokens: Sequence[str], *, char_level: bool = False,
                 pad_token: str | None = None):
        tokens = tuple(tokens)
        if not tokens:
            raise ValueError("tokens: the vocabulary must not be empty")
        if len(set(tokens)) != len(tokens):
            duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"tokens: duplicate entries {duplicates}")
        for token in tokens:
            if not isinstance(token, str) or not token or any(c.isspace() for c in token):
                raise ValueError(f"tokens: each token must be a non-empty string without "
                                 f"whitespace (got {token!r})")
            if char_level and len(token) != 1:
                raise ValueError(f"tokens: a character-level vocabulary needs single characters "
                                 f"(got {token!r})")
        if pad_token is not None and pad_token not in tokens:
            raise ValueError(f"pad_token: {pad_token!r} is not in the vocabulary")
        self.tokens = tokens
        self.char_level = char_level
        self.pad_token = pad_token
        self._ids = {token: i for i, token in enumerate(tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int | None:
        return None if self.pad_token is None else self._ids[self.pad_token]

    def id(self, token: str) -> int:
        """The id of one token; KeyError-free: raises ValueError naming the unknown token."""
        try:
            return self._ids[token]
        except KeyError:
            raise ValueError(f"token {token!r} is not in the vocabulary") from None

    def split(self, text: str) -> list[str]:
        return list(text) if self.char_level else text.split()

    def encode(self, text: str | Iterable[str]) -> np.ndarray:
        """Token ids (int32) of a string (split as the tokenizer's level says) or a token list."""
        pieces = self.split(text) if isinstance(text, str) else list(text)
        return np.asarray([self.id(p) for p in pieces], dtype=np.int32)

    def decode_tokens(self, ids: Iterable[int], *, skip_pad: bool = False) -> list[str]:
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            if skip_pad and i == self.pad_id:
                continue
            out.append(self.tokens[i])
        return out

    def decode(self, ids: Iterable[int], *, skip_pad: bool = False) -> str:
        """The text of a sequence of ids (joined by spaces, or by nothing at character level)."""
        return ("" if self.char_level else " ").join(self.decode_tokens(ids, skip_pad=skip_pad))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, char_level={self.char_level})"
