"""Sliding-window inference over whole volumes with Gaussian blending and flip TTA.

``sliding_window_predict`` works on NumPy arrays and any ``predict_fn`` mapping a float32
batch ``[n, h, w, d, C]`` to probabilities ``[n, h, w, d, K]``; ``make_keras_predict_fn`` wraps a
Keras model in such a function. Tiling per axis of length ``L`` with window ``w``: the number of
windows is ``ceil((L - w) / step) + 1`` with ``step = max(1, floor(w * (1 - overlap)))``, and the
starts are spread evenly from 0 to ``L - w`` (nnU-Net's scheme), so the last window ends at the
border and neighbours overlap by at least ``overlap``. A volume smaller than the window is padded
with zeros (centred) and the result cropped back.

Per window the host work is kept small next to the forward pass: the importance map is computed
once per (window shape, blend) and cached (read-only), each window batch's prediction is weighted
into one reused buffer (no per-batch allocation, the model's output is never copied) and added
into one float32 accumulator, and the weight sum is accumulated once per window position (not per
class). Probabilities are always accumulated in float32, whatever dtype the model computes in
(mixed precision returns float32 softmax outputs). With ``overlap_host_work`` (the default) the
next window batch is cut out and predicted in a worker thread while this one is accumulated
(TensorFlow and NumPy release the GIL), in the same order: the result is bitwise the same.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from unet3d.config import BLENDS

logger = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], Any]
ProgressFn = Callable[[int, int], None]

#: Gaussian sigma as a fraction of the window side (nnU-Net).
GAUSSIAN_SIGMA_SCALE = 1.0 / 8.0
#: Smallest Gaussian weight (the map's maximum is 1), so every voxel keeps a positive weight.
GAUSSIAN_MIN_WEIGHT = 1e-4


def _window_shape(window_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(window_size, (int, np.integer)):
        sides = (int(window_size),) * 3
    else:
        sides = tuple(int(side) for side in window_size)
    if len(sides) != 3 or any(side <= 0 for side in sides):
        raise ValueError(f"window_size must be 3 positive sides, got {window_size!r}")
    return sides  # type: ignore[return-value]


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of side ``window`` tiling ``length`` (>= window) on one axis."""
    if length < window:
        raise ValueError(f"length {length} is smaller than the window {window}")
    if length == window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((length - window) / step) + 1
    spacing = (length - window) / (count - 1)
    return [int(round(index * spacing)) for index in range(count)]


def window_counts(shape: Sequence[int], window_size: int | Sequence[int],
                  overlap: float) -> tuple[int, int, int]:
    """Windows per axis over a volume of ``shape`` (sides smaller than the window count 1).

    With 128^3 windows and overlap 0.5 a side of at most 128 voxels takes 1 window, at most 192
    takes 2, at most 256 takes 3 (the step is 64): a 240 x 240 x 155 grid takes 3 x 3 x 2 = 18,
    the same as MONAI's ``sliding_window_inference`` (``ceil((L - w) / step) + 1``).
    """
    window = _window_shape(window_size)
    return tuple(len(window_starts(max(int(side), side_window), side_window, overlap))
                 for side, side_window in zip(shape, window, strict=True))  # type: ignore[return-value]


def importance_map(window_shape: Sequence[int], blend: str = "gaussian") -> np.ndarray:
    """Per-voxel weight of a window: a Gaussian (sigma = side/8, max 1, min 1e-4) or ones.

    nnU-Net's Gaussian importance map. Computed once per (window shape, blend) and cached.

    Args:
        window_shape: 3 window sides (h, w, d) in voxels.
        blend: ``"gaussian"`` or ``"constant"``.

    Returns:
        float32 ``(h, w, d)``, read-only (shared by every caller).

    Raises:
        ValueError: bad window sides or unknown blend.
    """
    shape = _window_shape(window_shape)
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; expected one of {BLENDS}")
    return _cached_importance_map(shape, blend)


@functools.lru_cache(maxsize=8)
def _cached_importance_map(shape: tuple[int, int, int], blend: str) -> np.ndarray:
    if blend == "constant":
        weights_constant = np.ones(shape, dtype=np.float32)
        weights_constant.flags.writeable = False
        return weights_constant
    weights = np.ones(shape, dtype=np.float64)
    for axis, side in enumerate(shape):
        centre = (side - 1) / 2.0
        sigma = side * GAUSSIAN_SIGMA_SCALE
        coordinates = np.arange(side, dtype=np.float64)
        profile = np.exp(-((coordinates - centre) ** 2) / (2.0 * sigma**2))
        view = [1, 1, 1]
        view[axis] = side
        weights = weights * profile.reshape(view)
    weights /= weights.max()
    result = np.maximum(weights, GAUSSIAN_MIN_WEIGHT).astype(np.float32)
    result.flags.writeable = False
    return result


def _flip_combinations(tta: bool) -> list[tuple[int, ...]]:
    """Spatial axes (of a batch ``[n, h, w, d, C]``) to flip: all 8 subsets with TTA."""
    if not tta:
        return [()]
    axes = (1, 2, 3)
    return [combo for size in range(4) for combo in itertools.combinations(axes, size)]


def _batches(items: list[Any], batch_size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _predicted_batch(predict_fn: PredictFn, image: np.ndarray, corners: list[Any],
                     window: tuple[int, int, int], num_classes: int,
                     flips: list[tuple[int, ...]]) -> tuple[list[Any], np.ndarray]:
    """Cut the windows at ``corners`` out of ``image`` and predict them (mean over ``flips``).

    Returns the windows' slices and float32 ``[n, h, w, d, K]`` probabilities (not weighted;
    possibly ``predict_fn``'s own array: never written to).
    """
    slices = [
        tuple(slice(start, start + side) for start, side in zip(corner, window, strict=True))
        for corner in corners
    ]
    batch = np.stack([image[window_slice] for window_slice in slices])
    expected = (len(slices), *window, num_classes)
    total = None
    for axes in flips:
        flipped = np.ascontiguousarray(np.flip(batch, axis=axes)) if axes else batch
        output = predict_fn(flipped)
        output = np.asarray(output.numpy() if hasattr(output, "numpy") else output)
        if output.shape != expected:
            raise ValueError(f"predict_fn returned shape {output.shape}, expected {expected}")
        output = output.astype(np.float32, copy=False)
        contribution = np.flip(output, axis=axes) if axes else output
        if total is None:
            total = contribution if len(flips) == 1 else np.array(contribution, copy=True)
        else:
            total += contribution
    assert total is not None  # flips is never empty
    if len(flips) > 1:
        total /= np.float32(len(flips))
    return slices, total


def sliding_window_predict(
    predict_fn: PredictFn,
    image: np.ndarray,
    window_size: int | Sequence[int],
    num_classes: int,
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 1,
    tta: bool = False,
    progress: ProgressFn | None = None,
    overlap_host_work: bool = True,
) -> np.ndarray:
    """Predict class probabilities for a whole volume window by window.

    Args:
        predict_fn: maps a float32 batch ``[n, h, w, d, C]`` (NumPy) to probabilities
            ``[n, h, w, d, num_classes]`` (NumPy or a tensor with ``.numpy()``). Called from a
            worker thread for every batch but the first with ``overlap_host_work``.
        image: the volume ``(H, W, D, C)``, normalised as for training.
        window_size: window side (int) or 3 sides.
        num_classes: number of output classes ``K``.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        blend: ``"gaussian"`` importance weighting (centre voxels count more) or ``"constant"``.
        batch_size: windows per ``predict_fn`` call (the last call may hold fewer).
        tta: average over the 8 flip combinations of the 3 spatial axes (flip the windows,
            predict, flip the prediction back); costs 8x the forward passes.
        progress: optional ``progress(done_windows, total_windows)`` callback.
        overlap_host_work: predict the next window batch while this one is accumulated (one
            worker thread; the first batch, which traces a ``tf.function``, runs in the
            calling thread). Same result either way.

    Returns:
        Probabilities ``(H, W, D, K)`` float32: at every voxel the weighted mean of the
        predictions of the windows covering it.

    Raises:
        ValueError: bad image rank, window, overlap, blend, batch size, or a ``predict_fn``
            output of the wrong shape.
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (H, W, D, C), got shape {image.shape}")
    window = _window_shape(window_size)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; expected one of {BLENDS}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    image = image.astype(np.float32, copy=False)

    original_shape = image.shape[:3]
    padding = [
        ((window[axis] - side) // 2, window[axis] - side - (window[axis] - side) // 2)
        if side < window[axis]
        else (0, 0)
        for axis, side in enumerate(original_shape)
    ]
    if any(before or after for before, after in padding):
        image = np.pad(image, [*padding, (0, 0)], mode="constant", constant_values=0.0)
    padded_shape = image.shape[:3]

    starts_per_axis = [
        window_starts(padded_shape[axis], window[axis], overlap) for axis in range(3)
    ]
    starts = list(itertools.product(*starts_per_axis))
    weights = importance_map(window, blend)
    class_weights = weights[..., None]
    flips = _flip_combinations(tta)
    probability_sum = np.zeros((*padded_shape, num_classes), dtype=np.float32)
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    weighted = np.empty((min(batch_size, len(starts)), *window, num_classes), dtype=np.float32)
    logger.debug(
        "sliding window: volume %s, window %s, %d windows (%s per axis), batch %d, tta %s",
        original_shape,
        window,
        len(starts),
        [len(axis_starts) for axis_starts in starts_per_axis],
        batch_size,
        tta,
    )

    batches = list(_batches(starts, batch_size))

    def predicted(corners: list[Any]) -> tuple[list[Any], np.ndarray]:
        return _predicted_batch(predict_fn, image, corners, window, num_classes, flips)

    done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sliding-window") as worker:
        upcoming = None
        current = predicted(batches[0])
        for index in range(len(batches)):
            if index > 0:
                current = upcoming.result() if upcoming is not None else predicted(batches[index])
            upcoming = None
            if overlap_host_work and index + 1 < len(batches):
                upcoming = worker.submit(predicted, batches[index + 1])
            slices, probabilities = current
            batch_weighted = weighted[: len(slices)]
            np.multiply(probabilities, class_weights, out=batch_weighted)
            del current, probabilities
            for position, window_slice in enumerate(slices):
                probability_sum[window_slice] += batch_weighted[position]
                weight_sum[window_slice] += weights
            done += len(slices)
            if progress is not None:
                progress(done, len(starts))
            logger.debug("sliding window: %d/%d windows", done, len(starts))

    probability_sum /= weight_sum[..., None]
    crop = tuple(
        slice(before, before + side)
        for (before, _after), side in zip(padding, original_shape, strict=True)
    )
    return np.ascontiguousarray(probability_sum[crop])


def make_keras_predict_fn(
    model: Any,
    jit_compile: bool = False,
    window_size: int | Sequence[int] | None = None,
) -> PredictFn:
    """Wrap ``model(x, training=False)`` in one ``tf.function`` usable as a ``predict_fn``.

    The function is traced once: its input signature fixes the channel count (from the
    model's input) and, when ``window_size`` is given, the window shape; the batch axis stays
    dynamic so a short last batch does not retrace. ``jit_compile=True`` compiles with XLA
    (slower than plain TensorFlow for 3D convolutions on CPU). Returns float32 NumPy arrays
    that share the output tensor's buffer (read-only use: the sliding window never writes to
    them). ``predict_fn.trace()`` traces the function without running it (e.g. while the first
    case is read); the first call then only executes.
    """
    import tensorflow as tf

    channels = model.inputs[0].shape[-1] if getattr(model, "inputs", None) else None
    spatial: tuple[int | None, ...] = (
        _window_shape(window_size) if window_size is not None else (None, None, None)
    )
    signature = [tf.TensorSpec(shape=(None, *spatial, channels), dtype=tf.float32)]

    @tf.function(input_signature=signature, jit_compile=jit_compile, reduce_retracing=True)
    def forward(batch: Any) -> Any:
        return tf.cast(model(batch, training=False), tf.float32)

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        """Run the model on a float32 window batch and return float32 probabilities."""
        return np.asarray(forward(tf.convert_to_tensor(batch, dtype=tf.float32)))

    def trace() -> None:
        """Trace ``forward`` for the signature (no model execution)."""
        forward.get_concrete_function()

    predict_fn.trace = trace  # type: ignore[attr-defined]
    predict_fn.tracing_count = forward.experimental_get_tracing_count  # type: ignore[attr-defined]
    return predict_fn
