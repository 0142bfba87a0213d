"""The per-case loop of evaluate and predict: segment each case once, write it, score it.

``segment_cases`` loads the cases one at a time (``unet3d.inference.inputs``), runs the
predictor (``EnsemblePredictor``, the sliding window) over each, hands the probabilities and
labels to the mode's outputs (predict: NIfTI files; evaluate: none), and scores the labels
against the case's reference with the metrics of the data set's regions
(``unet3d.evaluation.metrics``). Labels are the data set's own values on disk: the
``labeler`` (``unet3d.inference.labels``) turns the model's probabilities into them. The modes
differ only in what they pass: ``mode=evaluate`` stops at the first bad case and keeps each
scored case's image for its figures; ``mode=predict`` writes files, keeps going past bad cases
and lists them at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from unet3d.errors import DataError, StorageError, Unet3dError
from unet3d.evaluation.metrics import case_metrics
from unet3d.inference.inputs import InputCase, PendingCase

log = logging.getLogger(__name__)

#: ``on_scored(case, reference, prediction, metrics)``: the case (its image still loaded), the
#: uint8 reference and predicted labels ``(H, W, D)`` (the data set's values) and the metrics.
ScoredCallback = Callable[[InputCase, np.ndarray, np.ndarray, dict[str, float]], None]


class Predictor(Protocol):
    """What segments a volume: ``probabilities(image (H, W, D, C)) -> (H, W, D, K)``."""

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """float32 class probabilities of a normalised float32 volume."""


class CaseOutputs(Protocol):
    """Where a mode writes each case (``unet3d.inference.predict.NiftiOutputs``)."""

    def check(self, case_id: str) -> None:
        """Raise (a ``Unet3dError``) before the case is loaded when it must not be written."""

    def write_probabilities(self, case: InputCase, probabilities: np.ndarray) -> None:
        """Write (or skip) the float32 ``(H, W, D, K)`` probabilities of ``case``."""

    def write_segmentation(self, case: InputCase, labels: np.ndarray) -> None:
        """Write the uint8 labels ``(H, W, D)`` of ``case`` (the data set's values)."""


@dataclass
class CasesResult:
    """What the loop did.

    Attributes:
        rows: one metrics row per scored case (``case_id`` then the metric names).
        total: cases in the input.
        segmented: cases segmented (and written, with outputs).
        failures: (case id, error line) of the cases that failed (``keep_going`` only).
        unscored: cases segmented whose reference label is unusable.
        unlabelled: cases segmented without a reference label.
    """

    rows: list[dict[str, Any]]
    total: int
    segmented: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)


def case_error_line(case_id: str, error: BaseException) -> str:
    """One line for a failed case, starting with ``case <id>:``."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if message.startswith("case "):
        return message
    return f"case {case_id}: {message}"


def segment_cases(
    predictor: Predictor,
    cases: Sequence[PendingCase],
    *,
    verb: str,
    labeler: Callable[[np.ndarray], np.ndarray] | None = None,
    convention: Any = None,
    postprocess: Callable[[np.ndarray, Sequence[float]], np.ndarray] | None = None,
    outputs: CaseOutputs | None = None,
    on_scored: ScoredCallback | None = None,
    keep_going: bool = False,
    warn_unlabelled: bool = False,
    progress_bar: str | None = None,
    lesionwise: Callable[[np.ndarray, np.ndarray, Sequence[float]], dict[str, float]]
    | None = None,
) -> CasesResult:
    """Segment every case once, in order, and score those with a reference label.

    Args:
        predictor: maps a normalised volume to class probabilities (``EnsemblePredictor``).
        cases: the cases, loaded one at a time.
        verb: the progress line's first word (``evaluated``, ``predicted``).
        labeler: float32 probabilities ``(H, W, D, K)`` -> uint8 labels ``(H, W, D)`` in the
            input data set's values (``unet3d.inference.labels.make_labeler``); None = argmax
            read as BraTS 2018-2021 classes.
        convention: the input data set's ``LabelConvention`` (its regions are scored); None =
            BraTS 2018-2021.
        postprocess: ``postprocess(labels uint8 (H, W, D), spacing mm) -> labels`` applied
            before the labels are written and scored (a sweep's rules chosen by
            cross-validation, ``unet3d.evaluation.postprocess``); None applies nothing.
        outputs: writes each case's probabilities and segmentation; None writes nothing.
        on_scored: called for each scored case while its image is still loaded.
        keep_going: a case that fails (``Unet3dError`` or ``OSError``) is logged as one ERROR
            line and listed in ``failures``; without it the error propagates at once. A
            ``StorageError`` (disk full, read-only folder) always propagates at once.
        warn_unlabelled: log a WARNING for a case without a reference label.
        progress_bar: the label of a tqdm progress bar (shown on a terminal only); None
            shows none.
        lesionwise: ``scorer(labels, reference, spacing) -> metrics`` added to each scored
            case's row (``unet3d.evaluation.lesionwise.lesionwise_scorer``: the BraTS 2023+
            lesion-wise Dice/HD95 and counts); None adds nothing.

    Returns:
        The metrics rows and what happened to the other cases.

    Raises:
        Unet3dError, OSError: a case failed and ``keep_going`` is false.
    """
    from unet3d.inference.labels import make_labeler

    labeler = labeler if labeler is not None else make_labeler()
    result = CasesResult(rows=[], total=len(cases))
    started = time.perf_counter()
    with ExitStack() as stack:
        bar = None
        if progress_bar is not None:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            stack.enter_context(logging_redirect_tqdm())
            bar = stack.enter_context(tqdm(total=result.total, desc=progress_bar, unit="case",
                                           disable=None))
        for index, pending in enumerate(cases, start=1):
            try:
                case, labels = _segment_one(pending, predictor, labeler, postprocess,
                                            outputs, keep_image=on_scored is not None)
            except (Unet3dError, OSError) as error:
                if not keep_going or isinstance(error, StorageError):
                    raise  # a full disk or a read-only folder: no later case can be written
                line = case_error_line(pending.case_id, error)
                log.error("%s", line)
                result.failures.append((pending.case_id, line))
            else:
                result.segmented += 1
                detail = _score(case, labels, result, on_scored, warn_unlabelled, convention,
                                lesionwise)
                case.image = None
                del case, labels
                elapsed = time.perf_counter() - started
                log.info("%s %s (%d/%d)%s  %.1f s/case  ETA %.0f s", verb, pending.case_id,
                         index, result.total, detail, elapsed / index,
                         elapsed / index * (result.total - index))
            if bar is not None:
                bar.update(1)
    return result


def _segment_one(pending: PendingCase, predictor: Predictor,
                 labeler: Callable[[np.ndarray], np.ndarray],
                 postprocess: Callable[[np.ndarray, Sequence[float]], np.ndarray] | None,
                 outputs: CaseOutputs | None, keep_image: bool) -> tuple[InputCase, np.ndarray]:
    """Load, segment and write one case; return it and its uint8 labels (H, W, D)."""
    if outputs is not None:
        outputs.check(pending.case_id)
    case = pending.load()
    if case.case_id != pending.case_id:  # a renamed record: outputs follow the file name
        log.warning("case %s: %s holds case id %r; writing it as %s", pending.case_id,
                    pending.source, case.case_id, pending.case_id)
        case.case_id = pending.case_id
    probabilities = predictor.probabilities(case.image)
    if not keep_image:
        case.image = None
    labels = labeler(probabilities)
    if postprocess is not None:
        labels = postprocess(labels, case.spacing)
    if outputs is not None:
        outputs.write_probabilities(case, probabilities)
    del probabilities  # before the segmentation is written: one case's peak memory
    if outputs is not None:
        outputs.write_segmentation(case, labels)
    return case, labels


def _score(case: InputCase, labels: np.ndarray, result: CasesResult,
           on_scored: ScoredCallback | None, warn_unlabelled: bool, convention: Any,
           lesionwise: Callable[..., dict[str, float]] | None = None) -> str:
    """Score one segmented case into ``result``; return the progress line's detail."""
    if case.label_error is not None:
        log.warning("%s; segmentation written, metrics skipped",
                    case_error_line(case.case_id, DataError(case.label_error)))
        result.unscored.append(case.case_id)
        return "  not scored (bad reference label)"
    if case.label is None:
        if warn_unlabelled:
            log.warning("case %s has no reference label: skipped in evaluation", case.case_id)
        result.unlabelled.append(case.case_id)
        return ""
    metrics = case_metrics(labels, case.label, case.spacing, convention=convention)
    if lesionwise is not None:
        metrics.update(lesionwise(labels, case.label, case.spacing))
    result.rows.append({"case_id": case.case_id, **metrics})
    if on_scored is not None:
        on_scored(case, case.label, labels, metrics)
    shown = [key for key in metrics if key.startswith("Dice_")][:3]
    detail = "  Dice " + " ".join(f"{key[5:]} {metrics[key]:.3f}" for key in shown)
    lesion = [f"Lesion{key}" for key in shown if f"Lesion{key}" in metrics]
    if lesion:
        detail += "  lesion-wise " + " ".join(f"{key[11:]} {metrics[key]:.3f}" for key in lesion)
    return detail
