"""Reading and writing Hugging Face safetensors checkpoints (one file or shards + index) as numpy.

Only the ``safetensors`` package's numpy API is used (bf16 tensors come back as
``ml_dtypes.bfloat16`` arrays), so neither torch nor transformers is needed at run time.
Tensors are read lazily by name: a multimodal checkpoint's vision tower is never loaded.

Every failure to read a file (a truncated or corrupt ``.safetensors``, an index that is not
JSON) is one ``ValueError`` naming the file, and a tensor stored in a dtype sleepjax does not
load (fp8, integer / quantised formats) is refused by name from the header, before its data is
read.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
WEIGHT_DTYPES = ("float32", "bfloat16", "float16", "float64")
# The safetensors header's names of WEIGHT_DTYPES; any other (F8_E4M3, I8, U8, ...) is refused.
HEADER_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


class CheckpointReader:
    """Name -> file map of a checkpoint directory; tensors are read on demand.

    A directory with ``model.safetensors.index.json`` is read through its ``weight_map``;
    otherwise every ``*.safetensors`` file in it is opened (normally just ``model.safetensors``).
    A name stored in two files is an error (which copy would be meant is ambiguous).
    """

    def __init__(self, path: str):
        self.path = path
        self._file_of: dict[str, str] = {}
        index = os.path.join(path, INDEX_FILE)
        if os.path.isfile(index):
            weight_map = read_json_file(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no 'weight_map' of tensor name -> shard file")
            for name, shard in weight_map.items():
                shard_path = os.path.join(path, shard)
                if not os.path.isfile(shard_path):
                    raise FileNotFoundError(f"{index}: tensor {name!r} is in shard {shard!r}, "
                                            f"which is not in {path}")
                self._file_of[name] = shard_path
        else:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            if not files:
                raise FileNotFoundError(f"{path}: no *.safetensors file and no {INDEX_FILE}")
            for file in files:
                with _open(os.path.join(path, file)) as handle:
                    for name in handle.keys():
                        if name in self._file_of:
                            raise ValueError(f"{path}: tensor {name!r} is stored in both "
                                             f"{os.path.basename(self._file_of[name])} and {file}")
                        self._file_of[name] = os.path.join(path, file)
        self._handles: dict[str, object] = {}

    def names(self) -> list[str]:
        return sorted(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def _handle(self, name: str):
        file = self._file_of[name]
        if file not in self._handles:
            self._handles[file] = _open(file)
        return self._handles[file]

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape, read from the header (no tensor data is read)."""
        return tuple(self._handle(name).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The stored dtype as the header names it (``F32``, ``BF16``, ``F8_E4M3``, ...)."""
        return self._handle(name).get_slice(name).get_dtype()

    def check_dtype(self, name: str) -> None:
        """Refuse a tensor whose stored dtype is not a weight dtype (read from the header)."""
        stored = self.dtype(name)
        if stored not in HEADER_DTYPES:
            # e.g. a quantised (fp8 / int) checkpoint: converting it silently would be wrong
            raise ValueError(f"{self._file_of[name]}: tensor {name!r} is stored as {stored} "
                             f"({_describe_dtype(stored)}); sleepjax loads {WEIGHT_DTYPES} "
                             "weights: dequantise the checkpoint first")

    def get(self, name: str) -> np.ndarray:
        if name not in self._file_of:
            raise KeyError(f"{self.path}: the checkpoint has no tensor {name!r}")
        self.check_dtype(name)
        try:
            return self._handle(name).get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{self._file_of[name]}: cannot read tensor {name!r} "
                             f"({_one_line(error)})") from None


def _open(file: str):
    """``safe_open`` of ``file``; a file that is not a readable safetensors file (truncated,
    corrupt header) is a ValueError naming it."""
    try:
        return safe_open(file, framework="numpy")
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{file}: not a readable safetensors file ({_one_line(error)})") from None


def _describe_dtype(stored: str) -> str:
    if stored.startswith("F8"):
        return "an fp8 format"
    if stored[:1] in ("I", "U") or stored == "BOOL":
        return "an integer / quantised format"
    return "not a weight dtype"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def read_json_file(file: str, what: str = "object") -> dict:
    """The JSON object in ``file``; ValueError naming the file if it is not UTF-8 text, not
    JSON, or not a JSON object."""
    try:
        with open(file, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{file}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at "
                         f"offset {error.start})") from None
    except OSError as error:
        raise ValueError(f"{file}: cannot be read ({error.strerror or error})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file}: must hold a JSON {what} ({{...}}), got a "
                         f"{type(value).__name__}")
    return value


def _nbytes(arrays: Iterable[np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays)


def write_checkpoint(tensors: Mapping[str, np.ndarray], path: str,
                     max_shard_bytes: int | None = None) -> list[str]:
    """Write ``tensors`` to ``path`` as ``model.safetensors`` or, when they exceed
    ``max_shard_bytes``, as ``model-0000i-of-0000n.safetensors`` shards plus the index file
    (Hugging Face's naming, so ``from_pretrained`` finds them). Returns the files written.

    Shards are filled greedily in the given order; one tensor larger than the limit gets a
    shard of its own. ``{"format": "pt"}`` metadata is what transformers expects to find.
    """
    os.makedirs(path, exist_ok=True)
    for stale in os.listdir(path):     # a previous export's files must not be read with these
        if stale in (SINGLE_FILE, INDEX_FILE) or _SHARD.match(stale):
            os.remove(os.path.join(path, stale))
    arrays = {name: np.ascontiguousarray(a) for name, a in tensors.items()}
    if max_shard_bytes is None or _nbytes(arrays.values()) <= max_shard_bytes:
        save_file(arrays, os.path.join(path, SINGLE_FILE), metadata={"format": "pt"})
        return [SINGLE_FILE]
    shards: list[dict[str, np.ndarray]] = [{}]
    for name, array in arrays.items():
        if shards[-1] and _nbytes(shards[-1].values()) + array.nbytes > max_shard_bytes:
            shards.append({})
        shards[-1][name] = array
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, shard in zip(files, shards):
        save_file(shard, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": _nbytes(arrays.values())}, "weight_map": weight_map}
    with open(os.path.join(path, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return files + [INDEX_FILE]
