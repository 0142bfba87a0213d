"""Cross-validation summary of a Hydra sweep, computed from the jobs' `results.json` files.

Each job writes `<job output dir>/results.json` through `write_job_result` (the runner does it
at the end of a job, successful or not). At the end of the sweep `collect_job_results` reads
every job dir of the sweep (a job dir without `results.json` counts as FAILED: it was killed or
crashed hard), and `cross_validation_summary` groups the jobs by their overrides other than
`fold` and computes, for every metric, mean, standard deviation, min and max over the finished
folds.

Standard deviation: the *sample* standard deviation, `numpy.std(values, ddof=1)` (`STD_DDOF`);
undefined (NaN, not logged) with fewer than two finished folds. Non-finite metric values (e.g.
HD95 of an empty region) are left out of that metric's statistics; `count` says how many
values each statistic used.

`results.json` schema::

    {"status": "FINISHED" | "FAILED" | "KILLED", "fold": int | null,
     "overrides": ["fold=0", "precision=amp"], "metrics": {"Dice_WT": 0.81, ...},
     "error": str | null, "mlflow_run_id": str | null, ...extra keys}
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.runs.files import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

#: Name of the per-job result file in the job's output dir.
RESULTS_FILE = "results.json"
#: Delta degrees of freedom of the reported standard deviation (1 = sample std).
STD_DDOF = 1
#: Statistics reported per metric, in table order.
STATISTICS = ("mean", "std", "min", "max")
#: File names of the summary tables written to the sweep dir and logged on the parent run.
SUMMARY_MARKDOWN = "cv_summary.md"
SUMMARY_CSV = "cv_summary.csv"
FOLDS_CSV = "cv_folds.csv"

_FINISHED = "FINISHED"
_MISSING_RESULT_ERROR = "no results.json: the job did not finish (killed, crashed or still running)"


# --------------------------------------------------------------------------- job results


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


# --------------------------------------------------------------------------- summary


@dataclass
class MetricSummary:
    """Statistics of one metric over the finished folds of a group."""

    metric: str
    mean: float
    std: float
    min: float
    max: float
    count: int

    def value(self, statistic: str) -> float:
        """Return the statistic named `statistic` ("mean", "std", "min" or "max")."""
        return float(getattr(self, statistic))


@dataclass
class GroupSummary:
    """The cross-validation summary of the jobs sharing the same non-fold overrides."""

    group: str
    overrides: dict[str, str]
    folds: list[dict[str, Any]]
    metrics: dict[str, MetricSummary] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Human-readable group name ("all" when the sweep has no other override)."""
        return self.group or "all"

    @property
    def finished(self) -> list[dict[str, Any]]:
        """Job records that finished."""
        return [record for record in self.folds if record.get("status") == _FINISHED]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Job records that did not finish (FAILED, KILLED or without results.json)."""
        return [record for record in self.folds if record.get("status") != _FINISHED]


def parse_override(override: str) -> tuple[str, str]:
    """Split a Hydra override "key=value" ("+key=", "++key=", "~key" too) into (key, value)."""
    text = str(override).strip()
    key, _, value = text.partition("=")
    return key.lstrip("+~").strip(), value.strip()


def group_overrides(
    overrides: Iterable[str], group_keys_exclude: Sequence[str] = ("fold",)
) -> dict[str, str]:
    """The overrides that define a group: all but the excluded keys and `hydra.*` ones, sorted."""
    selected = {}
    for override in overrides:
        key, value = parse_override(override)
        if not key or key in group_keys_exclude or key == "hydra" or key.startswith("hydra"):
            continue
        selected[key] = value
    return dict(sorted(selected.items()))


def cross_validation_summary(
    results: Sequence[Mapping[str, Any]], group_keys_exclude: Sequence[str] = ("fold",)
) -> list[GroupSummary]:
    """Group job results by their non-fold overrides and summarise each metric.

    Only overrides that differ between jobs define groups: a plain K-fold sweep gives one
    group with the empty key "" (label "all").

    For every metric of the finished folds of a group: mean, sample std (`STD_DDOF`), min, max
    and the number of finite values. Groups are sorted by their key, folds by fold number.
    """
    per_result = [
        group_overrides(result.get("overrides") or [], group_keys_exclude) for result in results
    ]
    # Overrides shared by every job (e.g. `training.max_steps=100` given once) do not
    # distinguish configurations: leave them out of the group keys.
    shared = {
        key: value
        for key, value in (per_result[0].items() if per_result else ())
        if all(overrides.get(key) == value for overrides in per_result)
    }
    groups: dict[str, GroupSummary] = {}
    for result, all_overrides in zip(results, per_result, strict=True):
        overrides = {key: value for key, value in all_overrides.items() if key not in shared}
        key = ",".join(f"{name}={value}" for name, value in overrides.items())
        group = groups.setdefault(key, GroupSummary(group=key, overrides=overrides, folds=[]))
        group.folds.append(dict(result))
    summaries = []
    for key in sorted(groups):
        group = groups[key]
        group.folds.sort(key=lambda record: (_fold_number(record), str(record.get("job_dir", ""))))
        names = sorted({name for record in group.finished for name in record.get("metrics", {})})
        for name in names:
            values = [
                float(value)
                for record in group.finished
                if _is_finite(value := record.get("metrics", {}).get(name))
            ]
            if not values:
                continue
            array = np.asarray(values, dtype=np.float64)
            std = float(np.std(array, ddof=STD_DDOF)) if array.size > STD_DDOF else math.nan
            group.metrics[name] = MetricSummary(
                metric=name,
                mean=float(np.mean(array)),
                std=std,
                min=float(np.min(array)),
                max=float(np.max(array)),
                count=int(array.size),
            )
        summaries.append(group)
    return summaries


def summary_metric_name(statistic: str, metric: str, group_prefix: str | None = None) -> str:
    """MLflow metric name of a statistic: `cv_mean/Dice_WT` or `cv_mean/<group>/Dice_WT`."""
    parts = [f"cv_{statistic}"]
    if group_prefix:
        parts.append(sanitize_group(group_prefix))
    parts.append(_sanitize_metric(metric))
    return "/".join(parts)


def sanitize_group(group: str) -> str:
    """A group key as an MLflow name part: `precision=amp,model=x` -> `precision-amp_model-x`."""
    text = str(group).replace("=", "-").replace(",", "_")
    return re.sub(r"[^\w.\-]", "_", text) or "all"


def summary_metrics(summary: GroupSummary, group_prefix: str | None = None) -> dict[str, float]:
    """The metrics to log for a group: `cv_<stat>/[<group>/]<metric>` plus fold counts.

    Counts: `cv_folds/total`, `cv_folds/finished`, `cv_folds/failed` (with the group prefix
    inserted after `cv_folds/` when given). NaN statistics (std of one fold) are omitted.
    """
    values: dict[str, float] = {}
    for name, metric in summary.metrics.items():
        for statistic in STATISTICS:
            value = metric.value(statistic)
            if math.isfinite(value):
                values[summary_metric_name(statistic, name, group_prefix)] = value
    prefix = f"cv_folds/{sanitize_group(group_prefix)}/" if group_prefix else "cv_folds/"
    values[prefix + "total"] = float(len(summary.folds))
    values[prefix + "finished"] = float(len(summary.finished))
    values[prefix + "failed"] = float(len(summary.failed))
    return values


# --------------------------------------------------------------------------- tables


def format_markdown_table(summaries: GroupSummary | Sequence[GroupSummary], digits: int = 4) -> str:
    """Markdown report: per group, a table with one row per metric and one column per fold,
    then mean / std / min / max / n; a `status` row and the failed folds with their errors."""
    if isinstance(summaries, GroupSummary):
        summaries = [summaries]
    sections = []
    for summary in summaries:
        folds = summary.folds
        header = ["metric", *[_fold_label(record) for record in folds], *STATISTICS, "n"]
        rows = [["status", *[str(record.get("status")) for record in folds], *[""] * 5]]
        names = sorted({name for record in folds for name in record.get("metrics", {})})
        for name in names:
            cells = [name]
            for record in folds:
                value = record.get("metrics", {}).get(name)
                finished = record.get("status") == _FINISHED
                cells.append(_format_number(value, digits) if finished else "–")
            metric = summary.metrics.get(name)
            if metric is None:
                cells.extend(["–"] * 4 + ["0"])
            else:
                cells.extend(_format_number(metric.value(stat), digits) for stat in STATISTICS)
                cells.append(str(metric.count))
            rows.append(cells)
        lines = [
            f"### Cross-validation: {summary.label} "
            f"({len(summary.finished)}/{len(folds)} folds finished)",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] * len(header)) + "|",
        ]
        lines += ["| " + " | ".join(_escape_cell(cell) for cell in row) + " |" for row in rows]
        lines.append("")
        if summary.failed:
            lines.append("Failed folds:")
            for record in summary.failed:
                error = _escape_cell(_first_line(record.get("error")) or "unknown error")
                lines.append(f"- {_fold_label(record)}: {record.get('status')} — {error}")
        else:
            lines.append("All folds finished.")
        lines.append("")
        sections.append("\n".join(lines))
    note = (
        f"std: sample standard deviation (numpy ddof={STD_DDOF}) over the finished folds; "
        "n: number of folds with a finite value."
    )
    return "\n".join(sections) + note + "\n"


def folds_csv(summaries: Sequence[GroupSummary]) -> str:
    """CSV with one row per job: group, fold, status, run id, job dir, error, then metrics."""
    names = sorted(
        {name for summary in summaries for record in summary.folds for name in record["metrics"]}
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "fold", "status", "mlflow_run_id", "job_dir", "error", *names])
    for summary in summaries:
        for record in summary.folds:
            metrics = record.get("metrics", {})
            writer.writerow(
                [
                    summary.group,
                    record.get("fold"),
                    record.get("status"),
                    record.get("mlflow_run_id") or "",
                    record.get("job_dir", ""),
                    _first_line(record.get("error")) or "",
                    *[_csv_number(metrics.get(name)) for name in names],
                ]
            )
    return buffer.getvalue()


def summary_csv(summaries: Sequence[GroupSummary]) -> str:
    """CSV with one row per group and metric: group, metric, mean, std, min, max, n."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["group", "metric", *STATISTICS, "n"])
    for summary in summaries:
        for name, metric in summary.metrics.items():
            writer.writerow(
                [
                    summary.group,
                    name,
                    *[_csv_number(metric.value(stat)) for stat in STATISTICS],
                    metric.count,
                ]
            )
    return buffer.getvalue()


def write_summary_tables(
    summaries: Sequence[GroupSummary], out_dir: str | os.PathLike
) -> dict[str, Path]:
    """Write `cv_summary.md`, `cv_folds.csv` and `cv_summary.csv` to `out_dir` atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        SUMMARY_MARKDOWN: format_markdown_table(summaries),
        FOLDS_CSV: folds_csv(summaries),
        SUMMARY_CSV: summary_csv(summaries),
    }
    return {name: write_text_atomic(out_dir / name, text) for name, text in contents.items()}


# --------------------------------------------------------------------------- internals


def _json_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _is_finite(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _fold_number(record: Mapping[str, Any]) -> int:
    fold = record.get("fold")
    return int(fold) if isinstance(fold, int | float) and not isinstance(fold, bool) else 10**9


def _fold_label(record: Mapping[str, Any]) -> str:
    fold = record.get("fold")
    return f"fold {fold}" if fold is not None else f"job {Path(str(record.get('job_dir'))).name}"


def _format_number(value: Any, digits: int) -> str:
    return f"{float(value):.{digits}f}" if _is_finite(value) else "nan"


def _csv_number(value: Any) -> str:
    return repr(float(value)) if _is_finite(value) else ""


def _first_line(text: Any) -> str | None:
    if text is None:
        return None
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return None
    return lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."


def _escape_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


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


def _sanitize_metric(name: str) -> str:
    return re.sub(r"[^/\w.\- ]", "_", str(name))
