"""Small file helpers shared by the data modules: JSON reads, cache keys, progress.

Atomic writes and the removal of stale temporary files are `unet3d.runs.files`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from unet3d.runs import naming

logger = logging.getLogger(__name__)

def read_json(path: Path) -> Any | None:
    """Return the parsed JSON of ``path``, or None when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def short_hash(payload: Any, length: int = 10) -> str:
    """Return a short, stable hex digest (SHA-256) of a JSON-serialisable payload.

    The payload's canonical JSON (sorted keys, no spaces) hashed by
    ``unet3d.runs.naming.short_hash``: a cache key that only changes with the payload.
    """
    return naming.short_hash(json.dumps(payload, sort_keys=True, separators=(",", ":")), length)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` without one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Progress:
    """A tqdm bar on an interactive terminal, otherwise periodic log lines with rate and ETA."""

    def __init__(self, total: int, description: str, log: logging.Logger, every_s: float = 15.0):
        self.total = total
        self.description = description
        self.log = log
        self.every_s = every_s
        self.done = 0
        self.start = time.perf_counter()
        self.last_log = self.start
        self.bar = None
        if total > 0 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit="case")

    def update(self, count: int = 1) -> None:
        """Record ``count`` more finished items."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.perf_counter()
        if now - self.last_log >= self.every_s or self.done == self.total:
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else float("inf")
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log.info(
                "%s: %d/%d cases, %.2f cases/s, ETA %.0f s",
                self.description,
                self.done,
                self.total,
                rate,
                eta,
            )
            self.last_log = now

    def close(self) -> None:
        """Close the bar (if any)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
