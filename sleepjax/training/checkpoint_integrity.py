"""Checkpoint integrity: a SHA-256 manifest per checkpoint step, verified before restoring.

Orbax finalises a step directory atomically (written under a temporary name, then renamed),
but nothing detects bytes damaged afterwards (disk, copy, a stray edit): a flipped byte in an
array file restores silently as NaN or garbage. After a save is on disk, :func:`write_manifest`
records the digest of every file of ``<checkpoints>/<step>/`` in ``<step>/checksums.json``;
:func:`verify_step` recomputes them and names the first file that differs.

A step without a manifest (the run was killed after orbax finished the save but before the
manifest was written, or an older checkpoint) cannot be verified byte by byte; its JSON files
are still parsed so that a truncated one is named instead of failing deep inside orbax.

Step directories may be local or on a bucket (:mod:`sleepjax.training.paths`).
"""

from __future__ import annotations

import json

from sleepjax.training import paths

MANIFEST_FILE = "checksums.json"
# Files orbax and grain write as JSON (metadata, sharding, iterator state, the config item).
_JSON_NAMES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")


class CheckpointDamagedError(ValueError):
    """A checkpoint step's files do not match its manifest, or cannot be read."""

    def __init__(self, step: int, path: str, reason: str):
        self.step, self.path = step, path
        super().__init__(f"checkpoint step {step} is damaged: {path}: {reason}")


def _files(step_dir) -> list[str]:
    """Every file of ``step_dir`` (relative paths, sorted), the manifest excluded."""
    return [rel for rel in paths.files_under(paths.as_path(step_dir)) if rel != MANIFEST_FILE]


def write_manifest(step_dir) -> None:
    """Record the SHA-256 of every file of a finished step directory (written atomically)."""
    step_dir = paths.as_path(step_dir)
    manifest = {rel: paths.file_digest(step_dir / rel) for rel in _files(step_dir)}
    paths.write_text(step_dir / MANIFEST_FILE, json.dumps(manifest, indent=0, sort_keys=True))


def has_manifest(step_dir) -> bool:
    return (paths.as_path(step_dir) / MANIFEST_FILE).exists()


def verify_step(step_dir, step: int) -> bool:
    """Raise :class:`CheckpointDamagedError` naming the first bad file of ``step_dir``.

    Returns True if every file matched its manifest digest, False if the step has no manifest
    (then only its JSON files were checked, by parsing them).
    """
    step_dir = paths.as_path(step_dir)
    manifest_path = step_dir / MANIFEST_FILE
    if not manifest_path.exists():
        _check_json_files(step_dir, step)
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointDamagedError(step, manifest_path, f"unreadable manifest ({error})") from None
    for rel, expected in sorted(manifest.items()):
        path = step_dir / rel
        if not path.exists():
            raise CheckpointDamagedError(step, path, "file missing")
        if paths.file_digest(path) != expected:
            raise CheckpointDamagedError(step, path, "SHA-256 differs from the one recorded "
                                                     "when the checkpoint was saved")
    return True


def _check_json_files(step_dir, step: int) -> None:
    for rel in _files(step_dir):
        name = rel.rsplit("/", 1)[-1]
        if name in _JSON_NAMES or name.endswith(".json") or "array_metadatas" in rel:
            path = step_dir / rel
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise CheckpointDamagedError(step, path, f"not valid JSON ({error})") from None


def quarantine(step_dir, damaged_root):
    """Move a damaged step directory out of the checkpoint directory (kept for inspection), so
    the run can save that step again. Returns where it went."""
    step_dir, damaged_root = paths.as_path(step_dir), paths.as_path(damaged_root)
    damaged_root.mkdir(parents=True, exist_ok=True)
    target = damaged_root / step_dir.name
    suffix = 1
    while target.exists():
        target = damaged_root / f"{step_dir.name}.{suffix}"
        suffix += 1
    paths.move_tree(step_dir, target)
    return target
