"""The metrics of a set of segmented cases: their mean, the logged table and the CSV.

The per-case rows come from the per-case loop of evaluate and predict
(``unet3d.inference.case_loop.segment_cases``); this module only summarises and writes them
(NumPy only, no TensorFlow).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unet3d.evaluation.metrics import format_table, summarize
from unet3d.runs.files import write_text_atomic

log = logging.getLogger(__name__)


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows (dicts with the same keys, first the case id) as CSV with a header line.

    No rows give the header ``case_id`` alone.
    """
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["case_id"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write ``csv_text(rows)`` to ``path`` atomically; returns the path.

    Raises:
        OSError: the folder cannot be created or written.
    """
    return write_text_atomic(path, csv_text(rows))


def summarize_and_log(rows: Sequence[Mapping[str, Any]], title: str,
                      convention: Any = None) -> dict[str, float]:
    """The mean of every metric over ``rows``, logged as a table under ``title``.

    Args:
        rows: per-case metric rows (``case_metrics`` plus ``case_id``).
        title: the line above the table, e.g. ``held-out evaluation over 8 case(s):``.
        convention: the data set's ``LabelConvention`` (the table's regions); None = BraTS
            2018-2021.

    Returns:
        Metric name -> mean over the cases (NaN values ignored).
    """
    summary = summarize(rows)
    log.info("%s\n%s", title, format_table(summary, convention))
    return summary
