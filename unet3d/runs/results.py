"""The jobs of a sweep and their results: finding the job dirs, reading their ``results.json``.

Each job writes ``<job output dir>/results.json`` through its record
(:class:`unet3d.runs.identity.RunIdentity`, schema there) at the end of a job, successful or
not. `collect_job_results` reads every job dir of a sweep (a job dir without ``results.json``
counts as FAILED: it was killed or crashed hard; its fold is its recorded identity's); the
cross-validation summary (:mod:`unet3d.tracking.summary`) is computed from those records.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from unet3d.runs.identity import (
    IDENTITY_FILE,
    RESULTS_FILE,
    read_identity,
    read_job_result,
    write_job_result,
)

logger = logging.getLogger(__name__)

__all__ = ["RESULTS_FILE", "collect_job_results", "find_job_dirs", "read_job_result",
           "write_job_result"]

_MISSING_RESULT_ERROR = "no results.json: the job did not finish (killed, crashed or still running)"


def find_job_dirs(sweep_dir: str | os.PathLike, output_subdir: str = ".hydra") -> list[Path]:
    """Job dirs under `sweep_dir`, at any depth.

    A job dir holds a `results.json`, a `run_identity.json` (written when the job first uses
    its folder) or Hydra's `<output_subdir>/overrides.yaml`.

    Args:
        sweep_dir: the sweep's output folder (`hydra.sweep.dir`).
        output_subdir: Hydra's `hydra.output_subdir` ("" or None: not looked for).

    Returns:
        The job dirs (absolute), sorted by Hydra job number (the leading integer of the folder
        name), then path; empty when `sweep_dir` is not a folder.
    """
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        return []
    found = {path.parent for path in sweep_dir.rglob(RESULTS_FILE)}
    found |= {path.parent for path in sweep_dir.rglob(IDENTITY_FILE)}
    if output_subdir:
        found |= {path.parent.parent for path in sweep_dir.rglob(f"{output_subdir}/overrides.yaml")}
    found.discard(sweep_dir)
    return sorted(found, key=lambda path: _job_sort_key(path, sweep_dir))


def collect_job_results(
    sweep_dir: str | os.PathLike, output_subdir: str = ".hydra"
) -> list[dict[str, Any]]:
    """Read every job's result in `sweep_dir` (see `find_job_dirs`).

    A job dir with no (or an unreadable) `results.json` yields a FAILED record whose
    overrides come from Hydra's `<output_subdir>/overrides.yaml` and whose run id from the
    job's `mlflow_run_id` file. Every record gets `job_dir`.
    """
    records = []
    for job_dir in find_job_dirs(sweep_dir, output_subdir):
        try:
            record = read_job_result(job_dir)
            error = _MISSING_RESULT_ERROR
        except (OSError, ValueError) as exception:
            record = None
            error = f"unreadable {RESULTS_FILE}: {exception}"
        if record is None:
            overrides = _read_hydra_overrides(job_dir, output_subdir)
            record = {
                "status": "FAILED",
                "fold": _fold_of(job_dir),
                "overrides": overrides,
                "metrics": {},
                "error": error,
                "mlflow_run_id": _read_first_line(job_dir / "mlflow_run_id"),
            }
        record = dict(record)
        record.setdefault("overrides", _read_hydra_overrides(job_dir, output_subdir))
        record.setdefault("metrics", {})
        record.setdefault("error", None)
        record.setdefault("mlflow_run_id", None)
        if record.get("fold") is None:
            record["fold"] = _fold_of(job_dir)
        record["status"] = str(record.get("status") or "FAILED").upper()
        record["job_dir"] = str(job_dir)
        records.append(record)
    return records


# ---- internals


def _job_sort_key(path: Path, sweep_dir: Path | None = None) -> tuple[int, str]:
    """Hydra's job number (leading integer of the folder under the sweep dir), then path."""
    name = path.name
    if sweep_dir is not None and path.is_relative_to(sweep_dir):
        name = path.relative_to(sweep_dir).parts[0]
    match = re.match(r"(\d+)", name)
    return (int(match.group(1)) if match else 10**9, str(path))


def _read_first_line(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _read_hydra_overrides(job_dir: Path, output_subdir: str) -> list[str]:
    path = job_dir / output_subdir / "overrides.yaml" if output_subdir else None
    if path is None or not path.exists():
        return []
    try:
        from omegaconf import OmegaConf

        return [str(item) for item in OmegaConf.to_container(OmegaConf.load(path)) or []]
    except Exception:  # noqa: BLE001 - a damaged file: no overrides
        logger.warning("Could not read %s", path)
        return []


def _fold_of(job_dir: Path) -> int | None:
    """The job's fold: its record (``run_identity.json``, else the composed config that the job
    wrote to ``.hydra/`` when it took its folder); None for a folder with neither."""
    identity = read_identity(job_dir)
    return identity.fold if identity is not None else None
