import numpy as np
import pytest

from unet3d.data.pipeline import iterate_eval_cases, train_dataset
from unet3d.data.tfrecord import write_record
from unet3d.errors import DataError

SHAPE = (20, 18, 12)
CROP = [8, 8, 8]
TUMOUR = (slice(15, 18), slice(14, 17), slice(8, 11))


def _coordinate_case(shape=SHAPE, marker=100, tumour=TUMOUR):
    """Channels 0-2 hold x+1, y+1, z+1; channel 3 a constant marker. Mean 0, std 1."""
    grid = np.indices(shape) + 1
    image = np.concatenate([grid.transpose(1, 2, 3, 0), np.full(shape + (1,), marker)], axis=-1)
    label = np.zeros(shape, dtype=np.uint8)
    if tumour is not None:
        label[tumour] = 2
        label[tumour[0].start, tumour[1].start, tumour[2].start] = 3
    return {"image": image.astype(np.uint8), "label": label, "mean": [0.0] * 4, "std": [1.0] * 4}


@pytest.fixture
def coordinate_files(tmp_path):
    files = []
    for index in range(4):
        record = _coordinate_case(marker=100 + 10 * index)
        record["case_id"] = f"case_{index}"
        path = tmp_path / f"case_{index}.tfrecord"
        write_record(path, record)
        files.append(str(path))
    return files


def _batches(dataset, count):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def _dataset(files, **overrides):
    arguments = dict(
        crop_size=CROP,
        batch_size=2,
        augment=False,
        seed=3,
        foreground_probability=0.0,
        shuffle_buffer=4,
        cache=True,
    )
    arguments.update(overrides)
    return train_dataset(files, **arguments)


def _check_crop(image, label, volume_label, marker=None):
    """The crop is an in-bounds block (decoded from the coordinate channels) matching the label."""
    factor = 1.0 if marker is None else image[..., 3].max() / marker  # brightness factor
    starts = []
    for axis in range(3):
        coordinate = np.round(image[..., axis] / factor).astype(int) - 1
        foreground = image[..., 3] > 0
        values = coordinate[foreground]
        assert values.min() >= 0 and values.max() < SHAPE[axis]
        starts.append(coordinate)
    x, y, z = starts
    foreground = image[..., 3] > 0
    assert np.array_equal(
        label[foreground], volume_label[x[foreground], y[foreground], z[foreground]]
    )
    assert (label[~foreground] == 0).all()


def test_shapes_dtypes_and_crops_within_bounds(coordinate_files):
    volume_label = _coordinate_case()["label"]
    for image, label in _batches(_dataset(coordinate_files), 6):
        assert image.shape == (2, 8, 8, 8, 4) and image.dtype == np.float32
        assert label.shape == (2, 8, 8, 8) and label.dtype == np.int32
        for sample in range(2):
            x = image[sample, ..., 0] - 1
            assert (np.diff(x, axis=0) == 1).all()  # no flips: contiguous along each axis
            assert 0 <= x.min() and x.max() < SHAPE[0]
            _check_crop(image[sample], label[sample], volume_label)


def test_augmented_image_and_label_stay_aligned(coordinate_files):
    volume_label = _coordinate_case()["label"]
    flipped = scaled = 0
    dataset = _dataset(coordinate_files[:1], augment=True, seed=9)
    for image, label in _batches(dataset, 16):
        for sample in range(2):
            _check_crop(image[sample], label[sample], volume_label, marker=100)
            flipped += bool((np.diff(image[sample, ..., 0], axis=0) < 0).all())
            scaled += not np.isclose(image[sample, ..., 3].max(), 100, atol=1e-3)
    assert 0 < flipped < 32 and 0 < scaled < 32


def test_small_volumes_are_padded(tmp_path):
    record = _coordinate_case(shape=(6, 20, 10), tumour=None)
    record["case_id"] = "small"
    write_record(tmp_path / "small.tfrecord", record)
    files = [str(tmp_path / "small.tfrecord")]
    for image, label in _batches(_dataset(files, crop_size=[8, 16, 12], batch_size=1), 4):
        assert image.shape == (1, 8, 16, 12, 4)
        inside = image[0, ..., 3] > 0
        assert inside.sum() == 6 * 16 * 10
        assert (image[0][~inside] == 0).all() and (label == 0).all()


def test_foreground_oversampling(coordinate_files):
    def tumour_fraction(probability):
        batches = _batches(_dataset(coordinate_files, foreground_probability=probability), 20)
        return np.mean([(label[i] > 0).any() for _, label in batches for i in range(2)])

    assert tumour_fraction(1.0) == 1.0
    assert tumour_fraction(0.0) < 0.9


def test_deterministic_given_seed(coordinate_files):
    first = _batches(_dataset(coordinate_files, augment=True, foreground_probability=0.5), 4)
    second = _batches(_dataset(coordinate_files, augment=True, foreground_probability=0.5), 4)
    other = _batches(
        _dataset(coordinate_files, augment=True, foreground_probability=0.5, seed=4), 4
    )
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert any(not np.array_equal(x1, x3) for (x1, _), (x3, _) in zip(first, other, strict=True))


def _markers(dataset, count):
    return {
        int(round(image[i, ..., 3].max()))
        for image, _ in _batches(dataset, count)
        for i in range(2)
    }


def test_sharding_by_file(coordinate_files):
    import tensorflow as tf

    assert _markers(_dataset(coordinate_files, shard=(2, 0)), 6) == {100, 120}
    assert _markers(_dataset(coordinate_files, shard=(2, 1)), 6) == {110, 130}
    assert _markers(_dataset(coordinate_files), 10) == {100, 110, 120, 130}
    context = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=3)
    assert _markers(_dataset(coordinate_files, input_context=context), 3) == {130}
    with pytest.raises(DataError, match="shard 4 would be empty"):
        _dataset(coordinate_files, shard=(5, 4))


def test_on_synthetic_records(tiny_records):
    dataset = train_dataset(tiny_records, [16, 16, 16], 2, True, 0, 1.0, 8, True)
    for image, label in _batches(dataset, 2):
        assert image.shape == (2, 16, 16, 16, 4) and np.isfinite(image).all()
        assert all((label[i] > 0).any() for i in range(2))
        assert set(np.unique(label)) <= {0, 1, 2, 3}


def test_iterate_eval_cases_yields_each_case_once_in_order(tiny_records):
    files = list(reversed(tiny_records))
    cases = list(iterate_eval_cases(files))
    assert [c.case_id for c in cases] == [f"BraTS19_SYN_000{i}" for i in (4, 3, 2, 1)]
    for case in cases:
        # The stored brain box, placed in the 32x32x24 grid by its crop box.
        assert case.full_shape == (32, 32, 24) and case.image.dtype == np.float32
        assert case.image.shape == (*case.crop_box.shape, 4)
        assert case.label.shape == case.crop_box.shape and case.affine.shape == (4, 4)
        assert case.spacing == (1.0, 1.0, 1.0)


def test_missing_file_is_reported(coordinate_files):
    with pytest.raises(
        DataError, match="case nothing: .*nothing.tfrecord: TFRecord file does not exist"
    ):
        _dataset(coordinate_files + [coordinate_files[0].replace("case_0", "nothing")])


def _brain_record(shape=(24, 20, 16), box=(slice(3, 19), slice(6, 20), slice(0, 9))):
    image = np.zeros(shape + (4,), dtype=np.uint8)
    rng = np.random.default_rng(1)
    image[box] = rng.integers(1, 255, size=image[box].shape, dtype=np.uint8)
    image[..., 1] = 0  # an all-zero modality
    label = np.zeros(shape, dtype=np.uint8)
    label[3:6, 6:9, 6:9] = 1  # touches the box's low H and W faces
    return {"case_id": "brain", "image": image, "label": label, "mean": [50.0] * 4,
            "std": [20.0] * 4, "spacing": [1.0, 1.0, 1.0], "affine": np.eye(4)}


def test_cropped_record_round_trip_pastes_back_into_the_original_grid(tmp_path):
    from unet3d.data.crop import CropBox, crop_record, paste_to_full
    from unet3d.data.preprocess import normalize

    original = _brain_record()
    cropped = crop_record(original)
    assert cropped["crop_box"] == CropBox((3, 6, 0), (19, 20, 9), (24, 20, 16))
    assert cropped["image"].shape == (16, 14, 9, 4) and cropped["label"].shape == (16, 14, 9)
    path = tmp_path / "brain.tfrecord"
    write_record(path, cropped)
    case = next(iterate_eval_cases([str(path)]))
    assert case.crop_box == cropped["crop_box"] and case.full_shape == (24, 20, 16)
    full_image = normalize(original["image"], original["mean"], original["std"])
    np.testing.assert_array_equal(paste_to_full(case.image, case.crop_box, (24, 20, 16),
                                                background_class=None), full_image)
    np.testing.assert_array_equal(paste_to_full(case.label, case.crop_box), original["label"])
    assert (tmp_path / "brain.tfrecord").stat().st_size < 0.5 * original["image"].nbytes


def test_label_outside_the_image_box_widens_the_crop_and_old_records_read_whole(tmp_path):
    from unet3d.data.crop import CropBox, crop_record

    record = _brain_record()
    record["label"][22, 1, 15] = 2  # a labelled voxel where every modality is 0
    assert crop_record(record)["crop_box"] == CropBox((3, 1, 0), (23, 20, 16), (24, 20, 16))
    empty = _brain_record()
    empty["image"][:] = 0
    empty["label"][:] = 0
    assert crop_record(empty)["crop_box"].is_full
    path = tmp_path / "old.tfrecord"
    write_record(path, _brain_record())  # no crop_box: a record of PREPROCESS_VERSION 1
    case = next(iterate_eval_cases([str(path)]))
    assert case.crop_box == CropBox.full((24, 20, 16)) and case.full_shape == (24, 20, 16)


def test_a_crop_box_that_does_not_match_the_image_is_refused(tmp_path):
    from unet3d.data.crop import CropBox

    record = _brain_record()
    record["crop_box"] = CropBox((0, 0, 0), (4, 4, 4), (24, 20, 16))
    with pytest.raises(ValueError, match="crop box shape"):
        write_record(tmp_path / "bad.tfrecord", record)


def test_training_crops_of_a_cropped_record_fall_in_the_brain(tmp_path):
    from unet3d.data.crop import crop_record

    path = tmp_path / "brain.tfrecord"
    write_record(path, crop_record(_brain_record()))
    images, labels = _batches(_dataset([str(path)], crop_size=[8, 8, 8]), 2)[0]
    assert images.shape == (2, 8, 8, 8, 4) and labels.shape == (2, 8, 8, 8)
    assert (np.abs(images[..., 0]) > 0).mean() > 0.9  # the full grid is 38% brain


# ---- augmentation (data.augmentation, conf/augmentation/) --------------------------------------


def _legacy_crop_and_augment(index, element, base_seed, crop_size, foreground_probability,
                             augment):
    """unet3d.data.pipeline._crop_and_augment as of commit 3bae22b (before data.augmentation),
    frozen here so that the default job's batches are checked against it bit for bit."""
    import tensorflow as tf

    from unet3d.data.preprocess import EPSILON

    seeds = tf.random.experimental.stateless_split(
        tf.stack([tf.constant(base_seed, tf.int64), tf.cast(index, tf.int64)]), num=6
    )
    image, label = element["image"], element["label"]
    shape = tf.shape(label)
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
    image = tf.slice(image, tf.concat([start, [0]], 0), tf.concat([extent, [4]], 0))
    label = tf.slice(label, start, extent)
    missing = crop - extent
    pad_uniform = tf.random.stateless_uniform([3], seed=seeds[2])
    before = tf.minimum(
        tf.cast(tf.floor(pad_uniform * tf.cast(missing + 1, tf.float32)), tf.int32), missing
    )
    paddings = tf.stack([before, missing - before], axis=1)
    image = tf.pad(image, tf.concat([paddings, tf.zeros([1, 2], tf.int32)], 0))
    label = tf.pad(label, paddings)
    image = tf.ensure_shape(image, crop_size + [4])
    label = tf.ensure_shape(label, crop_size)
    factor = tf.constant(1.0, tf.float32)
    if augment:
        flips = tf.random.stateless_uniform([3], seed=seeds[3])
        for axis in range(3):
            flip = flips[axis] < 0.5
            image = tf.cond(flip, lambda a=axis, x=image: tf.reverse(x, [a]), lambda x=image: x)
            label = tf.cond(flip, lambda a=axis, y=label: tf.reverse(y, [a]), lambda y=label: y)
        apply = tf.random.stateless_uniform([], seed=seeds[4]) < 0.5
        scale = tf.random.stateless_uniform([], seed=seeds[5], minval=0.7, maxval=1.3)
        factor = tf.where(apply, scale, factor)
    inverse_std = 1.0 / (element["std"] + EPSILON)
    return image, label, factor * inverse_std, -element["mean"] * inverse_std


def _legacy_dataset(files, crop_size, batch_size, augment, seed, foreground_probability,
                    shuffle_buffer):
    """train_dataset as of commit 3bae22b (one shard, cached)."""
    import tensorflow as tf

    from unet3d.data.pipeline import _normalize_batch
    from unet3d.data.training_source import training_element as _training_element

    base_seed = (int(seed) * 1_000_003) % (2**62)
    dataset = tf.data.TFRecordDataset([str(f) for f in files])
    dataset = dataset.map(lambda s: _training_element(s, foreground_probability > 0.0)).cache()
    dataset = dataset.shuffle(min(shuffle_buffer, len(files)), seed=base_seed % (2**31),
                              reshuffle_each_iteration=True)
    dataset = dataset.repeat().enumerate().map(lambda i, e: _legacy_crop_and_augment(
        i, e, base_seed, list(crop_size), foreground_probability, augment))
    return dataset.batch(batch_size, drop_remainder=True).map(_normalize_batch)


def _reference_section():
    from tests.test_config import compose_config

    return compose_config().data.augmentation  # the default job's: augmentation=reference


@pytest.mark.parametrize("augment", [True, False])
def test_the_reference_augmentation_gives_the_batches_of_before(tiny_records, augment):
    legacy = _batches(_legacy_dataset(tiny_records, [16, 16, 16], 2, augment, 42, 0.5, 8), 6)
    for augmentation in (None, _reference_section()):
        batches = _batches(train_dataset(tiny_records, [16, 16, 16], 2, augment, 42, 0.5, 8,
                                         True, augmentation=augmentation), 6)
        for (x1, y1), (x2, y2) in zip(legacy, batches, strict=True):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)


def _nnunet_section(**probabilities):
    """augmentation=nnunet, with some probabilities changed (name -> probability)."""
    from omegaconf import OmegaConf

    from tests.test_config import compose_config

    section = OmegaConf.to_container(compose_config("augmentation=nnunet").data.augmentation)
    for name, probability in probabilities.items():
        section[name]["probability"] = probability
    return section


def test_nnunet_augmentation_batches(coordinate_files):
    """Shapes, dtypes, label values, determinism; data.augment=false still turns it off."""
    section = _nnunet_section(rotation=1.0)
    first = _batches(_dataset(coordinate_files, augment=True, augmentation=section), 4)
    again = _batches(_dataset(coordinate_files, augment=True, augmentation=section), 4)
    other = _batches(_dataset(coordinate_files, augment=True, augmentation=section, seed=4), 4)
    volume_labels = set(np.unique(_coordinate_case()["label"]))
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert x1.shape == (2, 8, 8, 8, 4) and x1.dtype == np.float32 and np.isfinite(x1).all()
        assert y1.shape == (2, 8, 8, 8) and y1.dtype == np.int32
        assert set(np.unique(y1)) <= volume_labels
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(x1, x3) for (x1, _), (x3, _) in zip(first, other, strict=True))
    off = _batches(_dataset(coordinate_files, augment=False, augmentation=section), 2)
    plain = _batches(_dataset(coordinate_files, augment=False), 2)
    for (x1, y1), (x2, y2) in zip(off, plain, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_nnunet_path_draws_the_reference_crops_flips_and_brightness(tiny_records):
    """With only neutral nnU-Net transforms drawn (brightness x 1, rotation by 0 degrees) the
    float path gives the reference path's batches: the same windows, flips and intensity
    scaling from the same seed, the same z-score."""
    section = _nnunet_section(**{name: 0.0 for name in (
        "scaling", "elastic", "noise", "blur", "contrast", "low_resolution", "inverted_gamma",
        "gamma")})
    section["intensity_scale"]["probability"] = 0.5
    section["brightness"] = {"probability": 1.0, "range": [1.0, 1.0]}
    section["rotation"] = {"probability": 1.0, "angle": [0.0, 0.0]}
    neutral = _batches(train_dataset(tiny_records, [16, 16, 16], 2, True, 7, 0.5, 8, True,
                                     augmentation=section), 6)
    reference = _batches(train_dataset(tiny_records, [16, 16, 16], 2, True, 7, 0.5, 8, True), 6)
    for (x1, y1), (x2, y2) in zip(neutral, reference, strict=True):
        np.testing.assert_allclose(x1, x2, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(y1, y2)


def test_rotated_crops_stay_aligned_through_the_pipeline(coordinate_files):
    """The coordinate channels of every interior voxel decode to the point it was sampled at;
    its label is the stored label of the nearest voxel."""
    volume_label = _coordinate_case()["label"]
    section = _nnunet_section(**{name: 0.0 for name in (
        "elastic", "noise", "blur", "brightness", "contrast", "low_resolution",
        "inverted_gamma", "gamma")}, rotation=1.0, scaling=1.0)
    checked = 0
    for image, label in _batches(_dataset(coordinate_files[:1], augment=True, seed=5,
                                          foreground_probability=1.0, augmentation=section), 4):
        for sample in range(2):
            interior = np.isclose(image[sample, ..., 3], 100.0, atol=1e-3)
            points = image[sample, ..., :3][interior] - 1.0
            clear = (np.abs(points - np.floor(points) - 0.5) > 0.01).all(axis=-1)
            nearest = np.floor(points[clear] + 0.5).astype(int)
            expected = volume_label[nearest[:, 0], nearest[:, 1], nearest[:, 2]]
            np.testing.assert_array_equal(label[sample][interior][clear], expected)
            checked += int(clear.sum())
    assert checked > 1000


def test_an_anisotropic_data_set_is_augmented_in_plane_and_the_log_says_so(tmp_path, caplog):
    """1 x 1 x 5 mm cases: nnU-Net's rule (max / min spacing > 3) makes the spatial transforms
    in-plane; every crop's z coordinate channel is then a plain run of slices."""
    record = {**_coordinate_case(), "case_id": "aniso", "spacing": [1.0, 1.0, 5.0]}
    path = tmp_path / "aniso.tfrecord"
    write_record(path, record)
    section = _nnunet_section(rotation=1.0, scaling=1.0, noise=0.0, blur=0.0, brightness=0.0,
                              contrast=0.0, low_resolution=0.0, inverted_gamma=0.0, gamma=0.0)
    with caplog.at_level("INFO", logger="unet3d.data.pipeline"):
        batches = _batches(_dataset([str(path)], augment=True, augmentation=section,
                                    batch_size=1), 3)
    (line,) = [r.getMessage() for r in caplog.records if "anisotropic" in r.getMessage()]
    assert "1x1x5 mm (aniso.tfrecord" in line and "rotated about axis 2 only" in line
    for image, _ in batches:
        z, marker = image[0, ..., 2], image[0, ..., 3]
        inside = np.isclose(marker, 100.0)
        steps = np.diff(z, axis=2)[inside[..., 1:] & inside[..., :-1]]
        # z + 1 along axis 2, unchanged in-plane (a mirrored crop runs backwards)
        assert np.allclose(np.abs(steps), 1.0, atol=1e-3), steps
