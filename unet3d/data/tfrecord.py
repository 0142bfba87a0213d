"""One TFRecord per case: ``<preprocessed_dir>/<case_id>.tfrecord`` holding one tf.train.Example.

Features: ``case_id`` bytes, ``shape`` int64[3], ``image`` bytes uint8 (H, W, D, 4),
``label`` bytes uint8 training classes (H, W, D) (empty when the case has no label),
``mean`` float[4], ``std`` float[4], ``spacing`` float[3], ``affine`` float[16], and the brain
crop box (``unet3d.data.crop.CropBox``): ``crop_start`` / ``crop_stop`` int64[3] (voxel
indices, stop exclusive) of the stored volume inside the original grid ``full_shape`` int64[3].
Records written without a box (before PREPROCESS_VERSION 2) read as -1 there, which means the
stored volume is the whole original grid. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data.layouts.convention import MODALITIES
from unet3d.errors import DataError
from unet3d.runs.files import write_atomic_with

logger = logging.getLogger(__name__)

RECORD_SUFFIX = ".tfrecord"
NUM_CHANNELS = len(MODALITIES)
#: ``crop_start`` / ``crop_stop`` / ``full_shape`` of a record written without a crop box.
NO_BOX = (-1, -1, -1)
CROP_BOX_KEYS = ("crop_start", "crop_stop", "full_shape")


def record_path(out_dir: str | Path, case_id: str) -> Path:
    """Return ``<out_dir>/<case_id>.tfrecord``."""
    return Path(out_dir) / f"{case_id}{RECORD_SUFFIX}"


def case_id_of(path: str | Path) -> str:
    """Return the case id encoded in a record's file name."""
    name = Path(path).name
    return name[: -len(RECORD_SUFFIX)] if name.endswith(RECORD_SUFFIX) else Path(path).stem


def serialize_case(record: Mapping[str, Any]) -> bytes:
    """Serialise a preprocessed case (see ``preprocess_case``) to a tf.train.Example string."""
    import tensorflow as tf

    image = np.ascontiguousarray(record["image"], dtype=np.uint8)
    if image.ndim != 4 or image.shape[-1] != NUM_CHANNELS:
        raise ValueError(f"image must be (H, W, D, {NUM_CHANNELS}) uint8, got {image.shape}")
    label = record.get("label")
    if label is None:
        label_bytes = b""
    else:
        label = np.ascontiguousarray(label, dtype=np.uint8)
        if label.shape != image.shape[:3]:
            raise ValueError(f"label shape {label.shape} differs from image {image.shape[:3]}")
        label_bytes = label.tobytes()
    affine = np.asarray(record.get("affine", np.eye(4)), dtype=np.float64).reshape(16)
    box = _box_values(record, image.shape[:3])
    spacing = np.asarray(record.get("spacing", (1.0, 1.0, 1.0)), dtype=np.float64).reshape(3)

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _floats(values: np.ndarray) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    features = {
        "case_id": _bytes(str(record["case_id"]).encode("utf-8")),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(image.shape[:3]))),
        "image": _bytes(image.tobytes()),
        "label": _bytes(label_bytes),
        "mean": _floats(np.asarray(record["mean"], dtype=np.float32).reshape(NUM_CHANNELS)),
        "std": _floats(np.asarray(record["std"], dtype=np.float32).reshape(NUM_CHANNELS)),
        "spacing": _floats(spacing),
        "affine": _floats(affine),
        **{key: tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))
           for key, values in box.items()},
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString()


def _box_values(record: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, list[int]]:
    """The record's ``crop_box`` (a ``CropBox``) as feature values; -1s without one.

    Raises:
        ValueError: the box's shape is not the stored image's.
    """
    box = record.get("crop_box")
    if box is None:
        return {key: list(NO_BOX) for key in CROP_BOX_KEYS}
    if tuple(box.shape) != tuple(int(side) for side in shape):
        raise ValueError(f"crop box shape {list(box.shape)} differs from image {list(shape)}")
    return box.to_record()


def write_record(path: str | Path, record: Mapping[str, Any]) -> None:
    """Write one case to ``path`` atomically (``<path>.tmp-<pid>`` then ``os.replace``)."""
    import tensorflow as tf

    serialized = serialize_case(record)

    def _write(tmp: Path) -> None:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            writer.write(serialized)

    write_atomic_with(path, _write)


def _feature_spec() -> dict:
    import tensorflow as tf

    return {
        "case_id": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string, default_value=b""),
        "mean": tf.io.FixedLenFeature([NUM_CHANNELS], tf.float32),
        "std": tf.io.FixedLenFeature([NUM_CHANNELS], tf.float32),
        "spacing": tf.io.FixedLenFeature([3], tf.float32, default_value=[1.0, 1.0, 1.0]),
        "affine": tf.io.FixedLenFeature([16], tf.float32, default_value=[0.0] * 16),
        **{key: tf.io.FixedLenFeature([3], tf.int64, default_value=list(NO_BOX))
           for key in CROP_BOX_KEYS},
    }


def parse_case(serialized: Any) -> dict:
    """Parse one serialised case into tensors (usable inside ``tf.data`` maps).

    Returns ``case_id`` string, ``shape`` int32[3], ``image`` uint8 (H, W, D, 4),
    ``label`` uint8 (H, W, D) training classes (zeros when the record has no label),
    ``has_label`` bool, ``mean`` / ``std`` float32[4], ``spacing`` float32[3],
    ``affine`` float32 (4, 4), ``crop_start`` / ``crop_stop`` / ``full_shape`` int32[3]
    (-1s for a record without a crop box).
    """
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, _feature_spec())
    shape = tf.cast(parsed["shape"], tf.int32)
    image = tf.reshape(
        tf.io.decode_raw(parsed["image"], tf.uint8), tf.concat([shape, [NUM_CHANNELS]], axis=0)
    )
    label_flat = tf.io.decode_raw(parsed["label"], tf.uint8)
    has_label = tf.size(label_flat) > 0
    label = tf.cond(
        has_label,
        lambda: tf.reshape(label_flat, shape),
        lambda: tf.zeros(shape, dtype=tf.uint8),
    )
    return {
        "case_id": parsed["case_id"],
        "shape": shape,
        "image": image,
        "label": label,
        "has_label": has_label,
        "mean": parsed["mean"],
        "std": parsed["std"],
        "spacing": parsed["spacing"],
        "affine": tf.reshape(parsed["affine"], [4, 4]),
        **{key: tf.cast(parsed[key], tf.int32) for key in CROP_BOX_KEYS},
    }


def _first_line(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return message.strip().splitlines()[0]


def read_record(path: str | Path) -> dict[str, Any]:
    """Read and parse the single case of a record file into NumPy arrays.

    Besides ``parse_case``'s arrays, ``crop_box`` is the ``CropBox`` of the stored volume in
    its original grid (the whole grid for records written without one).

    Raises DataError naming the case and file when the file is missing, corrupted or
    truncated, holds no record or several, or its content (or its crop box) does not parse.
    """
    import tensorflow as tf

    from unet3d.data.crop import CropBox

    path = Path(path)
    case_id = case_id_of(path)
    if not path.is_file():
        raise DataError(
            f"case {case_id}: {path}: TFRecord file does not exist; rerun preprocessing"
        )
    try:
        serialized = []
        for item in tf.data.TFRecordDataset(str(path)):
            serialized.append(item)
            if len(serialized) > 1:
                break
        if len(serialized) != 1:
            count = "no record" if not serialized else "more than one record"
            raise DataError(
                f"case {case_id}: {path}: corrupted TFRecord ({count}); delete it and rerun "
                "preprocessing"
            )
        parsed = parse_case(serialized[0])
        result = {key: value.numpy() for key, value in parsed.items()}
    except tf.errors.OpError as error:
        raise DataError(
            f"case {case_id}: {path}: corrupted TFRecord ({_first_line(error)}); delete it and "
            "rerun preprocessing"
        ) from error
    result["case_id"] = result["case_id"].decode("utf-8")
    result["has_label"] = bool(result["has_label"])
    try:
        result["crop_box"] = CropBox.from_record(result, result["shape"])
    except ValueError as error:
        raise DataError(f"case {case_id}: {path}: {error}; delete it and rerun preprocessing"
                        ) from None
    return result


def validate_records(files: Iterable[str | Path], require_label: bool = True,
                     unchanged: Mapping[str, Sequence[int]] | None = None) -> None:
    """Read every record once (CRC checked) and raise DataError naming the first bad file.

    Checks that each file exists, holds exactly one readable record whose image matches its
    shape and, with ``require_label``, a label. Call it before training.

    Args:
        files: the records.
        require_label: a record without label is an error.
        unchanged: ``{case_id: (size, mtime_ns)}`` of records known good (written by
            preprocessing, ``unet3d.data.preprocess``): a file with exactly that size and
            modification time is not read again, so a job's start does not reread a whole
            data set (BraTS 2021: about 20 GB) that no one has touched since it was written.
    """
    files = list(files)
    unchanged = unchanged or {}
    skipped = 0
    for path in files:
        known = unchanged.get(case_id_of(path))
        if known is not None and Path(path).is_file():
            stat = Path(path).stat()
            if [int(stat.st_size), int(stat.st_mtime_ns)] == [int(value) for value in known]:
                skipped += 1
                continue
        record = read_record(path)
        if require_label and not record["has_label"]:
            raise DataError(
                f"case {record['case_id']}: {path}: record has no label but training needs one"
            )
    logger.info("Validated %d TFRecord file(s)%s", len(files) - skipped,
                f" ({skipped} unchanged since preprocessing wrote them)" if skipped else "")
