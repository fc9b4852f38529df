"""Resuming from the newest checkpoint that reads, and checkpoints written whole or not at all."""

from __future__ import annotations

import glob
import os
import re

import tensorflow as tf
from absl import logging

from alexnet_tf import storage

# What reading a damaged checkpoint raises: TensorFlow's errors (a checksum, a short read),
# and the IndexError / ValueError of a cut or garbled index.
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, AssertionError, OSError)
_NUMBER = re.compile(r"-(\d+)$")
DAMAGED_SUBDIR = "damaged"


def _number(prefix: str) -> int:
    match = _NUMBER.search(prefix)
    return int(match.group(1)) if match else -1


def candidates(ckpt_dir: str) -> list[str]:
    """Every checkpoint prefix in `ckpt_dir`, oldest first: those the state file lists and any
    other whose index file is there."""
    found = {p[: -len(".index")] for p in glob.glob(os.path.join(ckpt_dir, "*.index"))}
    state = tf.train.get_checkpoint_state(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    if state is not None:
        found.update(p for p in state.all_model_checkpoint_paths
                     if os.path.isfile(p + ".index"))
    return sorted(found, key=_number)


def move_aside(prefix: str) -> str:
    """Moves a checkpoint's files into CKPT_DIR/damaged/ (kept, not deleted); returns the folder."""
    folder = os.path.join(os.path.dirname(prefix), DAMAGED_SUBDIR)
    os.makedirs(folder, exist_ok=True)
    for path in glob.glob(glob.escape(prefix) + ".*"):
        os.replace(path, os.path.join(folder, os.path.basename(path)))
    return folder


def restore_newest_readable(checkpoint: tf.train.Checkpoint, ckpt_dir: str, *,
                            move: bool = True) -> str | None:
    """Restores the newest checkpoint of `ckpt_dir` that can be read.

    A checkpoint that cannot be read is skipped with one warning line naming it, and the
    next older one is tried. With `move` (the folder's owner), it is moved to
    CKPT_DIR/damaged/ (kept, not deleted) and the state file then lists what is left.

    Returns:
        The restored prefix, or None when `ckpt_dir` holds no checkpoint.

    Raises:
        ValueError: when there are checkpoints but none can be read.
    """
    found = candidates(ckpt_dir)
    damaged = []
    for prefix in reversed(found):
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except _READ_ERRORS as e:
            reason = (getattr(e, "message", None) or str(e) or type(e).__name__).strip().splitlines()[0]
            where = f"moved to {move_aside(prefix)}/" if move else "left in place"
            logging.warning("Skipped the damaged checkpoint %s (%s); %s, resuming from the one "
                            "before.", prefix, reason[:200], where)
            damaged.append(prefix)
            continue
        if damaged and move:
            _write_state(ckpt_dir, prefix, [p for p in found if p not in damaged])
        return prefix
    if found:
        raise ValueError(f"No checkpoint in {ckpt_dir} can be read (the damaged ones are in "
                         f"{os.path.join(ckpt_dir, DAMAGED_SUBDIR)}/); move the folder aside to "
                         "start over, or restore it from a copy.")
    return None


def _write_state(ckpt_dir: str, newest: str, kept: list[str]) -> None:
    """Rewrites the `checkpoint` state file (a text proto, paths relative to `ckpt_dir`) to
    list `kept`, with their save times, so that CheckpointManager goes on deleting the
    oldest beyond --keep_checkpoints."""
    from google.protobuf import text_format
    old = tf.train.get_checkpoint_state(ckpt_dir)
    times = dict(zip(old.all_model_checkpoint_paths, old.all_model_checkpoint_timestamps)) if old else {}
    state = type(old)() if old else None
    if state is None:
        return
    state.model_checkpoint_path = os.path.basename(newest)
    state.last_preserved_timestamp = old.last_preserved_timestamp
    for prefix in kept:
        state.all_model_checkpoint_paths.append(os.path.basename(prefix))
        state.all_model_checkpoint_timestamps.append(
            times.get(prefix) or os.path.getmtime(prefix + ".index"))
    storage.atomic_write_text(os.path.join(ckpt_dir, "checkpoint"), text_format.MessageToString(state))


def newest_complete(ckpt_dir: str) -> str:
    """The name of the newest checkpoint on disk (for messages), or 'none yet'."""
    found = candidates(ckpt_dir)
    return os.path.basename(found[-1]) if found else "none yet"


def resume_hint(ckpt_dir: str) -> str:
    """What to do after a failed write: free space and rerun, from the newest checkpoint."""
    return (f"the last complete checkpoint is {newest_complete(ckpt_dir)}; free space and run "
            "the same command to resume")


def save(manager: tf.train.CheckpointManager, step: int, needed_bytes: int) -> str:
    """Saves a checkpoint; a full disk or a read-only folder gives one line and leaves no
    temporary folder (the previous checkpoints stay as they were).

    Raises:
        storage.DiskFullError, storage.ReadOnlyError: when it cannot be written.
    """
    ckpt_dir = manager.directory
    hint = resume_hint(ckpt_dir)
    target = os.path.join(ckpt_dir, f"ckpt-{step}")
    storage.check_free_space(ckpt_dir, needed_bytes, target, hint)
    before = set(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else set()
    try:
        with storage.writing(target, hint):
            return manager.save(checkpoint_number=step)
    except (storage.DiskFullError, storage.ReadOnlyError):
        for name in set(os.listdir(ckpt_dir)) - before:  # the half-written files of this save
            storage.remove_quietly(os.path.join(ckpt_dir, name))
        raise
