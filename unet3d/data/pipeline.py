"""tf.data input pipelines: random training crops and whole-volume evaluation cases.

Training: files (sharded at file level) -> TFRecordDataset -> parse (+ tumour voxel coordinates)
-> cache -> seeded shuffle -> repeat -> random or tumour-centred uint8 crop -> flips -> batch
-> brightness and z-score (one fused per-channel affine map) -> prefetch. With nnU-Net's
augmentation (``augmentation=nnunet``) the crop step instead resamples the crop from the cached
volume when it is rotated, scaled or deformed, z-scores it and runs the intensity transforms
and flips on the float32 crop (``unet3d.data.augment.compose``), before batching. Every random
draw is a stateless op seeded by ``(seed, element index)``, so a given seed yields the same
batches whatever the parallelism. Without the in-memory cache (``data.cache: false``, or
``auto`` when the cases do not fit: ``unet3d.data.memory``) the file list is reshuffled every
pass and ``READ_PARALLELISM`` records are read and parsed at once (a deterministic
``interleave``) instead: memory then holds a few cases whatever their number.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.data.augment.compose import (
    Augmentation,
    intensity_scale,
    intensity_transforms,
    mirror,
    spatial_crop,
)
from unet3d.data.layouts.convention import MODALITIES
from unet3d.data.memory import decide_cache
from unet3d.data.preprocess import EPSILON, normalize
from unet3d.data.tfrecord import read_record
from unet3d.data.training_source import cached_elements, streamed_elements
from unet3d.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

NUM_CHANNELS = len(MODALITIES)
#: ``train_dataset``'s augmentation when it is given none: the reference recipe (flips and
#: brightness, the values of conf/augmentation/reference.yaml).
REFERENCE = Augmentation()


@dataclass
class EvalCase:
    """A whole preprocessed case for evaluation or prediction.

    ``image`` and ``label`` are the stored volume: the brain box of records written with one
    (PREPROCESS_VERSION 2). ``crop_box`` places it in the original grid (``affine``'s grid):
    ``unet3d.data.crop.paste_to_full(values, case.crop_box)`` returns a prediction there.
    """

    case_id: str
    image: np.ndarray  # float32 (h, w, d, 4), normalised
    label: np.ndarray | None  # uint8 (h, w, d) training classes
    spacing: tuple[float, float, float]
    affine: np.ndarray  # float64 (4, 4), of the original grid
    crop_box: Any = None  # CropBox of (h, w, d) in the original (H, W, D); None: the whole grid

    @property
    def full_shape(self) -> tuple[int, int, int]:
        """The original grid (H, W, D) the stored volume lies in."""
        if self.crop_box is None:
            return tuple(int(side) for side in self.image.shape[:3])  # type: ignore[return-value]
        return tuple(self.crop_box.full_shape)


def shard_files(files: Sequence[str], num_shards: int, index: int) -> list[str]:
    """Return the files of shard ``index`` of ``num_shards`` (every ``num_shards``-th file)."""
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"invalid shard {index} of {num_shards}")
    selected = list(files)[index::num_shards]
    if not selected:
        raise DataError(
            f"{len(files)} training file(s) cannot feed {num_shards} input pipelines: shard "
            f"{index} would be empty (use fewer workers or more cases)"
        )
    return selected


def _check_arguments(
    files: Sequence[str],
    crop_size: Sequence[int],
    batch_size: int,
    foreground_probability: float,
    shuffle_buffer: int,
) -> list[int]:
    if not files:
        raise DataError("no training files: the training fold is empty")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"case {Path(missing[0]).stem}: {missing[0]}: TFRecord file does not exist")
    crop = [int(c) for c in crop_size]
    if len(crop) != 3 or any(c < 1 for c in crop):
        raise ConfigError(f"data.crop_size: must be 3 positive sizes, got {list(crop_size)}")
    if int(batch_size) < 1:
        raise ConfigError(f"data.batch_size: must be > 0, got {batch_size}")
    if not 0.0 <= float(foreground_probability) <= 1.0:
        raise ConfigError(
            f"data.foreground_probability: must be in [0, 1], got {foreground_probability}"
        )
    if int(shuffle_buffer) < 1:
        raise ConfigError(f"data.shuffle_buffer: must be > 0, got {shuffle_buffer}")
    return crop


def _crop_window(element: dict, seeds: Any, crop_size: list[int],
                 foreground_probability: float) -> tuple[Any, Any, Any]:
    """Where a crop lies: ``(start, extent, before)``, int32 ``[3]`` each.

    The volume block ``start : start + extent`` fills the crop from voxel ``before`` on (the
    rest is zero padding when the volume is smaller than the crop); with probability
    ``foreground_probability`` the crop is centred on a tumour voxel. Draws: ``seeds[0:3]``.
    """
    import tensorflow as tf

    shape = tf.shape(element["label"])
    crop = tf.constant(crop_size, dtype=tf.int32)
    extent = tf.minimum(shape, crop)
    max_start = shape - extent

    uniform = tf.random.stateless_uniform([3], seed=seeds[0])
    random_start = tf.cast(tf.floor(uniform * tf.cast(max_start + 1, tf.float32)), tf.int32)
    start = tf.minimum(random_start, max_start)
    if foreground_probability > 0.0:
        foreground = element["foreground"]
        count = tf.shape(foreground)[0]
        draws = tf.random.stateless_uniform([2], seed=seeds[1])
        pick = tf.minimum(tf.cast(draws[1] * tf.cast(count, tf.float32), tf.int32), count - 1)
        padded = tf.concat([foreground, tf.zeros([1, 3], tf.int32)], axis=0)
        centre = tf.gather(padded, tf.maximum(pick, 0))
        centred_start = tf.clip_by_value(centre - crop // 2, 0, max_start)
        use_foreground = tf.logical_and(draws[0] < foreground_probability, count > 0)
        start = tf.where(use_foreground, centred_start, start)
    missing = crop - extent
    pad_uniform = tf.random.stateless_uniform([3], seed=seeds[2])
    before = tf.minimum(
        tf.cast(tf.floor(pad_uniform * tf.cast(missing + 1, tf.float32)), tf.int32), missing
    )
    return start, extent, before


def _element_seeds(base_seed: int, index: Any) -> tuple[Any, Any]:
    """The 6 stateless seeds of crop ``index`` (crop, flips, brightness) and the seed of its
    nnU-Net transforms (a key folded from the same ``(seed, index)``)."""
    import tensorflow as tf

    root = tf.stack([tf.constant(base_seed, tf.int64), tf.cast(index, tf.int64)])
    seeds = tf.random.experimental.stateless_split(root, num=6)
    return seeds, tf.random.experimental.stateless_fold_in(root, 1)


def _crop_and_augment(
    index: Any,
    element: dict,
    base_seed: int,
    crop_size: list[int],
    foreground_probability: float,
    augment: bool,
    augmentation: Augmentation = REFERENCE,
) -> tuple[Any, Any, Any, Any]:
    """Crop one cached element; mirror it and scale its intensities (the reference recipe).

    Randomness seeded by ``(seed, index)``. Returns the uint8 image and label crops and the
    per-channel ``scale`` and ``offset`` of the normalisation (applied after batching by
    ``_normalize_batch``).
    """
    import tensorflow as tf

    seeds, _ = _element_seeds(base_seed, index)
    image, label = element["image"], element["label"]
    start, extent, before = _crop_window(element, seeds, crop_size, foreground_probability)
    image = tf.slice(image, tf.concat([start, [0]], 0), tf.concat([extent, [NUM_CHANNELS]], 0))
    label = tf.slice(label, start, extent)
    missing = tf.constant(crop_size, dtype=tf.int32) - extent
    paddings = tf.stack([before, missing - before], axis=1)
    image = tf.pad(image, tf.concat([paddings, tf.zeros([1, 2], tf.int32)], 0))
    label = tf.pad(label, paddings)
    image = tf.ensure_shape(image, crop_size + [NUM_CHANNELS])
    label = tf.ensure_shape(label, crop_size)

    # Flips act on the uint8 crop (4x less data than float32). Brightness and the z-score are
    # folded into one per-channel affine map: voxels > 0 -> x * factor / (std + eps) - mean /
    # (std + eps), which equals normalising the brightness-scaled image (factor > 0 keeps the
    # foreground mask), with far fewer passes over the crop.
    factor = tf.constant(1.0, tf.float32)
    if augment:
        image, label = mirror(image, label, seeds[3], augmentation.mirror_probability,
                              augmentation.mirror_axes)
        # Background voxels are 0 and stay 0: only the foreground is scaled.
        factor = intensity_scale(seeds[4:6], augmentation.intensity_scale)
    inverse_std = 1.0 / (element["std"] + EPSILON)
    return image, label, factor * inverse_std, -element["mean"] * inverse_std


def _crop_and_augment_nnunet(
    index: Any,
    element: dict,
    base_seed: int,
    crop_size: list[int],
    foreground_probability: float,
    augmentation: Augmentation,
) -> tuple[Any, Any]:
    """Crop one cached element with nnU-Net's transforms: float32 image, uint8 label.

    The same crop window, flips and ``intensity_scale`` draws as ``_crop_and_augment`` for
    the same ``(seed, index)``; the crop is resampled from the whole volume when rotated,
    scaled or deformed, z-scored, then the intensity transforms and mirroring follow
    (``unet3d.data.augment.compose``).
    """
    import tensorflow as tf

    seeds, nnunet_seed = _element_seeds(base_seed, index)
    start, _, before = _crop_window(element, seeds, crop_size, foreground_probability)
    factor = intensity_scale(seeds[4:6], augmentation.intensity_scale)
    inverse_std = 1.0 / (element["std"] + EPSILON)
    spatial_seed, intensity_seed = tf.unstack(
        tf.random.experimental.stateless_split(nnunet_seed, num=2))
    image, label = spatial_crop(element["image"], element["label"], start - before, crop_size,
                                factor * inverse_std, -element["mean"] * inverse_std,
                                augmentation, spatial_seed, element["spacing"])
    image = intensity_transforms(image, augmentation, intensity_seed)
    return mirror(image, label, seeds[3], augmentation.mirror_probability,
                  augmentation.mirror_axes)


def _log_anisotropy(files: Sequence[str]) -> None:
    """Say (INFO) when the first training case is anisotropic: its crops are rotated, scaled
    and deformed in-plane only (``unet3d.data.augment.compose.lowres_axis``, checked per case)."""
    import tensorflow as tf

    from unet3d.data.augment.compose import ANISO_THRESHOLD, lowres_axis

    try:
        (raw,) = tf.data.TFRecordDataset(list(files)[:1]).take(1)
        spacing = tf.io.parse_single_example(raw, {"spacing": tf.io.FixedLenFeature(
            [3], tf.float32, default_value=[1.0, 1.0, 1.0])})["spacing"].numpy().tolist()
    except (tf.errors.OpError, ValueError):  # the pipeline itself names a bad file
        return
    axis = lowres_axis(spacing)
    if axis is not None:
        logger.info("training augmentation: anisotropic spacing %s mm (%s; max / min > %g): "
                    "crops are rotated about axis %d only and scaled and deformed in-plane, "
                    "as nnU-Net does (do_dummy_2d_data_aug); every case by its own spacing",
                    "x".join(f"{side:g}" for side in spacing), Path(files[0]).name,
                    ANISO_THRESHOLD, axis)


def _label_to_int32(image: Any, label: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    return image, tf.cast(label, tf.int32)


def _normalize_batch(image: Any, label: Any, scale: Any, offset: Any) -> tuple[Any, Any]:
    """uint8 batch -> float32: voxels > 0 become ``x * scale + offset``, the others 0."""
    import tensorflow as tf

    scale = scale[:, None, None, None, :]
    offset = offset[:, None, None, None, :]
    normalised = tf.cast(image, tf.float32) * scale + offset
    return tf.where(image > 0, normalised, 0.0), tf.cast(label, tf.int32)


def train_dataset(
    files: Sequence[str],
    crop_size: Sequence[int],
    batch_size: int,
    augment: bool,
    seed: int | None,
    foreground_probability: float,
    shuffle_buffer: int,
    cache: bool | str,
    input_context: Any = None,
    shard: tuple[int, int] | None = None,
    augmentation: Augmentation | Mapping[str, Any] | None = None,
    local_processes: int = 1,
) -> Any:
    """Infinite dataset of ``(image float32 [B, h, w, d, 4], label int32 [B, h, w, d])``.

    ``shard=(num_shards, index)`` (or a ``tf.distribute.InputContext``) selects every
    ``num_shards``-th file before caching. Crops smaller volumes are zero-padded; with
    probability ``foreground_probability`` a crop is centred on a tumour voxel. Deterministic
    for a given ``seed`` (None draws a random one).

    ``augmentation`` (used when ``augment``): an ``Augmentation``, a ``data.augmentation``
    section (``conf/augmentation/``), or None for the reference recipe (``REFERENCE``). With
    only mirroring and ``intensity_scale`` drawn, crops stay uint8 until after batching;
    nnU-Net's transforms run on float32 crops per element (``unet3d.data.augment.compose``).

    ``cache``: True keeps the parsed cases of this shard in RAM after the first pass; False
    reads them from disk on every pass (file order reshuffled each pass, ``READ_PARALLELISM``
    files read at once); "auto" decides by memory (``unet3d.data.memory.decide_cache``, with
    ``local_processes`` processes on this machine each caching its shard) and logs why.

    Raises:
        ConfigError: a bad argument or ``augmentation`` value (one line naming the key).
        DataError: no files, a missing file, an empty shard.
    """
    import tensorflow as tf

    crop = _check_arguments(files, crop_size, batch_size, foreground_probability, shuffle_buffer)
    if augmentation is None:
        augmentation = REFERENCE
    elif not isinstance(augmentation, Augmentation):
        augmentation = Augmentation.from_config(augmentation)
    nnunet_path = bool(augment) and augmentation.uses_nnunet_transforms
    logger.info("training augmentation %s", augmentation.describe() if augment else "off")
    if nnunet_path and augmentation.resamples:
        _log_anisotropy(files)
    files = [str(f) for f in files]
    shard_index = 0
    if shard is None and input_context is not None:
        shard = (input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shard is not None:
        num_shards, shard_index = int(shard[0]), int(shard[1])
        files = shard_files(files, num_shards, shard_index)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    # Distinct shards draw distinct crops; the same (seed, shard) always gives the same stream.
    base_seed = (int(seed) * 1_000_003 + shard_index) % (2**62)
    with_foreground = float(foreground_probability) > 0.0
    autotune = tf.data.AUTOTUNE

    decision = decide_cache(cache, files, local_processes)
    logger.info("%s", decision.describe())
    if decision.cache:
        dataset = cached_elements(files, with_foreground, base_seed, int(shuffle_buffer))
    else:
        dataset = streamed_elements(files, with_foreground, base_seed)
    dataset = dataset.enumerate()
    if nnunet_path:
        dataset = dataset.map(
            lambda index, element: _crop_and_augment_nnunet(
                index, element, base_seed, crop, float(foreground_probability), augmentation
            ),
            num_parallel_calls=autotune,
        )
        dataset = dataset.batch(int(batch_size), drop_remainder=True)
        dataset = dataset.map(_label_to_int32, num_parallel_calls=autotune)
    else:
        dataset = dataset.map(
            lambda index, element: _crop_and_augment(
                index, element, base_seed, crop, float(foreground_probability), bool(augment),
                augmentation,
            ),
            num_parallel_calls=autotune,
        )
        # Batching the uint8 crops and normalising afterwards copies 4x less data.
        dataset = dataset.batch(int(batch_size), drop_remainder=True)
        dataset = dataset.map(_normalize_batch, num_parallel_calls=autotune)
    options = tf.data.Options()
    options.deterministic = True
    dataset = dataset.with_options(options)
    return dataset.prefetch(autotune)


def iterate_eval_cases(files: Sequence[str]) -> Iterator[EvalCase]:
    """Yield every case of ``files`` exactly once, in order, as a normalised whole volume.

    Raises DataError naming the case and file when a record is missing or corrupted.
    """
    for path in files:
        record = read_record(path)
        yield EvalCase(
            case_id=record["case_id"],
            image=normalize(record["image"], record["mean"], record["std"]),
            label=record["label"] if record["has_label"] else None,
            spacing=tuple(float(s) for s in record["spacing"]),
            affine=np.asarray(record["affine"], dtype=np.float64),
            crop_box=record.get("crop_box"),
        )
