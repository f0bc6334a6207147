"""Checkpoint integrity: a SHA-256 manifest per checkpoint step, verified before restoring.

Orbax finalises a step directory atomically (written under a temporary name, then renamed),
but nothing detects bytes damaged afterwards (disk, copy, a stray edit): a flipped byte in an
array file restores silently as NaN or garbage. After a save is on disk, :func:`write_manifest`
records the digest of every file of ``<checkpoints>/<step>/`` in ``<step>/checksums.json``;
:func:`verify_step` recomputes them and names the first file that differs.

A step without a manifest (the run was killed after orbax finished the save but before the
manifest was written, or an older checkpoint) cannot be verified byte by byte; its JSON files
are still parsed so that a truncated one is named instead of failing deep inside orbax.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

MANIFEST_FILE = "checksums.json"
# Files orbax and grain write as JSON (metadata, sharding, iterator state, the config item).
_JSON_NAMES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")


class CheckpointDamagedError(ValueError):
    """A checkpoint step's files do not match its manifest, or cannot be read."""

    def __init__(self, step: int, path: str, reason: str):
        self.step, self.path = step, path
        super().__init__(f"checkpoint step {step} is damaged: {path}: {reason}")


def _files(step_dir: str) -> list[str]:
    """Every file of ``step_dir`` (relative paths, sorted), the manifest excluded."""
    found = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != MANIFEST_FILE:
                found.append(rel)
    return sorted(found)


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(step_dir: str) -> None:
    """Record the SHA-256 of every file of a finished step directory (written atomically)."""
    manifest = {rel: _digest(os.path.join(step_dir, rel)) for rel in _files(step_dir)}
    tmp = os.path.join(step_dir, MANIFEST_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST_FILE))


def has_manifest(step_dir: str) -> bool:
    return os.path.exists(os.path.join(step_dir, MANIFEST_FILE))


def verify_step(step_dir: str, step: int) -> bool:
    """Raise :class:`CheckpointDamagedError` naming the first bad file of ``step_dir``.

    Returns True if every file matched its manifest digest, False if the step has no manifest
    (then only its JSON files were checked, by parsing them).
    """
    manifest_path = os.path.join(step_dir, MANIFEST_FILE)
    if not os.path.exists(manifest_path):
        _check_json_files(step_dir, step)
        return False
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise CheckpointDamagedError(step, manifest_path, f"unreadable manifest ({error})") from None
    for rel, expected in sorted(manifest.items()):
        path = os.path.join(step_dir, rel)
        if not os.path.exists(path):
            raise CheckpointDamagedError(step, path, "file missing")
        if _digest(path) != expected:
            raise CheckpointDamagedError(step, path, "SHA-256 differs from the one recorded "
                                                     "when the checkpoint was saved")
    return True


def _check_json_files(step_dir: str, step: int) -> None:
    for rel in _files(step_dir):
        name = os.path.basename(rel)
        if name in _JSON_NAMES or name.endswith(".json") or "array_metadatas" in rel:
            path = os.path.join(step_dir, rel)
            try:
                with open(path) as f:
                    json.load(f)
            except (OSError, ValueError) as error:
                raise CheckpointDamagedError(step, path, f"not valid JSON ({error})") from None


def quarantine(step_dir: str, damaged_root: str) -> str:
    """Move a damaged step directory out of the checkpoint directory (kept for inspection), so
    the run can save that step again. Returns where it went."""
    os.makedirs(damaged_root, exist_ok=True)
    target = os.path.join(damaged_root, os.path.basename(step_dir))
    suffix = 1
    while os.path.exists(target):
        target = os.path.join(damaged_root, f"{os.path.basename(step_dir)}.{suffix}")
        suffix += 1
    shutil.move(step_dir, target)
    return target
