"""``mode=predict``: segment cases to BraTS-ready NIfTI with one model or a fold ensemble.

Inputs: ``predict.input_dir`` (raw cases in the layout of the ``data`` group: ``data=brats2023``
reads BraTS 2023 folders, ``data=msd_brain`` an MSD ``imagesTr``/``imagesTs``; labels optional)
or, when null, the held-out fold ``fold`` of the configured data set (preprocessed records, with
labels). Each case is segmented by the per-case loop shared with evaluate
(``unet3d.inference.case_loop``), and ``<case_id>.nii.gz`` (uint8, in the input data set's own label
values: BraTS 2019 {0, 1, 2, 4}, BraTS 2023 and MSD {0, 1, 2, 3}; the input's grid) is written to
``predict.output_dir`` (default ``<run dir>/predictions``), plus
``<case_id>_probabilities.nii.gz`` with ``predict.save_probabilities``. Cases with a reference
label are scored: ``metrics/predict_per_case.csv`` and the mean of every metric. The model's
classes are translated by tissue from the convention its training run recorded (a BraTS 2021
model writes 3 for enhancing tumour in a BraTS 2023 folder); a class the input's convention has
no label for is one ConfigError before any case is read.

The output folder records the prediction in ``predict_settings.json``
(``unet3d.inference.output_folder``): rerun into the same folder, the same prediction keeps the
cases written before and writes the rest; another prediction is refused before any case is read
(``predict.overwrite=true`` replaces it).

Bad input does not stop the job: a case that cannot be read or written is logged as one ERROR
line naming the case and the file, the other cases are written, and at the end a DataError lists
the failed cases (the runner then exits non-zero). A case whose reference label (``seg``) is
unusable (unreadable, another grid, non-integer or non-BraTS values) is still segmented and
written, but not scored: one WARNING line names the case and the label file, and the final
DataError lists it too. Host work overlaps the model (``unet3d.inference.background``): the
first case is read while the models are built and traced, each next case while this one is
segmented, and a case's files are written while the next one is segmented; at most two cases'
volumes are held at a time.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unet3d.errors import CaseFailures, DataError
from unet3d.modes.job import Job

log = logging.getLogger(__name__)

#: Per-case metrics of a prediction run with reference labels, under ``<run dir>/metrics``.
METRICS_CSV = "predict_per_case.csv"


def run(job: Job) -> dict[str, float]:
    """Segment every input case and write BraTS-ready NIfTI; score them when labels exist.

    Only the chief predicts; other ranks return {}.

    Returns:
        The metric summary over the cases with reference labels (empty without labels) plus
        ``cases_written``.

    Raises:
        DataError: after every other case was written and the metrics logged, when some cases
            failed or had an unusable reference label (``CaseFailures``: both listed in the
            message, the failed cases' lines in ``failures``; the latter were written but not
            scored); also when the input folder has no case.
        ConfigError, CheckpointError: ``predict.checkpoint`` names no usable checkpoint.
    """
    if not job.context.is_chief:
        log.info("predict runs on the chief process only; this rank has nothing to do")
        return {}
    return predict(job.cfg, job.runtime, job.tracker, Path(job.output_dir))


def predict(cfg: DictConfig, runtime: Any, tracker: Any, output_dir: Path) -> dict[str, float]:
    """The body of ``run``: see there (``runtime``: ``context`` and ``precision.xla``)."""
    from unet3d.evaluation.evaluate import summarize_and_log, write_csv
    from unet3d.evaluation.postprocess import apply_postprocessing
    from unet3d.inference.background import BackgroundOutputs, CasePrefetcher
    from unet3d.inference.case_loop import segment_cases
    from unet3d.inference.checkpoints import CHECKPOINT_KEY
    from unet3d.inference.job_setup import (
        job_predictor,
        model_source,
        source_labeler,
        source_members,
    )
    from unet3d.inference.output_folder import (
        SETTINGS_FILE,
        claim_output_folder,
        prediction_settings,
        split_written,
    )
    from unet3d.inference.predict import NiftiOutputs
    from unet3d.modes.job import lesionwise_scorer

    pending, source, convention = _pending_cases(cfg)
    lesionwise = lesionwise_scorer(cfg, convention, tracker)
    models = model_source(cfg, cfg.predict.checkpoint, fold=selected_fold(cfg),
                          key=CHECKPOINT_KEY)
    labeler, head = source_labeler(cfg, models, convention)
    output_folder = Path(cfg.predict.get("output_dir") or output_dir / "predictions").expanduser()
    output_folder.mkdir(parents=True, exist_ok=True)
    outputs = NiftiOutputs(output_folder,
                           save_probabilities=bool(cfg.predict.get("save_probabilities", False)),
                           overwrite=bool(cfg.predict.get("overwrite", False)),
                           label_values=convention.values)
    rules = _postprocessing(cfg, models)
    postprocess = None if rules is None else (
        lambda labels, spacing: apply_postprocessing(labels, rules, convention, spacing))
    settings = prediction_settings(models.ids, convention, rules,
                                   OmegaConf.to_container(cfg.inference, resolve=True),
                                   _policy_name(runtime), outputs.save_probabilities)
    kept: list[str] = []
    if claim_output_folder(output_folder, settings, outputs.overwrite):
        pending, kept = split_written(pending, outputs)
        if kept:
            log.info("%s holds this same prediction (%s): %d case(s) written by an earlier run "
                     "are kept as they are (%s); %d to write", output_folder, SETTINGS_FILE,
                     len(kept), ", ".join(kept), len(pending))
    with ExitStack() as stack:
        reader = stack.enter_context(CasePrefetcher(pending, accept=_accepts(outputs)))
        reader.start()  # the first case is read while the models are built
        members = source_members(cfg, models, runtime, tracker)
        predictor = job_predictor(cfg, members, bool(runtime.precision.xla), head=head,
                                  input_divisor=models.input_divisor())
        predictor.trace()
        if tracker is not None:
            tracker.set_tags({"predict.checkpoints": ", ".join(models.ids),
                              "predict.ensemble_size": str(len(models.ids))})
        log.info("predicting %d case(s) (%s) with %d model(s), %s -> %s", len(pending), source,
                 len(models.ids), predictor.describe(), output_folder)
        started = time.perf_counter()
        writer = stack.enter_context(BackgroundOutputs(outputs))
        result = segment_cases(predictor, reader.cases, verb="predicted", labeler=labeler,
                               convention=convention, postprocess=postprocess, outputs=writer,
                               keep_going=True, progress_bar="predict",
                               lesionwise=lesionwise)
        _add_write_failures(result, writer.close())
    summary: dict[str, float] = {}
    if result.rows:
        summary = summarize_and_log(
            result.rows,
            f"prediction metrics over {len(result.rows)} case(s) with reference labels:",
            convention)
        csv_path = write_csv(result.rows, output_dir / "metrics" / METRICS_CSV)
        if tracker is not None:
            tracker.log_metrics(summary)
            tracker.log_artifact(csv_path, "metrics")
    written, total = result.segmented, result.total + len(kept)
    if tracker is not None:
        tracker.log_metrics({"cases_written": float(written),
                             "cases_failed": float(len(result.failures)),
                             "cases_kept": float(len(kept))})
    log.info("wrote %d of %d segmentation(s) to %s in %.1f s%s", written, total, output_folder,
             time.perf_counter() - started,
             f" ({len(kept)} kept from an earlier run of this prediction)" if kept else "")
    problems = []
    if result.failures:
        names = ", ".join(case_id for case_id, _ in result.failures)
        problems.append(f"{len(result.failures)} of {total} case(s) failed: {names} (see the "
                        "ERROR lines above)")
    if result.unscored:
        problems.append(
            f"{len(result.unscored)} case(s) with an unusable reference label: "
            f"{', '.join(result.unscored)} (segmentation written, metrics skipped; see the "
            "WARNING lines above)"
        )
    if problems:
        raise CaseFailures(f"predict: {'; '.join(problems)}; {written} written to "
                           f"{output_folder}", result.failures)
    return {**summary, "cases_written": float(written)}


def _policy_name(runtime: Any) -> str:
    """The dtype policy the job predicts in (``runtime.precision``, else Keras' global one)."""
    name = getattr(getattr(runtime, "precision", None), "policy_name", None)
    if name:
        return str(name)
    import keras

    return keras.mixed_precision.global_policy().name


def _accepts(outputs: Any) -> Any:
    """``accept(case_id)`` of the prefetcher: read a case ahead only if it may be written."""
    def accept(case_id: str) -> bool:
        try:
            outputs.check(case_id)
        except DataError:
            return False
        return True

    return accept


def _add_write_failures(result: Any, failures: list[Any]) -> None:
    """Move the cases whose files could not be written (in the background) to the failures."""
    from unet3d.inference.case_loop import case_error_line

    for failure in failures:
        line = case_error_line(failure.case_id, failure.error)
        log.error("%s", line)
        result.failures.append((failure.case_id, line))
        result.segmented -= 1
        result.rows = [row for row in result.rows if row.get("case_id") != failure.case_id]
        for listed in (result.unscored, result.unlabelled):
            if failure.case_id in listed:
                listed.remove(failure.case_id)


def _postprocessing(cfg: DictConfig, models: Any = None) -> Any:
    """The post-processing rules (``PostprocessingRules``) of the sweep in
    ``predict.checkpoint``, or None.

    A sweep folder (or ``runs:/<parent run id>``) holding ``postprocessing.json`` (written by
    ``mode=postprocess``) gives its rules, and an export folder the rules it recorded, unless
    ``predict.postprocess=false``.

    Raises:
        DataError: the sweep's ``postprocessing.json`` is unreadable.
    """
    spec = cfg.predict.get("checkpoint")
    if not cfg.predict.get("postprocess", True):
        return None
    if models is not None and models.export is not None:
        rules = models.export.postprocessing()
        if rules is not None:
            log.info("post-processing recorded in %s: %s (predict.postprocess=false turns it "
                     "off)", models.export.path, rules)
        return rules
    if not isinstance(spec, str) or not spec:
        return None
    from unet3d.evaluation.postprocess import POSTPROCESSING_FILE, load_postprocessing
    from unet3d.inference.checkpoints import job_reference_folder

    folder = job_reference_folder(cfg, spec, "predict.checkpoint")
    rules = load_postprocessing(folder) if folder.is_dir() else None
    if rules is None:
        return None
    log.info("post-processing from %s: %s (predict.postprocess=false turns it off)",
             folder / POSTPROCESSING_FILE, rules)
    return rules


def _pending_cases(cfg: DictConfig) -> tuple[list[Any], str, Any]:
    """The cases to segment, where they come from, and their ``LabelConvention``."""
    from unet3d.inference.inputs import input_layout, raw_pending_cases, record_pending_cases
    from unet3d.modes.job import data_convention

    input_dir = cfg.predict.get("input_dir")
    if input_dir:
        layout = input_layout(cfg.data, input_dir)
        return (raw_pending_cases(input_dir, layout),
                f"raw {layout.convention.name} cases in {input_dir}", layout.convention)
    from unet3d.data.prepare import prepare_data

    prepared = prepare_data(cfg)
    convention = data_convention(prepared)
    return (record_pending_cases(prepared.eval_files, convention),
            f"held-out fold {cfg.fold} of {prepared.preprocessed_dir}", convention)


def selected_fold(cfg: DictConfig) -> int | None:
    """Which fold's model to take from a sweep dir (None = every fold, an ensemble).

    ``predict.fold`` when set; else ``fold`` when predicting the held-out fold (only the model
    that never saw those cases); else (a folder of new cases) None.
    """
    if cfg.predict.fold is not None:
        return int(cfg.predict.fold)
    return None if cfg.predict.input_dir else int(cfg.fold)
