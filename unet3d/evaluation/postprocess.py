"""Post-processing chosen on a K-fold sweep's out-of-fold predictions.

The rules (``unet3d.evaluation.postprocess_rules``, re-exported here): keep the largest
whole-tumour component; remove components smaller than a threshold per painted region; turn
a small ET into NCR. Selection (``select_postprocessing``) on the out-of-fold predictions of
every fold of a sweep, on the metric the data set is ranked by:

- with a lesion-wise scorer (``evaluation.lesionwise`` on BraTS 2023+ data:
  ``unet3d.evaluation.lesionwise``), the mean lesion-wise Dice over its regions and over all
  cases of all folds (what the 2023+ leaderboards rank, with the lesion-wise HD95);
- otherwise the mean voxel-wise Dice over the data set's evaluation regions (BraTS Dice: both
  empty = 1), as the 2018-2021 leaderboards rank.

Greedy, each step kept only when it raises the criterion by more than ``min_improvement``:
the largest-component rule; then, per painted region, outer first, each component threshold
on top of what is kept (the best wins; ties: the smallest); then each ET -> NCR threshold.
Before and after are reported voxel-wise and, with a scorer, lesion-wise.

Out-of-fold predictions: each fold job's evaluation writes ``<run dir>/oof/<case id>.npz``
(``write_oof_prediction``: uint8 prediction and reference in disk label values, spacing in mm);
the chosen rules go to ``<sweep dir>/postprocessing.json`` (``save_postprocessing``).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data.layouts.regions import painted_regions
from unet3d.errors import ConfigError, DataError
from unet3d.evaluation.metrics import dice
from unet3d.evaluation.postprocess_rules import (  # noqa: F401 - re-exported
    UNITS,
    PostprocessingRules,
    apply_postprocessing,
    keep_largest_component,
    remove_small_components,
    small_et_to_ncr,
)

log = logging.getLogger(__name__)

#: Candidate ET thresholds (in ``unit``) when none are given (nnU-Net's BraTS 2020 range).
DEFAULT_THRESHOLDS = (10, 25, 50, 100, 200, 300, 500, 750, 1000)
#: Candidate component thresholds per region (in ``unit``) when none are given.
DEFAULT_COMPONENT_THRESHOLDS = (10, 25, 50, 100, 200, 500)
#: File of the chosen rules in the sweep folder.
POSTPROCESSING_FILE = "postprocessing.json"
#: Folder of a fold job's out-of-fold predictions.
OOF_FOLDER = "oof"


@dataclass
class OofCase:
    """One held-out case of a fold: its prediction and reference in disk label values."""

    case_id: str
    prediction: np.ndarray
    reference: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fold: int | None = None


@dataclass
class Candidate:
    """A rule set and its scores over the out-of-fold cases.

    Attributes:
        rules: the rules.
        dice: region -> mean voxel-wise Dice.
        score: the criterion (the mean of ``lesion``'s Dice values with a lesion-wise scorer,
            else of ``dice``).
        lesion: lesion-wise metric (``LesionDice_<region>``, ``LesionHD95_<region>``) -> mean
            over cases (nan left out); empty without a scorer.
    """

    rules: PostprocessingRules
    dice: dict[str, float]
    score: float
    lesion: dict[str, float] = field(default_factory=dict)


@dataclass
class PostprocessingSelection:
    """What ``select_postprocessing`` found: the chosen rules, before / after, every candidate."""

    rules: PostprocessingRules
    before: Candidate
    after: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    num_cases: int = 0
    criterion: str = "mean Dice over the regions and over all out-of-fold cases"

    def metrics(self) -> dict[str, float]:
        """Flat float metrics for MLflow: ``postprocess_{before,after}_Dice_<region>``,
        ``postprocess_{before,after}_LesionDice_<region>``, ..."""
        metrics = {"postprocess_cases": float(self.num_cases),
                   "postprocess_before_mean_Dice": float(np.mean(list(self.before.dice.values()))),
                   "postprocess_after_mean_Dice": float(np.mean(list(self.after.dice.values()))),
                   "postprocess_before_score": self.before.score,
                   "postprocess_after_score": self.after.score,
                   "postprocess_largest_wt_component": float(
                       self.rules.keep_largest_wt_component)}
        for region, value in self.before.dice.items():
            metrics[f"postprocess_before_Dice_{region}"] = value
            metrics[f"postprocess_after_Dice_{region}"] = self.after.dice[region]
        for name, value in self.before.lesion.items():
            metrics[f"postprocess_before_{name}"] = value
            metrics[f"postprocess_after_{name}"] = self.after.lesion[name]
        for region, threshold in self.rules.remove_components_below:
            metrics[f"postprocess_remove_components_below_{region}"] = threshold
        if self.rules.et_to_ncr_below is not None:
            metrics["postprocess_et_to_ncr_below"] = float(self.rules.et_to_ncr_below)
        return metrics

    def table(self) -> str:
        """Markdown table: every candidate's scores per region and criterion, the chosen marked."""
        regions = list(self.before.dice)
        lesion = [name for name in self.before.lesion if name.startswith("LesionDice_")]
        lines = ["| rules | " + " | ".join(f"Dice {r}" for r in regions)
                 + "".join(f" | lesion Dice {name[11:]}" for name in lesion) + " | score | |",
                 "|---|" + "---|" * (len(regions) + len(lesion) + 2)]
        for candidate in self.candidates:
            mark = "chosen" if candidate.rules == self.rules else ""
            cells = [f"{candidate.dice[r]:.4f}" for r in regions]
            cells += [f"{candidate.lesion.get(name, math.nan):.4f}" for name in lesion]
            lines.append(f"| {candidate.rules.describe()} | {' | '.join(cells)} | "
                         f"{candidate.score:.4f} | {mark} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of ``save_postprocessing``."""
        def row(candidate: Candidate) -> dict[str, Any]:
            return {"rules": candidate.rules.to_dict(), "dice": candidate.dice,
                    "lesionwise": candidate.lesion, "score": candidate.score}
        return {"rules": self.rules.to_dict(), "description": self.rules.describe(),
                "criterion": self.criterion, "num_cases": self.num_cases,
                "before": row(self.before), "after": row(self.after),
                "candidates": [row(candidate) for candidate in self.candidates]}


def _mean(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return float(np.mean(finite)) if finite else math.nan


def _score(cases: Sequence[OofCase], convention: Any, rules: PostprocessingRules,
           lesionwise: Callable[..., dict[str, float]] | None,
           bases: Sequence[np.ndarray] | None = None) -> tuple[Candidate, list[np.ndarray]]:
    """Apply ``rules`` to every case (to ``bases`` when given) and score them."""
    regions = {name: tuple(values) for name, values in convention.regions.items()}
    sources = bases if bases is not None else [case.prediction for case in cases]
    outputs = [apply_postprocessing(source, rules, convention, case.spacing)
               for source, case in zip(sources, cases, strict=True)]
    totals = {name: 0.0 for name in regions}
    lesion_rows: dict[str, list[float]] = {}
    for case, prediction in zip(cases, outputs, strict=True):
        for name, values in regions.items():
            totals[name] += dice(np.isin(prediction, values), np.isin(case.reference, values))
        if lesionwise is not None:
            for key, value in lesionwise(prediction, case.reference, case.spacing).items():
                if key.startswith(("LesionDice_", "LesionHD95_")):
                    lesion_rows.setdefault(key, []).append(float(value))
    means = {name: total / max(len(cases), 1) for name, total in totals.items()}
    lesion = {key: _mean(values) for key, values in lesion_rows.items()}
    if lesionwise is not None:
        score = _mean([value for key, value in lesion.items() if key.startswith("LesionDice_")])
    else:
        score = float(np.mean(list(means.values())))
    return Candidate(rules, means, score, lesion), outputs


def select_postprocessing(cases: Sequence[OofCase], convention: Any,
                          thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                          unit: str = "voxels",
                          min_improvement: float = 0.0,
                          lesionwise: Callable[..., dict[str, float]] | None = None,
                          component_thresholds: Sequence[float] = DEFAULT_COMPONENT_THRESHOLDS,
                          ) -> PostprocessingSelection:
    """Choose the rules that raise the out-of-fold criterion (see the module doc).

    Args:
        cases: every held-out case of every fold (``read_oof_predictions``).
        convention: the data set's label convention (its ``regions`` are scored).
        thresholds: candidate ET -> NCR volume thresholds, in ``unit``.
        unit: ``voxels`` or ``mm3``.
        min_improvement: a rule is kept only when it raises the criterion by more than this.
        lesionwise: ``scorer(pred, ref, spacing) -> metrics`` of the data set's lesion-wise
            ranking (``unet3d.evaluation.lesionwise.lesionwise_scorer``); None: voxel-wise Dice.
        component_thresholds: candidate per-region component thresholds, in ``unit``; empty:
            the rule is not tried.

    Returns:
        The chosen rules, the criterion before and after them, and every candidate's scores.

    Raises:
        DataError: no case.
        ConfigError: a threshold <= 0 or an unknown unit.
    """
    if not cases:
        raise DataError("postprocess: no out-of-fold predictions to choose rules on")
    for key, values in (("thresholds", thresholds), ("component_thresholds",
                                                      component_thresholds)):
        if any(not math.isfinite(float(t)) or float(t) <= 0 for t in values):
            raise ConfigError(f"postprocess.{key}: must be > 0, got {list(values)}")
    none = PostprocessingRules(unit=unit)
    before, raw = _score(cases, convention, none, lesionwise)
    largest, largest_outputs = _score(cases, convention,
                                      replace(none, keep_largest_wt_component=True), lesionwise)
    candidates = [before, largest]
    current = largest if largest.score > before.score + min_improvement else before
    bases = largest_outputs if current is largest else raw
    current_outputs = bases
    base_rules = current.rules
    for region in (painted_regions(convention) if component_thresholds else ()):
        best_here = current
        for threshold in sorted(float(t) for t in component_thresholds):
            rules = current.rules.with_component_threshold(region, threshold)
            # The components of this region are removed from what the rules before kept.
            scored, outputs = _score(cases, convention, replace(
                rules, keep_largest_wt_component=False,
                remove_components_below=((region, threshold),)), lesionwise, current_outputs)
            scored.rules = rules
            candidates.append(scored)
            if scored.score > best_here.score + min_improvement:
                best_here, best_outputs = scored, outputs
        if best_here is not current:
            current, current_outputs = best_here, best_outputs
    del base_rules, bases
    for threshold in sorted(float(t) for t in thresholds):
        rules = replace(current.rules, et_to_ncr_below=threshold)
        scored, _ = _score(cases, convention, PostprocessingRules(
            unit=unit, et_to_ncr_below=threshold), lesionwise, current_outputs)
        scored.rules = rules
        candidates.append(scored)
        if scored.score > current.score + min_improvement:
            current = scored
    criterion = ("mean lesion-wise Dice over the regions and over all out-of-fold cases"
                 if lesionwise is not None else
                 "mean Dice over the regions and over all out-of-fold cases")
    log.info("post-processing chosen on %d out-of-fold case(s): %s (%s %.4f -> %.4f)",
             len(cases), current.rules.describe(), criterion, before.score, current.score)
    return PostprocessingSelection(current.rules, before, current, candidates, len(cases),
                                   criterion)


def save_postprocessing(folder: str | Path, selection: PostprocessingSelection,
                        convention: Any = None) -> Path:
    """Write ``<folder>/postprocessing.json`` atomically (the rules, table and convention)."""
    from unet3d.runs.files import write_json_atomic

    record = selection.to_dict()
    if convention is not None and hasattr(convention, "to_dict"):
        record["convention"] = convention.to_dict()
    return write_json_atomic(Path(folder) / POSTPROCESSING_FILE, record)


def load_postprocessing(path: str | Path) -> PostprocessingRules | None:
    """The rules saved in a sweep folder (or a ``postprocessing.json``); None when there are none.

    Raises:
        DataError: the file exists but cannot be read.
    """
    file = Path(path)
    if file.is_dir():
        file = file / POSTPROCESSING_FILE
    if not file.is_file():
        return None
    try:
        return PostprocessingRules.from_dict(json.loads(file.read_text("utf-8"))["rules"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{file}: not a post-processing record ({error})") from None


def write_oof_prediction(run_dir: str | Path, case_id: str, labels: np.ndarray,
                         reference: np.ndarray,
                         spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
    """Save one held-out case's prediction for the sweep's post-processing selection.

    Called by a fold job's evaluation for every scored case; written atomically.

    Args:
        run_dir: the fold job's run folder.
        case_id: the case id (the file name).
        labels: uint8 ``(H, W, D)`` predicted disk label values (before post-processing).
        reference: uint8 ``(H, W, D)`` reference disk label values.
        spacing: voxel sides in mm.

    Returns:
        ``<run_dir>/oof/<case_id>.npz`` (``prediction``, ``reference``, ``spacing``).

    Raises:
        ValueError: prediction and reference differ in shape.
    """
    from unet3d.runs.files import write_bytes_atomic

    labels, reference = np.asarray(labels, np.uint8), np.asarray(reference, np.uint8)
    if labels.shape != reference.shape:
        raise ValueError(f"case {case_id}: prediction {labels.shape} and reference "
                         f"{reference.shape} differ in shape")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, prediction=labels, reference=reference,
                        spacing=np.asarray(spacing, np.float64))
    return write_bytes_atomic(Path(run_dir) / OOF_FOLDER / f"{case_id}.npz", buffer.getvalue())


def read_oof_predictions(run_dir: str | Path, fold: int | None = None) -> list[OofCase]:
    """The out-of-fold cases a fold job wrote (``write_oof_prediction``), sorted by case id.

    Raises:
        DataError: a file that cannot be read (naming it).
    """
    cases = []
    for path in sorted((Path(run_dir) / OOF_FOLDER).glob("*.npz")):
        try:
            with np.load(path) as data:
                cases.append(OofCase(path.stem, data["prediction"], data["reference"],
                                     tuple(float(s) for s in data["spacing"]), fold))
        except (OSError, ValueError, KeyError) as error:
            raise DataError(f"{path}: unreadable out-of-fold prediction ({error})") from None
    return cases
