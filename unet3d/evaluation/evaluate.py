"""Evaluate a model on held-out cases: every case exactly once, whole volume, sliding window.

The windows, blending and label mapping are those of ``mode=predict``, so evaluation measures
what prediction delivers.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from unet3d.data.labels import to_brats_labels
from unet3d.evaluation.metrics import case_metrics, format_table, summarize

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Per-case metrics, their mean over cases, and where the CSV went."""

    per_case: list[dict[str, Any]]
    summary: dict[str, float]
    csv_path: Path | None


def window_size(cfg: DictConfig) -> tuple[int, int, int]:
    """Sliding-window size: ``inference.window_size`` or, when null, ``data.crop_size``."""
    size = cfg.inference.window_size or cfg.data.crop_size
    return tuple(int(side) for side in size)


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write rows (dicts with the same keys) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["case_id"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)
    return path


def evaluate_cases(model: Any, eval_files: list[str], cfg: DictConfig,
                   output_dir: Path | None, figure_callback: Any = None) -> EvaluationResult:
    """Segment every held-out case once and score it with the BraTS metrics.

    ``model`` is one Keras model or a list of them (an ensemble: mean softmax). The
    probabilities come from ``EnsemblePredictor``, the sliding-window path of ``mode=predict``.
    """
    from unet3d.data.pipeline import iterate_eval_cases
    from unet3d.inference.models import EnsemblePredictor, probabilities_to_labels

    predictor = EnsemblePredictor(model, cfg, jit_compile=bool(cfg.precision.xla))
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    total = len(eval_files)
    for index, case in enumerate(iterate_eval_cases(eval_files), start=1):
        prediction = probabilities_to_labels(predictor.probabilities(case.image))
        if case.label is None:
            log.warning("case %s has no reference label: skipped in evaluation", case.case_id)
            continue
        reference = to_brats_labels(case.label)
        metrics = case_metrics(prediction, reference, case.spacing)
        rows.append({"case_id": case.case_id, **metrics})
        if figure_callback is not None:
            figure_callback(case, reference, prediction, metrics)
        elapsed = time.perf_counter() - started
        log.info("evaluated %s (%d/%d)  Dice WT %.3f TC %.3f ET %.3f  %.1f s/case  ETA %.0f s",
                 case.case_id, index, total, metrics["Dice_WT"], metrics["Dice_TC"],
                 metrics["Dice_ET"], elapsed / index, elapsed / index * (total - index))
    if len(rows) != total:
        log.warning("evaluated %d of %d held-out cases", len(rows), total)
    summary = summarize(rows)
    log.info("held-out evaluation over %d case(s):\n%s", len(rows), format_table(summary))
    csv_path = write_csv(rows, output_dir / "metrics" / "per_case.csv") if output_dir else None
    return EvaluationResult(rows, summary, csv_path)
