"""Tests of the brain bounding-box crop of inference: the box, the paste and the predictor."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from unet3d.data.crop import CropBox, crop_to_box, nonzero_box, paste_to_full
from unet3d.inference.brain_box import background_probabilities, predict_in_brain_box
from unet3d.inference.sliding_window import sliding_window_predict

NUM_CLASSES = 3


def softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def pointwise_model(batch):
    """Class scores from each voxel's own intensities (window position does not matter)."""
    intensity = batch[..., 0:1]
    other = batch[..., 1:2]
    logits = np.concatenate([-3.0 * np.abs(intensity) + 1.0, intensity, other], axis=-1)
    return softmax(logits).astype(np.float32)


def positional_model(batch):
    """Scores depend on the voxel's position inside the window (not translation invariant)."""
    ramp = np.linspace(-2.0, 2.0, batch.shape[1], dtype=np.float32)[None, :, None, None, None]
    ramp_z = np.linspace(0.0, 1.0, batch.shape[3], dtype=np.float32)[None, None, None, :, None]
    intensity = batch[..., 0:1]
    parts = [intensity + ramp, ramp_z * 3.0, -ramp]
    logits = np.concatenate([np.broadcast_to(part, intensity.shape) for part in parts], axis=-1)
    return softmax(logits).astype(np.float32)


def brain_case(shape, start, stop, channels=2, seed=0):
    """A volume that is non-zero exactly inside [start, stop) (every face of the box touched)."""
    image = np.zeros((*shape, channels), dtype=np.float32)
    box = tuple(slice(lo, hi) for lo, hi in zip(start, stop, strict=True))
    values = np.random.default_rng(seed).normal(size=image[box].shape).astype(np.float32)
    values[np.abs(values) < 1e-3] = 0.5  # no accidental zero on the box faces
    image[box] = values
    return image


def whole(predict_fn, window, overlap=0.5):
    return lambda volume: sliding_window_predict(predict_fn, volume, window, NUM_CLASSES,
                                                 overlap=overlap)


def test_nonzero_box_of_an_off_centre_brain_is_exact():
    image = brain_case((40, 32, 24), (3, 17, 0), (21, 32, 9))
    box = nonzero_box(image)
    assert box == CropBox((3, 17, 0), (21, 32, 9), (40, 32, 24))
    assert box.shape == (18, 15, 9) and not box.is_empty and not box.is_full
    np.testing.assert_array_equal(crop_to_box(image, box), image[3:21, 17:32, 0:9])
    assert crop_to_box(image, box).size < image.size


def test_an_all_zero_modality_does_not_shrink_or_move_the_box():
    image = brain_case((20, 20, 20), (2, 5, 7), (15, 18, 19), channels=4)
    image[..., 2] = 0.0
    assert nonzero_box(image) == CropBox((2, 5, 7), (15, 18, 19), (20, 20, 20))
    # one modality alone defines the box when the others are zero there
    image[..., 1:] = 0.0
    image[0, 0, 0, 3] = 7.0
    assert nonzero_box(image) == CropBox((0, 0, 0), (15, 18, 19), (20, 20, 20))


def test_an_all_zero_case_is_background_and_never_reaches_the_model():
    image = np.zeros((12, 10, 8, 4), dtype=np.float32)
    box = nonzero_box(image)
    assert box.is_empty and box.full_shape == (12, 10, 8)

    def model(_volume):
        raise AssertionError("the model must not run on an all-zero case")

    probabilities = predict_in_brain_box(model, image, NUM_CLASSES)
    assert probabilities.shape == (12, 10, 8, NUM_CLASSES) and probabilities.dtype == np.float32
    np.testing.assert_array_equal(probabilities, background_probabilities((12, 10, 8), 3))
    assert probabilities[..., 0].min() == 1.0 and probabilities[..., 1:].max() == 0.0


def test_tumour_touching_the_box_edge_lands_exactly_where_it_was():
    shape, start, stop = (48, 40, 36), (5, 11, 20), (37, 29, 36)
    image = brain_case(shape, start, stop)
    image[..., 0] = np.where(image[..., 0] != 0, -0.05, 0.0)  # brain: class 0 by the model
    tumour = np.zeros(shape, dtype=bool)
    tumour[5:9, 11:14, 30:36] = True  # touches the low H and W faces and the high D face
    tumour[36, 28, 20] = True  # the box's far corner voxel
    image[tumour, 0] = 4.0
    labels_of = lambda probabilities: np.argmax(probabilities, axis=-1)  # noqa: E731

    cropped = predict_in_brain_box(whole(pointwise_model, (16, 16, 16)), image, NUM_CLASSES)
    direct = pointwise_model(image[None])[0]
    inside = nonzero_box(image).slices
    np.testing.assert_allclose(cropped[inside], direct[inside], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels_of(cropped) == 1, tumour)
    outside = np.ones(shape, dtype=bool)
    outside[inside] = False
    assert (cropped[outside][:, 0] == 1.0).all() and (cropped[outside][:, 1:] == 0.0).all()


def test_pasted_box_equals_direct_inference_when_windows_align():
    # Full grid 48^3, windows 16^3 without overlap: uncropped windows start at 0, 16, 32; the
    # brain is [16, 32)^3, so the cropped run's single window is the uncropped middle one.
    image = brain_case((48, 48, 48), (16, 16, 16), (32, 32, 32))
    uncropped = whole(positional_model, (16, 16, 16), overlap=0.0)(image)
    cropped = predict_in_brain_box(whole(positional_model, (16, 16, 16), overlap=0.0), image,
                                   NUM_CLASSES)
    box = (slice(16, 32),) * 3
    np.testing.assert_allclose(cropped[box], uncropped[box], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cropped[box], positional_model(image[None, 16:32, 16:32,
                                                                    16:32])[0], rtol=1e-6)


def test_a_box_smaller_than_the_window_is_padded_and_pasted_back():
    image = brain_case((30, 30, 30), (20, 2, 9), (25, 8, 16))
    cropped = predict_in_brain_box(whole(pointwise_model, (16, 16, 16)), image, NUM_CLASSES)
    direct = pointwise_model(image[None])[0]
    box = nonzero_box(image).slices
    assert nonzero_box(image).shape == (5, 6, 7)
    np.testing.assert_allclose(cropped[box], direct[box], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cropped.sum(axis=-1), 1.0, rtol=1e-5)


def test_paste_to_full_probabilities_labels_and_regions():
    box = CropBox((1, 2, 3), (4, 6, 5), (6, 7, 8))
    probabilities = np.full((3, 4, 2, 4), 0.25, dtype=np.float32)
    full = paste_to_full(probabilities, box, (6, 7, 8))
    assert full.shape == (6, 7, 8, 4) and full.dtype == np.float32
    np.testing.assert_array_equal(full[1:4, 2:6, 3:5], probabilities)
    assert full[0, 0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert full.sum() == pytest.approx(6 * 7 * 8)
    labels = np.full((3, 4, 2), 4, dtype=np.uint8)
    pasted = paste_to_full(labels, box)
    assert pasted.dtype == np.uint8 and pasted.sum() == 4 * labels.size
    np.testing.assert_array_equal(np.argwhere(pasted == 4).min(axis=0), [1, 2, 3])
    np.testing.assert_array_equal(np.argwhere(pasted == 4).max(axis=0), [3, 5, 4])
    regions = paste_to_full(np.full((3, 4, 2, 3), 0.9, np.float32), box, background_class=None)
    assert regions[0, 0, 0].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("values_shape", "full_shape", "message"),
    [((3, 4, 3), (6, 7, 8), "do not fill the crop box"),
     ((3, 4), (6, 7, 8), "do not fill the crop box"),
     ((3, 4, 2), (6, 7, 9), "differs from the crop box's grid")],
)
def test_paste_to_full_refuses_mismatched_shapes(values_shape, full_shape, message):
    box = CropBox((1, 2, 3), (4, 6, 5), (6, 7, 8))
    with pytest.raises(ValueError, match=message):
        paste_to_full(np.zeros(values_shape), box, full_shape)


def test_crop_box_validation_and_record_round_trip():
    with pytest.raises(ValueError, match="does not lie in the grid"):
        CropBox((0, 0, 0), (5, 5, 9), (5, 5, 8))
    with pytest.raises(ValueError, match="3 entries"):
        CropBox((0, 0), (5, 5), (5, 5))
    box = CropBox((1, 2, 3), (4, 6, 5), (6, 7, 8))
    assert CropBox.from_record(box.to_record(), (3, 4, 2)) == box
    # records without a box (or with the "none" marker -1) cover their whole stored grid
    assert CropBox.from_record({}, (3, 4, 2)) == CropBox.full((3, 4, 2))
    marker = {"crop_start": [-1] * 3, "crop_stop": [-1] * 3, "full_shape": [-1] * 3}
    assert CropBox.from_record(marker, (3, 4, 2)).is_full
    with pytest.raises(ValueError, match="has shape"):
        CropBox.from_record(box.to_record(), (3, 4, 3))


def test_ensemble_predictor_crops_to_the_brain_with_a_keras_model():
    keras = pytest.importorskip("keras")
    from unet3d.inference.ensemble import EnsemblePredictor

    inputs = keras.Input((None, None, None, 2))
    outputs = keras.layers.Conv3D(NUM_CLASSES, 1, activation="softmax")(inputs)
    model = keras.Model(inputs, outputs)
    image = brain_case((24, 20, 16), (2, 9, 0), (19, 20, 7))
    inference = OmegaConf.create({"window_size": [8, 8, 8], "overlap": 0.5, "blend": "gaussian",
                                  "batch_size": 2, "tta": False, "crop_to_brain": True,
                                  "crop_margin": 0, "single_window": False})
    cropped = EnsemblePredictor.from_config(model, inference, crop_size=[8, 8, 8],
                                            num_classes=NUM_CLASSES, jit_compile=False,
                                            background_class=0, input_divisor=1)
    assert cropped.crop_to_brain and "cropped to the brain" in cropped.describe()
    inference.crop_to_brain = False
    plain = EnsemblePredictor.from_config(model, inference, crop_size=[8, 8, 8],
                                          num_classes=NUM_CLASSES, jit_compile=False,
                                          background_class=0, input_divisor=1)
    with_crop, without = cropped.probabilities(image), plain.probabilities(image)
    box = nonzero_box(image).slices
    np.testing.assert_allclose(with_crop[box], without[box], rtol=1e-5, atol=1e-6)
    assert with_crop[0, 0, 10].tolist() == [1.0, 0.0, 0.0]


def test_a_margin_grows_the_box_within_the_grid():
    box = CropBox((1, 5, 3), (6, 9, 8), (10, 10, 10))
    assert box.expanded(2) == CropBox((0, 3, 1), (8, 10, 10), (10, 10, 10))
    assert box.expanded(0) is box
    assert CropBox((0, 0, 0), (0, 0, 0), (4, 4, 4)).expanded(3).is_empty
    with pytest.raises(ValueError, match="margin"):
        box.expanded(-1)
    image = brain_case((30, 30, 30), (10, 12, 14), (20, 18, 16))
    seen = []

    def record_shape(volume):
        seen.append(volume.shape[:3])
        return pointwise_model(volume[None])[0]

    probabilities = predict_in_brain_box(record_shape, image, NUM_CLASSES, margin=4)
    assert seen == [(18, 14, 10)]
    np.testing.assert_allclose(probabilities[6:24, 8:22, 10:20],
                               pointwise_model(image[None])[0][6:24, 8:22, 10:20], rtol=1e-5)
    assert probabilities[5, 8, 10].tolist() == [1.0, 0.0, 0.0]

