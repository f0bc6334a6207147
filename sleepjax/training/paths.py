"""Run directories as paths: a local directory or a ``gs://`` bucket prefix, through one type.

Every file of a run (lock, logs, evaluation, configs, plots, TensorBoard, checkpoints, sweep
points) is read and written through :class:`etils.epath.Path`, the path type orbax uses: a local
path is a ``pathlib`` path, a ``gs://bucket/prefix`` URL goes through fsspec (``gcsfs``). The
checkpoints' arrays are written by tensorstore, which knows local files and Google Cloud Storage
only, so those are the two kinds of workdir accepted; any other URL is refused up front, naming
the flag, instead of failing at the first checkpoint. A bucket workdir needs the clients of
``pip install "sleepjax[gcs]"`` (gcsfs, and google-cloud-storage, which orbax uses to list and
delete checkpoint steps).

Object stores have no rename and no partial overwrite: a file is one object, written whole when
it is closed. :func:`write_text` is therefore atomic on both kinds (a local file goes through a
temporary file and ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Mapping

from etils import epath

SUPPORTED_SCHEMES = ("gs",)
_BLOCK = 1 << 20


def scheme(value: str | os.PathLike) -> str | None:
    """``"gs"`` for ``gs://...``, None for a local path."""
    text = os.fspath(value)
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isidentifier() else None


def is_local(path: str | os.PathLike) -> bool:
    return scheme(path) is None


def as_path(value: str | os.PathLike) -> epath.Path:
    """``value`` as an ``epath.Path``: a URL as it is, a local path made absolute."""
    if isinstance(value, epath.Path) and not is_local(value):
        return value
    text = os.fspath(value)
    return epath.Path(text if scheme(text) else os.path.abspath(text))


def run_directory(value: Any, flag: str = "--workdir") -> epath.Path:
    """Validate a run directory given as ``flag``; ValueError naming the flag if unusable.

    Refused: an empty value, a URL of a scheme the checkpoints cannot be written to, and a
    path that exists but is not a directory (a local file, or an object of that name).
    """
    if isinstance(value, epath.Path):
        value = os.fspath(value)
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise ValueError(f"{flag}: must name a directory (a local path or gs://bucket/dir), "
                         f"got {value!r}")
    kind = scheme(value)
    if kind is not None and kind not in SUPPORTED_SCHEMES:
        raise ValueError(f"{flag}: {os.fspath(value)!r}: {kind}:// is not supported; a workdir is "
                         f"a local directory or gs://bucket/dir (checkpoint arrays are written "
                         f"by tensorstore, which writes local files and Google Cloud Storage)")
    path = as_path(value)
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{flag}: {path} is a file, not a directory")
    except ImportError as error:   # e.g. gcsfs missing: say which client instead of a traceback
        raise ValueError(f"{flag}: cannot reach {path}: {error} (pip install \"sleepjax[gcs]\")"
                         ) from None
    return path


def make_directory(path: epath.Path, flag: str = "--workdir") -> epath.Path:
    """Create ``path`` (and its parents); ValueError naming ``flag`` if that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"{flag}: {path} (or a parent of it) is a file, not a directory") from None
    except OSError as error:
        raise ValueError(f"{flag}: cannot create {path}: {error.strerror or error}") from None
    return path


def write_text(path: epath.Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new content, never half."""
    if is_local(path):
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.fspath(path))
    else:
        path.write_text(text)   # one object, created when the upload completes


def write_json(path: epath.Path, payload: Mapping) -> None:
    """``payload`` as indented JSON, atomically (see :func:`write_text`)."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: epath.Path) -> Any:
    return json.loads(path.read_text())


def file_digest(path: epath.Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def files_under(directory: epath.Path) -> list[str]:
    """Every file below ``directory`` as a sorted relative POSIX path."""
    if is_local(directory):
        root = os.fspath(directory)
        return sorted(os.path.relpath(os.path.join(parent, name), root).replace(os.sep, "/")
                      for parent, _, names in os.walk(root) for name in names)
    fs, root = _filesystem(directory)
    root = root.rstrip("/")
    return sorted(p[len(root) + 1:] for p in fs.find(root) if p.startswith(root + "/"))


def remove_tree(path: epath.Path) -> None:
    """Delete a directory and everything under it; nothing if it does not exist."""
    if is_local(path):
        shutil.rmtree(os.fspath(path), ignore_errors=True)
    elif path.exists():
        fs, root = _filesystem(path)
        fs.rm(root, recursive=True)


def move_tree(source: epath.Path, target: epath.Path) -> None:
    """Move a directory (a rename locally; copy-then-delete of every object on a bucket)."""
    if is_local(source):
        shutil.move(os.fspath(source), os.fspath(target))
        return
    fs, src = _filesystem(source)
    _, dst = _filesystem(target)
    for rel in files_under(source):
        fs.copy(f"{src.rstrip('/')}/{rel}", f"{dst.rstrip('/')}/{rel}")
    fs.rm(src, recursive=True)


def create_exclusively(path: epath.Path, text: str) -> bool:
    """Create ``path`` holding ``text`` only if no such file exists; returns whether it did.

    Locally ``O_EXCL``; on a bucket fsspec's ``"xb"`` mode, which gcsfs sends as an upload
    with the precondition "generation 0" (no live object): of two concurrent creators exactly
    one succeeds.
    """
    if is_local(path):
        try:
            with open(os.fspath(path), "x") as f:
                f.write(text)
        except FileExistsError:
            return False
        return True
    fs, name = _filesystem(path)
    try:
        with fs.open(name, "xb") as f:
            f.write(text.encode())
    except FileExistsError:
        return False
    return True


def _filesystem(path: epath.Path):
    """``(fsspec filesystem, path without its protocol)`` of a URL."""
    import fsspec

    return fsspec.core.url_to_fs(os.fspath(path))
