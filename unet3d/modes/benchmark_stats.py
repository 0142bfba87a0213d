"""Statistics and report pieces of ``mode=benchmark`` (NumPy only, no TensorFlow).

Latency statistics are in ms: mean, min, max, std and the percentiles p50, p90, p95, p99
(linear interpolation). ``flat_metrics`` names every number of a result after its target, as
results.json and MLflow get them.
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
from omegaconf import OmegaConf

from unet3d.errors import ConfigError

log = logging.getLogger(__name__)

#: Percentiles reported besides the mean.
PERCENTILES = (50, 90, 95, 99)
#: Numbers of a result that describe the setting (in benchmark.json, not logged as metrics).
SETTINGS_NOT_METRICS = frozenset({"window_batch_size", "ensemble_members", "overlap",
                                  "train_files", "rounds", "loop_steps_per_round",
                                  "log_every", "checkpoint_every"})


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


def format_table(target: str, devices: str, batch: int, throughput: float,
                 latency: dict[str, float], unit: str = "vol/s") -> str:
    """A Markdown table shaped like the seed's README (throughput, then latencies in ms)."""
    header = [
        "devices", "batch", f"throughput_{target} [{unit}]", f"latency_{target}_mean [ms]",
        f"latency_{target}_50 [ms]", f"latency_{target}_90 [ms]", f"latency_{target}_95 [ms]",
        f"latency_{target}_99 [ms]",
    ]
    row = [devices, str(batch), f"{throughput:.4g}", f"{latency['mean']:.1f}",
           f"{latency['p50']:.1f}", f"{latency['p90']:.1f}", f"{latency['p95']:.1f}",
           f"{latency['p99']:.1f}"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        "| " + " | ".join(row) + " |",
    ]
    return "\n".join(lines)


def flat_metrics(target: str, result: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a result as flat metrics named after ``target``.

    ``throughput_<target>``, ``latency_<target>_mean`` / ``_p50`` ..., ``benchmark_steps_
    <target>``, window latencies (predict), every numeric ``extra`` that is not a setting
    (``<key>_<target>``), ``peak_rss_mb`` and ``accelerator_peak_mb``.
    """
    latency = result["latency_ms"]
    metrics = {
        f"throughput_{target}": float(result["throughput"]),
        f"latency_{target}_mean": latency["mean"],
    }
    for percentile in PERCENTILES:
        metrics[f"latency_{target}_p{percentile}"] = latency[f"p{percentile}"]
    metrics[f"benchmark_steps_{target}"] = float(latency["count"])
    if "window_latency_ms" in result:
        window = result["window_latency_ms"]
        metrics[f"window_latency_{target}_mean"] = window["mean"]
        for percentile in PERCENTILES:
            metrics[f"window_latency_{target}_p{percentile}"] = window[f"p{percentile}"]
    for key, value in result.get("extra", {}).items():
        if key in SETTINGS_NOT_METRICS or isinstance(value, bool) \
                or not isinstance(value, int | float):
            continue
        metrics[f"{key}_{target}" if not key.endswith(target) else key] = float(value)
    metrics["peak_rss_mb"] = float(result["peak_rss_mb"])
    if result.get("accelerator_peak_mb") is not None:
        metrics["accelerator_peak_mb"] = float(result["accelerator_peak_mb"])
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


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


def volume_shape(benchmark: Any) -> tuple[int, int, int]:
    """``benchmark.volume_shape`` (H, W, D) of ``target=predict`` with synthetic input.

    Args:
        benchmark: the ``benchmark`` config section (null ``volume_shape``: 240 x 240 x 155).

    Raises:
        ConfigError: not 3 positive sides.
    """
    value = benchmark.get("volume_shape", None) or [240, 240, 155]
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    try:
        sides = tuple(int(side) for side in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"benchmark.volume_shape: must be 3 positive sides, got {value!r}"
        ) from None
    if len(sides) != 3 or any(side < 1 for side in sides):
        raise ConfigError(f"benchmark.volume_shape: must be 3 positive sides, got {list(value)}")
    return sides  # type: ignore[return-value]
