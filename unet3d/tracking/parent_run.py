"""The parent MLflow run of a Hydra sweep, as the sweep's jobs find it.

``CrossValidationCallback.on_multirun_start`` (:mod:`unet3d.sweep_callback`) writes the
parent run id to ``<sweep dir>/mlflow_parent_run_id``; each job reads it here to nest its run,
in the sweep's process (basic launcher) or another one (joblib, submitit).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unet3d.tracking.tracker import read_run_id_file

#: File in the sweep dir holding the parent run id.
PARENT_RUN_ID_FILE = "mlflow_parent_run_id"


def read_parent_run_id(sweep_dir: str | os.PathLike) -> str | None:
    """Return the parent run id written by `on_multirun_start` to `sweep_dir`, or None."""
    return read_run_id_file(Path(sweep_dir) / PARENT_RUN_ID_FILE)


def current_sweep_dir() -> Path | None:
    """The absolute sweep dir of the running Hydra job in MULTIRUN mode, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(str(hydra_cfg.runtime.cwd)) / sweep_dir
    return sweep_dir.resolve()


def current_parent_run_id() -> str | None:
    """The sweep's parent run id for the running Hydra job (None outside a multirun)."""
    sweep_dir = current_sweep_dir()
    return read_parent_run_id(sweep_dir) if sweep_dir is not None else None


# ---------------------------------------------------------------- the sweep process's side


def sweep_dir_of(config: DictConfig) -> Path:
    """The absolute ``hydra.sweep.dir`` of a sweep's config (relative to ``hydra.runtime.cwd``)."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if not sweep_dir.is_absolute():
        cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None) or os.getcwd()
        sweep_dir = Path(str(cwd)) / sweep_dir
    return sweep_dir.resolve()


@contextlib.contextmanager
def hydra_config_set(config: DictConfig) -> Iterator[None]:
    """Make ``${hydra:...}`` interpolations resolvable in the sweep process, then restore."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    previous = instance.cfg
    readonly = config.hydra._get_flag("readonly")
    try:
        instance.set_config(config)
        yield
    finally:
        instance.cfg = previous
        OmegaConf.set_readonly(config.hydra, readonly)


def resolved(config: DictConfig, key: str) -> Any:
    """``key`` of ``config`` resolved to plain Python (a container for a node), or None."""
    value = OmegaConf.select(config, key, default=None)
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def parent_run_name(sweep_dir: Path) -> str:
    """``cv-<date>_<time-id>`` for a dated sweep dir, else ``cv-<folder name>``."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", sweep_dir.parent.name):
        return f"cv-{sweep_dir.parent.name}_{sweep_dir.name}"
    return f"cv-{sweep_dir.name}"
