"""``mode=score``: score a folder of segmentations against a folder of references, no model.

    python -m unet3d.run mode=score data=brats2023 score.predictions=PRED_DIR \\
        score.references=REF_DIR

Every ``<case>.nii.gz`` (or ``.nii``) in ``score.predictions`` is scored against its reference
in ``score.references``: ``<case>.nii.gz``, ``<case>-seg.nii.gz``, ``<case>_seg.nii.gz`` or
those inside a ``<case>/`` folder (the BraTS layouts), ``.nii`` too. The labels are the ``data``
group's convention (its ``labels`` and ``regions``; ``data=synthetic`` reads its layout's),
the metrics those of ``mode=evaluate``: voxel-wise ``Dice_<region>`` / ``HD95_<region>`` and,
per ``evaluation.lesionwise``, the lesion-wise ones, with the spacing of the prediction's
header (as the BraTS scripts read it). Written: ``metrics/per_case.csv`` in the run folder,
the means in ``results.json`` and on the MLflow run. A prediction without a reference, a
reference without a prediction, or a pair of different shape or spacing is a one-line
``DataError`` naming the file(s), before anything is written. TensorFlow is not imported
(``unet3d.runner.NO_TENSORFLOW_MODES``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.errors import ConfigError, DataError
from unet3d.modes.job import Job, lesionwise_scorer

log = logging.getLogger(__name__)

#: The per-case metrics, under the run folder.
PER_CASE_CSV = "metrics/per_case.csv"
_SUFFIXES = (".nii.gz", ".nii")
#: Reference file names tried for case ``{c}``, in order, each with ``_SUFFIXES``.
REFERENCE_NAMES = ("{c}", "{c}-seg", "{c}_seg", "{c}/{c}-seg", "{c}/{c}_seg", "{c}/{c}")


def _case_id(path: Path) -> str | None:
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def find_pairs(predictions: Path, references: Path) -> list[tuple[str, Path, Path]]:
    """``(case id, prediction, reference)`` for every prediction, sorted by case id.

    Raises:
        DataError: no prediction; a prediction without reference; a reference case (a file or
            ``<case>/`` folder of ``references``) without prediction.
    """
    found = {}
    for path in sorted(predictions.iterdir()):
        case = _case_id(path)
        if case is not None and path.is_file():
            found[case] = path
    if not found:
        raise DataError(f"{predictions}: no .nii.gz / .nii predictions to score")
    pairs = []
    for case, path in found.items():
        candidates = [references / (name.format(c=case) + suffix)
                      for name in REFERENCE_NAMES for suffix in _SUFFIXES]
        reference = next((c for c in candidates if c.is_file()), None)
        if reference is None:
            raise DataError(f"{path}: no reference for case {case} in {references} (looked for "
                            f"{case}.nii.gz, {case}-seg.nii.gz, {case}_seg.nii.gz, .nii, and "
                            f"the same in {case}/)")
        pairs.append((case, path, reference))
    unmatched = []
    for entry in sorted(references.iterdir()):
        case = entry.name if entry.is_dir() else _case_id(entry)
        for ending in ("-seg", "_seg"):
            if case is not None and case.endswith(ending):
                case = case[: -len(ending)]
        if case is not None and case not in found:
            unmatched.append(case)
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise DataError(f"{predictions}: {len(unmatched)} reference case(s) of {references} have "
                        f"no prediction: {shown}")
    return pairs


def read_labels(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A label volume (uint8 ``(X, Y, Z)``) and its spacing in mm from the header's zooms.

    Raises:
        DataError: unreadable, not 3D, or values that are not integers in 0..255.
    """
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
        zooms = image.header.get_zooms()
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for a bad file
        raise DataError(f"{path}: unreadable NIfTI ({error})") from None
    data = np.squeeze(data) if data.ndim == 4 and data.shape[-1] == 1 else data
    if data.ndim != 3:
        raise DataError(f"{path}: a label volume must be 3D, got shape {data.shape}")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.rint(data)):
            raise DataError(f"{path}: label values must be integers")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DataError(f"{path}: label values must be in 0..255, got {data.min()}..{data.max()}")
    return data.astype(np.uint8), tuple(float(z) for z in zooms[:3])  # type: ignore[return-value]


def score_convention(cfg: Any) -> Any:
    """The label convention of the ``data`` group (its YAML's labels; synthetic: its layout's).

    Raises:
        ConfigError: the group takes its labels from a data set's ``dataset.json``.
    """
    from unet3d.data.datasets import LAYOUT_DATA_SETS
    from unet3d.data.layouts.convention import convention_from_config
    from unet3d.data.layouts.resolve import data_config

    data = cfg.data
    settings: Any = data
    if data.get("labels") is None and data.get("synthetic") is not None:
        layout = str(data.synthetic.get("layout", "flat"))
        settings = data_config(LAYOUT_DATA_SETS.get(layout, layout))
    if settings.get("labels") is None or settings.get("regions") is None:
        raise ConfigError(f"data.labels: mode=score needs the data group's labels and regions; "
                          f"data={data.get('name')} reads them from dataset.json: give "
                          "data.labels and data.regions")
    return convention_from_config(str(settings.get("convention") or data.get("name")),
                                  dict(settings["labels"]), dict(settings["regions"]),
                                  settings.get("region_order"))


def score_pairs(pairs: Sequence[tuple[str, Path, Path]], convention: Any,
                lesionwise: Any) -> list[dict[str, Any]]:
    """The metrics row of every pair (``case_id`` first), with progress lines.

    Raises:
        DataError: a pair differs in shape or spacing, or a file is unreadable.
    """
    from unet3d.evaluation.metrics import case_metrics

    rows = []
    started = time.perf_counter()
    for index, (case, prediction_path, reference_path) in enumerate(pairs, start=1):
        prediction, spacing = read_labels(prediction_path)
        reference, reference_spacing = read_labels(reference_path)
        if prediction.shape != reference.shape:
            raise DataError(f"{prediction_path}: shape {prediction.shape} differs from its "
                            f"reference {reference_path} {reference.shape}")
        if not np.allclose(spacing, reference_spacing, atol=1e-3):
            raise DataError(f"{prediction_path}: spacing {spacing} mm differs from its reference "
                            f"{reference_path} {reference_spacing} mm")
        metrics = case_metrics(prediction, reference, spacing, convention=convention)
        if lesionwise is not None:
            metrics.update(lesionwise(prediction, reference, spacing))
        rows.append({"case_id": case, **metrics})
        elapsed = time.perf_counter() - started
        log.info("scored %s (%d/%d)  %.2f s/case  ETA %.0f s", case, index, len(pairs),
                 elapsed / index, elapsed / index * (len(pairs) - index))
    return rows


def run(job: Job) -> dict[str, float]:
    """Score ``score.predictions`` against ``score.references``; returns the means."""
    from unet3d.evaluation.evaluate import summarize_and_log, write_csv

    cfg = job.cfg
    predictions = Path(str(cfg.score.predictions)).expanduser().resolve()
    references = Path(str(cfg.score.references)).expanduser().resolve()
    convention = score_convention(cfg)
    lesionwise = lesionwise_scorer(cfg, convention, job.tracker)
    pairs = find_pairs(predictions, references)
    log.info("scoring %d case(s) of %s against %s (%s labels)", len(pairs), predictions,
             references, convention.name)
    rows = score_pairs(pairs, convention, lesionwise)
    summary = summarize_and_log(rows, f"scores of {predictions} over {len(rows)} case(s):",
                                convention)
    csv_path = write_csv(rows, job.output_dir / PER_CASE_CSV)
    job.tracker.set_tags({"score.predictions": str(predictions),
                          "score.references": str(references)})
    job.tracker.log_metrics(summary)
    job.tracker.log_artifact(csv_path, "metrics")
    return dict(summary)
