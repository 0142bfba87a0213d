"""The ``train``, ``pipeline`` and ``predict`` targets of ``mode=benchmark``.

Each returns a result dict: ``batch``, ``per_replica_batch``, ``input_shape``, ``parameters``,
``throughput`` (volumes/s), ``latency_ms`` (``latency_statistics``), ``step_seconds`` and the
target's ``extra`` numbers (see ``unet3d.modes.benchmark``). The train step, the model, the
optimizer and the input are those of ``mode=train`` (``unet3d.modes.build``); prediction is
``mode=predict``'s ``EnsemblePredictor``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from unet3d.errors import ConfigError
from unet3d.modes.benchmark_stats import latency_statistics, time_steps, volume_shape
from unet3d.modes.build import build_model, build_optimizer, build_train_step, make_dataset_fn
from unet3d.modes.job import Job, Runtime

log = logging.getLogger(__name__)


def prepare(job: Job) -> Any:
    """The fold's data, prepared on the chief first (the other ranks then read it)."""
    from unet3d.data.prepare import prepare_data_on_chief_first

    return prepare_data_on_chief_first(job.cfg, job.context)


def training_iterator(job: Job, train_files: list[str]) -> Any:
    """The training loop's own distributed input pipeline, started at step 0."""
    dataset_fn = make_dataset_fn(job.cfg.data, train_files, seed=int(job.cfg.seed))
    return iter(job.context.distribute_dataset(dataset_fn))


def synthetic_batch(context: Any, per_replica_batch: int, crop: Sequence[int],
                    in_channels: int, num_classes: int, seed: int) -> tuple[Any, Any]:
    """Random (image, label) batches already on each replica's device (per-replica values).

    Images: float32 ``[per_replica_batch, *crop, in_channels]`` (standard normal); labels:
    int32 ``[per_replica_batch, *crop]`` in ``[0, num_classes)``.
    """
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


def train_setup(job: Job) -> tuple[Any, Any, Any]:
    """Model, optimizer (variables built, broadcast) and compiled step of ``mode=train``."""
    from unet3d.training.checkpoint import build_optimizer_variables

    runtime: Runtime = job.runtime
    model = build_model(job.cfg, runtime)
    optimizer = build_optimizer(job.cfg, runtime)
    with job.context.scope():
        build_optimizer_variables(model, optimizer)
    job.context.broadcast_variables(model.variables + optimizer.variables)
    return model, optimizer, build_train_step(job.cfg, runtime, model, optimizer)


def benchmark_train(job: Job) -> dict[str, Any]:
    """Time the compiled train step of the training loop (synthetic or real input)."""
    from unet3d.model.unet3d import count_forward_flops

    cfg, context = job.cfg, job.context
    synthetic = bool(cfg.benchmark.synthetic_input)
    crop = tuple(int(side) for side in cfg.data.crop_size)
    per_replica_batch = int(cfg.data.batch_size)
    global_batch = context.global_batch_size(per_replica_batch)
    prepared = None if synthetic else prepare(job)

    model, _, step_fn = train_setup(job)

    if synthetic:
        images, labels = synthetic_batch(context, per_replica_batch, crop,
                                         int(cfg.model.in_channels),
                                         int(cfg.model.num_classes), int(cfg.seed))

        def step() -> None:
            loss, _ = step_fn(images, labels)
            float(loss)  # waits for the step
    else:
        iterator = training_iterator(job, prepared.train_files)

        def step() -> None:
            batch_images, batch_labels = next(iterator)
            loss, _ = step_fn(batch_images, batch_labels)
            float(loss)

    times, cpu_seconds = time_steps(step, int(cfg.benchmark.warmup_steps),
                                    int(cfg.benchmark.steps), "step")
    try:
        forward_flops = count_forward_flops(cfg.model, crop)
    except ValueError as error:  # a model of another family: no analytic count
        log.info("benchmark train: no FLOP count (%s)", error)
        forward_flops = float("nan")
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


def benchmark_pipeline(job: Job) -> dict[str, Any]:
    """Time the training tf.data pipeline alone: batches per second with augmentation."""
    cfg, context = job.cfg, job.context
    prepared = prepare(job)
    per_replica_batch = int(cfg.data.batch_size)
    global_batch = context.global_batch_size(per_replica_batch)
    iterator = training_iterator(job, prepared.train_files)

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


def _predict_models(job: Job) -> list[Any]:
    """``predict.checkpoint``'s model(s), else one model with random weights."""
    from unet3d.inference.checkpoints import job_model_checkpoints
    from unet3d.inference.models import load_ensemble
    from unet3d.model.build import build_model_from_config

    cfg, context = job.cfg, job.context
    checkpoint = cfg.predict.get("checkpoint") if cfg.get("predict") else None
    if checkpoint:
        prefixes = job_model_checkpoints(cfg, checkpoint, fold=cfg.predict.get("fold"))
        return load_ensemble(cfg.model, prefixes, job.runtime)
    if int(context.world_size) <= 1:
        with context.scope():
            return [build_model_from_config(cfg.model)]
    return [build_model_from_config(cfg.model)]


def _case_source(job: Job, prepared: Any, in_channels: int, rng: np.random.Generator) -> Any:
    """``next_case() -> (case id, image (H, W, D, C))``: a random volume or held-out cases."""
    cfg = job.cfg
    if prepared is None:
        synthetic_volume = rng.standard_normal((*volume_shape(cfg.benchmark), in_channels),
                                               dtype=np.float32)
        return lambda: ("synthetic", synthetic_volume)
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

    return next_case


def benchmark_predict(job: Job) -> dict[str, Any] | None:
    """Time whole-volume sliding-window prediction (the chief predicts; others return None)."""
    from unet3d.inference.labels import make_labeler
    from unet3d.modes.evaluate import make_predictor

    cfg, context = job.cfg, job.context
    synthetic = bool(cfg.benchmark.synthetic_input)
    prepared = None if synthetic else prepare(job)
    if not context.is_chief:
        return None
    if synthetic:
        volume_shape(cfg.benchmark)  # a bad shape fails before any model is built
    models = _predict_models(job)
    labeler = make_labeler()
    predictor = make_predictor(cfg, models, bool(job.runtime.precision.xla))
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
    next_case = _case_source(job, prepared, in_channels, rng)

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
        labeler(probabilities)
        case_times.append(time.perf_counter() - started)
        windows_per_case.append(len(window_times) - before)
        shapes.append(list(image.shape[:3]))
        log.info("benchmark case %d/%d (%s, %s): %.2f s, %d window batch(es)", index + 1, steps,
                 case_id, "x".join(str(side) for side in image.shape[:3]), case_times[-1],
                 windows_per_case[-1])
        del probabilities

    latency = latency_statistics(case_times)
    return {
        "devices": f"1 x {job.runtime.device.type}",  # one process predicts on one device
        "batch": 1,
        "per_replica_batch": 1,
        "input_shape": shapes[0],
        "parameters": int(sum(model.count_params() for model in models)),
        "throughput": 1.0 / (latency["mean"] / 1000.0),
        "latency_ms": latency,
        "step_seconds": case_times,
        "window_latency_ms": latency_statistics(window_times),
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
