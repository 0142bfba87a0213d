"""Tests of sliding-window inference: tiling, blending, padding and flip TTA."""

import itertools
import math

import numpy as np
import pytest

from unet3d.inference.sliding_window import (
    importance_map,
    make_keras_predict_fn,
    sliding_window_predict,
    window_starts,
)

NUM_CLASSES = 3


def softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def pointwise_model(batch):
    """Flip-equivariant toy model: class scores are a function of each voxel's intensities."""
    intensity = batch[..., 0:1]
    other = batch[..., 1:2]
    logits = np.concatenate([intensity, -intensity, 0.5 * other + intensity**2], axis=-1)
    return softmax(logits).astype(np.float32)


def positional_model(batch):
    """Not flip-equivariant: scores depend on the position inside the window."""
    ramp = np.linspace(-2.0, 2.0, batch.shape[1], dtype=np.float32)[None, :, None, None, None]
    ramp_z = np.linspace(0.0, 1.0, batch.shape[3], dtype=np.float32)[None, None, None, :, None]
    intensity = batch[..., 0:1]
    parts = [intensity + ramp, ramp_z * 3.0, -ramp]
    logits = np.concatenate([np.broadcast_to(part, intensity.shape) for part in parts], axis=-1)
    return softmax(logits).astype(np.float32)


def volume(shape, channels=2, seed=0):
    return np.random.default_rng(seed).normal(size=(*shape, channels)).astype(np.float32)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_window_equal_to_volume_is_the_direct_forward_pass(blend):
    image = volume((8, 6, 10))
    result = sliding_window_predict(positional_model, image, (8, 6, 10), NUM_CLASSES, blend=blend)
    expected = positional_model(image[None])[0]
    assert result.dtype == np.float32 and result.shape == (8, 6, 10, NUM_CLASSES)
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_constant_prediction_stays_constant(blend):
    value = np.array([0.2, 0.3, 0.5], dtype=np.float32)

    def constant_model(batch):
        return np.broadcast_to(value, (*batch.shape[:4], NUM_CLASSES)).copy()

    result = sliding_window_predict(
        constant_model, volume((13, 9, 11)), 4, NUM_CLASSES, blend=blend
    )
    # exact up to float32 rounding of the weighted sum divided by the weight sum
    np.testing.assert_allclose(result, np.broadcast_to(value, result.shape), rtol=1e-6)


@pytest.mark.parametrize(
    "length,window,overlap",
    [(37, 16, 0.5), (19, 8, 0.0), (21, 7, 0.25), (16, 16, 0.5), (17, 16, 0.5)],
)
def test_window_starts_cover_every_voxel(length, window, overlap):
    starts = window_starts(length, window, overlap)
    assert starts[0] == 0 and starts[-1] == length - window
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        covered[start : start + window] = True
    assert covered.all()
    steps = np.diff(starts)
    assert np.all(steps > 0) and np.all(steps <= max(1, int(window * (1 - overlap))))


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_odd_volume_pointwise_model_equals_direct_prediction(overlap, batch_size):
    image = volume((19, 13, 11), seed=1)
    calls = []

    def recording_model(batch):
        calls.append(batch.shape)
        return pointwise_model(batch)

    result = sliding_window_predict(
        recording_model, image, (8, 6, 4), NUM_CLASSES, overlap=overlap, batch_size=batch_size
    )
    np.testing.assert_allclose(result, pointwise_model(image[None])[0], rtol=1e-5, atol=1e-6)
    assert all(shape[1:] == (8, 6, 4, 2) and 1 <= shape[0] <= batch_size for shape in calls)
    total = sum(shape[0] for shape in calls)
    expected_windows = np.prod(
        [
            len(window_starts(side, win, overlap))
            for side, win in zip((19, 13, 11), (8, 6, 4), strict=True)
        ]
    )
    assert total == expected_windows


def test_volume_smaller_than_window_is_padded_and_cropped():
    image = volume((5, 16, 3), seed=2)
    shapes = []

    def recording_model(batch):
        shapes.append(batch.shape)
        return pointwise_model(batch)

    progress = []
    result = sliding_window_predict(
        recording_model,
        image,
        8,
        NUM_CLASSES,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert result.shape == (5, 16, 3, NUM_CLASSES)
    np.testing.assert_allclose(result, pointwise_model(image[None])[0], rtol=1e-5, atol=1e-6)
    assert all(shape[1:4] == (8, 8, 8) for shape in shapes)
    assert progress[-1] == (3, 3)


def test_flip_tta_is_exact_for_a_flip_equivariant_model():
    image = volume((12, 10, 9), seed=3)
    plain = sliding_window_predict(pointwise_model, image, (8, 8, 8), NUM_CLASSES)
    with_tta = sliding_window_predict(pointwise_model, image, (8, 8, 8), NUM_CLASSES, tta=True)
    np.testing.assert_allclose(with_tta, plain, rtol=1e-5, atol=1e-6)


def test_flip_tta_averages_the_flipped_predictions_of_a_positional_model():
    image = volume((8, 6, 4), seed=4)
    calls = []

    def counting_model(batch):
        calls.append(batch.shape[0])
        return positional_model(batch)

    with_tta = sliding_window_predict(counting_model, image, (8, 6, 4), NUM_CLASSES, tta=True)
    assert len(calls) == 8
    plain = positional_model(image[None])[0]
    expected = np.zeros_like(plain)
    for size in range(4):
        for axes in itertools.combinations((0, 1, 2), size):
            flipped = np.flip(image, axis=axes)
            expected += np.flip(positional_model(flipped[None])[0], axis=axes)
    expected /= 8
    np.testing.assert_allclose(with_tta, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(with_tta, plain, atol=1e-3)
    np.testing.assert_allclose(with_tta.sum(axis=-1), 1.0, rtol=1e-5)


def test_importance_map():
    gaussian = importance_map((9, 8, 16))
    assert gaussian.dtype == np.float32 and gaussian.shape == (9, 8, 16)
    assert gaussian.max() == pytest.approx(1.0) and gaussian.min() > 0
    assert gaussian[4, 3, 7] > gaussian[0, 0, 0]
    np.testing.assert_allclose(gaussian, gaussian[::-1, ::-1, ::-1])  # symmetric for TTA
    assert np.array_equal(importance_map(4, "constant"), np.ones((4, 4, 4), dtype=np.float32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"overlap": 1.0},
        {"overlap": -0.1},
        {"blend": "linear"},
        {"batch_size": 0},
        {"window_size": (8, 8)},
        {"window_size": 0},
    ],
)
def test_bad_arguments_raise(kwargs):
    arguments = {"window_size": 8, "num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(ValueError):
        sliding_window_predict(pointwise_model, volume((8, 8, 8)), **arguments)


def test_wrong_prediction_shape_raises():
    with pytest.raises(ValueError, match="predict_fn returned"):
        sliding_window_predict(pointwise_model, volume((8, 8, 8)), 8, num_classes=4)


def test_keras_predict_fn_matches_the_model():
    import keras

    from unet3d.model.unet3d import build_unet3d

    model = build_unet3d(
        name="tiny", in_channels=2, num_classes=NUM_CLASSES, base_filters=4, max_filters=8,
        num_levels=2, norm="instance", output_kernel_size=3, head="softmax", num_regions=3
    )
    image = volume((8, 8, 16), seed=5)
    predict_fn = make_keras_predict_fn(model, window_size=(8, 8, 8))
    result = sliding_window_predict(predict_fn, image, 8, NUM_CLASSES, batch_size=2, overlap=0.5)
    assert result.shape == (8, 8, 16, NUM_CLASSES) and result.dtype == np.float32
    np.testing.assert_allclose(result.sum(axis=-1), 1.0, rtol=1e-5)

    whole = make_keras_predict_fn(model)
    direct = np.asarray(model(image[None], training=False))[0]
    np.testing.assert_allclose(
        sliding_window_predict(whole, image, (8, 8, 16), NUM_CLASSES), direct, rtol=1e-5, atol=1e-6
    )
    assert isinstance(model, keras.Model)


def test_importance_map_is_computed_once_per_window_and_read_only():
    first = importance_map((8, 6, 10), "gaussian")
    assert importance_map([8, 6, 10], "gaussian") is first  # cached per shape and blend
    assert importance_map((8, 6, 10), "constant") is not first
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0, 0, 0] = 2.0
    with pytest.raises(ValueError, match="unknown blend"):
        importance_map((8, 6, 10), "median")


def test_float64_predictions_are_accumulated_in_float32():
    image = volume((12, 9, 7))

    def float64_model(batch):
        return pointwise_model(batch).astype(np.float64)

    result = sliding_window_predict(float64_model, image, (8, 6, 4), NUM_CLASSES, batch_size=3)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, pointwise_model(image[None])[0], rtol=1e-5, atol=1e-6)


def reference_sliding_window(predict_fn, image, window, num_classes, overlap, blend,
                             batch_size, tta):
    """The sliding window as it was before host work overlapped compute (one thread, a zeroed
    buffer per batch, weighting in place): the new code must give bitwise the same result."""
    padded_shape = image.shape[:3]  # volumes at least the window here
    starts = list(itertools.product(*[window_starts(padded_shape[axis], window[axis], overlap)
                                      for axis in range(3)]))
    weights = importance_map(window, blend)
    flips = [()] if not tta else [combo for size in range(4)
                                  for combo in itertools.combinations((1, 2, 3), size)]
    probability_sum = np.zeros((*padded_shape, num_classes), dtype=np.float32)
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    for first in range(0, len(starts), batch_size):
        corners = starts[first:first + batch_size]
        slices = [tuple(slice(s, s + w) for s, w in zip(corner, window, strict=True))
                  for corner in corners]
        batch = np.stack([image[window_slice] for window_slice in slices])
        predicted = np.zeros((len(slices), *window, num_classes), dtype=np.float32)
        for axes in flips:
            flipped = np.ascontiguousarray(np.flip(batch, axis=axes)) if axes else batch
            output = np.asarray(predict_fn(flipped))
            predicted += np.flip(output, axis=axes) if axes else output
        if len(flips) > 1:
            predicted /= float(len(flips))
        predicted *= weights[..., None]
        for index, window_slice in enumerate(slices):
            probability_sum[window_slice] += predicted[index]
            weight_sum[window_slice] += weights
    probability_sum /= weight_sum[..., None]
    return probability_sum


@pytest.mark.parametrize(("batch_size", "tta", "blend"), [
    (1, False, "gaussian"), (2, False, "gaussian"), (3, True, "gaussian"), (2, False, "constant"),
])
def test_overlapping_host_work_changes_nothing_bitwise(batch_size, tta, blend):
    image = volume((20, 17, 13), seed=3)
    window = (8, 8, 8)
    expected = reference_sliding_window(positional_model, image, window, NUM_CLASSES, 0.5,
                                        blend, batch_size, tta)
    for overlapped in (True, False):
        result = sliding_window_predict(positional_model, image, window, NUM_CLASSES,
                                        overlap=0.5, blend=blend, batch_size=batch_size,
                                        tta=tta, overlap_host_work=overlapped)
        np.testing.assert_array_equal(result, expected)


def test_the_first_batch_runs_here_the_others_in_one_worker_in_order():
    import threading

    seen = []

    def recording_model(batch):
        seen.append((threading.current_thread(), float(batch[0, 0, 0, 0, 0])))
        return pointwise_model(batch)

    image = volume((24, 8, 8), seed=4)
    progress = []
    sliding_window_predict(recording_model, image, 8, NUM_CLASSES, overlap=0.0, batch_size=1,
                           progress=lambda done, total: progress.append((done, total)))
    threads = [thread for thread, _ in seen]
    assert threads[0] is threading.current_thread()
    assert len(set(threads[1:])) == 1 and threads[1] is not threading.current_thread()
    assert [value for _, value in seen] == [float(image[start, 0, 0, 0]) for start in (0, 8, 16)]
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_a_read_only_prediction_is_never_written_to():
    def read_only_model(batch):
        output = pointwise_model(batch)
        output.flags.writeable = False
        return output

    image = volume((12, 9, 7))
    for tta in (False, True):
        result = sliding_window_predict(read_only_model, image, (8, 6, 4), NUM_CLASSES,
                                        batch_size=2, tta=tta)
        np.testing.assert_allclose(result, pointwise_model(image[None])[0], rtol=1e-5,
                                   atol=1e-6)


def test_an_error_in_the_worker_reaches_the_caller():
    calls = []

    def failing_model(batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("model broke")
        return pointwise_model(batch)

    with pytest.raises(RuntimeError, match="model broke"):
        sliding_window_predict(failing_model, volume((24, 8, 8)), 8, NUM_CLASSES, overlap=0.0)


def test_the_keras_predict_fn_is_traced_once_for_every_batch_and_precision():
    import keras

    from unet3d.model.unet3d import build_unet3d

    image = volume((16, 8, 24), seed=6)
    results = {}
    previous = keras.mixed_precision.global_policy()
    try:
        for policy in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(policy)
            keras.utils.set_random_seed(1)
            model = build_unet3d(name="tiny", in_channels=2, num_classes=NUM_CLASSES,
                                 base_filters=4, max_filters=8, num_levels=2, norm="instance",
                                 output_kernel_size=3, head="softmax", num_regions=3)
            predict_fn = make_keras_predict_fn(model, window_size=(8, 8, 8))
            predict_fn.trace()
            assert predict_fn.tracing_count() == 1
            # 3 x 1 x 5 windows in batches of 2: the short last batch must not retrace, nor
            # the calls from the worker thread
            for overlapped in (True, False):
                results[policy, overlapped] = sliding_window_predict(
                    predict_fn, image, 8, NUM_CLASSES, overlap=0.5, batch_size=2,
                    overlap_host_work=overlapped)
            assert predict_fn.tracing_count() == 1
    finally:
        keras.mixed_precision.set_global_policy(previous)
    for policy in ("float32", "mixed_bfloat16"):
        np.testing.assert_array_equal(results[policy, True], results[policy, False])
    difference = np.abs(results["float32", True] - results["mixed_bfloat16", True]).max()
    assert 0.0 < difference < 0.05  # the bf16 model really computed in bfloat16


@pytest.mark.parametrize(("side", "count"), [(100, 1), (128, 1), (129, 2), (192, 2), (193, 3),
                                             (240, 3), (256, 3), (257, 4)])
def test_window_counts_at_128_with_overlap_half(side, count):
    from unet3d.inference.sliding_window import window_counts

    assert window_counts((side, 128, 90), 128, 0.5) == (count, 1, 1)
    monai = max(0, math.ceil((max(side, 128) - 128) / 64)) + 1  # MONAI's dense_patch_slices
    assert count == monai


def test_a_brats_grid_and_its_brain_box_take_18_and_12_windows():
    from unet3d.data.crop import CropBox
    from unet3d.inference.sliding_window import window_counts

    assert np.prod(window_counts((240, 240, 155), 128, 0.5)) == 18
    box = CropBox((64, 17, 11), (218, 192, 152), (240, 240, 155)).expanded(16)
    assert tuple(box.shape) == (186, 207, 155)  # 154 x 175 x 141 brain + 16 voxels a side
    assert window_counts(box.shape, 128, 0.5) == (2, 3, 2)
