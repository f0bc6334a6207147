"""The tokenizer of a local Hugging Face checkpoint directory, via the ``tokenizers`` package."""

from __future__ import annotations

import os

import tokenizers


def load_tokenizer(path: str) -> tokenizers.Tokenizer:
    """``tokenizers.Tokenizer`` from ``path/tokenizer.json`` (what Qwen checkpoints ship).

    Only the fast-tokenizer file is read: the chat template and special-token settings in
    ``tokenizer_config.json`` are the caller's business (``transformers`` is not needed).
    A file that is not UTF-8 JSON in the ``tokenizers`` format is a ValueError naming it.
    """
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: no tokenizer.json (the checkpoint directory must hold "
                                "the fast-tokenizer file)")
    try:
        return tokenizers.Tokenizer.from_file(file)
    except Exception as error:   # tokenizers raises a bare Exception for a bad file
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"{file}: not a readable tokenizers file ({reason})") from None
