"""Writing a run's files safely: one writer per folder, whole files or none, a full disk in one line.

Imports no TensorFlow; the TensorFlow errors of a failed write are recognised by name.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile

# errno values of a write that failed for lack of room, and for lack of permission.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)
# Where a weights file is written before it is copied into the run folder: HDF5 crashes the
# process when the disk fills under it, a plain copy raises a clean error instead.
_SCRATCH = "/dev/shm"


class DiskFullError(OSError):
    """A run file could not be written: no space left (or a file-size limit)."""


class ReadOnlyError(PermissionError):
    """A run file could not be written: a read-only folder or no permission."""


class FolderBusyError(RuntimeError):
    """Another process holds the run folder's lock."""


def _holder_text(lock_path: str) -> str:
    try:
        with open(lock_path) as f:
            holder = json.load(f)
        return (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def exclusive_lock(folder: str, lock_path: str):
    """Holds an exclusive OS lock on `lock_path` for the block (dropped by the kernel when the
    process dies, so a killed run leaves no stale lock).

    Raises:
        FolderBusyError: when another process holds it; names that process.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(
                f"{folder} is in use by another training run ({_holder_text(lock_path)}). Wait for "
                "it to end, stop it, or choose another --model_dir.") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(lock_path: str) -> str | None:
    """Who holds the lock on `lock_path` (a description), or None when nobody does."""
    if not os.path.isfile(lock_path):
        return None
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder_text(lock_path)
    finally:
        os.close(fd)


def _write_error(path: str, reason: str, hint: str, detail: str = "") -> str:
    return f"{reason} while writing {path}" + (f" ({detail})" if detail else "") + (f"; {hint}" if hint else "")


def translate_write_error(error: BaseException, path: str, hint: str = "") -> BaseException | None:
    """The one-line error for a failed write of `path`, or None when `error` is not about room
    or permission.

    Handles OSError and TensorFlow's errors (matched by name and message, so that this module
    needs no TensorFlow).
    """
    if isinstance(error, (DiskFullError, ReadOnlyError)):
        return error
    code = getattr(error, "errno", None)
    text = str(error)
    if code in _NO_SPACE or "No space left" in text or "RESOURCE_EXHAUSTED" in text.upper() \
            or type(error).__name__ == "ResourceExhaustedError":
        return DiskFullError(_write_error(path, "no space left on device", hint))
    if code in _NO_WRITE or "Read-only file system" in text or "Permission denied" in text:
        return ReadOnlyError(_write_error(path, "the folder is read-only or not "
                                                       "writable", hint))
    return None


@contextlib.contextmanager
def writing(path: str, hint: str = ""):
    """Turns a full disk or a read-only folder while writing `path` into a one-line error."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is about room or permission
        clear = translate_write_error(e, path, hint)
        if clear is None:
            raise
        raise clear from None


def check_free_space(folder: str, needed: int, path: str, hint: str = "") -> None:
    """Raises DiskFullError when `folder` has fewer than `needed` bytes free."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return
    if stat.f_bavail * stat.f_frsize < needed:
        raise DiskFullError(_write_error(
            path, "no space left on device", hint,
            f"{stat.f_bavail * stat.f_frsize:,} bytes free, {needed:,} needed"))


def atomic_write_text(path: str, text: str, hint: str = "") -> None:
    """Writes `text` to `path` so that a reader sees the old file or the whole new one."""
    atomic_write_bytes(path, text.encode("utf-8"), hint)


def atomic_write_bytes(path: str, data: bytes, hint: str = "") -> None:
    """Writes `data` to `path` via a temporary file and a rename; nothing is left on failure."""
    _atomic_write(path, hint, lambda f: f.write(data))


def atomic_copy(source: str, path: str, hint: str = "") -> None:
    """Copies the file `source` to `path` via a temporary file and a rename."""
    def fill(f):
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 22)
    _atomic_write(path, hint, fill)


def _atomic_write(path: str, hint: str, fill) -> None:
    """`fill(file)` writes a temporary file beside `path`, which is then synced and renamed."""
    folder = os.path.dirname(os.path.abspath(path))
    with writing(path, hint):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            remove_quietly(tmp)
            raise


@contextlib.contextmanager
def scratch_file(name: str, size_hint: int):
    """A temporary path for a file of about `size_hint` bytes, in memory where there is room
    (`/dev/shm`), else in the system's temporary folder; removed afterwards."""
    folder = None
    if os.path.isdir(_SCRATCH) and os.access(_SCRATCH, os.W_OK):
        stat = os.statvfs(_SCRATCH)
        if stat.f_bavail * stat.f_frsize > 2 * size_hint:
            folder = _SCRATCH
    scratch = tempfile.mkdtemp(prefix="alexnet-tf-", dir=folder)
    try:
        yield os.path.join(scratch, name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def file_sha256(path: str) -> str:
    """The hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_quietly(path: str) -> None:
    """Removes a file or folder, ignoring errors (used on failure paths)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass
