"""Per-job results of a run folder: ``results.json``, and finding the jobs of a sweep.

Each job writes ``<job output dir>/results.json`` through `write_job_result` (the runner does it
at the end of a job, successful or not). `collect_job_results` reads every job dir of a sweep (a
job dir without ``results.json`` counts as FAILED: it was killed or crashed hard); the
cross-validation summary (:mod:`unet3d.tracking.summary`) is computed from those records.

``results.json`` schema::

    {"status": "FINISHED" | "FAILED" | "KILLED", "fold": int | null,
     "overrides": ["fold=0", "precision=amp"], "metrics": {"Dice_WT": 0.81, ...},
     "error": str | null, "mlflow_run_id": str | null, ...extra keys}
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unet3d.runs.files import write_json_atomic
from unet3d.runs.naming import parse_override

logger = logging.getLogger(__name__)

#: Name of the per-job result file in the job's output dir.
RESULTS_FILE = "results.json"
_MISSING_RESULT_ERROR = "no results.json: the job did not finish (killed, crashed or still running)"


def write_job_result(
    output_dir: str | os.PathLike,
    status: str,
    fold: int | None,
    overrides: Sequence[str],
    metrics: Mapping[str, Any] | None = None,
    error: str | None = None,
    mlflow_run_id: str | None = None,
    **extra: Any,
) -> Path:
    """Write `<output_dir>/results.json` atomically and return its path.

    `status` is "FINISHED", "FAILED" or "KILLED"; `metrics` are the job's final (evaluation)
    metrics, numbers only (non-finite values are stored as null); `extra` keys are stored as
    given (JSON-serialisable values).
    """
    status = str(status).upper()
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status: must be FINISHED, FAILED or KILLED, got {status!r}")
    record = {
        "status": status,
        "fold": None if fold is None else int(fold),
        "overrides": [str(item) for item in overrides],
        "metrics": {str(key): _json_number(value) for key, value in (metrics or {}).items()},
        "error": None if error is None else str(error),
        "mlflow_run_id": mlflow_run_id,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
    return write_json_atomic(Path(output_dir) / RESULTS_FILE, record)


def read_job_result(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Return the job's `results.json` as a dict, or None when it does not exist."""
    path = Path(output_dir) / RESULTS_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


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
    from unet3d.runs.identity import IDENTITY_FILE

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
                "fold": _fold_from(overrides, job_dir, output_subdir),
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
            record["fold"] = _fold_from(record["overrides"], job_dir, output_subdir)
        record["status"] = str(record.get("status") or "FAILED").upper()
        record["job_dir"] = str(job_dir)
        records.append(record)
    return records


# ---- internals


def _json_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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


def _fold_from(overrides: Sequence[str], job_dir: Path, output_subdir: str) -> int | None:
    """The job's fold: its recorded identity, else its `fold=` override, else its config."""
    from unet3d.runs.identity import IDENTITY_FILE, read_identity

    if (job_dir / IDENTITY_FILE).is_file():
        identity = read_identity(job_dir)
        if identity is not None:
            return identity.fold
    for override in overrides:
        key, value = parse_override(override)
        if key == "fold":
            try:
                return int(value)
            except ValueError:
                return None
    config_path = job_dir / output_subdir / "config.yaml" if output_subdir else None
    if config_path is not None and config_path.exists():
        try:
            from omegaconf import OmegaConf

            fold = OmegaConf.load(config_path).get("fold")
            return int(fold) if fold is not None else None
        except Exception:  # noqa: BLE001
            return None
    return None
