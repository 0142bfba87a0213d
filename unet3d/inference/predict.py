"""``mode=predict``: segment cases to BraTS-ready NIfTI with one model or a fold ensemble.

Inputs: ``predict.input_dir`` (raw cases in BraTS layout, ``seg`` optional) or, when null, the
held-out fold ``fold`` of the configured data set (preprocessed records, with labels). Raw
cases are preprocessed exactly like training data (``preprocess_case`` then ``normalize``).
Each case is segmented by ``EnsemblePredictor`` (the sliding-window path shared with the
evaluate modes), and ``<case_id>.nii.gz`` (uint8, labels {0, 1, 2, 4}, the input's grid) is
written to ``predict.output_dir`` (default ``<run dir>/predictions``), plus
``<case_id>_probabilities.nii.gz`` with ``predict.save_probabilities``.

Bad input does not stop the job: a case that cannot be read or written is logged as one ERROR
line naming the case and the file, the other cases are written, and at the end a DataError lists
the failed cases (the runner then exits non-zero). A case whose reference label (``seg``) is
unusable (unreadable, another grid, non-integer or non-BraTS values) is still segmented and
written, but not scored: one WARNING line names the case and the label file, and the final
DataError lists it too. Only one case's volumes are held at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from unet3d.errors import ConfigError, DataError, Unet3dError

log = logging.getLogger(__name__)

#: Suffix of segmentation outputs and of probability outputs.
SEGMENTATION_SUFFIX = ".nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
#: Per-case metrics of a prediction run with reference labels, under ``<run dir>/metrics``.
METRICS_CSV = "predict_per_case.csv"


@dataclass
class InputCase:
    """One volume to segment: a normalised image and what is needed to write and score it."""

    case_id: str
    image: np.ndarray | None  # float32 (H, W, D, 4), normalised as for training
    label: np.ndarray | None  # uint8 BraTS labels (H, W, D) or None
    spacing: tuple[float, float, float]
    reference: Any  # nibabel image (or ShapedReference) giving the output grid
    label_error: str | None = None  # why the reference label is unusable (then label is None)


@dataclass
class PendingCase:
    """A case found in the input, loaded only when its turn comes."""

    case_id: str
    source: str
    load: Callable[[], InputCase]


# ---------------------------------------------------------------------------------------------
# Output paths
# ---------------------------------------------------------------------------------------------


def safe_output_path(output_dir: Path, case_id: str, suffix: str) -> Path:
    """``<output_dir>/<case_id><suffix>``; DataError when the id would escape the folder.

    Rejected: empty ids, ``.`` and ``..``, path separators
    (``/`` and ``\\``), absolute paths, drive letters and control characters.
    """
    reason = None
    if not isinstance(case_id, str) or not case_id.strip():
        reason = "empty case id"
    elif "/" in case_id or "\\" in case_id:
        reason = "contains a path separator"
    elif case_id in (".", ".."):
        reason = "is '.' or '..'"
    elif Path(case_id).is_absolute() or ":" in case_id:
        reason = "is an absolute path or names a drive"
    elif any(ord(character) < 32 for character in case_id):
        reason = "contains control characters"
    if reason is None:
        folder = Path(output_dir).resolve()
        path = (folder / f"{case_id}{suffix}").resolve()
        if path.parent != folder:
            reason = "resolves outside the output folder"
    if reason is not None:
        raise DataError(
            f"case {case_id!r}: unsafe case id ({reason}); it would escape the output folder "
            f"{output_dir}"
        )
    return Path(output_dir) / f"{case_id}{suffix}"


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def find_input_cases(input_dir: str | Path) -> list[Any]:
    """Cases under ``input_dir`` (BraTS layout, ``seg`` optional), sorted by id.

    A case with a missing modality is listed (and fails alone when loaded); DataError when the
    folder is missing, empty or holds no case.
    """
    from unet3d.data.brats import find_cases

    return find_cases(Path(input_dir).expanduser(), require_label=False, allow_missing=True)


def _load_raw_case(case: Any) -> InputCase:
    """Load, preprocess (as for training) and normalise one raw case.

    A bad label file does not stop the case: it is segmented without a label and
    ``label_error`` says what is wrong (DataError only for the modalities).
    """
    import nibabel as nib

    from unet3d.data.brats import load_case
    from unet3d.data.labels import MODALITIES
    from unet3d.data.preprocess import normalize, preprocess_case

    loaded = load_case(case, strict_label=False)
    record = preprocess_case(loaded)
    loaded.image = None  # free the float32 input before normalising
    image = normalize(record["image"], record["mean"], record["std"])
    del record
    reference = nib.load(str(case.modalities[MODALITIES[0]]))  # header only, no voxels read
    return InputCase(case.case_id, image, loaded.label, tuple(loaded.spacing), reference,
                     label_error=loaded.label_error)


def _load_record_case(path: Path) -> InputCase:
    """Read and normalise one preprocessed (held-out) record; the grid is its stored affine."""
    from unet3d.data.labels import to_brats_labels
    from unet3d.data.pipeline import iterate_eval_cases
    from unet3d.inference.nifti_writer import reference_from_affine

    record = next(iterate_eval_cases([str(path)]))  # the evaluate mode's reader, one case
    shape = tuple(int(side) for side in record.image.shape[:3])
    spacing = tuple(float(value) for value in record.spacing)
    try:
        reference = reference_from_affine(record.affine, shape)
    except ValueError:
        log.warning("case %s: %s stores no valid affine; writing with the voxel spacing %s",
                    record.case_id, path, spacing)
        reference = reference_from_affine(np.diag([*spacing, 1.0]), shape)
    label = to_brats_labels(record.label) if record.label is not None else None
    return InputCase(str(record.case_id), record.image, label, spacing, reference)


def _pending_cases(cfg: DictConfig) -> tuple[list[PendingCase], str]:
    """The cases to segment and a description of where they come from."""
    input_dir = cfg.predict.get("input_dir")
    if input_dir:
        cases = find_input_cases(input_dir)
        pending = [
            PendingCase(case.case_id, str(Path(case.modalities["t1"]).parent),
                        (lambda case=case: _load_raw_case(case)))
            for case in cases
        ]
        return pending, f"raw cases in {input_dir}"
    from unet3d.data.prepare import prepare_data
    from unet3d.data.tfrecord import case_id_of

    prepared = prepare_data(cfg)
    pending = [
        PendingCase(case_id_of(path), str(path), (lambda path=path: _load_record_case(Path(path))))
        for path in prepared.eval_files
    ]
    return pending, f"held-out fold {cfg.fold} of {prepared.preprocessed_dir}"


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _fold_overridden() -> bool:
    """True when ``fold=`` was given on the command line of this Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except (ImportError, ValueError):
        return False
    return any(str(item).lstrip("+~").split("=", 1)[0] == "fold" for item in overrides)


def selected_fold(cfg: DictConfig) -> int | None:
    """Which fold's model to take from a sweep dir (None = every fold, an ensemble).

    ``predict.fold`` when set; else ``fold`` when predicting the held-out fold (only the model
    that never saw those cases) or when ``fold=`` is on the command line; else None.
    """
    value = cfg.predict.get("fold")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"predict.fold: must be null or a fold index >= 0, got {value!r}")
        return int(value)
    if not cfg.predict.get("input_dir") or _fold_overridden():
        return int(cfg.fold)
    return None


# ---------------------------------------------------------------------------------------------
# The mode
# ---------------------------------------------------------------------------------------------


def _error_line(case_id: str, error: BaseException) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if message.startswith("case "):
        return message
    return f"case {case_id}: {message}"


def _predict_one(
    pending: PendingCase,
    predictor: Any,
    output_folder: Path,
    save_probabilities: bool,
    overwrite: bool,
) -> tuple[InputCase, np.ndarray]:
    """Segment and write one case; return the case (without image) and its BraTS labels."""
    from unet3d.inference.models import probabilities_to_labels
    from unet3d.inference.nifti_writer import (
        OutputExistsError,
        write_probabilities,
        write_segmentation,
    )

    segmentation_path = safe_output_path(output_folder, pending.case_id, SEGMENTATION_SUFFIX)
    probabilities_path = safe_output_path(output_folder, pending.case_id, PROBABILITIES_SUFFIX)
    targets = [segmentation_path] + ([probabilities_path] if save_probabilities else [])
    if not overwrite:
        for path in targets:
            if path.exists():
                raise OutputExistsError(
                    f"case {pending.case_id}: {path}: output file exists; not overwritten "
                    "(set predict.overwrite=true to replace it)"
                )
    case = pending.load()
    if case.case_id != pending.case_id:  # a renamed record: outputs follow the file name
        log.warning("case %s: %s holds case id %r; writing it as %s", pending.case_id,
                    pending.source, case.case_id, pending.case_id)
        case.case_id = pending.case_id
    probabilities = predictor.probabilities(case.image)
    case.image = None
    labels = probabilities_to_labels(probabilities)
    try:
        if save_probabilities:
            write_probabilities(probabilities, case.reference, probabilities_path, overwrite)
        del probabilities
        write_segmentation(labels, case.reference, segmentation_path, overwrite)
    except OSError as error:
        if isinstance(error, Unet3dError):
            raise
        raise DataError(
            f"case {case.case_id}: {error.filename or segmentation_path}: cannot write "
            f"({error.strerror or error})"
        ) from error
    return case, labels


def predict(cfg: DictConfig, runtime: Any, tracker: Any, output_dir: Path) -> dict[str, float]:
    """Segment every input case and write BraTS-ready NIfTI; score them when labels exist.

    Args:
        cfg: the composed config (``predict``, ``inference``, ``model``, ``data``, ``fold``).
        runtime: the runner's Runtime (``context`` for the strategy scope and chief,
            ``precision.xla``).
        tracker: the run's Tracker (``log_metrics``, ``log_artifact``, ``set_tags``), or None.
        output_dir: the run dir; metrics go to ``<output_dir>/metrics``.

    Returns:
        The metric summary over the cases with reference labels (empty without labels) plus
        ``cases_written``.

    Raises:
        DataError: after every other case was written and the metrics logged, when some cases
            failed or had an unusable reference label (both listed in the message; the latter
            were written but not scored); also when the input folder has no case.
        ConfigError, CheckpointError: ``predict.checkpoint`` names no usable checkpoint.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from unet3d.evaluation.evaluate import write_csv
    from unet3d.evaluation.metrics import case_metrics, format_table, summarize
    from unet3d.inference.models import (
        EnsemblePredictor,
        job_model_checkpoints,
        load_ensemble,
    )

    output_dir = Path(output_dir)
    context = getattr(runtime, "context", None)
    if context is not None and not getattr(context, "is_chief", True):
        log.info("predict runs on the chief process only; this rank has nothing to do")
        return {}

    pending, source = _pending_cases(cfg)
    output_folder = Path(cfg.predict.get("output_dir") or output_dir / "predictions").expanduser()
    output_folder.mkdir(parents=True, exist_ok=True)
    prefixes = job_model_checkpoints(cfg, cfg.predict.checkpoint, fold=selected_fold(cfg))
    models = load_ensemble(cfg, prefixes, runtime)
    precision = getattr(runtime, "precision", None)
    predictor = EnsemblePredictor(models, cfg, jit_compile=bool(getattr(precision, "xla", False)))
    if tracker is not None:
        tracker.set_tags({"predict.checkpoints": ", ".join(prefixes),
                          "predict.ensemble_size": str(len(prefixes))})
    save_probabilities = bool(cfg.predict.get("save_probabilities", False))
    overwrite = bool(cfg.predict.get("overwrite", False))
    total = len(pending)
    log.info(
        "predicting %d case(s) (%s) with %d model(s), window %s, overlap %.2f, %s blend, "
        "batch %d%s -> %s", total, source, len(prefixes), list(predictor.window_size),
        predictor.overlap, predictor.blend, predictor.batch_size,
        ", flip TTA" if predictor.tta else "", output_folder,
    )

    rows: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    unscored: list[str] = []  # written, but their reference label is unusable
    written = 0
    started = time.perf_counter()
    with logging_redirect_tqdm(), tqdm(total=total, desc="predict", unit="case",
                                       disable=None) as bar:
        for index, item in enumerate(pending, start=1):
            try:
                case, labels = _predict_one(item, predictor, output_folder, save_probabilities,
                                            overwrite)
            except (Unet3dError, OSError) as error:
                line = _error_line(item.case_id, error)
                log.error("%s", line)
                failures.append((item.case_id, line))
            else:
                written += 1
                detail = ""
                if case.label_error is not None:
                    log.warning("%s; segmentation written, metrics skipped",
                                _error_line(item.case_id, DataError(case.label_error)))
                    unscored.append(item.case_id)
                    detail = "  not scored (bad reference label)"
                elif case.label is not None:
                    metrics = case_metrics(labels, case.label, case.spacing)
                    rows.append({"case_id": case.case_id, **metrics})
                    detail = (f"  Dice WT {metrics['Dice_WT']:.3f} TC {metrics['Dice_TC']:.3f}"
                              f" ET {metrics['Dice_ET']:.3f}")
                del case, labels
                elapsed = time.perf_counter() - started
                log.info("predicted %s (%d/%d)%s  %.1f s/case  ETA %.0f s", item.case_id, index,
                         total, detail, elapsed / index, elapsed / index * (total - index))
            bar.update(1)

    summary: dict[str, float] = {}
    if rows:
        summary = summarize(rows)
        log.info("prediction metrics over %d case(s) with reference labels:\n%s", len(rows),
                 format_table(summary))
        csv_path = write_csv(rows, output_dir / "metrics" / METRICS_CSV)
        if tracker is not None:
            tracker.log_metrics(summary)
            tracker.log_artifact(csv_path, "metrics")
    if tracker is not None:
        tracker.log_metrics({"cases_written": float(written), "cases_failed": float(len(failures))})
    log.info("wrote %d of %d segmentation(s) to %s in %.1f s", written, total, output_folder,
             time.perf_counter() - started)
    problems = []
    if failures:
        names = ", ".join(case_id for case_id, _ in failures)
        problems.append(f"{len(failures)} of {total} case(s) failed: {names} (see the ERROR "
                        "lines above)")
    if unscored:
        problems.append(
            f"{len(unscored)} case(s) with an unusable reference label: {', '.join(unscored)} "
            "(segmentation written, metrics skipped; see the WARNING lines above)"
        )
    if problems:
        raise DataError(f"predict: {'; '.join(problems)}; {written} written to {output_folder}")
    return {**summary, "cases_written": float(written)}
