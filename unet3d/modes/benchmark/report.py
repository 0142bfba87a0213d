"""The report of ``mode=benchmark``: ``benchmark.json``, its flat metrics and the printed table.

``payload`` gathers the settings, the target's result, the flat metrics (``flat_metrics``:
what results.json and MLflow get, each named after the target) and the environment;
``format_table`` is the seed's README table (throughput in volumes/s, latencies in ms);
``write_report`` writes the JSON atomically.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from unet3d.modes.benchmark.measure import PERCENTILES

#: Version of the benchmark.json layout.
SCHEMA_VERSION = 1
#: ``data`` keys recorded in benchmark.json.
DATA_KEYS = ("name", "crop_size", "batch_size", "augment", "cache", "foreground_probability",
             "shuffle_buffer")
#: Numbers of a result that describe the setting (in benchmark.json, not logged as metrics).
SETTINGS_NOT_METRICS = frozenset({"window_batch_size", "ensemble_members", "overlap",
                                  "train_files", "rounds", "loop_steps_per_round",
                                  "log_every", "checkpoint_every"})


def payload(job: Any, target: str, result: dict[str, Any], started: float,
            load_before: Sequence[float] | None) -> dict[str, Any]:
    """The content of benchmark.json: settings, the result, metrics, table, environment.

    Args:
        job: the ``unet3d.modes.job.Job``; target: ``benchmark.target``.
        result: the target's result (``unet3d.modes.benchmark.measure.timed_result``) with
            ``peak_rss_mb`` and ``accelerator_peak_mb``; its ``devices`` entry is taken out.
        started: ``time.perf_counter()`` when the mode started (``wall_seconds``).
        load_before: ``os.getloadavg()`` when the mode started, or None.
    """
    import tensorflow as tf

    cfg, context, runtime = job.cfg, job.context, job.runtime
    devices = result.pop("devices", f"{context.num_replicas} x {runtime.device.type}")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    content: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "target": target,
        "synthetic_input": bool(cfg.benchmark.synthetic_input),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "devices": devices,
        "device_type": runtime.device.type,
        "device_names": list(runtime.device.names),
        "precision": runtime.precision.policy_name,
        "compute_dtype": runtime.precision.compute_dtype,
        "xla": bool(runtime.precision.xla),
        "strategy": context.name,
        "num_replicas": int(context.num_replicas),
        "world_size": int(context.world_size),
        "warmup_steps": int(cfg.benchmark.warmup_steps),
        "steps": int(cfg.benchmark.steps),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": {key: data.get(key) for key in DATA_KEYS},
        **{key: value for key, value in result.items() if key != "extra"},
        **result.get("extra", {}),
        "throughput_unit": "volumes/s",
        "wall_seconds": time.perf_counter() - started,
        "environment": {
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_before": list(load_before) if load_before else None,
            "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    content["metrics"] = flat_metrics(target, result)
    content["table"] = format_table(target, devices, int(result["batch"]),
                                    float(result["throughput"]), result["latency_ms"])
    return content


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


def summary_lines(target: str, content: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """The lines logged at the end: what was timed, the table, the target's headline."""
    count = int(result["latency_ms"]["count"])
    if target == "runner":
        what = f"training loop windows of {result['extra']['log_every']} steps"
    else:
        what = f"{'synthetic' if content['synthetic_input'] else 'real'} input"
    lines = [f"benchmark {target} ({what}, {content['precision']}"
             f"{', XLA' if content['xla'] else ''}, {count} timed "
             f"{'window(s)' if target == 'runner' else 'step(s)'}):", content["table"]]
    extra = result.get("extra", {})
    if target == "train":
        lines.append(
            f"train step {extra['step_time_s']:.3f} s (median {extra['step_time_median_s']:.3f}"
            f" s), {extra['forward_gflop_per_volume']:.2f} GFLOP forward per volume, "
            f"achieved {extra['achieved_gflops']:.1f} GFLOP/s (3 x forward)"
        )
    if target == "predict":
        window = result["window_latency_ms"]
        lines.append(
            f"{extra['seconds_per_case']:.2f} s per case "
            f"({extra['window_batches_per_case']:.0f} window batches of "
            f"{extra['window_batch_size']}: mean {window['mean']:.1f} ms, p90 "
            f"{window['p90']:.1f} ms, p99 {window['p99']:.1f} ms)"
        )
    if target == "runner":
        lines.append(
            f"training loop {extra['loop_step_time_s'] * 1000.0:.1f} ms/step vs bare step "
            f"{extra['bare_step_time_s'] * 1000.0:.1f} ms/step: overhead "
            f"{extra['overhead_fraction'] * 100.0:+.1f}% (median of {extra['rounds']} "
            f"interleaved rounds; per round "
            + ", ".join(f"{value * 100.0:+.1f}%" for value in extra["overhead_fraction_per_round"])
            + f"; MLflow every {extra['log_every']} steps, checkpoint every "
            f"{extra['checkpoint_every']} steps)"
        )
    return lines


def write_report(path: Path, content: dict[str, Any]) -> Path:
    """Write ``content`` as indented JSON to ``path`` atomically; returns the path.

    NumPy scalars and arrays become plain JSON numbers and lists, paths strings.

    Raises:
        OSError: the folder cannot be created or written.
    """
    from unet3d.runs.files import write_json_atomic

    return write_json_atomic(path, _plain(content))


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays and paths turned into plain JSON values."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
