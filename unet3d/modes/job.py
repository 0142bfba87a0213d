"""What every mode receives, and the job's lifecycle: ``start``, ``check_data``, ``finish``.

The runner (``unet3d.runner``) builds one ``Job`` per process and hands it to the mode's
``run(job)``; the modes call ``prepare`` for the fold's data. The job's record
(``unet3d.runs.identity.RunIdentity``) writes what names the experiment: its MLflow tags,
``run_identity.json`` and ``results.json``.

1. ``start()``: the job takes its folder (``.hydra/``, ``run.log``), writes its record and
   starts its MLflow run; at once, or, for a resumed training, once its checkpoint is restored.
2. ``check_data(prepared)``: the fold's data against the model's classes and, on a resume,
   the run's recorded case list (``prepare`` calls it).
3. ``finish(metrics)``: ``results.json`` of a job that ran to its end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Devices, precision and strategy, configured once per process before any model exists.

    Attributes:
        device: ``unet3d.runtime.devices`` device info (``type``, ``names``).
        precision: the configured precision (``policy_name``, ``compute_dtype``, ``xla``, ...).
        context: the distribution context (``scope``, ``is_chief``, ``world_size``, ...).
    """

    device: Any
    precision: Any
    context: Any

    def tags(self) -> dict[str, str]:
        """MLflow tags of what the job runs on: device, oneDNN, the dtypes the precision
        resolved to, loss scaling, XLA, strategy and replicas."""
        precision, context = self.precision, self.context
        return {
            "device": self.device.type,
            "onednn": self.device.onednn.split(" ", 1)[0],
            "compute_dtype": precision.compute_dtype,
            "variable_dtype": precision.variable_dtype,
            "loss_scaling": str(precision.loss_scale).lower(),
            "xla": str(precision.xla).lower(),
            "strategy": context.name,
            "replicas": str(context.num_replicas),
        }


class Job:
    """One mode run in one process (see the module doc for its lifecycle).

    Args:
        cfg: the validated, composed config.
        runtime: devices, precision and distribution context.
        tracker: the job's MLflow tracker (``log_metrics``, ``log_artifact``, ``set_tags``, ...).
        output_dir: the run folder.
        record: the job's ``RunIdentity`` (its ``precision`` completed by the runtime); needed
            by ``start`` and ``finish``.
        commit: writes the job's ``.hydra/`` files and opens its ``run.log``
            (``unet3d.runs.folder``); ``start`` calls it before anything is written.
        overrides: the job's command-line overrides (tag ``overrides``, ``results.json``).
        resuming: a resumed training (its folder holds an earlier job's record).
    """

    def __init__(self, cfg: DictConfig, runtime: Runtime | None, tracker: Any, output_dir: Path,
                 *, record: Any = None, commit: Callable[[], None] | None = None,
                 overrides: list[str] | None = None, resuming: bool = False) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.tracker = tracker
        self.output_dir = Path(output_dir)
        self.record = record
        self.overrides = list(overrides or [])
        self.resuming = resuming
        self._commit = commit
        self.started = False

    @property
    def context(self) -> Any:
        """The distribution context of the runtime."""
        return self.runtime.context

    def start(self) -> None:
        """Take the run folder: ``.hydra/``, ``run.log``, ``run_identity.json``, the MLflow run.

        Called once: by the runner, or by a resumed training once its checkpoint is restored
        (later calls do nothing). A resume keeps the record its first job wrote.
        """
        if self.started:
            return
        self.started = True
        from unet3d.runs.identity import IDENTITY_FILE
        from unet3d.runs.provenance import git_tags
        from unet3d.tracking.parent_run import current_parent_run_id

        if self.resuming:
            log.info("resume accepted: %s continues from its checkpoint", self.output_dir)
        if self._commit is not None:
            self._commit()
        recorded = self.resuming and (self.output_dir / IDENTITY_FILE).is_file()
        if self.context.is_chief and not recorded:
            self.record.write(self.output_dir)
        tags = {**self.record.tags(), **self.runtime.tags(), "output_dir": str(self.output_dir),
                "overrides": " ".join(self.overrides), **git_tags(self.cfg.paths.root_dir)}
        self.tracker.start(self.cfg, self.output_dir, run_name=self.record.run_name, tags=tags,
                           parent_run_id=current_parent_run_id())
        if self.runtime.precision.params:  # precision=auto's choice, the CPU and its probe
            self.tracker.log_params(self.runtime.precision.params)

    def check_data(self, prepared: Any) -> None:
        """Check the fold's data against the model and the run folder; record it.

        Every rank: the model's classes (and regions) must be the data set's
        (``unet3d.config.data_problem``). Chief: a resume refuses another case list; a new run
        records its case-list fingerprint and label convention, and logs the data set as an
        input of its MLflow run.

        Raises:
            ConfigError: ``model.num_classes`` / ``model.num_regions`` differ from the data set.
            RunFolderError: a resume on another case list.
        """
        from unet3d.config import data_problem
        from unet3d.data.layouts.regions import painted_regions
        from unet3d.errors import ConfigError, RunFolderError
        from unet3d.runs.identity import cases_fingerprint, read_identity, record_cases
        from unet3d.tracking.datasets import log_dataset_input

        convention = data_convention(prepared)
        problem = data_problem(self.cfg.model, self.cfg.loss, convention,
                               len(painted_regions(convention)))
        if problem is not None:
            raise ConfigError(problem)
        if not self.context.is_chief:
            return
        if self.resuming:
            recorded = read_identity(self.output_dir)
            known = recorded.data.get("cases") if recorded is not None else None
            found = cases_fingerprint(prepared.case_ids)
            if known is not None and known != found:
                raise RunFolderError(
                    f"resume: the run in {self.output_dir} was trained on another case list "
                    f"(fingerprint {known}, now {found} for {len(prepared.case_ids)} cases in "
                    f"{prepared.preprocessed_dir}); resume it on its own data, or drop "
                    "resume=true"
                )
        else:
            record_cases(self.output_dir, prepared.case_ids, convention.to_dict())
        log_dataset_input(self.tracker, prepared, self.cfg)

    def finish(self, metrics: dict[str, float]) -> None:
        """The job ran to its end: its ``results.json`` (chief), FINISHED with ``metrics``."""
        if self.context.is_chief:
            self.record.write_result(self.output_dir, "FINISHED", self.overrides, metrics,
                                     mlflow_run_id=self.tracker.run_id)


def prepare(job: Job) -> Any:
    """The fold's data (``PreparedData``): prepared on the chief first, then checked.

    Generation, preprocessing and the split run on the chief; the other ranks then find them
    done. ``job.check_data`` then checks it against the model and the run folder.

    Raises:
        DataError, ConfigError: the data set cannot be prepared.
        RunFolderError: a resume on another case list.
    """
    from unet3d.data.prepare import prepare_data_on_chief_first

    cfg = job.cfg
    prepared = prepare_data_on_chief_first(cfg, job.context)
    job.check_data(prepared)
    log.info("fold %d of %d: %d training and %d held-out case(s) from %s", cfg.fold,
             cfg.num_folds, len(prepared.train_files), len(prepared.eval_files),
             prepared.preprocessed_dir)
    return prepared


def data_convention(prepared: Any) -> Any:
    """The ``LabelConvention`` of prepared data (its layout's; BraTS 2019 without one)."""
    from unet3d.data.layouts.convention import BRATS2019

    layout = getattr(prepared, "layout", None)
    return layout.convention if layout is not None else BRATS2019


def lesionwise_scorer(cfg: Any, convention: Any, tracker: Any = None) -> Any:
    """The lesion-wise scorer that ``evaluation.lesionwise`` asks for on ``convention``'s data
    (``unet3d.evaluation.lesionwise.lesionwise_scorer``), logged and tagged; None for none.

    Raises:
        ConfigError: ``evaluation.lesionwise: ...`` (a convention without the rules' tissues,
            brats2025 without the ``[brats]`` extra).
    """
    from unet3d.evaluation.lesionwise import lesionwise_scorer as scorer_of

    setting = str(cfg.evaluation.lesionwise)
    scorer = scorer_of(setting, convention)
    name = "off" if scorer is None else scorer.name
    log.info("lesion-wise metrics: %s (evaluation.lesionwise=%s, label convention %s)", name,
             setting, convention.name)
    if tracker is not None:
        tracker.set_tags({"evaluation.lesionwise": name})
    return scorer
