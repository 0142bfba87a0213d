"""Atomic file writes: a reader never sees a half-written file, a crash never leaves one.

The one atomic-write helper of the package. Every variant writes to ``<name>.tmp-<pid>`` in the
target's folder, then ``os.replace`` puts it in place (atomic on POSIX file systems); the
temporary file is removed when writing fails. `TEMPORARY_NAME` matches those names, so a
cleanup can find the ones left by a process that was killed mid-write.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        OSError: the folder cannot be created or written; whatever ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
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
