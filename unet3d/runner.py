"""The task runner: one validated config in, one mode run, everything tracked.

``run_task`` sets devices, precision and the distribution strategy once, opens the MLflow run,
then runs the mode: ``train``, ``evaluate``, ``train_and_evaluate``, ``predict`` or
``benchmark``. Each mode is a small function below; the work lives in the packages
``data``, ``model``, ``training``, ``inference``, ``evaluation``, ``runtime`` and ``tracking``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Devices, precision and strategy, configured once per process before any model exists."""

    device: Any
    precision: Any
    context: Any


def setup_runtime(cfg: DictConfig) -> Runtime:
    """Configure devices, the Keras dtype policy and the distribution context."""
    logging.getLogger("absl").setLevel(logging.WARNING)  # per-save "Sharding callback" lines
    from unet3d.runtime.devices import configure_devices
    from unet3d.runtime.precision import configure_precision
    from unet3d.runtime.strategy import create_context, process_env

    process = process_env(cfg.strategy)
    device = configure_devices(cfg.device, local_rank=process.local_rank,
                               local_size=process.local_size)
    precision = configure_precision(cfg.precision, device.type)
    context = create_context(cfg.strategy, device)
    log.info("device %s (%s), precision %s (compute %s, variables %s%s), strategy %s with "
             "%d replica(s) in %d process(es)", device.type, ", ".join(device.names),
             precision.policy_name, precision.compute_dtype, precision.variable_dtype,
             ", XLA" if precision.xla else "", context.name,
             context.num_replicas, context.world_size)
    return Runtime(device, precision, context)


def _overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


#: Modes that train (and so can resume from a checkpoint in their own folder).
TRAINING_MODES = ("train", "train_and_evaluate")


def run_task(cfg: DictConfig, commit: Callable[[], None] | None = None) -> dict[str, float]:
    """Run ``cfg.mode.name`` and return its final metrics (also logged and in results.json).

    Args:
        cfg: the validated, composed config.
        commit: writes the job's ``.hydra/`` files and opens its ``run.log`` (see
            :mod:`unet3d.runs.folder`); called before anything is written into the run folder.
            A resume of a training mode calls it only once the resume is accepted: the
            recorded identity matches and the checkpoint is restored.

    Raises:
        RunFolderError: ``resume=true`` and the run in the folder is another experiment.
    """
    from unet3d.runs.identity import RunIdentity
    from unet3d.tracking.mlflow_logger import Tracker, git_tags, tracked_run
    from unet3d.tracking.summary import write_job_result

    output_dir = Path(cfg.paths.output_dir)
    root_dir = Path(cfg.paths.root_dir)
    mode = cfg.mode.name
    resuming = bool(cfg.resume) and mode in TRAINING_MODES
    identity = RunIdentity.from_config(cfg)
    if resuming:
        check_resume(output_dir, identity)
    runtime = setup_runtime(cfg)
    context = runtime.context
    tracker = Tracker(cfg.tracking, root_dir, enabled=bool(cfg.tracking.enabled),
                      is_chief=context.is_chief)
    from unet3d.tracking.sweep_callback import current_parent_run_id

    tags = {
        "mode": mode,
        "fold": str(cfg.fold),
        "num_folds": str(cfg.num_folds),
        "device": runtime.device.type,
        "precision": runtime.precision.policy_name,
        "precision_policy": runtime.precision.policy_name,
        "compute_dtype": runtime.precision.compute_dtype,
        "variable_dtype": runtime.precision.variable_dtype,
        "loss_scaling": str(runtime.precision.loss_scale).lower(),
        "xla": str(runtime.precision.xla).lower(),
        "strategy": context.name,
        "replicas": str(context.num_replicas),
        "output_dir": str(output_dir),
        "overrides": " ".join(_overrides()),
        **git_tags(root_dir),
    }

    begun: list[bool] = []

    def begin() -> None:
        """The job takes the folder: .hydra/, run.log, the identity record, the MLflow run.

        Called once: at the start, or by a resumed training once its checkpoint is restored.
        """
        if begun:
            return
        begun.append(True)
        if resuming:
            log.info("resume accepted: %s continues from its checkpoint", output_dir)
        if commit is not None:
            commit()
        if context.is_chief:
            write_identity(output_dir, identity, resuming)
        tracker.start(cfg, output_dir, run_name=f"{mode}-fold{cfg.fold}", tags=tags,
                      parent_run_id=current_parent_run_id())

    if not resuming:
        begin()
    with tracked_run(tracker):
        try:
            metrics = MODES[mode](cfg, runtime, tracker, output_dir, begin)
            if context.is_chief:
                write_job_result(output_dir, status="FINISHED", fold=int(cfg.fold),
                                 overrides=_overrides(), metrics=metrics,
                                 mlflow_run_id=tracker.run_id)
        finally:
            # Also for a failed or interrupted job: its log says why.
            _log_job_files(tracker, output_dir)
    return metrics


def check_resume(output_dir: Path, identity: Any) -> None:
    """Refuse a resume whose experiment differs from the run recorded in ``output_dir``.

    Raises:
        RunFolderError: one line naming every differing key (fold, num_folds, seed, data set,
            model settings).
    """
    from unet3d.errors import RunFolderError
    from unet3d.runs.identity import read_identity

    recorded = read_identity(output_dir)
    if recorded is None:
        log.warning("resume: %s has no run identity record; cannot check that it is the same "
                    "experiment", output_dir)
        return
    differences = recorded.differences(identity)
    if differences:
        raise RunFolderError(
            f"resume: the run in {output_dir} {'; '.join(_describe(d) for d in differences)}"
            "; resume it with its own settings, or drop resume=true to start a new run in "
            "another folder"
        )


def _describe(difference: str) -> str:
    if difference.startswith("fold "):
        return f"is {difference}"
    return f"was trained with {difference}"


def write_identity(output_dir: Path, identity: Any, resuming: bool) -> None:
    """Record the run's identity: a new job always, a resume only when none is recorded."""
    from unet3d.runs.identity import IDENTITY_FILE

    if resuming and (output_dir / IDENTITY_FILE).is_file():
        return
    identity.write(output_dir)


def _check_data(cfg: DictConfig, output_dir: Path, prepared: Any, is_chief: bool) -> None:
    """A resume refuses another case list; a new run records its case-list fingerprint."""
    from unet3d.errors import RunFolderError
    from unet3d.runs.identity import cases_fingerprint, read_identity, record_cases

    if not is_chief:
        return
    if bool(cfg.resume) and cfg.mode.name in TRAINING_MODES:
        recorded = read_identity(output_dir)
        known = recorded.data.get("cases") if recorded is not None else None
        found = cases_fingerprint(prepared.case_ids)
        if known is not None and known != found:
            raise RunFolderError(
                f"resume: the run in {output_dir} was trained on another case list (fingerprint "
                f"{known}, now {found} for {len(prepared.case_ids)} cases in "
                f"{prepared.preprocessed_dir}); resume it on its own data, or drop resume=true"
            )
        return
    record_cases(output_dir, prepared.case_ids)


def _log_job_files(tracker: Any, output_dir: Path) -> None:
    """Log the job's ``.hydra/`` folder and its log file (``run.log``) on the job's run."""
    from unet3d.runs.folder import HYDRA_SUBDIR, LOG_FILE

    hydra_dir = output_dir / HYDRA_SUBDIR
    if hydra_dir.is_dir():
        tracker.log_artifacts(hydra_dir, hydra_dir.name)
    log_file = output_dir / LOG_FILE
    if log_file.is_file():
        for handler in logging.getLogger().handlers:
            handler.flush()
        tracker.log_artifact(log_file)


def _prepare(cfg: DictConfig, context: Any) -> Any:
    """Generate/preprocess/split on the chief first, then let the other ranks read."""
    from unet3d.data.prepare import prepare_data_on_chief_first

    prepared = prepare_data_on_chief_first(cfg, context)
    _check_data(cfg, Path(cfg.paths.output_dir), prepared, context.is_chief)
    log.info("fold %d of %d: %d training and %d held-out case(s) from %s", cfg.fold,
             cfg.num_folds, len(prepared.train_files), len(prepared.eval_files),
             prepared.preprocessed_dir)
    return prepared


def _build_model(cfg: DictConfig, runtime: Runtime) -> Any:
    import keras

    from unet3d.model.unet3d import build_model_from_config

    # Seeded weights; each rank differs, and rank 0's weights are broadcast (or mirrored).
    keras.utils.set_random_seed(int(cfg.seed) + int(runtime.context.rank))
    with runtime.context.scope():
        model = build_model_from_config(cfg.model)
    log.info("model %s: %s parameters", cfg.model.name, f"{model.count_params():,}")
    # The dtypes the built model really uses (not only the policy that was asked for).
    compute = sorted({layer.compute_dtype for layer in model.layers if layer.weights})
    variables = sorted({str(variable.dtype) for variable in model.weights})
    log.info("model dtypes: layers compute in %s, variables %s, output %s (policy %s)",
             "/".join(compute), "/".join(variables), model.outputs[0].dtype,
             runtime.precision.policy_name)
    return model


def _train(cfg: DictConfig, runtime: Runtime, tracker: Any, output_dir: Path,
           prepared: Any, begin: Callable[[], None]) -> tuple[Any, dict[str, float]]:
    from unet3d.runtime.precision import wrap_optimizer
    from unet3d.training.loop import total_steps, train
    from unet3d.training.optimizer import build_optimizer

    context = runtime.context
    model = _build_model(cfg, runtime)
    with context.scope():
        optimizer = wrap_optimizer(
            build_optimizer(cfg.training, total_steps(cfg, context.world_size)),
            runtime.precision,
        )
    if runtime.precision.loss_scale:
        log.info("optimizer %s wrapped in a LossScaleOptimizer (dynamic loss scaling, initial "
                 "scale %g)", cfg.training.optimizer, optimizer.initial_scale)
    result = train(cfg, context, model, optimizer, prepared.train_files, output_dir, tracker,
                   jit_compile=runtime.precision.xla, on_restored=begin)
    metrics = {"train_steps": float(result.last_step)}
    if result.history.get("loss"):
        metrics["final_loss"] = result.history["loss"][-1][1]
        metrics["train_volumes_per_second"] = result.volumes_per_second
    if context.is_chief:
        _log_training_artifacts(cfg, model, result, tracker, output_dir)
    return model, metrics


def _log_training_artifacts(cfg: DictConfig, model: Any, result: Any, tracker: Any,
                            output_dir: Path) -> None:
    from unet3d.tracking.figures import plot_training_curves

    if result.history:
        path = plot_training_curves(result.history, output_dir / "figures" / "training_curves.png")
        tracker.log_artifact(path, "figures")
    if cfg.tracking.log_model:
        # The smallest valid input: the signature leaves spatial sides open anyway.
        side = 2 ** (int(cfg.model.num_levels) - 1)
        example = np.zeros((1, side, side, side, int(cfg.model.in_channels)), np.float32)
        tracker.log_model(model, example)


def _evaluate(cfg: DictConfig, runtime: Runtime, tracker: Any, output_dir: Path,
              model: Any, prepared: Any) -> dict[str, float]:
    from unet3d.evaluation.evaluate import evaluate_cases
    from unet3d.tracking.case_figures import CaseFigureCollector

    if not runtime.context.is_chief:
        return {}
    figures = CaseFigureCollector(output_dir / "figures")
    result = evaluate_cases(model, prepared.eval_files, cfg, output_dir, figures.add)
    tracker.log_metrics(result.summary, step=int(cfg.training.max_steps))
    if result.csv_path is not None:
        tracker.log_artifact(result.csv_path, "metrics")
    for path in figures.write(result.per_case):
        tracker.log_artifact(path, "figures")
    return dict(result.summary)


def run_train(cfg: DictConfig, runtime: Runtime, tracker: Any, output_dir: Path,
              begin: Callable[[], None]) -> dict:
    """mode=train: fit on the training folds, checkpoint under the run dir."""
    prepared = _prepare(cfg, runtime.context)
    _, metrics = _train(cfg, runtime, tracker, output_dir, prepared, begin)
    return metrics


def run_evaluate(cfg: DictConfig, runtime: Runtime, tracker: Any, output_dir: Path,
                 begin: Callable[[], None]) -> dict:
    """mode=evaluate: score ``checkpoint`` on every held-out case of ``fold``.

    ``checkpoint`` is a checkpoint, a run dir, a sweep dir (its job of this fold is used) or
    an MLflow run reference ``runs:/<run id>``; a list of them is evaluated as an ensemble.
    """
    from unet3d.inference.models import job_model_checkpoints, load_ensemble

    prepared = _prepare(cfg, runtime.context)
    prefixes = job_model_checkpoints(cfg, cfg.checkpoint, fold=int(cfg.fold), key="checkpoint")
    models = load_ensemble(cfg, prefixes, runtime)
    tracker.set_tags({"checkpoint": ", ".join(prefixes)})
    return _evaluate(cfg, runtime, tracker, output_dir, models, prepared)


def run_train_and_evaluate(cfg: DictConfig, runtime: Runtime, tracker: Any,
                           output_dir: Path, begin: Callable[[], None]) -> dict:
    """mode=train_and_evaluate: train, then evaluate the trained model on the held-out fold."""
    prepared = _prepare(cfg, runtime.context)
    model, metrics = _train(cfg, runtime, tracker, output_dir, prepared, begin)
    metrics.update(_evaluate(cfg, runtime, tracker, output_dir, model, prepared))
    return metrics


def run_predict(cfg: DictConfig, runtime: Runtime, tracker: Any, output_dir: Path,
                begin: Callable[[], None]) -> dict:
    """mode=predict: segment new cases to BraTS-ready NIfTI."""
    from unet3d.inference.predict import predict

    return predict(cfg, runtime, tracker, output_dir)


def run_benchmark(cfg: DictConfig, runtime: Runtime, tracker: Any, output_dir: Path,
                  begin: Callable[[], None]) -> dict:
    """mode=benchmark: throughput and latency of training, prediction or the input pipeline."""
    from unet3d.benchmark import run_benchmark as benchmark

    return benchmark(cfg, runtime, tracker, output_dir)


MODES = {
    "train": run_train,
    "evaluate": run_evaluate,
    "train_and_evaluate": run_train_and_evaluate,
    "predict": run_predict,
    "benchmark": run_benchmark,
}

