"""``mode=export``: trained model(s) as a self-describing export folder (ONNX, OpenVINO, TF).

``export.checkpoint`` is what ``predict.checkpoint`` takes: a checkpoint, a run dir, a sweep
dir (every fold, or ``export.fold``: an ensemble), ``runs:/<id>`` or ``models:/<name>@<alias>``.
Each member is rebuilt in float32 from its run's recorded model settings, written in every
format of ``export.formats`` with the libraries' own converters
(``unet3d.inference.exporters``) and checked on a random window against the Keras model (max
|dp| <= ``export.tolerance``, else one ``ExportError`` line naming the format and the
difference, and nothing is left in the export folder). ``openvino_int8`` is NNCF's INT8
quantization of the OpenVINO IR, calibrated on windows of the job's data set's training cases
(``data``, ``fold``) and checked by label agreement on its held-out cases
(``unet3d.inference.quantize``, ``export.int8``). Then ``unet3d_export.json`` records what
inference needs (``unet3d.inference.export_folder``) and the folder appears under its name at
once (written beside it, then renamed). The folder is logged to the job's MLflow run as
artifacts (``export/``), and the runner logs the served model of the export
(``unet3d.serving.export_model``), which needs no TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unet3d.errors import ConfigError
from unet3d.modes.job import Job

log = logging.getLogger(__name__)

#: The export folder under the run dir when ``export.output_dir`` is null.
DEFAULT_FOLDER = "export"


def export_folder_of(cfg: DictConfig, output_dir: Path) -> Path:
    """Where the job writes its export folder (``export.output_dir`` or ``<run dir>/export``)."""
    chosen = cfg.export.get("output_dir")
    return Path(str(chosen)).expanduser() if chosen else Path(output_dir) / DEFAULT_FOLDER


def run(job: Job) -> dict[str, float]:
    """Export ``export.checkpoint``'s model(s); chief only (other ranks return {}).

    Returns:
        ``members`` and, per format, ``max_dp_<format>`` (the largest difference of any
        member); with ``openvino_int8``, ``int8_agreement`` (the smallest agreement on
        tumour voxels, ``unet3d.inference.quantize``).

    Raises:
        ConfigError: a converter is not installed (naming its extra), or the folder exists
            and ``export.overwrite`` is false.
        ExportError: a converter fails, a file differs from the Keras model, or the INT8
            model's labels agree less than ``export.int8.min_agreement``.
        CheckpointError: no usable checkpoint.
        DataError: the INT8 calibration's data set cannot be prepared or read.
    """
    if not job.context.is_chief:
        return {}
    return export(job.cfg, job.tracker, Path(job.output_dir))


def _int8_splits(cfg: DictConfig, prefixes: list[str]) -> list[DictConfig]:
    """Per member, the config whose split the INT8 model is calibrated and checked on: the job's
    with the member's recorded ``fold``, ``num_folds`` and ``seed`` (its run's identity), so
    that its check windows come from cases it did not train on.

    Raises:
        ConfigError: a member was trained on another data set than the job's ``data``.
    """
    from unet3d.inference.checkpoints import run_dir_of
    from unet3d.runs.identity import read_identity

    splits = []
    for prefix in prefixes:
        identity = read_identity(run_dir_of(prefix))
        if identity is None:
            splits.append(cfg)
            continue
        trained = str(identity.data.get("name") or "")
        if trained and trained != "None" and trained != str(cfg.data.get("name")):
            raise ConfigError(f"export.formats: openvino_int8 calibrates on the training cases "
                              f"of {prefix}, trained on data={trained}; this job composes "
                              f"data={cfg.data.get('name')}: pass data={trained} (and its "
                              "data.raw_dir)")
        splits.append(OmegaConf.merge(cfg, {"fold": identity.fold,
                                            "num_folds": identity.num_folds,
                                            "seed": identity.seed}))
    return splits


def _int8_windows(split: DictConfig, window: list[int], settings: Any
                  ) -> tuple[list, list, dict[str, Any]]:
    """The calibration and check windows (``unet3d.inference.quantize.sample_windows``:
    float32 ``[1, h, w, d, C]``) of one member, from the training and held-out cases of
    ``split``'s data and fold, and what they came from (``settings``: ``Int8Settings``).

    Raises:
        DataError: the data set cannot be prepared or a record cannot be read.
    """
    from unet3d.data.prepare import prepare_data
    from unet3d.inference.quantize import sample_windows

    prepared = prepare_data(split)
    held_out = prepared.eval_files or prepared.train_files
    calibration = sample_windows(prepared.train_files, window, settings.calibration_windows,
                                 settings.seed)
    check = sample_windows(held_out, window, settings.check_windows, settings.seed + 1)
    log.info("export openvino_int8: %d calibration window(s) from %d training case(s), %d "
             "check window(s) from %d held-out case(s) of %s (fold %s of %s)",
             len(calibration), len(prepared.train_files), len(check), len(held_out),
             prepared.preprocessed_dir, split.fold, split.num_folds)
    return calibration, check, {"data": str(split.data.get("name")), "fold": int(split.fold),
                                "num_folds": int(split.num_folds)}


def export(cfg: DictConfig, tracker: Any, output_dir: Path) -> dict[str, float]:
    """The body of ``run``: see there."""
    from unet3d.config import EXPORT_FORMATS
    from unet3d.config.settings import input_divisor
    from unet3d.inference.checkpoints import job_model_checkpoints
    from unet3d.inference.ensemble import window_size
    from unet3d.inference.exporters import export_member, float32_policy, require_converter
    from unet3d.inference.models import load_ensemble, member_model_settings, trained_labels
    from unet3d.inference.quantize import INT8_FORMAT, Int8Settings, export_int8

    formats = [str(fmt) for fmt in cfg.export.formats]
    if not formats:
        raise ConfigError(f"export.formats: name at least one of {', '.join(EXPORT_FORMATS)}")
    for fmt in formats:
        require_converter(fmt)
    folder = export_folder_of(cfg, output_dir)
    overwrite = bool(cfg.export.overwrite)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ConfigError(f"export.output_dir: {folder} exists and is not empty "
                          "(export.overwrite=true replaces it)")
    spec = cfg.export.checkpoint
    prefixes = job_model_checkpoints(cfg, spec, fold=cfg.export.fold,
                                     key="export.checkpoint")
    convention, head = trained_labels(prefixes)
    settings = [member_model_settings(cfg.model, prefix) for prefix in prefixes]
    divisor = max(input_divisor(member) for member in settings)
    window = [-(-side // divisor) * divisor
              for side in window_size(cfg.inference, cfg.data.crop_size)]
    rules = _postprocessing(cfg, spec)
    tolerance = float(cfg.export.tolerance)
    splits = _int8_splits(cfg, prefixes) if INT8_FORMAT in formats else None
    int8 = Int8Settings.from_config(cfg.export.int8) if splits is not None else None
    exact = [fmt for fmt in formats if fmt != INT8_FORMAT]
    with float32_policy():
        models = load_ensemble(cfg.model, prefixes, None)
    staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    members = []
    try:
        for index, (model, prefix) in enumerate(zip(models, prefixes, strict=True)):
            name = f"member-{index}"
            log.info("exporting %s (%s) as %s", prefix, name, ", ".join(formats))
            files, differences = export_member(model, staging / name, exact, window,
                                               tolerance)
            quantized = None
            if splits is not None:
                calibration, check, source = _int8_windows(splits[index], window, int8)
                files[INT8_FORMAT], quantized = export_int8(
                    model, staging / name, files.get("openvino"), calibration, check, head,
                    float(cfg.inference.region_threshold), int8.min_agreement)
                quantized = {**quantized, **source}
                differences[INT8_FORMAT] = quantized["max_dp"]
            members.append(_member_entry(staging, name, files, differences, settings[index],
                                         prefix))
            if quantized is not None:
                members[-1]["int8"] = quantized
        record = _record(cfg, models[0], members, convention, head, divisor, window, rules,
                         tolerance)
        (staging / "unet3d_export.json").write_text(json.dumps(record, indent=2) + "\n",
                                                    encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %d member(s) as %s to %s in %.1f s", len(members), ", ".join(formats),
             folder, time.perf_counter() - started)
    metrics: dict[str, float] = {"members": float(len(members))}
    for fmt in formats:
        metrics[f"max_dp_{fmt}"] = max(member["max_difference"][fmt] for member in members)
    if splits is not None:
        metrics["int8_agreement"] = min(member["int8"]["foreground_agreement"]
                                        for member in members)
    if tracker is not None:
        tracker.set_tags({"unet3d.export_dir": str(folder),
                          "unet3d.export_formats": ", ".join(formats)})
        tracker.log_metrics(metrics)
        tracker.log_artifacts(folder, "export")
    return metrics


def _member_entry(staging: Path, name: str, files: dict[str, Path],
                  differences: dict[str, float], settings: dict[str, Any],
                  prefix: str) -> dict[str, Any]:
    from unet3d.inference.export_folder import IR_FORMATS, ExportMember, file_digest

    digests = {fmt: file_digest(path) for fmt, path in files.items()}
    for fmt in IR_FORMATS:
        if fmt in files:
            digests[f"{fmt}_bin"] = file_digest(files[fmt].with_suffix(".bin"))
    return ExportMember(name, {fmt: str(path.relative_to(staging)) for fmt, path in files.items()},
                        digests, settings, str(prefix), differences).to_dict()


def _record(cfg: DictConfig, model: Any, members: list[dict[str, Any]], convention: Any,
            head: str, divisor: int, window: list[int], rules: Any,
            tolerance: float) -> dict[str, Any]:
    """The content of ``unet3d_export.json`` (``unet3d.inference.export_folder``)."""
    import unet3d
    from unet3d.data.layouts.convention import MODALITIES
    from unet3d.inference.engine_setup import engine_versions
    from unet3d.inference.export_folder import EXPORT_FORMAT, normalisation_record

    inference = OmegaConf.to_container(cfg.inference, resolve=True)
    for key in ("engine", "engine_threads", "engine_cache", "engine_reprobe"):
        inference.pop(key, None)  # the host that predicts chooses these
    inference["window_size"] = window
    return {
        "format": EXPORT_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "unet3d_version": unet3d.__version__,
        "input": {"name": "image", "dtype": "float32", "layout": "NHWDC",
                  "channels": int(model.inputs[0].shape[-1]), "modalities": list(MODALITIES),
                  "divisor": int(divisor),
                  "spatial": "any sides that are multiples of the divisor"},
        "output": {"dtype": "float32", "layout": "NHWDK", "channels": int(model.output_shape[-1]),
                   "head": head,
                   "activation": "sigmoid per region" if head == "regions" else "softmax",
                   "region_threshold": float(cfg.inference.region_threshold)},
        "normalisation": normalisation_record(),
        "labels": convention.to_dict(),
        "inference": inference,
        "ensemble": {"members": len(members), "combine": "mean of the members' probabilities"},
        "members": members,
        "postprocessing": None if rules is None else rules.to_dict(),
        "check": {"tolerance": tolerance, "what": "max |dp| vs the Keras model on a random "
                  f"{'x'.join(map(str, window))} window, float32",
                  **({"int8": {**OmegaConf.to_container(cfg.export.int8, resolve=True),
                               "what": "labels vs the Keras model's on windows of each "
                                       "member's held-out cases (its data, fold in members"
                                       "[].int8); max_difference of openvino_int8 is "
                                       "information only"}}
                     if any("int8" in member for member in members) else {})},
        "versions": engine_versions(),
    }


def _postprocessing(cfg: DictConfig, spec: Any) -> Any:
    """The sweep's post-processing rules (``mode=postprocess``) when ``spec`` names one."""
    if not isinstance(spec, str) or not spec:
        return None
    from unet3d.evaluation.postprocess import load_postprocessing
    from unet3d.inference.checkpoints import job_reference_folder

    folder = job_reference_folder(cfg, spec, "export.checkpoint")
    return load_postprocessing(folder) if folder.is_dir() else None
