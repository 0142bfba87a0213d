"""Writing tags, params and metrics to one MLflow run in batches within MLflow's limits.

Every function takes the `mlflow.MlflowClient` and the run id, and raises what MLflow raises
(`Tracker` turns failures during training into logged errors).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from unet3d.tracking.store import retry
from unet3d.tracking.values import sanitize_name

logger = logging.getLogger(__name__)

# MLflow limits (mlflow/utils/validation.py, 3.x).
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

_T = TypeVar("_T")


def truncate(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with a "...[truncated]" mark when longer."""
    return text if len(text) <= limit else text[: limit - 15] + "...[truncated]"


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """Consecutive slices of `items` of at most `size` (MLflow's batch limits)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def set_tags(client: Any, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags on the run (values as strings, truncated to 8000 characters)."""
    from mlflow.entities import RunTag

    entries = [
        RunTag(sanitize_name(key), truncate(str(value), MAX_TAG_VALUE_LENGTH))
        for key, value in tags.items()
    ]
    for chunk in chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
        retry(lambda c=chunk: client.log_batch(run_id, tags=list(c)), "set tags")


def log_new_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log the params the run does not have yet, in batches of 100.

    A param whose value changed since it was logged (MLflow forbids changing it) keeps its
    first value; the change is recorded in tag `unet3d.changed_params` and a warning. Values
    over 6000 characters are truncated.
    """
    from mlflow.entities import Param

    values = {
        sanitize_name(key): truncate(str(value), MAX_PARAM_VALUE_LENGTH)
        for key, value in params.items()
    }
    existing = retry(lambda: client.get_run(run_id), "get run").data.params
    changed = {
        key: (existing[key], value)
        for key, value in values.items()
        if key in existing and existing[key] != value
    }
    new = [Param(key, value) for key, value in values.items() if key not in existing]
    for chunk in chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=list(chunk))
    if changed:
        description = "; ".join(f"{key}: {old} -> {new}" for key, (old, new) in changed.items())
        logger.warning(
            "MLflow: params changed since run %s was started (kept the first values): %s",
            run_id,
            description,
        )
        set_tags(client, run_id, {"unet3d.changed_params": description})


def log_metrics(client: Any, run_id: str, metrics: Mapping[str, Any], step: int | None) -> None:
    """Log finite numeric metrics at `step` (None: 0); NaN, inf and non-numbers are skipped."""
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    entries = []
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            logger.debug("MLflow: metric %s=%r is not a number; skipped", key, value)
            continue
        if not math.isfinite(number):
            logger.debug("MLflow: metric %s=%r is not finite; skipped", key, value)
            continue
        entries.append(Metric(sanitize_name(key), number, timestamp, int(step or 0)))
    for chunk in chunks(entries, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=list(chunk))
