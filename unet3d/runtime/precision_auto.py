"""``precision=auto``: the Keras policy that is fastest on this host, decided at start-up.

- CPU: ``mixed_bfloat16`` only where the CPU has bfloat16 instructions (``amx_bf16`` /
  ``avx512_bf16``, :mod:`unet3d.runtime.cpu_probe`) and a sub-second probe convolution runs at
  least ``precision.min_speedup`` times faster in bfloat16 than in float32; else ``float32``.
  A CPU without those flags gets float32 without probing. The probe is cached per host (CPU
  identity, flags, TensorFlow, threads); a cached result that says bfloat16 is faster is
  re-checked with one probe pair before it is used (``cpu_probe.cached_probe``).
- GPU: ``mixed_float16`` where every visible GPU has Tensor Cores (CUDA compute capability
  >= 7.0, read with ``tf.config.experimental.get_device_details``), else ``float32``.
- MLU: ``mixed_float16`` (the Cambricon reference's AMP).

``choose_cpu`` / ``choose_gpu`` are pure (the CPU facts, the probe and the GPU details are
passed in), so every branch is testable without the hardware. ``Host`` bundles the real
sources; ``unet3d.runtime.precision.configure_precision`` calls them.

An explicit ``precision=amp`` / ``bf16`` on a CPU where bfloat16 is slower still runs, but
``slow_bf16_warning`` says so once per process, with the measured ratio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from unet3d.runtime.cpu_probe import CpuInfo, ProbeResult

log = logging.getLogger(__name__)

#: CUDA compute capability of the first GPUs with Tensor Cores (Volta).
TENSOR_CORE_CAPABILITY = (7, 0)

#: ``measure() -> (probe result, read from the cache)``.
MeasureFn = Callable[[], tuple[ProbeResult, bool]]


@dataclass(frozen=True)
class AutoChoice:
    """What ``precision=auto`` chose and why.

    Attributes:
        policy: ``float32``, ``mixed_bfloat16`` or ``mixed_float16``.
        reason: one phrase (``bf16 at least 1.1x faster than fp32 (precision.min_speedup)``).
        device: ``CPU``, ``GPU`` or ``MLU``.
        cpu: the CPU (on CPU hosts).
        probe: the probe result, when one was used.
        cached: the probe result came from the cache file.
        gpus: ``device_name (compute capability)`` of each GPU (on GPU hosts).
        kept: the policy was kept from the run being resumed (nothing was measured).
    """

    policy: str
    reason: str
    device: str
    cpu: CpuInfo | None = None
    probe: ProbeResult | None = None
    cached: bool = False
    gpus: tuple[str, ...] = field(default_factory=tuple)
    kept: bool = False

    def line(self) -> str:
        """The one log line of the choice and its probe timings."""
        where = self.device
        if self.cpu is not None:
            where += f" {self.cpu.describe()}"
        if self.gpus:
            where += f" {', '.join(self.gpus)}"
        text = f"precision auto: {self.policy} on {where}: {self.reason}"
        if self.probe is not None:
            text += f"; probe {self.probe.describe()}{', cached' if self.cached else ''}"
        return text

    def params(self) -> dict[str, str]:
        """MLflow params: ``precision.auto_choice``, ``precision.auto_reason`` and the facts.

        A kept choice gives ``precision.auto_choice`` only: a resumed run's params then equal
        the ones its first job logged (MLflow params cannot change).
        """
        if self.kept:
            return {"precision.auto_choice": self.policy}
        values = {"precision.auto_choice": self.policy, "precision.auto_reason": self.reason}
        values.update(host_params(self.cpu, self.probe, self.cached))
        if self.gpus:
            values["precision.gpus"] = "; ".join(self.gpus)
        return values


def host_params(cpu: CpuInfo | None, probe: ProbeResult | None,
                cached: bool = False) -> dict[str, str]:
    """MLflow params of the host facts: ``precision.cpu``, ``precision.cpu_bf16_flags`` and the
    probe's ``precision.probe_fp32_ms`` / ``probe_bf16_ms`` / ``probe`` (its shape). Whether
    the probe came from the cache is only logged (``cached``): a resumed run, which reads it
    from the cache, logs the same params as its first job."""
    values: dict[str, str] = {}
    if cpu is not None:
        values["precision.cpu"] = cpu.model
        values["precision.cpu_bf16_flags"] = ",".join(cpu.bf16_flags) or "none"
    if probe is not None:
        values["precision.probe_fp32_ms"] = f"{probe.fp32_ms:.2f}"
        values["precision.probe_bf16_ms"] = f"{probe.bf16_ms:.2f}"
        values["precision.probe"] = f"conv3d {probe.side}^3 {probe.channels}->{probe.channels}"
    return values


def choose_cpu(cpu: CpuInfo, measure: MeasureFn, min_speedup: float) -> AutoChoice:
    """The CPU's policy: mixed_bfloat16 only with bf16 instructions and a faster probe.

    Args:
        cpu: the CPU's model and flags.
        measure: runs (or reads from the cache) the probe; not called without bf16 flags.
        min_speedup: bfloat16 is chosen when ``probe.speedup >= min_speedup``
            (``precision.min_speedup`` of ``conf/precision/auto.yaml``).
    """
    if not cpu.has_bf16:
        return AutoChoice("float32", "no bfloat16 instructions (neither amx_bf16 nor "
                          "avx512_bf16), not probed", "CPU", cpu=cpu)
    probe, cached = measure()
    if probe.speedup >= min_speedup:
        reason = f"bf16 at least {min_speedup:g}x faster than fp32 (precision.min_speedup)"
        return AutoChoice("mixed_bfloat16", reason, "CPU", cpu, probe, cached)
    if probe.speedup >= 1.0:
        reason = f"bf16 less than {min_speedup:g}x faster than fp32 (precision.min_speedup)"
    else:
        reason = "bf16 slower than fp32"
    return AutoChoice("float32", reason, "CPU", cpu, probe, cached)


def _capability(details: Mapping[str, Any]) -> tuple[int, int] | None:
    value = details.get("compute_capability")
    if isinstance(value, list | tuple) and len(value) == 2:
        try:
            return int(value[0]), int(value[1])
        except (TypeError, ValueError):
            return None
    return None


def choose_gpu(details: Sequence[Mapping[str, Any]]) -> AutoChoice:
    """mixed_float16 when every GPU has Tensor Cores (compute capability >= 7.0), else float32.

    Args:
        details: ``tf.config.experimental.get_device_details`` of each visible GPU
            (``compute_capability``: ``(major, minor)``, ``device_name``). A GPU without a
            compute capability (e.g. ROCm builds) counts as unknown: float32.
    """
    names, capabilities = [], []
    for index, entry in enumerate(details):
        capability = _capability(entry)
        capabilities.append(capability)
        shown = "unknown" if capability is None else f"{capability[0]}.{capability[1]}"
        names.append(f"{entry.get('device_name') or f'GPU {index}'} (compute capability "
                     f"{shown})")
    if not capabilities:
        return AutoChoice("float32", "no GPU details available", "GPU")
    if any(capability is None for capability in capabilities):
        return AutoChoice("float32", "compute capability unknown: Tensor Cores not "
                          "confirmed", "GPU", gpus=tuple(names))
    lowest = min(capabilities)  # type: ignore[type-var]
    if lowest >= TENSOR_CORE_CAPABILITY:
        return AutoChoice("mixed_float16", "Tensor Cores (compute capability >= 7.0)", "GPU",
                          gpus=tuple(names))
    return AutoChoice("float32", f"no Tensor Cores (compute capability {lowest[0]}.{lowest[1]}"
                      " < 7.0)", "GPU", gpus=tuple(names))


def choose_mlu() -> AutoChoice:
    """MLU: mixed_float16 with dynamic loss scaling (the Cambricon reference's AMP)."""
    return AutoChoice("mixed_float16", "MLU: mixed float16 (the reference's AMP)", "MLU")


def visible_gpu_details() -> list[dict[str, Any]]:
    """``get_device_details`` of each GPU visible to TensorFlow (``[]`` when none)."""
    import tensorflow as tf

    found = []
    for device in tf.config.get_visible_devices("GPU"):
        try:
            found.append(dict(tf.config.experimental.get_device_details(device)))
        except (RuntimeError, ValueError) as error:
            log.debug("no details of %s: %s", device.name, error)
            found.append({})
    return found


def _tf_version() -> str:
    import tensorflow as tf

    return str(tf.__version__)


@dataclass
class Host:
    """Where the facts about this host come from (replace them in tests).

    Attributes:
        cpu: returns the CPU's model and flags (``read_cpu_info``).
        probe: runs the probe convolution (``probe_conv3d``).
        check: the cheap re-check of a cached bfloat16 result (``quick_probe``); default: the
            real one with the real probe, else ``probe`` itself (a fake probe in tests).
        threads: the intra-op thread count (``intra_op_threads``).
        tf_version: TensorFlow's version.
        gpu_details: ``get_device_details`` of the visible GPUs.
    """

    cpu: Callable[[], CpuInfo] | None = None
    probe: Callable[[], ProbeResult] | None = None
    check: Callable[[], ProbeResult] | None = None
    threads: Callable[[], int] | None = None
    tf_version: Callable[[], str] = _tf_version
    gpu_details: Callable[[], list[dict[str, Any]]] = visible_gpu_details

    def __post_init__(self) -> None:
        """Fill in the real sources."""
        from unet3d.runtime import cpu_probe

        self.cpu = self.cpu or cpu_probe.read_cpu_info
        if self.check is None:
            self.check = self.probe or cpu_probe.quick_probe
        self.probe = self.probe or cpu_probe.probe_conv3d
        self.threads = self.threads or cpu_probe.intra_op_threads


_warned: set[str] = set()


def slow_bf16_warning(policy_name: str, cpu: CpuInfo, probe: ProbeResult,
                      cached: bool) -> str | None:
    """The warning for an explicit bfloat16 policy on a CPU where bf16 is slower; else None.

    Returned (and logged at WARNING) once per process and CPU: a sweep of jobs in one
    process, or a second ``configure_precision``, does not repeat it.
    """
    if probe.speedup >= 1.0 or cpu.model in _warned:
        return None
    _warned.add(cpu.model)
    message = (f"precision: {policy_name} on this CPU ({cpu.describe()}) is slower than float32: "
               f"bfloat16 3D convolutions take {1.0 / probe.speedup:.2f}x the time "
               f"(probe {probe.describe()}{', cached' if cached else ''}); it runs as asked, "
               "but precision=auto (or fp32) would be faster here")
    log.warning("%s", message)
    return message
