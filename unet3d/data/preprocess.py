"""Reference preprocessing: NIfTI cases to one uint8 TFRecord per case.

Per modality: clip at 0.85 x max, rescale to 0..255 (``255 * x / max`` after clipping, truncated
to uint8 like the reference), then mean and std over the voxels > 0 of the uint8 data. Labels
are stored as training classes of the data set's ``LabelConvention`` (class k = its k-th label
value: BraTS 2019 label 4 becomes 3). Each case is then cropped to the box of voxels where any
modality is > 0 plus every labelled voxel (nnU-Net's crop_to_nonzero, ``unet3d.data.crop``):
the record stores the box and where it lies in the original grid; mean and std are unchanged.
At load time ``normalize`` maps voxels > 0 to ``(x - mean) / (std + 1e-8)`` and the others to 0.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data._files import Progress, read_json
from unet3d.data.crop import crop_record, nonzero_box
from unet3d.data.layouts.cases import CaseFiles, LoadedCase
from unet3d.data.layouts.convention import BRATS2019, MODALITIES, LabelConvention
from unet3d.data.layouts.resolve import DataLayout, default_layout
from unet3d.data.parallel import process_map, worker_count
from unet3d.data.tfrecord import NUM_CHANNELS, record_path, write_record
from unet3d.errors import ConfigError, DataError
from unet3d.runs.files import remove_stale_temporaries, write_json_atomic

logger = logging.getLogger(__name__)

#: Bumped whenever the content of the records changes; older records are then rewritten.
#: 2: records hold the brain box only (``crop_start`` / ``crop_stop`` / ``full_shape``). The
#: manifest also records the label convention (a change re-runs).
PREPROCESS_VERSION = 2
MANIFEST_NAME = "preprocess_manifest.json"
CLIP_FRACTION = 0.85
EPSILON = 1e-8


def scale_to_uint8(volume: np.ndarray, maximum: float | None = None) -> np.ndarray:
    """Clip one modality at 0.85 x its max and rescale it to 0..255 uint8 (the reference).

    ``maximum``: the modality's max when ``volume`` is only a part of it (None: its own max).
    """
    volume = np.asarray(volume)
    if maximum is None:
        maximum = float(volume.max()) if volume.size else 0.0
    if maximum <= 0.0:
        return np.zeros(volume.shape, dtype=np.uint8)
    ceiling = CLIP_FRACTION * maximum
    scaled = np.minimum(volume, ceiling, dtype=np.float64)
    scaled *= 255.0
    scaled /= ceiling
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8)


def foreground_stats(channel: np.ndarray) -> tuple[float, float]:
    """Mean and std over the voxels > 0 of one uint8 channel ((0, 1) when there are none)."""
    values = channel[channel > 0]
    if values.size == 0:
        return 0.0, 1.0
    values = values.astype(np.float64)
    return float(values.mean()), float(values.std())


def preprocess_case(loaded: LoadedCase,
                    convention: LabelConvention = BRATS2019) -> dict[str, np.ndarray]:
    """Return ``image`` uint8 (H, W, D, 4), ``label`` uint8 training classes of ``convention``
    (``convention.to_classes``) or None, ``mean``/``std`` float32[4], ``spacing`` float32[3],
    ``affine`` float64 (4, 4) and ``case_id``.

    Raises:
        DataError: the label holds values outside ``convention`` (case named).
    """
    raw = np.asarray(loaded.image)
    image = np.zeros(raw.shape, dtype=np.uint8)
    means = np.zeros(image.shape[-1], dtype=np.float32)
    stds = np.ones(image.shape[-1], dtype=np.float32)
    # Outside the box of non-zero voxels every modality is 0 and scales to 0: only the box is
    # computed (the same values, 2-3x less work on a BraTS head), with each modality's own max.
    box = nonzero_box(raw) if raw.size else None
    inside = box.slices if box is not None and not box.is_empty else (slice(0, 0),) * 3
    for channel in range(image.shape[-1]):
        maximum = float(raw[..., channel].max()) if raw.size else 0.0
        image[inside + (channel,)] = scale_to_uint8(raw[inside + (channel,)], maximum)
        means[channel], stds[channel] = foreground_stats(image[inside + (channel,)])
    label = None
    if loaded.label is not None:
        try:
            label = convention.to_classes(loaded.label)
        except ValueError as error:
            raise DataError(f"case {loaded.case_id}: {error} ({convention.name} labels)") from None
    return {
        "case_id": loaded.case_id,
        "image": image,
        "label": label,
        "mean": means,
        "std": stds,
        "spacing": np.asarray(loaded.spacing, dtype=np.float32),
        "affine": np.asarray(loaded.affine, dtype=np.float64),
    }


def normalize(image_uint8: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Z-score a (…, 4) uint8 image per channel: voxels > 0 -> (x - mean) / (std + 1e-8), else 0."""
    image = np.asarray(image_uint8, dtype=np.float32)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    normalised = (image - mean) / (std + np.float32(EPSILON))
    return np.where(image > 0, normalised, np.float32(0.0)).astype(np.float32)


def _source_signature(case: CaseFiles) -> dict[str, list[int]]:
    paths = dict(case.modalities)
    if case.label is not None:
        paths["seg"] = case.label
    signature = {}
    for name, path in sorted(paths.items()):
        stat = Path(path).stat()
        signature[name] = [str(path), int(stat.st_size), int(stat.st_mtime_ns)]
    return signature


def prepare_record(layout: DataLayout, case: CaseFiles) -> dict[str, Any]:
    """Load, preprocess and brain-crop one case: the record ``write_record`` stores.

    Runs in the worker processes of ``preprocess_dataset`` (no TensorFlow).

    Raises:
        DataError: a bad case (named with its file).
    """
    return crop_record(preprocess_case(layout.load_case(case), layout.convention))


def _log_space_needed(pending: list[CaseFiles], out_dir: Path) -> None:
    """Log the disk space the pending records need at most, and what the disk has free."""
    import nibabel as nib

    path, _ = pending[0].source(MODALITIES[0])
    try:
        shape = nib.load(str(path)).shape[:3]
    except Exception:  # noqa: BLE001 - the case's own read names the problem later
        return
    per_case = (NUM_CHANNELS + 1) * int(np.prod(shape))
    needed = per_case * len(pending)
    free = shutil.disk_usage(out_dir).free
    logger.info(
        "The records of %d case(s) need at most %.2f GB on disk (%.1f MB each for the full "
        "%s grid; records keep the brain box only, usually less); %.2f GB free in %s",
        len(pending), needed / 1e9, per_case / 1e6, "x".join(str(s) for s in shape),
        free / 1e9, out_dir)
    if needed > free:
        logger.warning("%s: %.2f GB free may not hold the records (at most %.2f GB); free some "
                       "space or set data.preprocessed_dir to another disk", out_dir, free / 1e9,
                       needed / 1e9)


def preprocess_dataset(
    raw_dir: str | Path, out_dir: str | Path, layout: DataLayout | None = None, *,
    require_label: bool = True, workers: int = 1,
) -> list[str]:
    """Preprocess every case of ``raw_dir`` into ``<out_dir>/<case_id>.tfrecord``.

    Args:
        raw_dir: the data set's folder.
        out_dir: the records' folder.
        layout: the reader and label convention (``unet3d.data.layouts.resolve.resolve_layout``);
            None: BraTS 2019 case folders.
        require_label: a case without label is an error.
        workers: processes that load and preprocess cases at once (``unet3d.data.parallel``;
            0: one per usable CPU); this process writes the records and the manifest in case
            order. The records do not depend on it.

    Returns the record paths sorted by case id. Cases whose record is up to date (same source
    files, sizes and mtimes, same preprocessing version and label convention: see
    ``preprocess_manifest.json``) are skipped; a changed convention rewrites every record. A
    bad case raises DataError naming the case and file; records already written stay intact
    and no temporary file is left behind.
    """
    raw_dir = Path(raw_dir)
    out_dir = Path(out_dir)
    layout = default_layout() if layout is None else layout
    cases = layout.find_cases(raw_dir, require_label=require_label)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    manifest = read_json(manifest_path)
    convention = layout.convention.to_dict()
    if (not isinstance(manifest, dict) or manifest.get("version") != PREPROCESS_VERSION
            or manifest.get("convention", BRATS2019.to_dict()) != convention):
        if isinstance(manifest, dict) and manifest.get("cases"):
            logger.info("Label convention or preprocessing version changed: rewriting the "
                        "records in %s", out_dir)
        manifest = {"version": PREPROCESS_VERSION, "cases": {}}
    manifest["convention"] = convention
    entries: dict[str, Any] = manifest.setdefault("cases", {})

    pending: list[tuple[CaseFiles, dict]] = []
    for case in cases:
        signature = _source_signature(case)
        entry = entries.get(case.case_id)
        path = record_path(out_dir, case.case_id)
        up_to_date = (
            isinstance(entry, dict)
            and entry.get("sources") == signature
            and path.is_file()
            and entry.get("record_size") == path.stat().st_size
        )
        if not up_to_date:
            pending.append((case, signature))
    files = [str(record_path(out_dir, case.case_id)) for case in cases]
    if not pending:
        logger.info("Preprocessed data in %s is up to date (%d cases)", out_dir, len(cases))
        return files

    try:
        workers = worker_count(workers, len(pending))
    except ValueError as error:
        raise ConfigError(f"data.preprocess_workers: {error}") from None
    logger.info("Preprocessing %d of %d case(s) from %s into %s with %d process(es)",
                len(pending), len(cases), raw_dir, out_dir, workers)
    _log_space_needed([case for case, _ in pending], out_dir)
    start = time.perf_counter()
    progress = Progress(len(pending), "Preprocessing", logger)
    records = process_map(prepare_record, [(layout, case) for case, _ in pending], workers)
    try:
        for (case, signature), record in zip(pending, records, strict=True):
            entries.pop(case.case_id, None)
            path = record_path(out_dir, case.case_id)
            write_record(path, record)
            entries[case.case_id] = {
                "sources": signature,
                "record_size": path.stat().st_size,
                "record_mtime_ns": path.stat().st_mtime_ns,
                "shape": list(record["image"].shape[:3]),
                **record["crop_box"].to_record(),
                "has_label": record["label"] is not None,
            }
            write_json_atomic(manifest_path, manifest, sort_keys=True)
            progress.update()
    finally:
        records.close()
        progress.close()
    elapsed = time.perf_counter() - start
    logger.info(
        "Preprocessed %d case(s) in %.1f s (%.2f s per case)",
        len(pending),
        elapsed,
        elapsed / len(pending),
    )
    return files


def unchanged_records(out_dir: str | Path) -> dict[str, list[int]]:
    """``{case_id: [size, mtime_ns]}`` of the records preprocessing wrote into ``out_dir``
    (its manifest), for ``unet3d.data.tfrecord.validate_records``; {} without a manifest."""
    manifest = read_json(Path(out_dir) / MANIFEST_NAME)
    entries = manifest.get("cases", {}) if isinstance(manifest, dict) else {}
    return {case_id: [entry["record_size"], entry["record_mtime_ns"]]
            for case_id, entry in entries.items()
            if isinstance(entry, dict) and "record_size" in entry and "record_mtime_ns" in entry}
