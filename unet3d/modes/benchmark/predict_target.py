"""The ``predict`` target of ``mode=benchmark`` (see ``unet3d.modes.benchmark``): whole volumes
through ``mode=predict``'s sliding window (``unet3d.inference.job_setup.job_predictor``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from unet3d.errors import ConfigError
from unet3d.modes.benchmark.measure import latency_statistics, timed_result
from unet3d.modes.job import Job, prepare

log = logging.getLogger(__name__)


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
    from unet3d.inference.job_setup import job_predictor
    from unet3d.inference.labels import make_labeler

    cfg, context = job.cfg, job.context
    synthetic = bool(cfg.benchmark.synthetic_input)
    prepared = None if synthetic else prepare(job)
    if not context.is_chief:
        return None
    if synthetic:
        volume_shape(cfg.benchmark)  # a bad shape fails before any model is built
    models = _predict_models(job)
    labeler = make_labeler()
    predictor = job_predictor(cfg, models, bool(job.runtime.precision.xla))
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

    return timed_result(
        case_times, 1, 1, shapes[0], sum(model.count_params() for model in models),
        devices=f"1 x {job.runtime.device.type}",  # one process predicts on one device
        window_latency_ms=latency_statistics(window_times),
        window_batch_seconds=window_times,
        extra={
            "seconds_per_case": float(np.mean(case_times)),
            "window_batches_per_case": float(np.mean(windows_per_case)),
            "window_batch_size": predictor.batch_size,
            "windows_per_second": predictor.batch_size * len(window_times)
            / max(sum(window_times), 1e-12),
            "load_seconds_mean": float(np.mean(load_times)),
            "ensemble_members": len(models),
            "window_size": list(window),
            "overlap": predictor.overlap,
            "tta": predictor.tta,
        })
