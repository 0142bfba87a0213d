"""The ``train``, ``pipeline`` and ``runner`` targets of ``mode=benchmark`` (see
``unet3d.modes.benchmark``): the train step, model, optimizer and input of ``mode=train``
(``unet3d.modes.build``).

``runner``: each of ``benchmark.rounds`` rounds times ``benchmark.steps`` bare steps (the
compiled train step on in-memory tensors, as ``target=train`` with synthetic input) and then
runs the training loop of ``mode=train`` (``unet3d.training.loop.train``: the tf.data pipeline,
the per-step host sync and NaN check, MLflow metrics every ``training.log_every`` steps, a
checkpoint every ``training.checkpoint_every`` steps) on the same model: one untimed window
(tracing, pipeline start, cache fill), then whole windows covering ``benchmark.steps``. Each
window's time includes the MLflow call and any checkpoint save that ended the window before
it. The rounds' checkpoints are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from unet3d.modes.benchmark.measure import (
    overhead_summary,
    runner_loop_steps,
    time_steps,
    timed_result,
)
from unet3d.modes.build import (
    build_loss,
    build_model,
    build_optimizer,
    build_train_step,
    make_dataset_fn,
    make_input_fn,
)
from unet3d.modes.job import Job, Runtime, prepare

log = logging.getLogger(__name__)

#: Scratch folder of the runner target's checkpoints, under the run folder (removed afterwards).
ROUNDS_FOLDER = "runner_rounds"


def training_iterator(job: Job, train_files: list[str]) -> Any:
    """The training loop's own distributed input pipeline, started at step 0."""
    dataset_fn = make_dataset_fn(job.cfg.data, train_files, seed=int(job.cfg.seed),
                                 local_processes=job.context.local_size)
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


def _bare_step(job: Job, step_fn: Any) -> Callable[[], None]:
    """One compiled train step on in-memory random tensors, waited for."""
    cfg = job.cfg
    images, labels = synthetic_batch(job.context, int(cfg.data.batch_size),
                                     tuple(int(side) for side in cfg.data.crop_size),
                                     int(cfg.model.in_channels), int(cfg.model.num_classes),
                                     int(cfg.seed))

    def step() -> None:
        loss, _ = step_fn(images, labels)
        float(loss)  # waits for the step

    return step


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
    input_waits: list[float] = []
    if synthetic:
        step = _bare_step(job, step_fn)
    else:
        iterator = training_iterator(job, prepared.train_files)

        def step() -> None:
            started = time.perf_counter()
            batch_images, batch_labels = next(iterator)
            input_waits.append(time.perf_counter() - started)
            loss, _ = step_fn(batch_images, batch_labels)
            float(loss)

    times, cpu_seconds = time_steps(step, int(cfg.benchmark.warmup_steps),
                                    int(cfg.benchmark.steps), "step")
    try:
        forward_flops = count_forward_flops(cfg.model, crop)
    except ValueError as error:  # a model of another family: no analytic count
        log.info("benchmark train: no FLOP count (%s)", error)
        forward_flops = float("nan")
    result = timed_result(times, global_batch, per_replica_batch, crop,
                          model.count_params(), extra={})
    latency, throughput = result["latency_ms"], result["throughput"]
    gflops = 3.0 * forward_flops * throughput / 1e9
    result["extra"] = {
        "cpu_seconds_per_step": cpu_seconds / len(times),
        "step_time_s": latency["mean"] / 1000.0,
        "step_time_median_s": latency["p50"] / 1000.0,
        "forward_gflop_per_volume": forward_flops / 1e9,
        "train_gflop_per_step": 3.0 * forward_flops * global_batch / 1e9,
        "achieved_gflops": gflops,
        "achieved_gflops_per_replica": gflops / max(context.num_replicas, 1),
        "train_files": len(prepared.train_files) if prepared is not None else 0,
    }
    if prepared is not None:
        # Time each timed step spent waiting for its batch (the pipeline not keeping up) and
        # what data.cache resolved to (unet3d.data.memory).
        timed = input_waits[-len(times):]
        result["extra"]["input_wait_s_per_step"] = float(np.mean(timed))
        result["extra"]["cache"] = _resolved_cache(job, prepared.train_files)
    return result


def benchmark_pipeline(job: Job) -> dict[str, Any]:
    """Time the training tf.data pipeline alone: batches per second with the job's augmentation
    (``data.augment``, ``data.augmentation``: ``augmentation=nnunet`` times nnU-Net's)."""
    cfg, context = job.cfg, job.context
    prepared = prepare(job)
    per_replica_batch = int(cfg.data.batch_size)
    iterator = training_iterator(job, prepared.train_files)

    def step() -> None:
        next(iterator)

    times, cpu_seconds = time_steps(step, int(cfg.benchmark.warmup_steps),
                                    int(cfg.benchmark.steps), "batch")
    return timed_result(times, context.global_batch_size(per_replica_batch), per_replica_batch,
                        cfg.data.crop_size, 0, extra={
                            "cpu_seconds_per_step": cpu_seconds / len(times),
                            "augment": bool(cfg.data.augment),
                            "augmentation": (str((cfg.data.get("augmentation") or {})
                                                 .get("name", "reference"))
                                             if cfg.data.augment else "off"),
                            "cache": _resolved_cache(job, prepared.train_files),
                            "train_files": len(prepared.train_files),
                        })


def _resolved_cache(job: Job, train_files: list[str]) -> bool:
    """Whether ``data.cache`` keeps this process's training cases in RAM."""
    from unet3d.data.memory import decide_cache

    shard = job.context.shard_files(list(train_files)) or list(train_files)
    return decide_cache(job.cfg.data.cache, shard, job.context.local_size).cache


class PrefixedMetrics:
    """Forwards the training loop's ``log_metrics`` calls under prefixed names (a curve per
    round of ``target=runner``), so that the MLflow calls the loop makes are real."""

    def __init__(self, tracker: Any, prefix: str) -> None:
        self._tracker = tracker
        self._prefix = prefix

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log ``metrics`` as ``<prefix><name>`` at ``step``."""
        self._tracker.log_metrics({f"{self._prefix}{name}": value
                                   for name, value in metrics.items()}, step=step)


def benchmark_runner(job: Job) -> dict[str, Any]:
    """Runner overhead: the training loop's step time vs the bare compiled step, interleaved."""
    from unet3d.training.loop import train

    cfg, context = job.cfg, job.context
    rounds, steps = int(cfg.benchmark.rounds), int(cfg.benchmark.steps)
    log_every = int(cfg.training.log_every)
    loop_steps = runner_loop_steps(log_every, steps)
    per_replica_batch = int(cfg.data.batch_size)
    prepared = prepare(job)
    model, optimizer, step_fn = train_setup(job)
    bare_step = _bare_step(job, step_fn)

    bare_means: list[float] = []
    loop_means: list[float] = []
    windows: list[float] = []
    bare_cpu = 0.0
    warmup = int(cfg.benchmark.warmup_steps)
    rounds_dir = job.output_dir / ROUNDS_FOLDER
    for index in range(rounds):
        times, cpu_seconds = time_steps(bare_step, warmup if index == 0 else 0, steps, "step")
        bare_cpu += cpu_seconds
        bare_means.append(float(np.mean(times)))
        round_dir = rounds_dir / f"round{index}"
        result = train(
            context, model, optimizer,
            loss_fn=build_loss(cfg),
            input_fn=make_input_fn(cfg, prepared.train_files, context.local_size),
            steps=loop_steps,
            batch_size=per_replica_batch,
            output_dir=round_dir,
            tracker=PrefixedMetrics(job.tracker, f"runner_round{index}_"),
            log_every=log_every,
            checkpoint_every=int(cfg.training.checkpoint_every),
            keep_checkpoints=int(cfg.training.keep_checkpoints),
            jit_compile=bool(job.runtime.precision.xla),
        )
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
            rounds_dir.rmdir()
    return timed_result(windows, context.global_batch_size(per_replica_batch),
                        per_replica_batch, cfg.data.crop_size, model.count_params(), extra={
                            **overhead_summary(bare_means, loop_means),
                            "bare_cpu_seconds_per_step": bare_cpu / (steps * rounds),
                            "rounds": rounds,
                            "loop_steps_per_round": loop_steps,
                            "log_every": log_every,
                            "checkpoint_every": int(cfg.training.checkpoint_every),
                            "train_files": len(prepared.train_files),
                        })
