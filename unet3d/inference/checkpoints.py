"""Which trained models to run: checkpoint prefixes from a checkpoint spec.

``resolve_model_checkpoints`` turns ``predict.checkpoint`` into checkpoint prefixes. Accepted
forms (and lists of them, which make an ensemble):

- a checkpoint prefix (``.../checkpoints/ckpt-600``, the ``.index`` file must exist);
- a ``checkpoints/`` folder or a training run's output dir (the newest checkpoint in it);
- the sweep dir of a Hydra cross-validation run (``python -m unet3d.run -m fold=0,1,2,3,4``):
  every job folder with a checkpoint, at any depth below it, is one fold model, and its fold
  is read from the job's recorded identity (``run_identity.json``, else ``.hydra/config.yaml``),
  never from the folder's name. With ``fold`` given only that fold's job is taken, else all
  folds (an ensemble);
- ``runs:/<MLflow run id>``: the output dir recorded on that run (a sweep's parent run: its
  sweep dir), which must exist on this machine (``unet3d.tracking.references``);
- ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: a version of the MLflow Model
  Registry, resolved through the run it was registered from (``unet3d.tracking.references``).

``unet3d.inference.models.load_ensemble`` then rebuilds and restores each prefix's network.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from unet3d.errors import CheckpointError, ConfigError
from unet3d.runs.identity import IDENTITY_FILE, read_identity

log = logging.getLogger(__name__)

#: Config key named in the errors of ``resolve_model_checkpoints``.
CHECKPOINT_KEY = "predict.checkpoint"
CHECKPOINT_FOLDER = "checkpoints"
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
_NUMBER = re.compile(r"(\d+)$")


# ---------------------------------------------------------------------------------------------
# Checkpoint resolution
# ---------------------------------------------------------------------------------------------


def _as_list(spec: Any) -> list[Any]:
    if spec is None:
        return []
    if isinstance(spec, str | Path):
        return [spec]
    try:
        from omegaconf import ListConfig, OmegaConf

        if isinstance(spec, ListConfig):
            return list(OmegaConf.to_container(spec, resolve=True))
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(spec, Iterable):
        return list(spec)
    return [spec]


def _latest_in_folder(folder: Path) -> str | None:
    """Newest checkpoint prefix in ``folder``: the newest complete one (as resume takes it,
    ``unet3d.training.checkpoint.latest_checkpoint``: also one a kill left out of the
    ``checkpoint`` state file), else the highest ``*.index``."""
    if not folder.is_dir():
        return None
    from unet3d.training.checkpoint import latest_checkpoint

    latest = latest_checkpoint(folder)
    if latest and Path(f"{latest}.index").exists():
        return str(latest)
    numbered: list[tuple[int, str]] = []
    for index_file in folder.glob("*.index"):
        prefix = index_file.with_suffix("")
        match = _NUMBER.search(prefix.name)
        numbered.append((int(match.group(1)) if match else -1, str(prefix)))
    return max(numbered)[1] if numbered else None


def checkpoint_of(path: Path) -> str | None:
    """The checkpoint prefix named by ``path`` (prefix, ``checkpoints/`` folder or run dir)."""
    if Path(f"{path}.index").is_file():
        return str(path)
    if path.is_dir():
        return _latest_in_folder(path) or _latest_in_folder(path / CHECKPOINT_FOLDER)
    return None


def run_dir_of(prefix: str | Path) -> Path:
    """The training run dir of a checkpoint prefix (the parent of its ``checkpoints/``)."""
    folder = Path(prefix).parent
    return folder.parent if folder.name == CHECKPOINT_FOLDER else folder


def run_config(run_dir: Path) -> Any | None:
    """The run's composed config (``.hydra/config.yaml``) or None when absent or unreadable."""
    path = Path(run_dir) / HYDRA_CONFIG
    if not path.is_file():
        return None
    try:
        from omegaconf import OmegaConf

        return OmegaConf.load(path)
    except Exception as error:  # a damaged file only loses the fold information
        log.warning("%s: cannot read the run's config (%s)", path, error)
        return None


def _run_fold(run_dir: Path) -> int | None:
    """The fold a run folder was trained as: its ``run_identity.json``, else its config's."""
    if (Path(run_dir) / IDENTITY_FILE).is_file():
        identity = read_identity(run_dir)
        if identity is not None:
            return identity.fold
    config = run_config(run_dir)
    if config is None:
        return None
    try:
        value = config.get("fold")
    except Exception:  # interpolation errors and the like
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _is_job_folder(folder: Path, dirnames: Sequence[str], filenames: Sequence[str]) -> bool:
    """A folder is a job of a sweep when it holds a run's record or its checkpoints."""
    return (
        IDENTITY_FILE in filenames
        or CHECKPOINT_FOLDER in dirnames
        or (".hydra" in dirnames and (folder / HYDRA_CONFIG).is_file())
        or "checkpoint" in filenames
        or any(name.endswith(".index") for name in filenames)
    )


def sweep_job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep dir, at any depth below it, sorted by path.

    A job folder holds ``run_identity.json``, ``.hydra/config.yaml``, a ``checkpoints/``
    folder or checkpoint files. Hidden folders are skipped and a job's own subfolders
    (``checkpoints/``, ``predictions/``, ...) are not searched; ``sweep_dir`` itself is not a
    job. Symbolic links to folders are not followed.

    Args:
        sweep_dir: the sweep's output folder (Hydra's ``hydra.sweep.dir``).

    Returns:
        The job folders (empty when there is none or ``sweep_dir`` is not a folder).
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(sweep_dir):
        folder = Path(dirpath)
        if folder != Path(sweep_dir) and _is_job_folder(folder, dirnames, filenames):
            found.append(folder)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
    return sorted(found)


def _sweep_members(
    sweep_dir: Path, fold: int | None, key: str
) -> list[str]:
    """Checkpoints of the jobs of a Hydra sweep dir (one fold, or all).

    Jobs are found at any depth (`sweep_job_folders`) and their fold is read from their
    recorded identity (``run_identity.json``, else ``.hydra/config.yaml``), never from the
    folder's name.
    """
    jobs: list[tuple[Path, str | None, int | None]] = []
    for folder in sweep_job_folders(sweep_dir):
        jobs.append((folder, checkpoint_of(folder), _run_fold(folder)))

    def name(folder: Path) -> str:
        return folder.relative_to(sweep_dir).as_posix()

    trained = [(child, prefix, job_fold) for child, prefix, job_fold in jobs if prefix]
    if not trained:
        raise CheckpointError(
            f"{key}: {sweep_dir}: no checkpoint found (expected a checkpoint prefix such as "
            f"ckpt-600, a {CHECKPOINT_FOLDER}/ folder, a training run dir, or a sweep dir whose "
            f"job folders hold {CHECKPOINT_FOLDER}/)"
        )
    untrained = [name(child) for child, prefix, _ in jobs if not prefix]
    if fold is not None:
        chosen = [(child, prefix) for child, prefix, job_fold in trained if job_fold == fold]
        if not chosen:
            known = sorted({job_fold for _, _, job_fold in trained if job_fold is not None})
            missing = [name(child) for child, _, job_fold in jobs if job_fold == fold]
            detail = (
                f"its job {missing[0]} has no checkpoint" if missing
                else f"checkpointed folds: {known}"
            )
            raise CheckpointError(
                f"{key}: sweep {sweep_dir} has no checkpoint for fold {fold} ({detail})"
            )
        if len(chosen) > 1:
            raise ConfigError(
                f"{key}: sweep {sweep_dir} has {len(chosen)} jobs for fold {fold} "
                f"({', '.join(name(child) for child, _ in chosen)}); name one job folder instead"
            )
        log.info("fold %d of sweep %s: %s", fold, sweep_dir, chosen[0][1])
        return [chosen[0][1]]
    if untrained:
        log.warning(
            "sweep %s: job folder(s) without a checkpoint left out of the ensemble: %s",
            sweep_dir, ", ".join(untrained),
        )
    folds = [job_fold for _, _, job_fold in trained]
    repeated = sorted({value for value in folds if value is not None and folds.count(value) > 1})
    if repeated:
        log.warning(
            "sweep %s: several jobs share fold(s) %s; all %d of them join the ensemble",
            sweep_dir, repeated, len(trained),
        )
    trained.sort(key=lambda job: (job[2] is None, job[2] if job[2] is not None else 0, job[0]))
    log.info(
        "sweep %s: ensemble of %d model(s) (folds %s)", sweep_dir, len(trained),
        [job_fold for _, _, job_fold in trained],
    )
    return [prefix for _, prefix, _ in trained]  # type: ignore[misc]


def resolve_model_checkpoints(
    spec: Any, fold: int | None = None, key: str = CHECKPOINT_KEY,
    tracking_uri: str | None = None,
) -> list[str]:
    """Turn a checkpoint spec into the checkpoint prefixes of the model(s) to run.

    Args:
        spec: a checkpoint prefix, a ``checkpoints/`` folder, a training run dir, a Hydra
            sweep dir of a cross-validation run, an MLflow run reference ``runs:/<run id>``
            (a job's run or a sweep's parent run, looked up in ``tracking_uri``), a registered
            model ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` (its version's
            run), or a list of any of these (an ensemble).
        fold: with a sweep dir, take only the job of this fold (read from the job's
            ``run_identity.json`` or ``.hydra/config.yaml``); None takes every fold. A single
            run's fold is only checked (a warning when it differs).
        key: the config key named in errors.
        tracking_uri: the MLflow store of ``runs:/`` and ``models:/`` references.

    Returns:
        Checkpoint prefixes (without ``.index``), duplicates removed, in spec order.

    Raises:
        ConfigError: the spec is empty, or a sweep has several jobs for ``fold``.
        CheckpointError: a path does not exist or holds no checkpoint, or a sweep has no
            checkpoint for ``fold``.
    """
    from unet3d.tracking.references import resolve_run_references

    items = [item for item in _as_list(spec) if item is not None and str(item) != ""]
    items = resolve_run_references(items, tracking_uri, key)
    if not items:
        raise ConfigError(
            f"{key}: missing; pass {key}=PATH (a checkpoint, a training run dir, a sweep dir "
            f"of a cross-validation run, or a list of them: {key}=[RUN_A,RUN_B])"
        )
    prefixes: list[str] = []
    for item in items:
        path = Path(str(item)).expanduser()
        prefix = checkpoint_of(path)
        if prefix is not None:
            if fold is not None:
                run_fold = _run_fold(run_dir_of(prefix))
                if run_fold is not None and run_fold != fold:
                    log.warning(
                        "%s: %s was trained as fold %d, not fold %d", key, prefix, run_fold, fold
                    )
            found = [prefix]
        elif path.is_dir():
            found = _sweep_members(path, fold, key)
        elif not path.exists() and not Path(f"{path}.index").exists():
            raise CheckpointError(f"{key}: {path}: path does not exist")
        else:
            raise CheckpointError(
                f"{key}: {path}: no TensorFlow checkpoint (expected a checkpoint prefix such as "
                f"ckpt-600, a {CHECKPOINT_FOLDER}/ folder, a run dir or a sweep dir)"
            )
        for prefix in found:
            if prefix not in prefixes:
                prefixes.append(prefix)
    return prefixes


def _job_tracking_uri(cfg: Any, spec: Any) -> str | None:
    """The job's MLflow store when ``spec`` holds a ``runs:/`` or ``models:/`` reference."""
    from unet3d.tracking.references import is_reference

    if not any(is_reference(str(item)) for item in _as_list(spec)):
        return None
    from unet3d.tracking.store import resolve_tracking_uri

    return resolve_tracking_uri(cfg.get("tracking"), cfg.paths.root_dir)


def job_model_checkpoints(cfg: Any, spec: Any, fold: int | None = None,
                          key: str = CHECKPOINT_KEY) -> list[str]:
    """``resolve_model_checkpoints`` for a job: ``runs:/`` references are looked up in the
    job's own MLflow store (``tracking.uri``, ``MLFLOW_TRACKING_URI`` or the local default)."""
    return resolve_model_checkpoints(spec, fold, key, _job_tracking_uri(cfg, spec))


def job_reference_folder(cfg: Any, spec: str, key: str) -> Path:
    """The folder a spec names: a path, or the output dir of a ``runs:/`` / ``models:/``
    reference, looked up in the job's own MLflow store (a sweep's parent run: its sweep dir).

    Raises:
        CheckpointError: a reference that does not resolve (named with ``key``).
    """
    uri = _job_tracking_uri(cfg, spec)
    if uri is not None:
        from unet3d.tracking.references import resolve_run_references

        spec = str(resolve_run_references(spec, uri, key))
    return Path(str(spec)).expanduser()
