"""Measurements of ``mode=benchmark`` (no TensorFlow at import): timed steps, latency
statistics, the runner target's overhead, memory.

Latency statistics are in ms: mean, min, max, std and the percentiles p50, p90, p95, p99
(linear interpolation, ``numpy.percentile``). Throughput is ``batch / mean step time``
(volumes/s).
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Percentiles reported besides the mean.
PERCENTILES = (50, 90, 95, 99)


def latency_statistics(seconds: Sequence[float]) -> dict[str, float]:
    """Mean and percentiles (ms) of step times given in seconds, plus ``count`` and ``total_s``.

    Raises:
        ValueError: no step times.
    """
    values = np.asarray(list(seconds), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no timed steps")
    milliseconds = values * 1000.0
    statistics = {
        "count": int(values.size),
        "total_s": float(values.sum()),
        "mean": float(milliseconds.mean()),
        "min": float(milliseconds.min()),
        "max": float(milliseconds.max()),
        "std": float(milliseconds.std()),
    }
    for percentile in PERCENTILES:
        statistics[f"p{percentile}"] = float(np.percentile(milliseconds, percentile))
    return statistics


def time_steps(step: Callable[[], Any], warmup_steps: int, steps: int,
               label: str = "step") -> tuple[list[float], float]:
    """Call ``step`` ``warmup_steps`` times untimed, then ``steps`` times timed.

    ``step`` must wait for its own work (return only when the results are on the host).
    Returns the wall seconds of each timed step and the process CPU seconds (all threads)
    they used together: on a shared machine the CPU time per step is the steadier number.
    """
    for index in range(warmup_steps):
        started = time.perf_counter()
        step()
        log.info("benchmark warm-up %s %d/%d: %.1f ms", label, index + 1, warmup_steps,
                 (time.perf_counter() - started) * 1000.0)
    times = []
    cpu_started = time.process_time()
    for index in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
        log.debug("benchmark %s %d/%d: %.1f ms", label, index + 1, steps, times[-1] * 1000.0)
    return times, time.process_time() - cpu_started


def timed_result(times: Sequence[float], batch: int, per_replica_batch: int,
                 input_shape: Sequence[int], parameters: int, extra: dict[str, Any],
                 **fields: Any) -> dict[str, Any]:
    """A target's result dict from its timed steps (the layout every target returns).

    Args:
        times: wall seconds of each timed step.
        batch: volumes per step over all replicas (``throughput = batch / mean step time``).
        per_replica_batch: volumes per step on one replica.
        input_shape: the timed input's (H, W, D) in voxels.
        parameters: the timed model's parameter count (0: no model).
        extra: the target's own numbers (``unet3d.modes.benchmark.report.flat_metrics`` names
            them ``<key>_<target>``).
        fields: further top-level entries (``devices``, window latencies, ...).

    Returns:
        ``batch``, ``per_replica_batch``, ``input_shape``, ``parameters``, ``throughput``
        (volumes/s), ``latency_ms`` (``latency_statistics``), ``step_seconds``, ``extra``.
    """
    latency = latency_statistics(times)
    return {
        **fields,
        "batch": int(batch),
        "per_replica_batch": int(per_replica_batch),
        "input_shape": [int(side) for side in input_shape],
        "parameters": int(parameters),
        "throughput": batch / (latency["mean"] / 1000.0),
        "latency_ms": latency,
        "step_seconds": list(times),
        "extra": extra,
    }


def runner_loop_steps(log_every: int, steps: int) -> int:
    """Steps of one loop round: one untimed window plus whole windows covering ``steps``.

    Raises:
        ValueError: ``log_every`` or ``steps`` below 1.
    """
    if log_every < 1 or steps < 1:
        raise ValueError(f"log_every and steps must be > 0, got {log_every} and {steps}")
    return log_every * (1 + math.ceil(steps / log_every))


def overhead_summary(bare_seconds: Sequence[float],
                     loop_seconds: Sequence[float]) -> dict[str, Any]:
    """Per-round and overall overhead of the loop's step time over the bare step time.

    ``bare_seconds[i]`` and ``loop_seconds[i]`` are the mean step times of round ``i``; the
    headline ``overhead_fraction`` is the median over rounds of ``loop / bare - 1`` (each
    round's pair ran back to back, so slow drifts of the machine cancel).

    Raises:
        ValueError: not one bare and one loop time per round.
    """
    if not bare_seconds or len(bare_seconds) != len(loop_seconds):
        raise ValueError("need one bare and one loop step time per round")
    per_round = [loop / bare - 1.0 for bare, loop in zip(bare_seconds, loop_seconds,
                                                          strict=True)]
    bare_median = float(np.median(bare_seconds))
    loop_median = float(np.median(loop_seconds))
    return {
        "bare_step_time_s": bare_median,
        "loop_step_time_s": loop_median,
        "overhead_fraction": float(np.median(per_round)),
        "overhead_fraction_of_medians": loop_median / bare_median - 1.0,
        "overhead_fraction_per_round": per_round,
        "bare_step_time_per_round_s": list(bare_seconds),
        "loop_step_time_per_round_s": list(loop_seconds),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def accelerator_peak_mb(device_names: Sequence[str], device_type: str) -> float | None:
    """Peak accelerator memory (MiB) over the used devices, where TensorFlow reports it."""
    if device_type == "CPU":
        return None
    import tensorflow as tf

    peaks = []
    for name in device_names:
        try:
            info = tf.config.experimental.get_memory_info(name.replace("/device:", ""))
            peaks.append(info["peak"] / (1024.0 * 1024.0))
        except (ValueError, RuntimeError, KeyError):
            continue
    return max(peaks) if peaks else None
