"""``data.cache: auto``: keep the training cases in RAM only when they fit comfortably.

``tf.data``'s in-memory cache holds every training case of a process as parsed uint8 volumes
(image (h, w, d, 4) and label (h, w, d): 5 bytes per voxel of the stored brain box, plus up to
``MAX_FOREGROUND_POINTS`` int32 tumour coordinates). For BraTS 2021 (about 1,000 training cases
of about 17 MB) that is about 17 GB per process, more than many workstations have, and Horovod
starts one such process per device. ``decide_cache`` compares what the cases need with the
memory this process may still use:

- ``MemAvailable`` of ``/proc/meminfo`` (the kernel's estimate of memory available to new work
  without swapping; ``sysconf(SC_AVPHYS_PAGES)`` where there is no ``/proc``), and
- the headroom under this process's cgroup memory limit (v2 ``memory.max`` minus
  ``memory.current`` less reclaimable ``inactive_file``; v1 ``memory.limit_in_bytes`` minus
  ``memory.usage_in_bytes``), the tightest of the cgroup and its ancestors,

takes the smaller, divides it by the processes that share the machine (Horovod's local size:
each holds its own shard) and caches when the cases need at most ``CACHE_MEMORY_FRACTION`` of
that share (the rest is for the model, its activations, the shuffle buffer and TensorFlow).
Otherwise the records are read from disk on every pass (``unet3d.data.pipeline``: parallel
interleaved reads, prefetched), whose memory does not grow with the number of cases.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from unet3d.data._files import read_json

logger = logging.getLogger(__name__)

#: Largest share of the available memory (per local process) that the cached cases may take.
CACHE_MEMORY_FRACTION = 0.5
#: Bytes per stored voxel of a cached case: 4 uint8 channels and the uint8 label.
BYTES_PER_VOXEL = 5
#: Tumour coordinates kept per cached case (``unet3d.data.pipeline.MAX_FOREGROUND_POINTS``).
FOREGROUND_BYTES = 4096 * 3 * 4
#: The preprocessing manifest next to the records (``unet3d.data.preprocess.MANIFEST_NAME``).
PREPROCESS_MANIFEST = "preprocess_manifest.json"
#: cgroup v1 and v2 write "no limit" as a huge number (v1: about 2**63 rounded to pages).
NO_LIMIT = 2**60
CACHE_CHOICES = (True, False, "auto")


@dataclass(frozen=True)
class Memory:
    """Memory this process may still use: ``available`` bytes, and what bounds it."""

    available: int | None
    source: str


@dataclass(frozen=True)
class CacheDecision:
    """What ``data.cache`` resolves to for one process, with the numbers behind it.

    Attributes:
        cache: keep the parsed training cases in RAM.
        setting: the configured ``data.cache`` (True, False or "auto").
        num_cases: training cases this process reads (its shard).
        needed: bytes the cached cases take (estimate, see the module doc).
        memory: the memory figures (None when the setting is not "auto").
        local_processes: processes on this machine that each cache their shard.
    """

    cache: bool
    setting: bool | str
    num_cases: int
    needed: int
    memory: Memory | None = None
    local_processes: int = 1

    @property
    def budget(self) -> int | None:
        """Bytes the cache may take: ``CACHE_MEMORY_FRACTION`` of this process's share."""
        if self.memory is None or self.memory.available is None:
            return None
        return int(self.memory.available * CACHE_MEMORY_FRACTION / self.local_processes)

    def describe(self) -> str:
        """One line: the decision and its numbers (for the log)."""
        verdict = ("caching the training cases in RAM" if self.cache
                   else "reading the training cases from disk on every pass")
        head = (f"data.cache={str(self.setting).lower()}: {verdict} ({self.num_cases} case(s), "
                f"{_gib(self.needed)} GiB")
        if self.setting != "auto":
            return head + ")"
        assert self.memory is not None
        if self.memory.available is None:
            return f"{head}; available memory unknown ({self.memory.source}))"
        return (f"{head} needed; budget {_gib(self.budget or 0)} GiB = "
                f"{CACHE_MEMORY_FRACTION:g} x {_gib(self.memory.available)} GiB available "
                f"({self.memory.source}) / {self.local_processes} local process(es))")


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f}"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return NO_LIMIT
    try:
        return int(text)
    except ValueError:
        return None


def meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` of ``meminfo`` in bytes; None when the file or the line is missing."""
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            number, *unit = value.split()
            return int(number) * (1024 if unit and unit[0].lower() == "kb" else 1)
    return None


def _cgroup_folders(proc_cgroup: Path, cgroup_root: Path) -> list[tuple[Path, int]]:
    """This process's memory cgroup folder and its ancestors, with the cgroup version."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    folders: list[tuple[Path, int]] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and line.startswith("0::"):
            base, version = cgroup_root, 2
        elif "memory" in controllers.split(","):
            base, version = cgroup_root / "memory", 1
        else:
            continue
        relative = Path(path.strip().lstrip("/"))
        for parent in [relative, *relative.parents]:
            folder = base / parent
            if folder.is_dir():
                folders.append((folder, version))
    return folders


def _stat_value(folder: Path, key: str) -> int:
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_headroom(proc_cgroup: Path = Path("/proc/self/cgroup"),
                    cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[int, Path] | None:
    """Bytes left under the tightest memory limit of this process's cgroups, and that folder.

    None when no cgroup sets a limit (or none can be read).
    """
    best: tuple[int, Path] | None = None
    for folder, version in _cgroup_folders(proc_cgroup, cgroup_root):
        if version == 2:
            limit_file, usage_file, reclaimable = "memory.max", "memory.current", "inactive_file"
        else:
            limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
            reclaimable = "total_inactive_file"
        limit = _read_int(folder / limit_file)
        if limit is None or limit >= NO_LIMIT:
            continue
        usage = _read_int(folder / usage_file) or 0
        usage = max(usage - _stat_value(folder, reclaimable), 0)
        headroom = max(limit - usage, 0)
        if best is None or headroom < best[0]:
            best = (headroom, folder / limit_file)
    return best


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def available_memory(meminfo: Path = Path("/proc/meminfo"),
                     proc_cgroup: Path = Path("/proc/self/cgroup"),
                     cgroup_root: Path = Path("/sys/fs/cgroup")) -> Memory:
    """The memory this process may still use: the smaller of MemAvailable and the headroom
    under its cgroup limit (see the module doc). The paths are parameters for tests."""
    candidates: list[tuple[int, str]] = []
    machine = meminfo_available(meminfo)
    if machine is not None:
        candidates.append((machine, "MemAvailable"))
    else:
        fallback = _sysconf_available()
        if fallback is not None:
            candidates.append((fallback, "free physical pages"))
    limited = cgroup_headroom(proc_cgroup, cgroup_root)
    if limited is not None:
        candidates.append((limited[0], f"cgroup limit {limited[1]}"))
    if not candidates:
        return Memory(None, f"no {meminfo} and no cgroup limit")
    available, source = min(candidates)
    return Memory(available, source)


def cached_bytes(files: Sequence[str | Path]) -> int:
    """Bytes the in-memory cache takes for ``files`` (records of ``unet3d.data.tfrecord``).

    Each case counts ``BYTES_PER_VOXEL`` per voxel of its stored shape (from the
    ``preprocess_manifest.json`` beside the records) plus ``FOREGROUND_BYTES``; a case the
    manifest does not know counts its record's size on disk instead.
    """
    manifests: dict[Path, dict] = {}
    total = 0
    for name in files:
        path = Path(name)
        folder = path.parent
        if folder not in manifests:
            manifest = read_json(folder / PREPROCESS_MANIFEST)
            manifests[folder] = manifest.get("cases", {}) if isinstance(manifest, dict) else {}
        entry = manifests[folder].get(path.name[: -len(".tfrecord")]
                                      if path.name.endswith(".tfrecord") else path.stem)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if isinstance(shape, list) and len(shape) == 3:
            voxels = int(shape[0]) * int(shape[1]) * int(shape[2])
            total += BYTES_PER_VOXEL * voxels + FOREGROUND_BYTES
        else:
            total += (path.stat().st_size if path.is_file() else 0) + FOREGROUND_BYTES
    return total


def decide_cache(setting: bool | str, files: Sequence[str | Path], local_processes: int = 1,
                 memory: Callable[[], Memory] = available_memory) -> CacheDecision:
    """Resolve ``data.cache`` for the training records ``files`` this process reads.

    Args:
        setting: ``data.cache``: True (always cache), False (never) or "auto".
        files: this process's training records (its shard).
        local_processes: processes on this machine that each cache their own shard
            (Horovod's local size; 1 for one process, whatever its devices).
        memory: returns the memory figures (tests pass fakes).

    Returns:
        The decision; "auto" caches when ``cached_bytes(files)`` is at most
        ``CACHE_MEMORY_FRACTION * available / local_processes`` and reads from disk when the
        available memory is unknown.

    Raises:
        ValueError: ``setting`` is not one of True, False, "auto", or ``local_processes`` < 1.
    """
    if setting not in CACHE_CHOICES or isinstance(setting, int) and not isinstance(setting, bool):
        raise ValueError(f"data.cache: must be true, false or auto, got {setting!r}")
    if int(local_processes) < 1:
        raise ValueError(f"local_processes must be >= 1, got {local_processes}")
    needed = cached_bytes(files)
    if setting != "auto":
        return CacheDecision(bool(setting), setting, len(files), needed)
    figures = memory()
    decision = CacheDecision(False, setting, len(files), needed, figures, int(local_processes))
    budget = decision.budget
    fits = budget is not None and needed <= budget
    return CacheDecision(fits, setting, len(files), needed, figures, int(local_processes))
