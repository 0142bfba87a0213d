"""Post-processing of predicted labels, its rules chosen on the folds' out-of-fold predictions.

Two rules, as the BraTS winners use them (Isensee et al., "nnU-Net for Brain Tumor
Segmentation", BrainLes 2020, section 2.4; nnU-Net's ``determine_postprocessing``), in the
terms of the data set's painted regions (``unet3d.data.regions``; BraTS: WT ⊃ TC ⊃ ET):

- **largest whole-tumour component**: keep the largest connected component of the outermost
  region (WT) and set the voxels of the others to background (``scipy.ndimage.label``,
  6-connected faces, its default structure);
- **small ET to NCR**: when a case's predicted innermost region (ET) is smaller than a
  threshold (voxels, or mm^3 with ``unit="mm3"``), relabel it with the value painted for the
  next region out (TC \\ ET: NCR, BraTS 2019 label 1; BraTS 2023 1; MSD 2). A case without
  enhancing tumour scores ET Dice 1 only when nothing is predicted, so one false ET voxel costs
  a whole point; the threshold is chosen on the folds. Applied after the component rule.

Selection (``select_postprocessing``) on the out-of-fold predictions of every fold of a sweep:
the criterion is the mean Dice over the data set's evaluation regions and over all cases of all
folds (BraTS Dice: both empty = 1). The component rule is kept when it raises the criterion by
more than ``min_improvement``; then each candidate threshold (ascending) is tried on top, and
the best is kept when it raises the criterion further (ties: the smallest threshold).

Out-of-fold predictions: each fold job's evaluation writes ``<run dir>/oof/<case id>.npz``
(``write_oof_prediction``: uint8 prediction and reference in disk label values, spacing in mm);
the chosen rules go to ``<sweep dir>/postprocessing.json`` (``save_postprocessing``).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unet3d.data.regions import paint_values, painted_regions
from unet3d.errors import ConfigError, DataError
from unet3d.evaluation.metrics import dice

log = logging.getLogger(__name__)

#: Units of the ET volume threshold.
UNITS = ("voxels", "mm3")
#: Candidate ET thresholds (in ``unit``) when none are given (nnU-Net's BraTS 2020 range).
DEFAULT_THRESHOLDS = (10, 25, 50, 100, 200, 300, 500, 750, 1000)
#: File of the chosen rules in the sweep folder.
POSTPROCESSING_FILE = "postprocessing.json"
#: Folder of a fold job's out-of-fold predictions.
OOF_FOLDER = "oof"


@dataclass(frozen=True)
class PostprocessingRules:
    """The post-processing applied to predicted labels (nothing by default).

    Attributes:
        keep_largest_wt_component: keep only the largest connected component of the outermost
            painted region (WT).
        et_to_ncr_below: relabel the innermost region (ET) as the next region's value (NCR)
            when its predicted volume is below this, in ``unit``; None: never.
        unit: ``voxels`` or ``mm3``.
    """

    keep_largest_wt_component: bool = False
    et_to_ncr_below: float | None = None
    unit: str = "voxels"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ConfigError(f"postprocess.unit: must be one of {', '.join(UNITS)}, "
                              f"got {self.unit!r}")

    def describe(self) -> str:
        """``largest WT component + ET -> NCR below 200 voxels`` (``none`` when empty)."""
        parts = ["largest WT component"] if self.keep_largest_wt_component else []
        if self.et_to_ncr_below is not None:
            parts.append(f"ET -> NCR below {self.et_to_ncr_below:g} {self.unit}")
        return " + ".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``from_dict`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostprocessingRules:
        """The rules of ``to_dict``'s form; absent keys take the defaults."""
        below = data.get("et_to_ncr_below")
        return cls(bool(data.get("keep_largest_wt_component", False)),
                   None if below is None else float(below), str(data.get("unit", "voxels")))


def keep_largest_component(labels: np.ndarray, convention: Any) -> np.ndarray:
    """Labels with only the largest connected component of the outermost region kept.

    Args:
        labels: uint8 ``(H, W, D)`` disk label values.
        convention: the data set's label convention.

    Returns:
        A copy; voxels of the other components become the background value.
    """
    background, _ = paint_values(convention)
    outer = np.isin(labels, convention.regions[painted_regions(convention)[0]])
    components, count = ndimage.label(outer)
    result = np.array(labels, copy=True)
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        result[outer & (components != int(np.argmax(sizes)) + 1)] = background
    return result


def small_et_to_ncr(labels: np.ndarray, convention: Any, threshold: float,
                    unit: str = "voxels",
                    spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Relabel the innermost region as the next one's value when it is smaller than ``threshold``.

    Args:
        labels: uint8 ``(H, W, D)`` disk label values.
        convention: the data set's label convention (at least two painted regions).
        threshold: volume below which the region is relabelled, in ``unit``.
        unit: ``voxels`` or ``mm3`` (voxels times the product of ``spacing``).
        spacing: voxel sides in mm.

    Returns:
        A copy of ``labels``, relabelled or not.

    Raises:
        ConfigError: fewer than two painted regions.
    """
    chain = painted_regions(convention)
    if len(chain) < 2:
        raise ConfigError(f"postprocess: the ET rule needs two nested regions, "
                          f"{getattr(convention, 'name', '')} paints {list(chain)}")
    _, values = paint_values(convention)
    inner = np.isin(labels, convention.regions[chain[-1]])
    count = int(inner.sum())
    volume = count * (float(np.prod(spacing)) if unit == "mm3" else 1.0)
    result = np.array(labels, copy=True)
    if 0 < volume < threshold:
        result[inner] = values[-2]
    return result


def apply_postprocessing(labels: np.ndarray, rules: PostprocessingRules, convention: Any,
                         spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Apply ``rules`` to one case's predicted labels: the component rule, then the ET rule.

    Args:
        labels: uint8 ``(H, W, D)`` predicted disk label values.
        rules: what to apply (``load_postprocessing``).
        convention: the data set's label convention.
        spacing: voxel sides in mm (for ``unit="mm3"``).

    Returns:
        uint8 ``(H, W, D)`` labels (a copy).
    """
    result = np.asarray(labels, dtype=np.uint8)
    if rules.keep_largest_wt_component:
        result = keep_largest_component(result, convention)
    if rules.et_to_ncr_below is not None:
        result = small_et_to_ncr(result, convention, rules.et_to_ncr_below, rules.unit, spacing)
    return np.array(result, dtype=np.uint8, copy=True)


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
    """A rule set and its score: ``dice`` region -> mean over cases, ``score`` their mean."""

    rules: PostprocessingRules
    dice: dict[str, float]
    score: float


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
        """Flat float metrics for MLflow: ``postprocess_{before,after}_Dice_<region>``, ..."""
        metrics = {"postprocess_cases": float(self.num_cases),
                   "postprocess_before_mean_Dice": self.before.score,
                   "postprocess_after_mean_Dice": self.after.score,
                   "postprocess_largest_wt_component": float(
                       self.rules.keep_largest_wt_component)}
        for region, value in self.before.dice.items():
            metrics[f"postprocess_before_Dice_{region}"] = value
            metrics[f"postprocess_after_Dice_{region}"] = self.after.dice[region]
        if self.rules.et_to_ncr_below is not None:
            metrics["postprocess_et_to_ncr_below"] = float(self.rules.et_to_ncr_below)
        return metrics

    def table(self) -> str:
        """Markdown table: every candidate's Dice per region and mean, the chosen one marked."""
        regions = list(self.before.dice)
        lines = ["| rules | " + " | ".join(f"Dice {r}" for r in regions) + " | mean | |",
                 "|---|" + "---|" * (len(regions) + 2)]
        for candidate in self.candidates:
            mark = "chosen" if candidate.rules == self.rules else ""
            cells = " | ".join(f"{candidate.dice[r]:.4f}" for r in regions)
            lines.append(f"| {candidate.rules.describe()} | {cells} | {candidate.score:.4f} | "
                         f"{mark} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of ``save_postprocessing``."""
        def row(candidate: Candidate) -> dict[str, Any]:
            return {"rules": candidate.rules.to_dict(), "dice": candidate.dice,
                    "score": candidate.score}
        return {"rules": self.rules.to_dict(), "description": self.rules.describe(),
                "criterion": self.criterion, "num_cases": self.num_cases,
                "before": row(self.before), "after": row(self.after),
                "candidates": [row(candidate) for candidate in self.candidates]}


def _score(cases: Sequence[OofCase], predictions: Iterable[np.ndarray],
           regions: Mapping[str, Sequence[int]], rules: PostprocessingRules) -> Candidate:
    totals = {name: 0.0 for name in regions}
    for case, prediction in zip(cases, predictions, strict=True):
        for name, values in regions.items():
            totals[name] += dice(np.isin(prediction, values), np.isin(case.reference, values))
    means = {name: total / max(len(cases), 1) for name, total in totals.items()}
    return Candidate(rules, means, float(np.mean(list(means.values()))))


def select_postprocessing(cases: Sequence[OofCase], convention: Any,
                          thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                          unit: str = "voxels",
                          min_improvement: float = 0.0) -> PostprocessingSelection:
    """Choose the rules that raise the mean out-of-fold Dice (see the module doc).

    Args:
        cases: every held-out case of every fold (``read_oof_predictions``).
        convention: the data set's label convention (its ``regions`` are scored).
        thresholds: candidate ET volume thresholds, in ``unit``.
        unit: ``voxels`` or ``mm3``.
        min_improvement: a rule is kept only when it raises the criterion by more than this.

    Returns:
        The chosen rules, the criterion before and after them, and every candidate's scores.

    Raises:
        DataError: no case.
        ConfigError: a threshold <= 0 or an unknown unit.
    """
    if not cases:
        raise DataError("postprocess: no out-of-fold predictions to choose rules on")
    if any(not math.isfinite(float(t)) or float(t) <= 0 for t in thresholds):
        raise ConfigError(f"postprocess.thresholds: must be > 0, got {list(thresholds)}")
    regions = {name: tuple(values) for name, values in convention.regions.items()}
    none = PostprocessingRules(unit=unit)
    before = _score(cases, (case.prediction for case in cases), regions, none)
    largest = replace(none, keep_largest_wt_component=True)
    components = [keep_largest_component(case.prediction, convention) for case in cases]
    with_largest = _score(cases, components, regions, largest)
    candidates = [before, with_largest]
    best = with_largest if with_largest.score > before.score + min_improvement else before
    bases = components if best is with_largest else [case.prediction for case in cases]
    current = best
    for threshold in sorted(float(t) for t in thresholds):
        rules = replace(best.rules, et_to_ncr_below=threshold)
        scored = _score(cases, (small_et_to_ncr(base, convention, threshold, unit, case.spacing)
                                for base, case in zip(bases, cases, strict=True)),
                        regions, rules)
        candidates.append(scored)
        if scored.score > current.score + min_improvement:
            current = scored
    log.info("post-processing chosen on %d out-of-fold case(s): %s (mean Dice %.4f -> %.4f)",
             len(cases), current.rules.describe(), before.score, current.score)
    return PostprocessingSelection(current.rules, before, current, candidates, len(cases))


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
