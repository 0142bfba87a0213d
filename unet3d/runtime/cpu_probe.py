"""This host's CPU and how fast it runs 3D convolutions in float32 and in bfloat16.

``precision=auto`` (:mod:`unet3d.runtime.precision_auto`) needs two facts about the CPU:

- its bfloat16 instructions, from the Linux flags in ``/proc/cpuinfo`` (``read_cpu_info``):
  ``amx_bf16`` with ``amx_tile`` (Intel AMX, Sapphire Rapids and later) or ``avx512_bf16``
  (Intel Cooper Lake and later, AMD Zen 4 and later). oneDNN runs bfloat16 convolutions on
  them (``brg_conv_fwd:avx512_core_amx`` / ``avx512_core_bf16``); without them bfloat16 is
  emulated and slow.
- whether bfloat16 convolutions really are faster here (``probe_conv3d``): the same CPU family
  differs between hosts (measured for this project: on one AMD EPYC host a 64^3 32->32
  convolution took 92 ms in bfloat16 vs 54 ms in float32, on another 43 vs 81 ms; on an Intel
  Xeon with AMX 12 vs 80 ms).

The probe's result is cached per host (``cached_probe``) in ``<paths.data_dir>/
precision_probe.json``, keyed by the CPU's identity (vendor, family, model, stepping, microcode
where ``/proc/cpuinfo`` shows it, model name, every flag), the TensorFlow version and the
intra-op thread count, so a host probes once and every later job (and a resumed run) takes the
same decision. The data folder is often shared (NFS, a baked image), and CPUs of one name and
stepping still differ (a hypervisor, firmware, memory): a cached result that says bfloat16 is
faster is therefore re-checked with one warm-up and one timed pair (``quick_probe``; its cost
next to the full probe: ``benchmarks/studies/precision_recheck.py``) before it is used, and
measured again in full when the check disagrees.
The file is written atomically under a lock (``fcntl``), so processes of one launch that start
together probe once, one after another. Delete the file (or pass ``precision.reprobe=true``)
to measure again.

TensorFlow is imported only by ``probe_conv3d`` and ``intra_op_threads``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unet3d.runs.files import write_json_atomic

log = logging.getLogger(__name__)

#: Linux's CPU description.
CPUINFO = Path("/proc/cpuinfo")
#: The flags of the bfloat16 instructions oneDNN's convolutions use (Linux names).
BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")
#: The probe: one ``tf.nn.conv3d``, batch 1, a cube of this side, 32 -> 32 channels, 3^3 kernel.
PROBE_SIDE = 48
PROBE_CHANNELS = 32
#: Untimed calls per dtype (oneDNN creates its primitive on the first), then timed pairs.
PROBE_WARMUP = 2
PROBE_REPEATS = 5
#: Timed pairs stop early once the probe has run this long (a host that emulates bfloat16).
PROBE_BUDGET_S = 1.0
#: The cache file, in ``paths.data_dir``.
CACHE_FILE = "precision_probe.json"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, identity and flags.

    Attributes:
        model: ``model name`` of ``/proc/cpuinfo`` (else ``platform.processor()``, else
            ``"unknown CPU"``).
        flags: the CPU's flags (empty where ``/proc/cpuinfo`` does not exist).
        vendor: ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``; ARM: ``CPU implementer``).
        family: ``cpu family`` (ARM: ``CPU architecture``).
        model_id: ``model``, the numeric model within the family (ARM: ``CPU part``).
        stepping: ``stepping`` (ARM: ``CPU variant`` / ``CPU revision``).
        microcode: ``microcode`` revision where the kernel shows it (x86), else ``""``.
        The identity fields are ``""`` where ``/proc/cpuinfo`` does not have them.
    """

    model: str
    flags: frozenset[str]
    vendor: str = ""
    family: str = ""
    model_id: str = ""
    stepping: str = ""
    microcode: str = ""

    def identity(self) -> dict[str, str]:
        """The fields that tell CPUs apart (part of the probe cache's key)."""
        return {"vendor": self.vendor, "family": self.family, "model": self.model_id,
                "stepping": self.stepping, "microcode": self.microcode}

    def identity_text(self) -> str:
        """``GenuineIntel family 6 model 207 stepping 2 microcode 0x1`` (the fields known)."""
        parts = [self.vendor] if self.vendor else []
        parts += [f"{name} {value}" for name, value in self.identity().items()
                  if value and name != "vendor"]
        return " ".join(parts) or "identity unknown"

    @property
    def bf16_flags(self) -> tuple[str, ...]:
        """The flags of ``BF16_FLAGS`` this CPU has, in that order."""
        return tuple(flag for flag in BF16_FLAGS if flag in self.flags)

    @property
    def has_amx_bf16(self) -> bool:
        """Intel AMX with bfloat16 tiles (``amx_bf16`` and ``amx_tile``)."""
        return {"amx_bf16", "amx_tile"} <= self.flags

    @property
    def has_avx512_bf16(self) -> bool:
        """AVX-512 BF16 (``avx512_bf16``)."""
        return "avx512_bf16" in self.flags

    @property
    def has_bf16(self) -> bool:
        """Whether oneDNN has native bfloat16 convolution kernels here (AMX or AVX-512 BF16)."""
        return self.has_amx_bf16 or self.has_avx512_bf16

    def describe(self) -> str:
        """``<model> [<bf16 flags> | no bf16 flags]`` for log lines."""
        flags = ", ".join(self.bf16_flags) if self.bf16_flags else "no bf16 flags"
        return f"{self.model} [{flags}]"


#: ``/proc/cpuinfo`` keys of the identity fields (x86 first, then ARM's names).
_IDENTITY_KEYS = {
    "vendor": ("vendor_id", "cpu implementer"),
    "family": ("cpu family", "cpu architecture"),
    "model_id": ("model", "cpu part"),
    "stepping": ("stepping", "cpu variant"),
    "microcode": ("microcode", "cpu revision"),
}


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model name, identity and flags in the text of ``/proc/cpuinfo``.

    Each field is its first occurrence (the first processor's). ARM kernels name the flags
    ``Features`` and the identity ``CPU implementer`` / ``architecture`` / ``part`` /
    ``variant`` / ``revision``; a text without a model name gives ``platform.processor()`` or
    ``"unknown CPU"``.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    model = next((fields[key] for key in ("model name", "cpu model", "hardware")
                  if fields.get(key)), None)
    flags = next((fields[key] for key in ("flags", "features") if key in fields), "")
    identity = {name: next((fields[key] for key in keys if fields.get(key)), "")
                for name, keys in _IDENTITY_KEYS.items()}
    return CpuInfo(model or platform.processor() or "unknown CPU", frozenset(flags.split()),
                   **identity)


def read_cpu_info(path: str | os.PathLike | None = None) -> CpuInfo:
    """This host's ``CpuInfo`` from ``path`` (default ``CPUINFO``, ``/proc/cpuinfo``); no flags
    and no identity where it cannot be read (not Linux)."""
    path = CPUINFO if path is None else path
    try:
        return parse_cpuinfo(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError as error:
        log.debug("cannot read %s (%s): no CPU flags", path, error)
        return CpuInfo(platform.processor() or "unknown CPU", frozenset())


def intra_op_threads() -> int:
    """TensorFlow's intra-op thread count (its default: the CPUs this process may use)."""
    import tensorflow as tf

    threads = int(tf.config.threading.get_intra_op_parallelism_threads())
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ProbeResult:
    """Median times of one 3D convolution in float32 and in bfloat16.

    Attributes:
        fp32_ms: median milliseconds in float32.
        bf16_ms: median milliseconds in bfloat16.
        side: the cube's side (voxels); ``channels``: input = output channels.
        repeats: timed calls per dtype.
    """

    fp32_ms: float
    bf16_ms: float
    side: int = PROBE_SIDE
    channels: int = PROBE_CHANNELS
    repeats: int = PROBE_REPEATS

    @property
    def speedup(self) -> float:
        """bfloat16's speed-up over float32 (``fp32_ms / bf16_ms``; below 1: slower)."""
        return self.fp32_ms / self.bf16_ms

    def describe(self) -> str:
        """``conv3d 48^3 32->32: fp32 30.5 ms, bf16 15.2 ms (bf16 2.01x faster)``."""
        speed = (f"{self.speedup:.2f}x faster" if self.speedup >= 1.0
                 else f"{1.0 / self.speedup:.2f}x slower")
        return (f"conv3d {self.side}^3 {self.channels}->{self.channels}: fp32 "
                f"{self.fp32_ms:.1f} ms, bf16 {self.bf16_ms:.1f} ms (bf16 {speed})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of the cache."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ProbeResult:
        """Read a cached record; ValueError/TypeError/KeyError when malformed."""
        result = cls(fp32_ms=float(record["fp32_ms"]), bf16_ms=float(record["bf16_ms"]),
                     side=int(record["side"]), channels=int(record["channels"]),
                     repeats=int(record["repeats"]))
        if not (result.fp32_ms > 0 and result.bf16_ms > 0):
            raise ValueError(f"probe times must be > 0, got {record!r}")
        return result


def probe_conv3d(side: int = PROBE_SIDE, channels: int = PROBE_CHANNELS,
                 warmup: int = PROBE_WARMUP, repeats: int = PROBE_REPEATS,
                 budget_s: float = PROBE_BUDGET_S) -> ProbeResult:
    """Time ``tf.nn.conv3d`` (batch 1, ``side``^3, ``channels`` -> ``channels``, 3^3, SAME).

    float32 and bfloat16 calls alternate (so a load change hits both alike); the medians of
    the timed calls are returned. Runs on ``/CPU:0`` with the process's thread pools (set
    them first: ``configure_devices``). About 0.3 s on a 2-core AVX-512 BF16 CPU.

    Args:
        side: cube side (voxels).
        channels: input and output channels.
        warmup: untimed calls per dtype.
        repeats: at most this many timed calls per dtype.
        budget_s: stop timing after this many seconds (at least one timed call per dtype).
    """
    import tensorflow as tf

    with tf.device("/CPU:0"):
        images = tf.random.stateless_normal([1, side, side, side, channels], seed=[21, 1])
        kernel = tf.random.stateless_normal([3, 3, 3, channels, channels], seed=[21, 2]) * 0.05
        inputs = {dtype: (tf.cast(images, dtype), tf.cast(kernel, dtype))
                  for dtype in (tf.float32, tf.bfloat16)}

        def once(dtype: Any) -> float:
            started = time.perf_counter()
            output = tf.nn.conv3d(*inputs[dtype], strides=[1] * 5, padding="SAME")
            _ = output.shape  # eager CPU ops finish before returning
            return (time.perf_counter() - started) * 1000.0

        for _ in range(max(warmup, 0)):
            for dtype in inputs:
                once(dtype)
        times: dict[Any, list[float]] = {dtype: [] for dtype in inputs}
        started = time.perf_counter()
        for _ in range(max(repeats, 1)):
            for dtype in inputs:
                times[dtype].append(once(dtype))
            if time.perf_counter() - started > budget_s:
                break
    return ProbeResult(fp32_ms=statistics.median(times[tf.float32]),
                       bf16_ms=statistics.median(times[tf.bfloat16]), side=side,
                       channels=channels, repeats=len(times[tf.float32]))


def quick_probe() -> ProbeResult:
    """The re-check of a cached result: one warm-up and one timed pair of ``probe_conv3d``."""
    return probe_conv3d(warmup=1, repeats=1)


def host_key(cpu: CpuInfo, tf_version: str, threads: int) -> str:
    """The cache key of a host: SHA-256 (16 hex digits) of the CPU's model name, identity
    (vendor, family, model, stepping, microcode) and every flag, TensorFlow's version and the
    intra-op thread count."""
    text = json.dumps({"cpu": cpu.model, "identity": cpu.identity(),
                       "flags": sorted(cpu.flags), "tensorflow": tf_version,
                       "threads": int(threads)}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (no lock where ``fcntl`` does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_cache(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The cached hosts of ``path`` (``{key: entry}``); ``{}`` when absent or unreadable.

    An unreadable file (not JSON, another format) is logged as a warning and treated as empty;
    the next ``cached_probe`` rewrites it.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT \
                or not isinstance(payload.get("hosts"), dict):
            raise ValueError(f"not a format-{CACHE_FORMAT} probe cache")
        return {str(key): value for key, value in payload["hosts"].items()
                if isinstance(value, dict)}
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable precision probe cache (%s); it will be rewritten",
                    path, error)
        return {}


ProbeFn = Callable[[], ProbeResult]


def cached_probe(cache: str | os.PathLike | None, cpu: CpuInfo, threads: int,
                 tf_version: str, probe: ProbeFn = probe_conv3d,
                 refresh: bool = False, check: ProbeFn | None = None,
                 min_speedup: float = 1.0) -> tuple[ProbeResult, bool]:
    """This host's probe result: from the cache file, else measured (and then cached).

    Args:
        cache: the cache file (``<paths.data_dir>/precision_probe.json``), or None: no file,
            measure.
        cpu: this host's CPU (its identity and flags are part of the key).
        threads: the intra-op thread count the probe runs with (part of the key).
        tf_version: ``tf.__version__`` (part of the key).
        probe: the measurement (``probe_conv3d``).
        refresh: measure even when the host is cached (``precision.reprobe``).
        check: the cheap re-check (``quick_probe``) of a cached result that says bfloat16 is at
            least ``min_speedup`` times faster; None: no re-check. When the check measures less
            than ``min_speedup``, the cached result is not used: a WARNING says so, the full
            probe runs and its result replaces the entry.
        min_speedup: see ``check`` (``precision.min_speedup``).

    Returns:
        ``(result, cached)``: ``cached`` is True when the result was read from the file.
        A file that cannot be written only loses the cache (a warning); the result stands.
    """
    if cache is None:
        return probe(), False
    path = Path(cache)
    key = host_key(cpu, tf_version, threads)
    result = None
    try:
        with _locked(path):
            hosts = read_cache(path)
            entry = hosts.get(key)
            if entry is not None and not refresh:
                try:
                    cached = ProbeResult.from_dict(entry.get("probe") or {})
                except (KeyError, TypeError, ValueError) as error:
                    log.warning("%s: unreadable entry for this host (%s); probing again",
                                path, error)
                else:
                    if _confirmed(path, cached, check, min_speedup):
                        return cached, True
            result = probe()
            hosts[key] = {"cpu": cpu.model, "cpu_identity": cpu.identity(), "flags_sha256":
                          hashlib.sha256(" ".join(sorted(cpu.flags)).encode()).hexdigest()[:16],
                          "bf16_flags": list(cpu.bf16_flags),
                          "tensorflow": tf_version, "threads": int(threads),
                          "created": datetime.now(UTC).isoformat(timespec="seconds"),
                          "probe": result.to_dict()}
            write_json_atomic(path, {"format": CACHE_FORMAT, "hosts": hosts}, sort_keys=True)
            return result, False
    except OSError as error:
        log.warning("%s: cannot use the precision probe cache (%s); probing without it",
                    path, error)
        return (result if result is not None else probe()), False


def _confirmed(path: Path, cached: ProbeResult, check: ProbeFn | None,
               min_speedup: float) -> bool:
    """Whether the cached result stands: it does not favour bfloat16, or a quick pair agrees."""
    if check is None or cached.speedup < min_speedup:
        return True
    quick = check()
    if quick.speedup >= min_speedup:
        log.info("%s: cached bf16 result re-checked here (%s)", path, quick.describe())
        return True
    log.warning("precision probe cache %s says bfloat16 is faster on this CPU (%s), but a "
                "check here measured %s: the entry came from another host or conditions "
                "changed; probing again", path, cached.describe(), quick.describe())
    return False
