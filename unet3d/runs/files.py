"""Atomic file writes: a reader never sees a half-written file, a crash never leaves one.

The one atomic-write helper of the package. Every variant writes to ``<name>.tmp-<pid>`` in the
target's folder, then ``os.replace`` puts it in place (atomic on POSIX file systems); the
temporary file is removed when writing fails. `TEMPORARY_NAME` matches those names, so a
cleanup (`remove_stale_temporaries`) can find the ones left by a process that was killed
mid-write. A write that fails because the disk is full or the folder is read-only raises
`~unet3d.errors.StorageError`, one line naming the file (`storage_error`).

Also here: `exclusive_lock`, an ``fcntl.flock`` lock on a file or folder shared by concurrent
jobs (the data cache, a run folder, the MLflow SQLite store), and `fault_point`, the test hook
that pauses a writer or makes it fail at the moment it writes (`FAULT_VARIABLE`).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from unet3d.errors import StorageError

log = logging.getLogger(__name__)

#: Matches the name of a temporary file of this module; group 1 is the writer's process id.
TEMPORARY_NAME = re.compile(r"\.tmp-(\d+)$")


def temporary_path(path: str | os.PathLike) -> Path:
    """Return the temporary name ``<name>.tmp-<pid>`` used while ``path`` is being written.

    Args:
        path: the final file path.

    Returns:
        A path in the same folder, unique to this process.
    """
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def write_atomic_with(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(temporary)`` to create the file, then move it to ``path`` atomically.

    For writers that take a file name (``savefig``, ``tf.io.TFRecordWriter``, ``nib.save``).
    Parent folders are created; the temporary file never outlives the call.

    Args:
        path: the final file path.
        write: writes the whole content to the path it is given (in the same folder).

    Returns:
        ``path`` as a `Path`.

    Raises:
        StorageError: the disk is full or the folder is read-only (one line naming ``path``).
        OSError: the folder cannot be created or written otherwise; whatever ``write`` raises.
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        fault_point(path)
        os.replace(temporary, path)
    except Exception as error:  # OSError, or TensorFlow's OpError of its C++ file system
        full = storage_error(error, path)
        if full is None:
            raise
        raise full from error
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path; see `write_atomic_with`."""
    return write_atomic_with(path, lambda temporary: temporary.write_bytes(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path.

    Raises:
        OSError: the folder cannot be created or written.
    """
    return write_atomic_with(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: Any, *, sort_keys: bool = False) -> Path:
    """Write ``payload`` as indented JSON (``default=str``) atomically; see `write_text_atomic`.

    Args:
        path: the final file path.
        payload: a JSON-serialisable value (other objects are written as ``str(value)``).
        sort_keys: sort mapping keys (a stable file for content hashes and diffs).
    """
    text = json.dumps(payload, indent=2, default=str, sort_keys=sort_keys) + "\n"
    return write_text_atomic(path, text)


# ------------------------------------------------------------------ full disks, read-only folders

#: ``errno`` values after which nothing more can be written there.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}


def storage_error(error: BaseException, path: str | os.PathLike) -> StorageError | None:
    """The `StorageError` for an error of a full disk or an unwritable folder, else None.

    Args:
        error: what the write raised: an ``OSError`` (matched by ``errno``), or an error of
            TensorFlow's C++ file system (``tf.errors.ResourceExhaustedError`` and the like,
            matched by the reason in its message, e.g. ``"...; No space left on device"``);
            a `StorageError` is returned as it is.
        path: the file being written (named in the message instead of a temporary name).

    Returns:
        ``StorageError("<path>: cannot write (no space left on device); ...")`` with the
        ``errno`` and ``filename``, or None for any other error.
    """
    if isinstance(error, StorageError):
        return error
    if isinstance(error, OSError):
        number = error.errno
    else:
        text = str(error).lower()
        number = next((key for key, reason in STORAGE_ERRNOS.items() if reason in text), None)
    if number not in STORAGE_ERRNOS:
        return None
    where = Path(path).parent
    result = StorageError(
        f"{path}: cannot write ({STORAGE_ERRNOS[number]}); files written before are "
        f"intact: free space or make {where} writable, or write elsewhere, then rerun")
    result.errno, result.filename = number, str(path)
    return result


# ------------------------------------------------------------------ leftovers of killed writers


def process_alive(pid: int) -> bool:
    """True when process ``pid`` runs (on this machine), other than this process."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = True) -> int:
    """Delete the ``*.tmp-<pid>`` files under ``folder`` left by processes that no longer run.

    Args:
        folder: where to look (a missing folder: nothing to do).
        recursive: also in its subfolders.

    Returns:
        How many files were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for candidate in (folder.rglob("*.tmp-*") if recursive else folder.glob("*.tmp-*")):
        match = TEMPORARY_NAME.search(candidate.name)
        if not match or not candidate.is_file() or process_alive(int(match.group(1))):
            continue
        try:
            candidate.unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("Removed %d stale temporary file(s) under %s", removed, folder)
    return removed


# ------------------------------------------------------------------ locks shared by concurrent jobs

#: Locks this process holds: real path -> [file descriptor, depth] (re-entrant in a process).
_HELD: dict[str, list[int]] = {}


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait: bool = True,
                   what: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (a folder, or a lock file created here).

    Re-entrant within one process (a second request for a path it already holds returns at
    once), so a job holding its run folder can still take the MLflow store's lock when both
    are one folder. A lock file is never deleted (deleting it would race with a waiter).
    Where locks cannot be taken (a read-only folder, a file system without ``flock``), the
    block runs unlocked, with a debug line.

    Args:
        path: an existing folder, or the lock file to create (its folder is created).
        wait: block until the lock is free; False raises `BlockingIOError` at once.
        what: what is being waited for, for the INFO line shown while waiting.

    Raises:
        BlockingIOError: ``wait`` is false and another process holds the lock.
    """
    import fcntl

    path = Path(path)
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    descriptor = None
    try:
        if path.is_dir():
            descriptor = os.open(path, os.O_RDONLY)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        log.debug("%s: cannot be locked (%s); going on without the lock", path, error)
    if descriptor is None:
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            log.info("waiting for another job %s (lock %s)", what or "using it", path)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as error:  # e.g. a file system without flock
            log.debug("%s: cannot be locked (%s); going on without the lock", path, error)
        _HELD[key] = [descriptor, 1]
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(descriptor)  # releases the lock


# ------------------------------------------------------------------ the test hook

#: Test hook: ``<action>:<glob>[:<n>]`` makes the ``n``-th write (default 1) in this process of
#: a file whose name matches ``<glob>`` pause (``pause``) or fail as on a full disk (``enospc``)
#: or a read-only file system (``erofs``).
#: Write points: every atomic write of this module and of the NIfTI writer (the temporary file
#: is complete, the final name not yet in place), checkpoints as ``ckpt-<N>_temp`` (before
#: TensorFlow writes anything) and ``ckpt-<N>`` (its files written, the ``checkpoint`` index
#: not yet updated). Unset (always, outside tests): the hook does nothing.
FAULT_VARIABLE = "UNET3D_TEST_FAULT"
#: The file a paused writer creates (holding the path it writes); it waits while it exists.
FAULT_MARKER_VARIABLE = "UNET3D_TEST_FAULT_MARKER"
_fault_counts: dict[str, int] = {}
#: The failing actions of the hook and the ``errno`` each raises.
_FAULT_ERRNOS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS}


def fault_active() -> bool:
    """True when the test hook `FAULT_VARIABLE` is set."""
    return bool(os.environ.get(FAULT_VARIABLE))


def fault_point(path: str | os.PathLike) -> None:
    """Test hook: pause or fail here, while ``path`` is being written (see `FAULT_VARIABLE`).

    ``pause`` writes ``path`` into the file ``$UNET3D_TEST_FAULT_MARKER`` and sleeps while that
    file exists (at most 10 minutes), so a test can kill the process at this moment, or delete
    the marker to let it go on. ``enospc`` / ``erofs`` raise ``OSError(ENOSPC)`` /
    ``OSError(EROFS)`` naming ``path``.

    Raises:
        OSError: ``enospc`` or ``erofs`` at the chosen write.
    """
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec:
        return
    action, pattern, *count = spec.split(":")
    if not fnmatch.fnmatchcase(Path(path).name, pattern):
        return
    _fault_counts[spec] = _fault_counts.get(spec, 0) + 1
    if _fault_counts[spec] != (int(count[0]) if count else 1):
        return
    if action in _FAULT_ERRNOS:
        number = _FAULT_ERRNOS[action]
        raise OSError(number, os.strerror(number), str(path))
    marker = Path(os.environ.get(FAULT_MARKER_VARIABLE) or f"{path}.paused")
    marker.write_text(f"{path}\n", encoding="utf-8")
    log.warning("test hook %s: paused while writing %s", spec, path)
    deadline = time.monotonic() + 600
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
