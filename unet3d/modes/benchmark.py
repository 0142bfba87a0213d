"""``mode=benchmark``: throughput and latency of training, prediction or the input pipeline.

``benchmark.target`` picks what is timed; every target runs ``benchmark.warmup_steps`` untimed
steps (tracing, oneDNN primitive creation, cache fill) and then ``benchmark.steps`` timed ones,
each waited for (a host sync), so that the per-step latencies are real:

- ``train``: one step = one call of the compiled distributed train step of the training loop
  (``unet3d.training.loop.make_train_step``: forward, loss, gradients, optimizer update) on the
  model and optimizer ``mode=train`` builds (``unet3d.modes.build``). With
  ``benchmark.synthetic_input`` the step eats in-memory random tensors (the model alone);
  otherwise each step also takes its batch from the real ``tf.data`` training pipeline. Also
  reported: the analytic FLOPs (3 x forward) and the achieved GFLOP/s.
- ``predict``: one step = one whole volume through the sliding window of ``mode=predict``
  (``EnsemblePredictor``): a random volume of ``benchmark.volume_shape`` (synthetic input) or
  the held-out cases of the fold in turn. Warm-up runs ``warmup_steps`` window batches. Also
  reported: the latency of each window batch and the peak resident memory. The model has
  random weights unless ``predict.checkpoint`` names trained ones (an ensemble is timed then).
- ``pipeline``: one step = one batch from the training ``tf.data`` pipeline (augmentation on
  as configured), no model.
- ``runner``: the overhead of the training loop of ``mode=train`` (pipeline, host sync,
  MLflow metrics, checkpoint cadence) over the bare compiled step on in-memory tensors, in
  ``benchmark.rounds`` interleaved rounds within one process (``unet3d.modes.
  benchmark_runner``); its latencies are the loop's per-window mean step times.

Throughput is global: ``global batch / mean step time`` (volumes/s over all replicas and
processes; for ``predict``, volumes/s of the chief, the only process that predicts). Latency
statistics are in ms: mean, p50, p90, p95, p99 (linear interpolation). The chief prints a table
shaped like the seed's, logs the numbers to MLflow (metrics, tags, ``benchmark.json`` as an
artifact) and writes ``<output_dir>/benchmark.json`` atomically.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from unet3d.errors import ConfigError
from unet3d.modes.benchmark_runner import benchmark_runner
from unet3d.modes.benchmark_stats import flat_metrics, format_table, peak_rss_mb
from unet3d.modes.benchmark_targets import benchmark_pipeline, benchmark_predict, benchmark_train
from unet3d.modes.job import Job

log = logging.getLogger(__name__)

#: Output file in the run dir.
RESULT_FILE = "benchmark.json"
#: Version of the benchmark.json layout.
SCHEMA_VERSION = 1
#: ``benchmark.target`` -> its function (a result dict, or None on ranks that do not report).
TARGETS: dict[str, Callable[[Job], dict[str, Any] | None]] = {
    "train": benchmark_train,
    "predict": benchmark_predict,
    "pipeline": benchmark_pipeline,
    "runner": benchmark_runner,
}
#: ``data`` keys recorded in benchmark.json.
DATA_KEYS = ("name", "crop_size", "batch_size", "augment", "cache", "foreground_probability",
             "shuffle_buffer")


def run(job: Job) -> dict[str, float]:
    """Run ``benchmark.target`` and report it; returns the flat metrics (chief) or {}.

    Raises:
        ConfigError: an unknown target, a bad ``benchmark.volume_shape``.
    """
    cfg, context = job.cfg, job.context
    target = str(cfg.benchmark.target)
    if target not in TARGETS:
        raise ConfigError(f"benchmark.target: must be one of {', '.join(TARGETS)}, "
                          f"got {target!r}")
    started = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    log.info("benchmark %s: %s input, %d warm-up + %d timed step(s)", target,
             "synthetic" if cfg.benchmark.synthetic_input else "real", cfg.benchmark.warmup_steps,
             cfg.benchmark.steps)
    result = TARGETS[target](job)
    if result is None or not context.is_chief:
        return {}
    result["peak_rss_mb"] = peak_rss_mb()
    result["accelerator_peak_mb"] = _accelerator_peak_mb(context.device_info.names,
                                                         job.runtime.device.type)
    payload = _payload(job, target, result, started, load_before)
    path = write_report(job.output_dir / RESULT_FILE, payload)
    log.info("%s", "\n".join([*_summary(target, payload, result),
                              f"peak RSS {result['peak_rss_mb']:.0f} MiB; written {path}"]))
    job.tracker.set_tags({
        "benchmark.target": target,
        "benchmark.synthetic_input": str(payload["synthetic_input"]).lower(),
        "benchmark.devices": payload["devices"],
        "benchmark.precision": payload["precision"],
        "benchmark.xla": str(payload["xla"]).lower(),
    })
    job.tracker.log_metrics(payload["metrics"], step=int(cfg.benchmark.steps))
    job.tracker.log_artifact(path, "benchmark")
    return payload["metrics"]


def _payload(job: Job, target: str, result: dict[str, Any], started: float,
             load_before: Sequence[float] | None) -> dict[str, Any]:
    """The content of benchmark.json: settings, the result, metrics, table, environment."""
    import tensorflow as tf

    cfg, context, runtime = job.cfg, job.context, job.runtime
    devices = result.pop("devices", f"{context.num_replicas} x {runtime.device.type}")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    payload: dict[str, Any] = {
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
            **_thread_settings(),
        },
    }
    payload["metrics"] = flat_metrics(target, result)
    payload["table"] = format_table(target, devices, int(result["batch"]),
                                    float(result["throughput"]), result["latency_ms"])
    return payload


def write_report(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically; returns the path.

    NumPy scalars and arrays become plain JSON numbers and lists, paths strings.

    Raises:
        OSError: the folder cannot be created or written.
    """
    from unet3d.runs.files import write_json_atomic

    return write_json_atomic(path, _plain(payload))


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


def _summary(target: str, payload: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """The lines logged at the end: what was timed, the table, the target's headline."""
    count = int(result["latency_ms"]["count"])
    if target == "runner":
        what = f"training loop windows of {result['extra']['log_every']} steps"
    else:
        what = f"{'synthetic' if payload['synthetic_input'] else 'real'} input"
    lines = [f"benchmark {target} ({what}, {payload['precision']}"
             f"{', XLA' if payload['xla'] else ''}, {count} timed "
             f"{'window(s)' if target == 'runner' else 'step(s)'}):", payload["table"]]
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


def _accelerator_peak_mb(device_names: Sequence[str], device_type: str) -> float | None:
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


def _thread_settings() -> dict[str, Any]:
    """TensorFlow's thread pools and the environment variables that set them."""
    import tensorflow as tf

    return {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
