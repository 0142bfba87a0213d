"""The task runner: one validated config in, one mode run, everything tracked.

``run_task`` sets devices, precision and the distribution strategy once, takes the run folder
(or, for a resumed training, defers that until its checkpoint is restored), opens the MLflow
run and dispatches to the mode: ``unet3d.modes.<mode.name>.run(job)`` for ``train``,
``evaluate``, ``train_and_evaluate``, ``predict`` or ``benchmark``. The work lives in the
modes and in the packages ``data``, ``model``, ``training``, ``inference``, ``evaluation``,
``runtime`` and ``tracking``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unet3d.config import TRAINING_MODES
from unet3d.modes.job import Job, Runtime

log = logging.getLogger(__name__)



def setup_runtime(cfg: DictConfig, recorded_precision: Any = None) -> Runtime:
    """Configure devices, the distribution context and the Keras dtype policy, in that order
    (``precision=auto`` may run a probe convolution, which starts TensorFlow's runtime).

    ``recorded_precision``: the ``precision`` record of the run being resumed (``auto`` keeps
    its resolved policy).

    Raises:
        DeviceError: the device, precision or strategy is not available here.
        ConfigError: an unknown strategy setting.
    """
    logging.getLogger("absl").setLevel(logging.WARNING)  # per-save "Sharding callback" lines
    from unet3d.runtime.devices import configure_devices
    from unet3d.runtime.distribute import create_context, process_env
    from unet3d.runtime.precision import configure_precision

    process = process_env(cfg.strategy)
    device = configure_devices(cfg.device, local_rank=process.local_rank,
                               local_size=process.local_size)
    context = create_context(cfg.strategy, device)
    precision = configure_precision(cfg.precision, device.type, cache_dir=cfg.paths.data_dir,
                                    recorded=recorded_precision)
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
    from unet3d.modes import mode_function
    from unet3d.runs.identity import RunIdentity
    from unet3d.runs.provenance import git_tags
    from unet3d.runs.results import write_job_result
    from unet3d.tracking.parent_run import current_parent_run_id
    from unet3d.tracking.tracker import Tracker, tracked_run

    output_dir = Path(cfg.paths.output_dir)
    root_dir = Path(cfg.paths.root_dir)
    mode = cfg.mode.name
    run_mode = mode_function(mode)
    resuming = bool(cfg.resume) and mode in TRAINING_MODES
    identity = RunIdentity.from_config(cfg)
    recorded = check_resume(output_dir, identity) if resuming else None
    runtime = setup_runtime(cfg, recorded.precision if recorded is not None else None)
    identity.precision.update(runtime.precision.identity(runtime.device.type))
    context = runtime.context
    tracker = Tracker(cfg.tracking, root_dir, enabled=bool(cfg.tracking.enabled),
                      is_chief=context.is_chief)
    tags = {
        "mode": mode,
        "fold": str(cfg.fold),
        "num_folds": str(cfg.num_folds),
        "device": runtime.device.type,
        "onednn": runtime.device.onednn.split(" ", 1)[0],
        "precision": runtime.precision.name,
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
        if runtime.precision.params:  # precision=auto's choice, the CPU and its probe
            tracker.log_params(runtime.precision.params)

    def check_data(prepared: Any) -> None:
        _check_data(cfg, output_dir, prepared, context.is_chief)
        if context.is_chief:
            from unet3d.tracking.datasets import log_dataset_input

            log_dataset_input(tracker, prepared, cfg)

    job = Job(cfg, runtime, tracker, output_dir, begin=begin, check_data=check_data)
    if not resuming:
        begin()
    with tracked_run(tracker):
        try:
            metrics = run_mode(job)
            if context.is_chief:
                write_job_result(output_dir, status="FINISHED", fold=int(cfg.fold),
                                 overrides=_overrides(), metrics=metrics,
                                 mlflow_run_id=tracker.run_id)
            if (context.is_chief and mode in TRAINING_MODES
                    and current_parent_run_id() is None):
                # Inside a sweep the parent run registers the fold ensemble instead.
                from unet3d.serving.registration import publish_model

                publish_model(tracker, cfg, str(output_dir), metrics, kind="job")
        finally:
            # Also for a failed or interrupted job: its log says why.
            _log_job_files(tracker, output_dir)
    return metrics


def check_resume(output_dir: Path, identity: Any) -> Any:
    """Refuse a resume whose experiment differs from the run recorded in ``output_dir``.

    Returns:
        The recorded ``RunIdentity`` (None when the folder has none).

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
        return None
    differences = recorded.differences(identity)
    if differences:
        raise RunFolderError(
            f"resume: the run in {output_dir} {'; '.join(_describe(d) for d in differences)}"
            "; resume it with its own settings, or drop resume=true to start a new run in "
            "another folder"
        )
    return recorded


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
    """Check the data against the model and the run folder.

    Every rank: ``model.num_classes`` must be the data set's number of classes. Chief: a resume
    refuses another case list; a new run records its case-list fingerprint and convention.

    Raises:
        ConfigError: ``model.num_classes`` differs from the data set's classes.
        RunFolderError: a resume on another case list.
    """
    from unet3d.errors import RunFolderError
    from unet3d.modes.job import data_convention
    from unet3d.runs.identity import cases_fingerprint, read_identity, record_cases

    convention = data_convention(prepared)
    check_num_classes(cfg, convention)
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
    record_cases(output_dir, prepared.case_ids, convention.to_dict())


def check_num_classes(cfg: DictConfig, convention: Any) -> None:
    """Check the model's classes (and regions, for a region head) against the data set's.

    Raises:
        ConfigError: ``model.num_classes`` is not the data set's number of classes, or
            ``model.num_regions`` not the number of regions its region head paints.
    """
    from unet3d.config import head_problem, model_head
    from unet3d.data.regions import painted_regions
    from unet3d.errors import ConfigError

    if model_head(cfg.model) == "regions":
        problem = head_problem(cfg.model, cfg.loss, len(painted_regions(convention)))
        if problem is not None:
            raise ConfigError(problem)
    wanted = int(convention.num_classes)
    if int(cfg.model.num_classes) != wanted:
        values = ", ".join(str(value) for value in convention.values)
        raise ConfigError(
            f"model.num_classes: the data set {convention.name} has {wanted} classes (label "
            f"values {values}), the model {cfg.model.num_classes}: pass model.num_classes={wanted}"
        )


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
