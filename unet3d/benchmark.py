"""``mode=benchmark``: throughput and latency of training, prediction or the input pipeline.

``benchmark.target`` picks what is timed; every target runs ``benchmark.warmup_steps`` untimed
steps (tracing, oneDNN primitive creation, cache fill) and then ``benchmark.steps`` timed ones,
each waited for (a host sync), so that the per-step latencies are real:

- ``train``: one step = one call of the compiled distributed train step of the training loop
  (``unet3d.training.loop.make_train_step``: forward, loss, gradients, optimizer update) on a
  model and optimizer built as ``mode=train`` builds them. With ``benchmark.synthetic_input``
  the step eats in-memory random tensors (the model alone); otherwise each step also takes its
  batch from the real ``tf.data`` training pipeline (``prepare_data`` + ``train_dataset``).
  Also reported: the analytic FLOPs (3 x forward) and the achieved GFLOP/s.
- ``predict``: one step = one whole volume through the sliding window of ``mode=predict``
  (``EnsemblePredictor``): a random volume of ``benchmark.volume_shape`` (synthetic input) or
  the held-out cases of the fold in turn. Warm-up runs ``warmup_steps`` window batches. Also
  reported: the latency of each window batch and the peak resident memory. The model has
  random weights unless ``predict.checkpoint`` names trained ones (an ensemble is timed then).
- ``pipeline``: one step = one batch from the training ``tf.data`` pipeline (augmentation on
  as configured), no model.
- ``runner``: the overhead of the training loop of ``mode=train`` (pipeline, host sync,
  MLflow metrics, checkpoint cadence) over the bare compiled step on in-memory tensors, in
  ``benchmark.rounds`` interleaved rounds within one process (see ``benchmark_runner``); its
  latencies are the loop's per-window mean step times.

Throughput is global: ``global batch / mean step time`` (volumes/s over all replicas and
processes; for ``predict``, volumes/s of the chief, the only process that predicts). Latency
statistics are in ms: mean, p50, p90, p95, p99 (linear interpolation). The chief prints a table
shaped like the seed's, logs the numbers to MLflow (metrics, tags, ``benchmark.json`` as an
artifact) and writes ``<output_dir>/benchmark.json`` atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from unet3d.errors import ConfigError

log = logging.getLogger(__name__)

#: Output file in the run dir.
RESULT_FILE = "benchmark.json"
#: Percentiles reported besides the mean.
PERCENTILES = (50, 90, 95, 99)
#: Numbers of a result that describe the setting (in benchmark.json, not logged as metrics).
SETTINGS_NOT_METRICS = frozenset({"window_batch_size", "ensemble_members", "overlap",
                                  "train_files", "rounds", "loop_steps_per_round",
                                  "log_every", "checkpoint_every"})
#: Version of the benchmark.json layout.
SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Statistics and reporting (no TensorFlow)
# ---------------------------------------------------------------------------------------------


def latency_statistics(seconds: Sequence[float]) -> dict[str, float]:
    """Mean and percentiles (ms) of step times given in seconds, plus ``count`` and ``total_s``."""
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


def write_json_atomic(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON via ``<name>.tmp-<pid>`` and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default)
                         + "\n")
    os.replace(temporary, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def current_rss_mb() -> float:
    """Current resident set size (MiB) from /proc, or NaN where that is not available."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0)
    except (OSError, ValueError, IndexError):
        return float("nan")


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


def _volume_shape(cfg: DictConfig) -> tuple[int, int, int]:
    value = cfg.benchmark.get("volume_shape", None) or [240, 240, 155]
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


def _thread_settings() -> dict[str, Any]:
    import tensorflow as tf

    return {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


# ---------------------------------------------------------------------------------------------
# Shared setup
# ---------------------------------------------------------------------------------------------


def _prepare(cfg: DictConfig, context: Any) -> Any:
    """Prepare the data set on the chief first (the other ranks then read it)."""
    from unet3d.data.prepare import prepare_data_on_chief_first

    prepared = prepare_data_on_chief_first(cfg, context)
    return prepared


def _training_iterator(cfg: DictConfig, context: Any, train_files: list[str]) -> Any:
    """The training loop's own distributed input pipeline, started at step 0."""
    from unet3d.training.loop import make_dataset_fn

    dataset_fn = make_dataset_fn(cfg, train_files, seed=int(cfg.seed))
    return iter(context.distribute_dataset(dataset_fn))


def _synthetic_batch(context: Any, per_replica_batch: int, crop: Sequence[int],
                     in_channels: int, num_classes: int, seed: int) -> tuple[Any, Any]:
    """Random (image, label) batches already on each replica's device (per-replica values)."""
    import tensorflow as tf

    def make(_: Any = None) -> tuple[Any, Any]:
        images = tf.random.stateless_normal(
            [per_replica_batch, *crop, in_channels], seed=[seed, 0], dtype=tf.float32
        )
        labels = tf.random.stateless_uniform(
            [per_replica_batch, *crop], seed=[seed, 1], minval=0, maxval=num_classes,
            dtype=tf.int32,
        )
        return images, labels

    if context.uses_horovod:
        names = context.device_info.names
        with tf.device(names[0] if names else "/device:CPU:0"):
            return make()
    strategy = context.strategy
    images = strategy.experimental_distribute_values_from_function(lambda ctx: make(ctx)[0])
    labels = strategy.experimental_distribute_values_from_function(lambda ctx: make(ctx)[1])
    return images, labels


def _train_step(cfg: DictConfig, runtime: Any, global_batch: int) -> tuple[Any, Any, Any]:
    """Model, optimizer and compiled train step, built as ``mode=train`` builds them."""
    from unet3d.model.losses import make_loss_fn
    from unet3d.model.unet3d import build_model_from_config
    from unet3d.runtime.precision import wrap_optimizer
    from unet3d.training.checkpoint import build_optimizer_variables
    from unet3d.training.loop import make_train_step, total_steps
    from unet3d.training.optimizer import build_optimizer

    context = runtime.context
    with context.scope():
        model = build_model_from_config(cfg.model)
        optimizer = wrap_optimizer(
            build_optimizer(cfg.training, total_steps(cfg, context.world_size)),
            runtime.precision,
        )
        build_optimizer_variables(model, optimizer)
    context.broadcast_variables(model.variables + optimizer.variables)
    step_fn = make_train_step(context, model, optimizer,
                              make_loss_fn(cfg.training, int(cfg.model.num_classes)),
                              global_batch, jit_compile=bool(runtime.precision.xla))
    return model, optimizer, step_fn


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


def benchmark_train(cfg: DictConfig, runtime: Any) -> dict[str, Any]:
    """Time the compiled train step of the training loop (synthetic or real input)."""
    from unet3d.model.unet3d import count_forward_flops

    context = runtime.context
    synthetic = bool(cfg.benchmark.synthetic_input)
    crop = tuple(int(side) for side in cfg.data.crop_size)
    per_replica_batch = int(cfg.data.batch_size)
    global_batch = context.global_batch_size(per_replica_batch)
    prepared = None if synthetic else _prepare(cfg, context)

    model, optimizer, step_fn = _train_step(cfg, runtime, global_batch)

    if synthetic:
        images, labels = _synthetic_batch(context, per_replica_batch, crop,
                                          int(cfg.model.in_channels),
                                          int(cfg.model.num_classes), int(cfg.seed))

        def step() -> None:
            loss, _, _ = step_fn(images, labels)
            float(loss)  # waits for the step
    else:
        iterator = _training_iterator(cfg, context, prepared.train_files)

        def step() -> None:
            batch_images, batch_labels = next(iterator)
            loss, _, _ = step_fn(batch_images, batch_labels)
            float(loss)

    times, cpu_seconds = time_steps(step, int(cfg.benchmark.warmup_steps),
                                    int(cfg.benchmark.steps), "step")
    forward_flops = count_forward_flops(cfg.model, crop)
    latency = latency_statistics(times)
    throughput = global_batch / (latency["mean"] / 1000.0)
    gflops = 3.0 * forward_flops * throughput / 1e9
    return {
        "batch": global_batch,
        "per_replica_batch": per_replica_batch,
        "input_shape": list(crop),
        "parameters": int(model.count_params()),
        "throughput": throughput,
        "latency_ms": latency,
        "step_seconds": times,
        "extra": {
            "cpu_seconds_per_step": cpu_seconds / len(times),
            "step_time_s": latency["mean"] / 1000.0,
            "step_time_median_s": latency["p50"] / 1000.0,
            "forward_gflop_per_volume": forward_flops / 1e9,
            "train_gflop_per_step": 3.0 * forward_flops * global_batch / 1e9,
            "achieved_gflops": gflops,
            "achieved_gflops_per_replica": gflops / max(context.num_replicas, 1),
            "train_files": len(prepared.train_files) if prepared is not None else 0,
        },
    }


def benchmark_predict(cfg: DictConfig, runtime: Any) -> dict[str, Any] | None:
    """Time whole-volume sliding-window prediction (the chief predicts; others return None)."""
    from unet3d.inference.models import (
        EnsemblePredictor,
        job_model_checkpoints,
        load_ensemble,
        probabilities_to_labels,
    )
    from unet3d.model.unet3d import build_model_from_config

    context = runtime.context
    synthetic = bool(cfg.benchmark.synthetic_input)
    prepared = None if synthetic else _prepare(cfg, context)
    if not context.is_chief:
        return None
    volume_shape = _volume_shape(cfg) if synthetic else None

    checkpoint = cfg.get("predict", {}).get("checkpoint") if cfg.get("predict") else None
    single_process = int(context.world_size) <= 1
    if checkpoint:
        prefixes = job_model_checkpoints(cfg, checkpoint, fold=cfg.predict.get("fold"))
        models = load_ensemble(cfg, prefixes, runtime)
    elif single_process:
        with context.scope():
            models = [build_model_from_config(cfg.model)]
    else:
        models = [build_model_from_config(cfg.model)]
    predictor = EnsemblePredictor(models, cfg, jit_compile=bool(runtime.precision.xla))
    window = tuple(predictor.window_size)
    in_channels = int(cfg.model.in_channels)

    window_times: list[float] = []
    predict_windows = predictor.predict_windows

    def timed_windows(batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        output = predict_windows(batch)
        window_times.append(time.perf_counter() - started)
        return output

    predictor.predict_windows = timed_windows  # type: ignore[method-assign]

    rng = np.random.default_rng(int(cfg.seed))
    warmup_batch = rng.standard_normal((predictor.batch_size, *window, in_channels),
                                       dtype=np.float32)
    for index in range(int(cfg.benchmark.warmup_steps)):
        started = time.perf_counter()
        predict_windows(warmup_batch)
        log.info("benchmark warm-up window batch %d/%d: %.1f ms", index + 1,
                 int(cfg.benchmark.warmup_steps), (time.perf_counter() - started) * 1000.0)

    if synthetic:
        synthetic_volume = rng.standard_normal((*volume_shape, in_channels), dtype=np.float32)

        def next_case() -> tuple[str, np.ndarray]:
            return "synthetic", synthetic_volume
    else:
        from unet3d.data.pipeline import iterate_eval_cases

        files = list(prepared.eval_files)
        if not files:
            raise ConfigError("benchmark.synthetic_input=false: the held-out fold has no cases")
        cases_iterator = iter(())

        def next_case() -> tuple[str, np.ndarray]:
            nonlocal cases_iterator
            case = next(cases_iterator, None)
            if case is None:  # cycle through the held-out cases
                cases_iterator = iterate_eval_cases(files)
                case = next(cases_iterator)
            return case.case_id, case.image

    case_times: list[float] = []
    load_times: list[float] = []
    windows_per_case: list[int] = []
    shapes: list[list[int]] = []
    steps = int(cfg.benchmark.steps)
    for index in range(steps):
        started = time.perf_counter()
        case_id, image = next_case()
        load_times.append(time.perf_counter() - started)
        before = len(window_times)
        started = time.perf_counter()
        probabilities = predictor.probabilities(image)
        probabilities_to_labels(probabilities)
        case_times.append(time.perf_counter() - started)
        windows_per_case.append(len(window_times) - before)
        shapes.append(list(image.shape[:3]))
        log.info("benchmark case %d/%d (%s, %s): %.2f s, %d window batch(es)", index + 1, steps,
                 case_id, "x".join(str(side) for side in image.shape[:3]), case_times[-1],
                 windows_per_case[-1])
        del probabilities

    latency = latency_statistics(case_times)
    window_latency = latency_statistics(window_times)
    return {
        "devices": f"1 x {runtime.device.type}",  # one process predicts on one device
        "batch": 1,
        "per_replica_batch": 1,
        "input_shape": shapes[0],
        "parameters": int(sum(model.count_params() for model in models)),
        "throughput": 1.0 / (latency["mean"] / 1000.0),
        "latency_ms": latency,
        "step_seconds": case_times,
        "window_latency_ms": window_latency,
        "window_batch_seconds": window_times,
        "extra": {
            "seconds_per_case": latency["mean"] / 1000.0,
            "window_batches_per_case": float(np.mean(windows_per_case)),
            "window_batch_size": predictor.batch_size,
            "windows_per_second": predictor.batch_size * len(window_times)
            / max(sum(window_times), 1e-12),
            "load_seconds_mean": float(np.mean(load_times)),
            "ensemble_members": len(models),
            "window_size": list(window),
            "overlap": predictor.overlap,
            "tta": predictor.tta,
        },
    }


def benchmark_pipeline(cfg: DictConfig, runtime: Any) -> dict[str, Any]:
    """Time the training tf.data pipeline alone: batches per second with augmentation."""
    context = runtime.context
    prepared = _prepare(cfg, context)
    per_replica_batch = int(cfg.data.batch_size)
    global_batch = context.global_batch_size(per_replica_batch)
    iterator = _training_iterator(cfg, context, prepared.train_files)

    def step() -> None:
        next(iterator)

    times, cpu_seconds = time_steps(step, int(cfg.benchmark.warmup_steps),
                                    int(cfg.benchmark.steps), "batch")
    latency = latency_statistics(times)
    return {
        "batch": global_batch,
        "per_replica_batch": per_replica_batch,
        "input_shape": [int(side) for side in cfg.data.crop_size],
        "parameters": 0,
        "throughput": global_batch / (latency["mean"] / 1000.0),
        "latency_ms": latency,
        "step_seconds": times,
        "extra": {
            "cpu_seconds_per_step": cpu_seconds / len(times),
            "augment": bool(cfg.data.augment),
            "cache": bool(cfg.data.cache),
            "train_files": len(prepared.train_files),
        },
    }


class _PrefixedMetrics:
    """Forwards the training loop's ``log_metrics`` calls under prefixed names (a curve per
    round of ``target=runner``), so that the MLflow calls the loop makes are real."""

    def __init__(self, tracker: Any, prefix: str) -> None:
        self._tracker = tracker
        self._prefix = prefix

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._tracker.log_metrics({f"{self._prefix}{name}": value
                                   for name, value in metrics.items()}, step=step)


def runner_loop_steps(log_every: int, steps: int) -> int:
    """Steps of one loop round: one untimed window plus whole windows covering ``steps``."""
    if log_every < 1 or steps < 1:
        raise ValueError(f"log_every and steps must be > 0, got {log_every} and {steps}")
    return log_every * (1 + math.ceil(steps / log_every))


def overhead_summary(bare_seconds: Sequence[float],
                     loop_seconds: Sequence[float]) -> dict[str, Any]:
    """Per-round and overall overhead of the loop's step time over the bare step time.

    ``bare_seconds[i]`` and ``loop_seconds[i]`` are the mean step times of round ``i``; the
    headline ``overhead_fraction`` is the median over rounds of ``loop / bare - 1`` (each
    round's pair ran back to back, so slow drifts of the machine cancel).
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


def benchmark_runner(cfg: DictConfig, runtime: Any, tracker: Any,
                     output_dir: Path) -> dict[str, Any]:
    """Runner overhead: the training loop's step time vs the bare compiled step, interleaved.

    Each of ``benchmark.rounds`` rounds times ``benchmark.steps`` bare steps (the compiled
    train step on in-memory tensors, as ``target=train`` with synthetic input) and then runs
    the training loop of ``mode=train`` (``unet3d.training.loop.train``: the tf.data pipeline,
    the per-step host sync and NaN check, MLflow metrics every ``training.log_every`` steps,
    a checkpoint every ``training.checkpoint_every`` steps) on the same model: one untimed
    window (tracing, pipeline start, cache fill), then whole windows covering
    ``benchmark.steps``. Each window's time includes the MLflow call and any checkpoint save
    that ended the window before it. The rounds' checkpoints are deleted afterwards.
    """
    import shutil

    from omegaconf import open_dict

    from unet3d.training.loop import total_steps, train

    context = runtime.context
    rounds = int(cfg.benchmark.rounds)
    steps = int(cfg.benchmark.steps)
    log_every = int(cfg.training.log_every)
    loop_steps = runner_loop_steps(log_every, steps)
    crop = tuple(int(side) for side in cfg.data.crop_size)
    per_replica_batch = int(cfg.data.batch_size)
    global_batch = context.global_batch_size(per_replica_batch)
    prepared = _prepare(cfg, context)

    round_cfg = cfg.copy()
    with open_dict(round_cfg):
        round_cfg.resume = False
        round_cfg.training.max_steps = loop_steps
        if total_steps(round_cfg, context.world_size) != loop_steps:  # Horovod divides
            round_cfg.training.max_steps = loop_steps * context.world_size
    model, optimizer, step_fn = _train_step(cfg, runtime, global_batch)
    images, labels = _synthetic_batch(context, per_replica_batch, crop,
                                      int(cfg.model.in_channels), int(cfg.model.num_classes),
                                      int(cfg.seed))

    def bare_step() -> None:
        loss, _, _ = step_fn(images, labels)
        float(loss)

    bare_means: list[float] = []
    loop_means: list[float] = []
    windows: list[float] = []
    bare_cpu = 0.0
    warmup = int(cfg.benchmark.warmup_steps)
    for index in range(rounds):
        times, cpu_seconds = time_steps(bare_step, warmup if index == 0 else 0, steps, "step")
        bare_cpu += cpu_seconds
        bare_means.append(float(np.mean(times)))
        round_dir = Path(output_dir) / "runner_rounds" / f"round{index}"
        result = train(round_cfg, context, model, optimizer, prepared.train_files, round_dir,
                       _PrefixedMetrics(tracker, f"runner_round{index}_"),
                       jit_compile=bool(runtime.precision.xla))
        round_windows = [seconds for _, seconds in result.history.get("step_time", [])][1:]
        if not round_windows:
            raise RuntimeError(f"benchmark.target=runner: round {index} timed no window")
        windows.extend(round_windows)
        loop_means.append(float(np.mean(round_windows)))
        log.info("benchmark runner round %d/%d: bare step %.1f ms, training loop %.1f ms "
                 "(%+.1f%%)", index + 1, rounds, bare_means[-1] * 1000.0,
                 loop_means[-1] * 1000.0, (loop_means[-1] / bare_means[-1] - 1.0) * 100.0)
        context.barrier()
        if context.is_chief:
            shutil.rmtree(round_dir, ignore_errors=True)
    if context.is_chief:
        with contextlib.suppress(OSError):
            (Path(output_dir) / "runner_rounds").rmdir()
    summary = overhead_summary(bare_means, loop_means)
    latency = latency_statistics(windows)
    return {
        "batch": global_batch,
        "per_replica_batch": per_replica_batch,
        "input_shape": list(crop),
        "parameters": int(model.count_params()),
        "throughput": global_batch / (latency["mean"] / 1000.0),
        "latency_ms": latency,
        "step_seconds": windows,
        "extra": {
            **summary,
            "bare_cpu_seconds_per_step": bare_cpu / (steps * rounds),
            "rounds": rounds,
            "loop_steps_per_round": loop_steps,
            "log_every": log_every,
            "checkpoint_every": int(cfg.training.checkpoint_every),
            "train_files": len(prepared.train_files),
        },
    }


TARGETS: dict[str, Callable[[DictConfig, Any], dict[str, Any] | None]] = {
    "train": benchmark_train,
    "predict": benchmark_predict,
    "pipeline": benchmark_pipeline,
}
#: Targets that also need the job's tracker and output dir.
JOB_TARGETS: dict[str, Callable[[DictConfig, Any, Any, Path], dict[str, Any]]] = {
    "runner": benchmark_runner,
}


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def flat_metrics(target: str, result: dict[str, Any]) -> dict[str, float]:
    """The numbers of a result as flat metrics (results.json, MLflow)."""
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


def run_benchmark(cfg: DictConfig, runtime: Any, tracker: Any, output_dir: Path) -> dict:
    """Run ``cfg.benchmark.target`` and report it; returns the flat metrics (chief) or {}."""
    target = str(cfg.benchmark.target)
    if target not in TARGETS and target not in JOB_TARGETS:
        names = ", ".join([*TARGETS, *JOB_TARGETS])
        raise ConfigError(f"benchmark.target: must be one of {names}, got {target!r}")
    if target == "predict" and bool(cfg.benchmark.synthetic_input):
        _volume_shape(cfg)  # fail on a bad shape before any model is built
    context = runtime.context
    device = runtime.device
    started = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    log.info("benchmark %s: %s input, %d warm-up + %d timed step(s)", target,
             "synthetic" if cfg.benchmark.synthetic_input else "real", cfg.benchmark.warmup_steps,
             cfg.benchmark.steps)
    if target in JOB_TARGETS:
        result = JOB_TARGETS[target](cfg, runtime, tracker, output_dir)
    else:
        result = TARGETS[target](cfg, runtime)
    if result is None or not context.is_chief:
        return {}
    result["peak_rss_mb"] = peak_rss_mb()
    result["accelerator_peak_mb"] = _accelerator_peak_mb(context.device_info.names, device.type)
    import tensorflow as tf

    devices = result.pop("devices", f"{context.num_replicas} x {device.type}")
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "target": target,
        "synthetic_input": bool(cfg.benchmark.synthetic_input),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "devices": devices,
        "device_type": device.type,
        "device_names": list(device.names),
        "precision": runtime.precision.policy_name,
        "compute_dtype": runtime.precision.compute_dtype,
        "xla": bool(runtime.precision.xla),
        "strategy": context.name,
        "num_replicas": int(context.num_replicas),
        "world_size": int(context.world_size),
        "warmup_steps": int(cfg.benchmark.warmup_steps),
        "steps": int(cfg.benchmark.steps),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": {key: OmegaConf.to_container(cfg.data, resolve=True).get(key)
                 for key in ("name", "crop_size", "batch_size", "augment", "cache",
                             "foreground_probability", "shuffle_buffer")},
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
    metrics = flat_metrics(target, result)
    payload["metrics"] = metrics
    table = format_table(target, devices, int(result["batch"]), float(result["throughput"]),
                         result["latency_ms"])
    payload["table"] = table
    path = write_json_atomic(Path(output_dir) / RESULT_FILE, payload)
    if target == "runner":
        what = f"training loop windows of {result['extra']['log_every']} steps"
    else:
        what = f"{'synthetic' if payload['synthetic_input'] else 'real'} input"
    summary = [f"benchmark {target} ({what}, {payload['precision']}"
               f"{', XLA' if payload['xla'] else ''}, {latency_count(result)} timed "
               f"{'window(s)' if target == 'runner' else 'step(s)'}):", table]
    if target == "train":
        summary.append(
            f"train step {result['extra']['step_time_s']:.3f} s (median "
            f"{result['extra']['step_time_median_s']:.3f} s), "
            f"{result['extra']['forward_gflop_per_volume']:.2f} GFLOP forward per volume, "
            f"achieved {result['extra']['achieved_gflops']:.1f} GFLOP/s (3 x forward)"
        )
    if target == "predict":
        window = result["window_latency_ms"]
        summary.append(
            f"{result['extra']['seconds_per_case']:.2f} s per case "
            f"({result['extra']['window_batches_per_case']:.0f} window batches of "
            f"{result['extra']['window_batch_size']}: mean {window['mean']:.1f} ms, p90 "
            f"{window['p90']:.1f} ms, p99 {window['p99']:.1f} ms)"
        )
    if target == "runner":
        extra = result["extra"]
        summary.append(
            f"training loop {extra['loop_step_time_s'] * 1000.0:.1f} ms/step vs bare step "
            f"{extra['bare_step_time_s'] * 1000.0:.1f} ms/step: overhead "
            f"{extra['overhead_fraction'] * 100.0:+.1f}% (median of {extra['rounds']} "
            f"interleaved rounds; per round "
            + ", ".join(f"{value * 100.0:+.1f}%" for value in extra["overhead_fraction_per_round"])
            + f"; MLflow every {extra['log_every']} steps, checkpoint every "
            f"{extra['checkpoint_every']} steps)"
        )
    summary.append(f"peak RSS {result['peak_rss_mb']:.0f} MiB; written {path}")
    log.info("%s", "\n".join(summary))
    tracker.set_tags({
        "benchmark.target": target,
        "benchmark.synthetic_input": str(payload["synthetic_input"]).lower(),
        "benchmark.devices": devices,
        "benchmark.precision": payload["precision"],
        "benchmark.xla": str(payload["xla"]).lower(),
    })
    tracker.log_metrics(metrics, step=int(cfg.benchmark.steps))
    tracker.log_artifact(path, "benchmark")
    return metrics


def latency_count(result: dict[str, Any]) -> int:
    """Number of timed steps of a result."""
    return int(result["latency_ms"]["count"])

