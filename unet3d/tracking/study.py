"""Hyperparameter search: the job's objective value and the Optuna study's MLflow run.

A study is a ``--multirun`` with ``hparams_search=<name>`` (``conf/hparams_search/``), which
selects Hydra's Optuna sweeper (the ``hydra-optuna-sweeper`` plug-in). The sweeper asks the
study for a trial, launches one job with the trial's overrides and tells the study the float
the job returned; this module provides both ends of that:

- :func:`objective_value`: the float a job returns, the mean of the metrics named by the
  config key ``optimized_metric`` (default in ``conf/hparams_search/unet3d_optuna.yaml``: the
  held-out mean Dice over the BraTS regions, ``[Dice_WT, Dice_TC, Dice_ET]``). A failed job
  returns None, which the sweeper records as an Optuna trial in state FAIL; the study goes on.
- The study run: :class:`~unet3d.sweep_callback.CrossValidationCallback` makes the
  sweep's parent MLflow run the *study run* (``unet3d.run_kind=optuna_study``, tag
  ``unet3d.optuna_study=<study name>@<storage>``). A rerun of the same command (same storage and
  study name) reopens that run (:func:`find_study_run`), so every trial of the study, over every
  invocation, is nested under one run. At the end of each invocation :func:`log_study_summary`
  reads the study back from its storage and logs on the study run: the best trial's value
  (metric ``optuna/best_value``) and parameters (tags ``best.<name>``; tags, because MLflow
  params cannot change when a later invocation finds a better trial), trial counts per state
  and ``optuna_trials.csv``.

Optuna is imported only by the functions that need it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from unet3d.errors import ConfigError

logger = logging.getLogger(__name__)

#: Config key naming the metric(s) a job returns to the sweeper (their mean).
OPTIMIZED_METRIC_KEY = "optimized_metric"
#: The default objective: held-out mean Dice over the BraTS regions WT, TC, ET.
DEFAULT_OPTIMIZED_METRIC = ("Dice_WT", "Dice_TC", "Dice_ET")
#: Run kind (tag ``unet3d.run_kind``) of the study run and of a trial's run.
STUDY_RUN_KIND = "optuna_study"
TRIAL_RUN_KIND = "optuna_trial"
#: Tag identifying a study run: ``<study name>@<storage URL>``.
STUDY_TAG = "unet3d.optuna_study"
#: Artifact file (and sweep-dir file) listing every trial of the study.
TRIALS_CSV = "optuna_trials.csv"


# ------------------------------------------------------------------------- the objective


def optimized_metric_names(cfg: Any) -> tuple[str, ...] | None:
    """The metric names of ``optimized_metric`` in ``cfg``, or None when the key is unset.

    Args:
        cfg: the job's composed config (``DictConfig``) or a mapping.

    Returns:
        A tuple of metric names (a single string becomes a 1-tuple); None when
        ``optimized_metric`` is absent or null (the job then returns its metrics dict).

    Raises:
        ConfigError: the value is not a metric name or a non-empty list of them.
    """
    value = OmegaConf.select(cfg, OPTIMIZED_METRIC_KEY, default=None) if isinstance(
        cfg, DictConfig) else (cfg or {}).get(OPTIMIZED_METRIC_KEY)
    if value is None:
        return None
    if isinstance(value, str):
        names: tuple[Any, ...] = (value,)
    elif isinstance(value, ListConfig | list | tuple):
        names = tuple(value)
    else:
        names = ()
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ConfigError(f"{OPTIMIZED_METRIC_KEY}: expected a metric name or a non-empty list "
                          f"of them (e.g. [Dice_WT, Dice_TC, Dice_ET]), got {value!r}")
    return tuple(str(name) for name in names)


def objective_value(metrics: Mapping[str, Any], names: Sequence[str]) -> float:
    """The objective of one job: the arithmetic mean of ``metrics[name]`` over ``names``.

    Args:
        metrics: the job's final metrics (``results.json`` ``metrics``), e.g. ``Dice_WT``.
        names: the metric names to average (``optimized_metric``).

    Returns:
        The mean as a Python float; NaN when one of the values is not finite (Optuna then
        records the trial as FAIL).

    Raises:
        ConfigError: a name is not among the job's metrics (the message lists those it has).
    """
    missing = [name for name in names if name not in metrics]
    if missing:
        raise ConfigError(
            f"{OPTIMIZED_METRIC_KEY}: metric(s) {', '.join(missing)} not in the job's results "
            f"(it has: {', '.join(sorted(metrics)) or 'none'})")
    values = [_float(metrics[name]) for name in names]
    if not all(math.isfinite(value) for value in values):
        return math.nan
    return float(sum(values) / len(values))


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ------------------------------------------------------------------------- the study run


def is_study_sweep(config: DictConfig) -> bool:
    """True when the sweep's sweeper is Optuna's (``hydra/sweeper=optuna``)."""
    target = OmegaConf.select(config, "hydra.sweeper._target_", default="") or ""
    return str(target).endswith("OptunaSweeper")


@dataclass
class StudySettings:
    """Where the study lives: its name and storage URL (``hydra.sweeper.*``)."""

    study_name: str
    storage: str | None

    @property
    def key(self) -> str:
        """The study's identity (tag ``unet3d.optuna_study``)."""
        return f"{self.study_name}@{self.storage or 'in-memory'}"


def study_settings(config: DictConfig) -> StudySettings:
    """Read ``hydra.sweeper.study_name`` and ``hydra.sweeper.storage`` (resolved).

    Raises:
        ConfigError: no study name (a study without a name cannot be resumed).
    """
    name = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if not name:
        raise ConfigError("hydra.sweeper.study_name: set a study name so that a rerun of the "
                          "same command resumes the study")
    return StudySettings(str(name), None if storage is None else str(storage))


#: File in the sweep dir recording the study and its number of trials before this invocation.
STUDY_FILE = "optuna_study.json"


def prepare_study(config: DictConfig, sweep_dir: Path,
                  owner: Mapping[str, Any] | None = None) -> int:
    """Before the sweeper exists: count the study's trials, reseed its sampler, record both.

    A rerun of a study with a seeded sampler would repeat the first invocation's suggestions
    (a new sampler with the same seed draws the same random startup trials). So the sampler
    of an invocation that finds ``n`` trials in the storage gets seed ``seed + n``: reruns are
    reproducible and do not repeat trials. Writes ``<sweep dir>/optuna_study.json``
    (study name, storage, ``first_trial`` = n, the seed used, ``owner``: the sweep process)
    so that a trial job can name itself after its Optuna trial number (:func:`trial_number`)
    and record who runs its trial (``unet3d.tracking.trials.claim_trials``).

    Args:
        config: the sweep's config (``hydra.sweeper.*`` resolvable); changed in place
            (``hydra.sweeper.sampler.seed``) when the seed is an integer.
        sweep_dir: the sweep's folder (created).
        owner: the sweep process (``unet3d.tracking.trials.this_process``), recorded.

    Returns:
        The number of trials the study already has (0 for a new study).
    """
    import json

    from omegaconf import open_dict, read_write

    from unet3d.runs.files import write_text_atomic

    settings = study_settings(config)
    existing = _count_trials(settings)
    seed = OmegaConf.select(config, "hydra.sweeper.sampler.seed", default=None)
    if isinstance(seed, int) and not isinstance(seed, bool) and existing:
        seed += existing
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweeper.sampler.seed = seed
        logger.info("Optuna study %s has %d trial(s): sampler seed %d for this invocation",
                    settings.key, existing, seed)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"study_name": settings.study_name, "storage": settings.storage,
              "first_trial": existing, "seed": seed, "owner": dict(owner or {})}
    write_text_atomic(sweep_dir / STUDY_FILE, json.dumps(record, indent=2) + "\n")
    return existing


#: Oldest Optuna whose RDB storage works with SQLAlchemy 2 (which MLflow 3 brings).
MIN_OPTUNA = (3, 1)


def require_optuna() -> Any:
    """Import Optuna, refusing a version whose SQLite storage fails under SQLAlchemy 2.

    hydra-optuna-sweeper 1.3.0 declares ``optuna<3`` and pip resolves it to 2.10.1, whose RDB
    storage fails with SQLAlchemy 2.x (``AssertionError`` in ``get_current_version``).

    Raises:
        ConfigError: Optuna is missing or older than ``MIN_OPTUNA``.
    """
    try:
        import optuna
    except ImportError:
        raise ConfigError("hydra.sweeper: Optuna is not installed; pip install "
                          "'optuna>=4,<6' && pip install --no-deps hydra-optuna-sweeper==1.3.0"
                          ) from None
    version = tuple(int(part) for part in optuna.__version__.split(".")[:2] if part.isdigit())
    if version < MIN_OPTUNA:
        raise ConfigError(f"hydra.sweeper: Optuna {optuna.__version__} cannot use an SQLite "
                          "storage with SQLAlchemy 2; pip install 'optuna>=4,<6' (the sweeper "
                          "plug-in works with it)")
    return optuna


def _count_trials(settings: StudySettings) -> int:
    optuna = require_optuna()
    if settings.storage is None:
        return 0

    try:
        study = optuna.load_study(study_name=settings.study_name, storage=settings.storage)
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False))


def read_study_record(sweep_dir: Path | None) -> dict[str, Any] | None:
    """``<sweep dir>/optuna_study.json`` (see :func:`prepare_study`), or None when unreadable."""
    import json

    if sweep_dir is None:
        return None
    try:
        record = json.loads((sweep_dir / STUDY_FILE).read_text(encoding="utf-8"))
        int(record["first_trial"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def trial_number(sweep_dir: Path | None, job_num: int) -> int | None:
    """The Optuna trial number of job ``job_num`` of a study sweep, or None when unknown.

    The sweeper asks the study for one trial per job, in job order; with no other process
    adding trials to the same study at the same time, job ``k`` is trial ``first_trial + k``.
    """
    record = read_study_record(sweep_dir)
    return None if record is None else int(record["first_trial"]) + int(job_num)


def find_study_run(client: Any, experiment_name: str, settings: StudySettings) -> str | None:
    """The id of the newest study run of ``settings.key`` in ``experiment_name``, or None."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    key = settings.key.replace("'", "\\'")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{STUDY_TAG}` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


@dataclass
class StudySummary:
    """What the study holds after an invocation (all invocations together)."""

    study_name: str
    direction: str
    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_number: int | None = None
    trials_csv: str = ""

    def markdown(self) -> str:
        """A short Markdown report (the study run's note)."""
        counts = ", ".join(f"{state} {count}" for state, count in sorted(self.counts.items()))
        lines = [f"### Optuna study {self.study_name} ({self.direction})", "",
                 f"Trials: {counts or 'none'}.", ""]
        if self.best_number is None:
            lines.append("No trial has completed yet.")
        else:
            lines += [f"Best trial {self.best_number}: value {self.best_value:.6g}", "",
                      "| parameter | value |", "|---|---|"]
            lines += [f"| {name} | {value} |" for name, value in sorted(self.best_params.items())]
        return "\n".join(lines) + "\n"


def summarize_study(settings: StudySettings) -> StudySummary:
    """Load the study from its storage and summarise every trial (single objective).

    Raises:
        KeyError: no study of that name in the storage.
    """
    optuna = require_optuna()
    study = optuna.load_study(study_name=settings.study_name, storage=settings.storage)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    summary = StudySummary(settings.study_name,
                           "/".join(direction.name.lower() for direction in study.directions),
                           counts, trials_csv=_trials_csv(trials))
    if len(study.directions) == 1 and counts.get("COMPLETE"):
        best = study.best_trial
        summary.best_value = float(best.value) if best.value is not None else None
        summary.best_params = dict(best.params)
        summary.best_number = int(best.number)
    return summary


def _trials_csv(trials: Sequence[Any]) -> str:
    names = sorted({name for trial in trials for name in trial.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", "datetime_start", "datetime_complete", *names])
    for trial in trials:
        value = trial.values[0] if trial.values else None
        writer.writerow([trial.number, trial.state.name, "" if value is None else repr(value),
                         trial.datetime_start or "", trial.datetime_complete or "",
                         *[trial.params.get(name, "") for name in names]])
    return buffer.getvalue()


def log_study_summary(tracker: Any, summary: StudySummary, sweep_dir: Path) -> None:
    """Log ``summary`` on the study run (``tracker``) and write ``optuna_trials.csv``.

    Metrics (step = number of finished trials): ``optuna/best_value``, ``optuna/best_trial``,
    ``optuna/trials_<state>``; tags ``best.<param>``, ``optuna.direction``, the Markdown note.
    """
    from unet3d.runs.files import write_text_atomic

    csv_path = write_text_atomic(sweep_dir / TRIALS_CSV, summary.trials_csv)
    finished = sum(count for state, count in summary.counts.items()
                   if state in ("COMPLETE", "FAIL", "PRUNED"))
    metrics: dict[str, float] = {f"optuna/trials_{state.lower()}": float(count)
                                 for state, count in summary.counts.items()}
    tags: dict[str, str] = {"optuna.direction": summary.direction,
                            "mlflow.note.content": summary.markdown()}
    if summary.best_number is not None and summary.best_value is not None:
        metrics["optuna/best_value"] = summary.best_value
        metrics["optuna/best_trial"] = float(summary.best_number)
        tags.update({f"best.{name}": str(value) for name, value in summary.best_params.items()})
    tracker.log_metrics(metrics, step=finished)
    tracker.set_tags(tags)
    tracker.log_artifact(csv_path, "optuna")
    results = sweep_dir / "optimization_results.yaml"
    if results.exists():
        tracker.log_artifact(results, "optuna")


__all__ = [
    "DEFAULT_OPTIMIZED_METRIC",
    "OPTIMIZED_METRIC_KEY",
    "STUDY_RUN_KIND",
    "STUDY_TAG",
    "TRIAL_RUN_KIND",
    "StudySettings",
    "StudySummary",
    "find_study_run",
    "prepare_study",
    "read_study_record",
    "require_optuna",
    "trial_number",
    "is_study_sweep",
    "log_study_summary",
    "objective_value",
    "optimized_metric_names",
    "study_settings",
    "summarize_study",
]
