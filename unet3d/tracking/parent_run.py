"""The parent MLflow run of a Hydra sweep, as the sweep's jobs find it.

``CrossValidationCallback.on_multirun_start`` (:mod:`unet3d.tracking.sweep_callback`) writes the
parent run id to ``<sweep dir>/mlflow_parent_run_id``; each job reads it here to nest its run,
in the sweep's process (basic launcher) or another one (joblib, submitit).
"""

from __future__ import annotations

import os
from pathlib import Path

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
