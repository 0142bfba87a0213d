"""What every mode receives: the config, the configured runtime, the tracker and the run folder.

The runner (``unet3d.runner``) builds one ``Job`` per process and hands it to the mode's
``run(job)``; the modes call ``prepare`` for the fold's data.
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


def _nothing(*_: Any) -> None:
    return None


@dataclass
class Job:
    """One mode run in one process.

    Attributes:
        cfg: the validated, composed config.
        runtime: devices, precision and distribution context.
        tracker: the job's MLflow tracker (``log_metrics``, ``log_artifact``, ``set_tags``, ...).
        output_dir: the run folder.
        begin: takes the run folder (``.hydra/``, ``run.log``, identity, MLflow run); a resumed
            training calls it once its checkpoint is restored, other jobs find it done.
        check_data: called with the prepared data of the fold: a resume refuses another case
            list, a new run records its case-list fingerprint.
    """

    cfg: DictConfig
    runtime: Runtime
    tracker: Any
    output_dir: Path
    begin: Callable[[], None] = _nothing
    check_data: Callable[[Any], None] = _nothing

    @property
    def context(self) -> Any:
        """The distribution context of the runtime."""
        return self.runtime.context


def prepare(job: Job) -> Any:
    """The fold's data (``PreparedData``): prepared on the chief first, then checked.

    Generation, preprocessing and the split run on the chief; the other ranks then find them
    done. ``job.check_data`` then checks the case list against the run folder.

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
    from unet3d.data.convention import BRATS2019

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

    setting = str((cfg.get("evaluation") or {}).get("lesionwise", "off"))
    scorer = scorer_of(setting, convention)
    name = "off" if scorer is None else scorer.name
    log.info("lesion-wise metrics: %s (evaluation.lesionwise=%s, label convention %s)", name,
             setting, convention.name)
    if tracker is not None:
        tracker.set_tags({"evaluation.lesionwise": name})
    return scorer
