"""Where the training elements come from: parsed records cached in RAM, or read on every pass.

A training element is one case's uint8 volumes and tumour coordinates (``training_element``).
``cached_elements`` parses every record once and keeps the elements in RAM (``tf.data``'s
``cache``), shuffled in a buffer; ``streamed_elements`` reshuffles the file list every pass and
reads ``READ_PARALLELISM`` records at once, so memory holds a few cases whatever their number.
Which one ``unet3d.data.pipeline.train_dataset`` uses: ``data.cache`` (``unet3d.data.memory``).
Both are infinite and deterministic for a given seed.
"""

from __future__ import annotations

from typing import Any

from unet3d.data.tfrecord import parse_case

__all__ = ["MAX_FOREGROUND_POINTS", "READ_PARALLELISM", "cached_elements", "streamed_elements",
           "training_element"]

#: At most this many tumour voxel coordinates are kept per case for foreground sampling
#: (an evenly strided subset of all of them, so they stay spread over the whole tumour).
MAX_FOREGROUND_POINTS = 4096
#: Records read at once when the cases are not cached (``interleave``'s cycle length).
READ_PARALLELISM = 4


def training_element(serialized: Any, with_foreground: bool) -> dict:
    """Parse a record into a training element: ``image`` uint8 (h, w, d, 4), ``label`` uint8
    (h, w, d), ``mean`` / ``std`` float32[4], ``spacing`` float32[3] (mm) and ``foreground``
    int32 (n, 3), at most ``MAX_FOREGROUND_POINTS`` tumour voxel coordinates (none without
    ``with_foreground``)."""
    import tensorflow as tf

    parsed = parse_case(serialized)
    label = parsed["label"]
    if with_foreground:
        coordinates = tf.cast(tf.where(label > 0), tf.int32)
        count = tf.shape(coordinates)[0]
        stride = tf.maximum(1, (count + MAX_FOREGROUND_POINTS - 1) // MAX_FOREGROUND_POINTS)
        coordinates = coordinates[::stride]
    else:
        coordinates = tf.zeros([0, 3], dtype=tf.int32)
    return {
        "image": parsed["image"],
        "label": label,
        "mean": parsed["mean"],
        "std": parsed["std"],
        "spacing": parsed["spacing"],
        "foreground": coordinates,
    }


def cached_elements(files: list[str], with_foreground: bool, base_seed: int,
                    shuffle_buffer: int) -> Any:
    """Training elements parsed once and kept in RAM, reshuffled in a buffer of
    ``min(shuffle_buffer, len(files))`` elements on every pass (seeded by ``base_seed``)."""
    import tensorflow as tf

    dataset = tf.data.TFRecordDataset(files)
    dataset = dataset.map(
        lambda serialized: training_element(serialized, with_foreground),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.cache()
    dataset = dataset.shuffle(
        min(int(shuffle_buffer), len(files)),
        seed=base_seed % (2**31),
        reshuffle_each_iteration=True,
    )
    return dataset.repeat()


def streamed_elements(files: list[str], with_foreground: bool, base_seed: int) -> Any:
    """Training elements read from disk on every pass (the uncached input of ``train_dataset``).

    The file list is reshuffled every pass (seeded); ``READ_PARALLELISM`` records are read and
    parsed at once, in a deterministic order, so memory holds a few cases whatever their number.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(files)
    dataset = dataset.shuffle(len(files), seed=base_seed % (2**31), reshuffle_each_iteration=True)
    dataset = dataset.repeat()
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(READ_PARALLELISM, len(files)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.map(
        lambda serialized: training_element(serialized, with_foreground),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
