"""``inference.engine=auto``: the fastest engine installed on this host, probed once and cached.

The probe runs the job's own network (its first member) in every candidate engine on one
random window of ``probe_window`` sides (half the inference window per side, rounded to the
network's input divisor: a few seconds on 2 cores for the reference network), one untimed call
then ``PROBE_REPEATS`` timed ones, and picks the smallest median. The result is cached in
``inference.engine_cache`` (default ``<paths.data_dir>/engine_probe.json``; the served model:
``~/.cache/unet3d/engine_probe.json``) under a key of this host's CPU (vendor, family, model,
stepping, model name and all its flags), the installed engines' versions, the thread count,
the network and the probe window: an entry of another host, another engine version or another
network never matches, so it is never used. The file is written atomically under a lock
(``unet3d.runtime.cpu_probe``'s pattern, as ``precision=auto`` does); ``inference.
engine_reprobe=true`` (or deleting the file) measures again.

Pure logic (``choose_engine``) takes the probe as a function, so every branch is tested
without timing anything real.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.runs.files import exclusive_lock, write_json_atomic
from unet3d.runtime.cpu_probe import CPUINFO

log = logging.getLogger(__name__)

#: Timed calls per engine after one untimed call (compilation, memory planning).
PROBE_REPEATS = 2
#: The cache file's layout version.
CACHE_FORMAT = 1
#: The cache file's name in ``paths.data_dir``.
CACHE_FILE = "engine_probe.json"
#: The served model's cache when no folder is configured.
USER_CACHE = Path("~/.cache/unet3d/engine_probe.json")

#: ``build(engine name) -> engine`` (a callable on float32 ``[n, h, w, d, C]`` windows).
BuildFn = Callable[[str], Any]


@dataclass(frozen=True)
class HostCpu:
    """The CPU facts of the cache key (``/proc/cpuinfo``'s first processor)."""

    vendor: str
    family: str
    model: str
    stepping: str
    name: str
    flags: tuple[str, ...]

    def describe(self) -> str:
        """``Intel(R) Xeon(R) Processor (family 6, model 207, stepping 2)``."""
        return f"{self.name} (family {self.family}, model {self.model}, stepping {self.stepping})"


def read_host_cpu(path: str | os.PathLike = CPUINFO) -> HostCpu:
    """This host's ``HostCpu`` (``platform`` facts where ``/proc/cpuinfo`` is absent)."""
    fields: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = tuple(sorted((fields.get("flags") or fields.get("features") or "").split()))
    return HostCpu(vendor=fields.get("vendor_id", platform.machine()),
                   family=fields.get("cpu family", "?"), model=fields.get("model", "?"),
                   stepping=fields.get("stepping", "?"),
                   name=fields.get("model name") or platform.processor() or "unknown CPU",
                   flags=flags)


def probe_window(window: Sequence[int], divisor: int) -> tuple[int, int, int]:
    """Half the window per side, rounded down to ``divisor`` (at least one divisor)."""
    return tuple(max(int(divisor), (int(side) // 2) // int(divisor) * int(divisor))
                 for side in window)  # type: ignore[return-value]


def cache_key(cpu: HostCpu, versions: Mapping[str, str], threads: int, network: str,
              window: Sequence[int]) -> str:
    """SHA-256 (16 hex digits) of everything the probe's result depends on."""
    text = json.dumps({"cpu": [cpu.vendor, cpu.family, cpu.model, cpu.stepping, cpu.name,
                               list(cpu.flags)],
                       "engines": dict(sorted(versions.items())), "threads": int(threads),
                       "network": network, "window": [int(side) for side in window]},
                      sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def time_engine(engine: Any, batch: np.ndarray, repeats: int = PROBE_REPEATS) -> float:
    """Median milliseconds of ``engine(batch)`` after one untimed call."""
    engine(batch)
    times = []
    for _ in range(max(int(repeats), 1)):
        started = time.perf_counter()
        engine(batch)
        times.append((time.perf_counter() - started) * 1000.0)
    return float(statistics.median(times))


@dataclass(frozen=True)
class EngineChoice:
    """What ran the windows and why.

    Attributes:
        engine: ``tensorflow``, ``openvino`` or ``onnxruntime``.
        requested: ``inference.engine`` as configured.
        reason: one phrase.
        times_ms: engine -> median probe milliseconds (auto only).
        window: the probe window (auto only).
        cached: the probe result came from the cache.
        cpu: the host's CPU (auto only).
    """

    engine: str
    requested: str
    reason: str
    times_ms: Mapping[str, float] = field(default_factory=dict)
    window: tuple[int, ...] = ()
    cached: bool = False
    cpu: HostCpu | None = None

    def line(self) -> str:
        """The one log line of the choice and the probe times."""
        text = f"inference engine: {self.engine} ({self.reason})"
        if self.times_ms:
            shown = ", ".join(f"{name} {ms:.0f} ms" for name, ms in
                              sorted(self.times_ms.items(), key=lambda item: item[1]))
            where = f" on {self.cpu.describe()}" if self.cpu is not None else ""
            text += (f"; probe {'x'.join(map(str, self.window))} window{where}: {shown}"
                     f"{', cached' if self.cached else ''}")
        return text

    def params(self) -> dict[str, str]:
        """MLflow params: ``inference.engine_choice`` and each probe time."""
        values = {"inference.engine_choice": self.engine}
        for name, ms in self.times_ms.items():
            values[f"inference.engine_probe_ms.{name}"] = f"{ms:.1f}"
        return values


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT \
                or not isinstance(payload.get("hosts"), dict):
            raise ValueError(f"not a format-{CACHE_FORMAT} engine probe cache")
        return dict(payload["hosts"])
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable engine probe cache (%s); it will be rewritten", path, error)
        return {}


def _cached_times(entry: Any, candidates: Sequence[str]) -> dict[str, float] | None:
    """The entry's probe times when it covers exactly ``candidates``; else None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("times_ms"), dict):
        return None
    try:
        times = {str(name): float(ms) for name, ms in entry["times_ms"].items()}
    except (TypeError, ValueError):
        return None
    if sorted(times) != sorted(candidates) or any(not ms > 0 for ms in times.values()):
        return None
    return times


def choose_engine(requested: str, candidates: Sequence[str], build: BuildFn, *,
                  window: Sequence[int], channels: int, network: str,
                  versions: Mapping[str, str], threads: int, cache: str | Path | None,
                  reprobe: bool = False, cpu: HostCpu | None = None,
                  timer: Callable[[Any, np.ndarray], float] = time_engine) -> EngineChoice:
    """The engine to run: ``requested`` itself, or for ``auto`` the fastest candidate.

    Args:
        requested: ``inference.engine``.
        candidates: the engines that can run this network here (installed, a format for them).
        build: ``build(name)`` -> an engine (only called for probed engines).
        window: the probe window sides; channels: the network's input channels.
        network: a description of the network (part of the cache key).
        versions: engine -> installed version (part of the cache key).
        threads: the engines' thread count (part of the cache key).
        cache: the cache file, or None (probe every time).
        reprobe: probe even when this host's entry is cached.
        cpu: this host's CPU (``read_host_cpu`` when None).
        timer: ``timer(engine, batch) -> ms`` (``time_engine``).

    Returns:
        The choice (a fixed engine is returned without probing).
    """
    if requested != "auto":
        return EngineChoice(requested, requested, f"inference.engine={requested}")
    if len(candidates) == 1:
        return EngineChoice(candidates[0], requested, "auto: the only engine that can run it "
                            "here")
    cpu = cpu or read_host_cpu()
    window = tuple(int(side) for side in window)
    key = cache_key(cpu, {name: versions[name] for name in candidates}, threads, network,
                    window)
    path = Path(cache).expanduser() if cache else None

    def measure() -> dict[str, float]:
        batch = np.random.default_rng(0).standard_normal((1, *window, channels)
                                                         ).astype(np.float32)
        times = {}
        for name in candidates:
            times[name] = float(timer(build(name), batch))
            log.info("engine probe: %s %.1f ms on a %s window", name, times[name],
                     "x".join(map(str, window)))
        return times

    def decided(times: dict[str, float], cached: bool) -> EngineChoice:
        best = min(times, key=lambda name: times[name])
        return EngineChoice(best, requested, "auto: fastest in the probe", times, window,
                            cached, cpu)

    if path is None:
        return decided(measure(), False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(path.with_name(path.name + ".lock")):
            hosts = _read_cache(path)
            times = None if reprobe else _cached_times(hosts.get(key), candidates)
            if times is not None:
                return decided(times, True)
            times = measure()
            hosts[key] = {"cpu": cpu.describe(), "hostname": platform.node(),
                          "engines": {name: versions[name] for name in candidates},
                          "threads": int(threads), "network": network, "window": list(window),
                          "created": datetime.now(UTC).isoformat(timespec="seconds"),
                          "times_ms": times}
            write_json_atomic(path, {"format": CACHE_FORMAT, "hosts": hosts}, sort_keys=True)
            return decided(times, False)
    except OSError as error:
        log.warning("%s: cannot use the engine probe cache (%s); probing without it", path,
                    error)
        return decided(measure(), False)
