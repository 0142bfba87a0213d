"""The ``runner`` target of ``mode=benchmark``: the training loop's overhead over the bare step.

Each of ``benchmark.rounds`` rounds times ``benchmark.steps`` bare steps (the compiled train
step of ``mode=train`` on in-memory tensors, as ``target=train`` with synthetic input) and then
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
from typing import Any

import numpy as np

from unet3d.modes.benchmark_stats import (
    latency_statistics,
    overhead_summary,
    runner_loop_steps,
    time_steps,
)
from unet3d.modes.benchmark_targets import prepare, synthetic_batch, train_setup
from unet3d.modes.build import build_loss, make_input_fn
from unet3d.modes.job import Job

log = logging.getLogger(__name__)

#: Scratch folder of the rounds' checkpoints, under the run folder (removed afterwards).
ROUNDS_FOLDER = "runner_rounds"


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
    rounds = int(cfg.benchmark.rounds)
    steps = int(cfg.benchmark.steps)
    log_every = int(cfg.training.log_every)
    loop_steps = runner_loop_steps(log_every, steps)
    crop = tuple(int(side) for side in cfg.data.crop_size)
    per_replica_batch = int(cfg.data.batch_size)
    global_batch = context.global_batch_size(per_replica_batch)
    prepared = prepare(job)

    model, optimizer, step_fn = train_setup(job)
    images, labels = synthetic_batch(context, per_replica_batch, crop,
                                     int(cfg.model.in_channels), int(cfg.model.num_classes),
                                     int(cfg.seed))

    def bare_step() -> None:
        loss, _ = step_fn(images, labels)
        float(loss)

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
            input_fn=make_input_fn(cfg, prepared.train_files),
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
