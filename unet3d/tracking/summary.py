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
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.runs.files import write_text_atomic
from unet3d.runs.naming import parse_override

logger = logging.getLogger(__name__)

#: Delta degrees of freedom of the reported standard deviation (1 = sample std).
STD_DDOF = 1
#: Statistics reported per metric, in table order.
STATISTICS = ("mean", "std", "min", "max")
#: File names of the summary tables written to the sweep dir and logged on the parent run.
SUMMARY_MARKDOWN = "cv_summary.md"
SUMMARY_CSV = "cv_summary.csv"
FOLDS_CSV = "cv_folds.csv"

_FINISHED = "FINISHED"


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


def _sanitize_metric(name: str) -> str:
    return re.sub(r"[^/\w.\- ]", "_", str(name))
