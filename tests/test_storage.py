"""Run-folder safety with real faults: a second process on a locked folder, SIGKILL, a full
disk (a small tmpfs), damaged checkpoints."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from alexnet_tf import storage
from helpers import ROOT


@contextlib.contextmanager
def small_disk(path, megabytes: int):
    """A tmpfs of `megabytes` at `path` (root only, as CI runs); skips where mounting is refused."""
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}M", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _holder(lock_path, ready_path):
    """A second process that takes the lock and waits to be killed."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from alexnet_tf import storage
        with storage.exclusive_lock("RUN", {str(lock_path)!r}):
            open({str(ready_path)!r}, "w").close()
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(600):
        if os.path.exists(ready_path) or proc.poll() is not None:
            break
        import time
        time.sleep(0.05)
    assert os.path.exists(ready_path), "the holder did not take the lock"
    return proc


def test_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path):
    lock = tmp_path / ".lock"
    proc = _holder(lock, tmp_path / "ready")
    try:
        assert f"pid {proc.pid}" in storage.lock_holder(str(lock))
        with pytest.raises(storage.FolderBusyError, match=f"in use by another training run \\(pid {proc.pid}"):
            with storage.exclusive_lock("RUN", str(lock)):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert storage.lock_holder(str(lock)) is None  # the kernel dropped it with the process
    with storage.exclusive_lock("RUN", str(lock)):
        assert f"pid {os.getpid()}" in storage.lock_holder(str(lock))


def test_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path):
    with small_disk(tmp_path / "disk", 1) as disk:
        path = os.path.join(disk, "log.csv")
        storage.atomic_write_text(path, "old\n")
        with pytest.raises(storage.DiskFullError) as err:
            storage.atomic_write_bytes(path, b"x" * (2 << 20), hint="free space and run again")
        message = str(err.value)
        assert message.startswith(f"no space left on device while writing {path}")
        assert message.endswith("free space and run again") and "\n" not in message
        assert os.listdir(disk) == ["log.csv"]
        with open(path) as f:
            assert f.read() == "old\n"  # the complete old file stays
        with pytest.raises(storage.DiskFullError, match="bytes free"):
            storage.check_free_space(disk, 2 << 20, path)


def test_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M,ro", "tmpfs", str(folder)], check=False)
    if os.access(folder, os.W_OK) and os.geteuid() != 0:
        os.chmod(folder, 0o500)
    try:
        if os.geteuid() == 0 and not os.path.ismount(folder):
            pytest.skip("cannot mount a read-only tmpfs here")
        with pytest.raises(storage.ReadOnlyError, match="read-only or not writable while writing"):
            storage.atomic_write_text(str(folder / "run.json"), "{}")
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _small_checkpoints(folder, count=3):
    import tensorflow as tf
    value = tf.Variable(np.zeros([256, 64], np.float32))
    step = tf.Variable(0)
    checkpoint = tf.train.Checkpoint(value=value, step=step)
    manager = tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=count)
    for i in range(1, count + 1):
        value.assign(np.full([256, 64], i, np.float32))
        step.assign(i)
        manager.save(checkpoint_number=i)
    value.assign(np.zeros([256, 64], np.float32))
    step.assign(0)
    return checkpoint, manager, value, step


@pytest.mark.parametrize("damage", ["truncated", "zero-filled"])
def test_resume_skips_a_damaged_checkpoint(tmp_path, damage):
    import tensorflow as tf
    from alexnet_tf import checkpoints
    checkpoint, _, value, step = _small_checkpoints(tmp_path)
    data = tmp_path / "ckpt-3.data-00000-of-00001"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        else:
            f.write(b"\0" * size)
    restored = checkpoints.restore_newest_readable(checkpoint, str(tmp_path))
    assert restored.endswith("ckpt-2") and int(step.numpy()) == 2
    np.testing.assert_array_equal(value.numpy(), np.full([256, 64], 2, np.float32))
    assert sorted(os.listdir(tmp_path / "damaged")) == ["ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")  # the state file agrees
    # A manager reading that state goes on deleting the oldest beyond its count.
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=2)
    manager.save(checkpoint_number=4)
    assert [os.path.basename(p) for p in checkpoints.candidates(str(tmp_path))] == ["ckpt-2", "ckpt-4"]


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
    from alexnet_tf import checkpoints
    checkpoint, *_ = _small_checkpoints(tmp_path, count=1)
    with open(tmp_path / "ckpt-1.index", "r+b") as f:
        f.truncate(8)
    with pytest.raises(ValueError, match=f"No checkpoint in {tmp_path} can be read"):
        checkpoints.restore_newest_readable(checkpoint, str(tmp_path))
    assert checkpoints.restore_newest_readable(checkpoint, str(tmp_path / "none")) is None


def test_checkpoint_on_a_full_disk_leaves_the_last_complete_one(tmp_path):
    from alexnet_tf import checkpoints
    import tensorflow as tf
    with small_disk(tmp_path / "disk", 1) as disk:
        value = tf.Variable(np.zeros([100_000], np.float32))  # 400 KB a checkpoint
        checkpoint = tf.train.Checkpoint(value=value)
        manager = tf.train.CheckpointManager(checkpoint, disk, max_to_keep=5)
        checkpoints.save(manager, 1, needed_bytes=0)
        before = sorted(os.listdir(disk))
        with pytest.raises(storage.DiskFullError) as err:
            for step in range(2, 6):
                checkpoints.save(manager, step, needed_bytes=0)  # no pre-check: the write fails
        assert "no space left on device while writing" in str(err.value)
        assert "the last complete checkpoint is ckpt-" in str(err.value)
        left = sorted(os.listdir(disk))
        assert not [n for n in left if "_temp" in n or n.startswith(".tmp")], left
        assert set(before) <= set(left)
        last = tf.train.latest_checkpoint(disk)
        checkpoint.restore(last).assert_existing_objects_matched()
