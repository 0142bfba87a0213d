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
  ``benchmark.rounds`` interleaved rounds within one process; its latencies are the loop's
  per-window mean step times.

Throughput is global: ``global batch / mean step time`` (volumes/s over all replicas and
processes; for ``predict``, volumes/s of the chief, the only process that predicts). Latency
statistics are in ms: mean, p50, p90, p95, p99 (linear interpolation). The chief prints a table
shaped like the seed's, logs the numbers to MLflow (metrics, tags, ``benchmark.json`` as an
artifact) and writes ``<output_dir>/benchmark.json`` atomically.

The package: ``train_targets`` (train, pipeline, runner), ``predict_target``, ``measure``
(timed steps, latency statistics, memory; no TensorFlow) and ``report`` (benchmark.json, flat
metrics, the table).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from unet3d.errors import ConfigError
from unet3d.modes.benchmark.measure import accelerator_peak_mb, peak_rss_mb
from unet3d.modes.benchmark.predict_target import benchmark_predict
from unet3d.modes.benchmark.report import payload, summary_lines, write_report
from unet3d.modes.benchmark.train_targets import (
    benchmark_pipeline,
    benchmark_runner,
    benchmark_train,
)
from unet3d.modes.job import Job

log = logging.getLogger(__name__)

#: Output file in the run dir.
RESULT_FILE = "benchmark.json"
#: ``benchmark.target`` (``unet3d.config.BENCHMARK_TARGETS``) -> its function (a result dict,
#: or None on ranks that do not report).
TARGETS: dict[str, Callable[[Job], dict[str, Any] | None]] = {
    "train": benchmark_train,
    "predict": benchmark_predict,
    "pipeline": benchmark_pipeline,
    "runner": benchmark_runner,
}


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
    result["accelerator_peak_mb"] = accelerator_peak_mb(context.device_info.names,
                                                        job.runtime.device.type)
    content = payload(job, target, result, started, load_before)
    path = write_report(job.output_dir / RESULT_FILE, content)
    log.info("%s", "\n".join([*summary_lines(target, content, result),
                              f"peak RSS {result['peak_rss_mb']:.0f} MiB; written {path}"]))
    job.tracker.set_tags({
        "benchmark.target": target,
        "benchmark.synthetic_input": str(content["synthetic_input"]).lower(),
        "benchmark.devices": content["devices"],
        "benchmark.precision": content["precision"],
        "benchmark.xla": str(content["xla"]).lower(),
    })
    job.tracker.log_metrics(content["metrics"], step=int(cfg.benchmark.steps))
    job.tracker.log_artifact(path, "benchmark")
    return content["metrics"]
