"""nnU-Net's augmentation transforms (unet3d/data/augment/) on tiny crops.

For every transform: shape and dtype kept, label values kept exactly, image and label moved
identically, probability 0 is the identity, the same seed gives the same crop and another seed
another one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unet3d.data.augment.compose import (
    NNUNET_TRANSFORMS,
    Augmentation,
    Draw,
    intensity_transforms,
    mirror,
    spatial_crop,
)

tf = pytest.importorskip("tensorflow")

VOLUME = (14, 12, 10)
CROP = [8, 8, 8]
ORIGIN = [3, 2, 1]
OFF = Augmentation(mirror_probability=0.0, intensity_scale=Draw())
#: One transform each, drawn for every crop, with ranges wide enough to show.
TRANSFORMS = {
    "rotation": Draw(1.0, -40.0, 40.0),
    "scaling": Draw(1.0, 0.7, 1.4),
    "elastic": Draw(1.0, 20.0, 40.0),  # with sigma 2-3 voxels: about 1 voxel displacements
    "noise": Draw(1.0, 0.05, 0.1),
    "blur": Draw(1.0, 0.5, 1.0, channel_probability=1.0),
    "brightness": Draw(1.0, 0.75, 1.25),
    "contrast": Draw(1.0, 0.75, 1.25),
    "low_resolution": Draw(1.0, 0.5, 0.6, channel_probability=1.0),
    "inverted_gamma": Draw(1.0, 0.7, 1.5),
    "gamma": Draw(1.0, 0.7, 1.5),
}
SPATIAL = ("rotation", "scaling", "elastic")
assert set(TRANSFORMS) == set(NNUNET_TRANSFORMS)


def only(name: str, draw: Draw | None = None) -> Augmentation:
    """``OFF`` with one transform on (``elastic`` gets a small sigma for these crops)."""
    changes = {name: draw or TRANSFORMS[name]}
    if name == "elastic":
        changes["elastic_sigma"] = (2.0, 3.0)
    return dataclasses.replace(OFF, **changes)


def coordinate_volume(shape=VOLUME):
    """uint8 image whose channels 0-2 are x+1, y+1, z+1 and channel 3 a constant 100; label a
    different class almost every voxel: (x + 2y + 3z) % 4."""
    grid = np.indices(shape)
    image = np.concatenate([grid + 1, np.full((1, *shape), 100)]).transpose(1, 2, 3, 0)
    label = (grid[0] + 2 * grid[1] + 3 * grid[2]) % 4
    return image.astype(np.uint8), label.astype(np.uint8)


def augment(augmentation: Augmentation, seed=(1, 2), image=None, label=None):
    """The crop at ORIGIN through spatial_crop, intensity_transforms and mirror (z-score = id)."""
    if image is None:
        image, label = coordinate_volume()
    seeds = tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), num=3)
    channels = image.shape[-1]
    crop, labels = spatial_crop(tf.constant(image), tf.constant(label), tf.constant(ORIGIN),
                                CROP, tf.ones([channels]), tf.zeros([channels]), augmentation,
                                seeds[0])
    crop = intensity_transforms(crop, augmentation, seeds[1])
    crop, labels = mirror(crop, labels, seeds[2], augmentation.mirror_probability,
                          augmentation.mirror_axes)
    return crop.numpy(), labels.numpy()


def plain_crop():
    image, label = coordinate_volume()
    block = tuple(slice(o, o + c) for o, c in zip(ORIGIN, CROP, strict=True))
    return image[block].astype(np.float32), label[block]


ALL = [*TRANSFORMS, "mirror"]


def with_transform(name: str) -> Augmentation:
    return dataclasses.replace(OFF, mirror_probability=0.5) if name == "mirror" else only(name)


@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_and_label_values_are_kept(name):
    image, label = augment(with_transform(name))
    assert image.shape == (*CROP, 4) and image.dtype == np.float32
    assert label.shape == tuple(CROP) and label.dtype == np.uint8
    assert np.isfinite(image).all()
    assert set(np.unique(label)) <= set(np.unique(coordinate_volume()[1]))


@pytest.mark.parametrize("name", ALL)
def test_probability_zero_is_the_identity(name):
    if name == "mirror":
        off = dataclasses.replace(OFF, mirror_probability=0.0)
    else:
        off = only(name, dataclasses.replace(TRANSFORMS[name], probability=0.0))
    expected_image, expected_label = plain_crop()
    image, label = augment(off)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(label, expected_label)


@pytest.mark.parametrize("name", ALL)
def test_seeded_determinism(name):
    augmentation = with_transform(name)
    first, first_label = augment(augmentation, seed=(5, 6))
    again, again_label = augment(augmentation, seed=(5, 6))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_label, again_label)
    others = [augment(augmentation, seed=(5, 7 + k))[0] for k in range(5)]
    assert any(not np.array_equal(first, other) for other in others)
    assert any(not np.array_equal(other, plain_crop()[0]) for other in others)  # it transforms


@pytest.mark.parametrize("name", [*SPATIAL, "mirror"])
def test_image_and_label_move_identically(name):
    """Every crop voxel whose 8 trilinear corners lie in the volume decodes (channels 0-2) to
    the point it was sampled at; its label is the class of the voxel nearest that point."""
    checked = 0
    for seed in range(4):
        image, label = augment(with_transform(name), seed=(seed, 3))
        interior = np.isclose(image[..., 3], 100.0, atol=1e-3)  # all 8 corners inside
        points = image[..., :3] - 1.0
        fraction = points - np.floor(points)
        clear = interior & (np.abs(fraction - 0.5) > 0.01).all(axis=-1)  # no rounding tie
        nearest = np.floor(points[clear] + 0.5).astype(int)
        expected = (nearest[:, 0] + 2 * nearest[:, 1] + 3 * nearest[:, 2]) % 4
        np.testing.assert_array_equal(label[clear], expected)
        checked += int(clear.sum())
        if name != "mirror":  # the crop really moved: points off the voxel grid
            assert (np.abs(fraction[interior] % 1.0) > 1e-3).any()
    assert checked > 500


@pytest.mark.parametrize("name", ALL)
def test_a_marker_voxel_lands_at_the_same_place_in_image_and_label(name):
    """A bright 3x3x3 marker labelled 3 in a dim labelled-1 volume: after the transform the
    brightest crop voxel carries label 3 and every label-3 voxel is brighter than the rest.
    Intensity transforms must not move it at all."""
    image = np.full((*VOLUME, 4), 40, np.uint8)
    label = np.ones(VOLUME, np.uint8)
    marker = (slice(6, 9), slice(5, 8), slice(4, 7))
    image[marker] = 250
    label[marker] = 3
    found = 0
    for seed in range(6):
        crop, labels = augment(with_transform(name), seed=(seed, 11), image=image, label=label)
        assert set(np.unique(labels)) <= {0, 1, 3}
        if not (labels == 3).any():
            continue  # scaled or rotated out of the crop
        found += 1
        channel = crop[..., 0]
        brightest = np.unravel_index(np.argmax(channel), channel.shape)
        assert labels[brightest] == 3, (name, seed)
        if name in SPATIAL or name == "mirror":
            # The nearest voxel is the marker's: at least 1/8 of the trilinear weight is.
            assert channel[labels == 3].min() > 40 + 210 / 8 - 1e-3
            assert (labels[np.isclose(channel, 40.0)] != 3).all()
        else:  # intensity only: the label and the marker stay where they were
            block = tuple(slice(o, o + c) for o, c in zip(ORIGIN, CROP, strict=True))
            np.testing.assert_array_equal(labels, label[block])
    assert found >= 3


def test_resampling_at_the_identity_matches_the_plain_crop_bit_for_bit():
    identity = dataclasses.replace(OFF, rotation=Draw(1.0, 0.0, 0.0), scaling=Draw(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(augment(identity)[0], plain_crop()[0])
    np.testing.assert_array_equal(augment(identity)[1], plain_crop()[1])


def test_resampling_reads_the_whole_volume_and_zeros_outside():
    """A 90-degree turn about axis 0 of a crop in the volume's middle stays inside it (no zero
    border); a crop hanging over the edge reads 0 (image) and 0 (label) outside."""
    image, label = coordinate_volume((16, 16, 16))
    quarter = dataclasses.replace(OFF, rotation=Draw(1.0, 90.0, 90.0))
    seeds = tf.random.experimental.stateless_split(tf.constant([1, 1], tf.int64), num=3)

    def crop_at(origin):
        out, labels = spatial_crop(tf.constant(image), tf.constant(label), tf.constant(origin),
                                   CROP, tf.ones([4]), tf.zeros([4]), quarter, seeds[0])
        return out.numpy(), labels.numpy()

    inside, _ = crop_at([4, 4, 4])
    assert np.allclose(inside[..., 3], 100.0, atol=1e-3)
    edge, labels = crop_at([-4, 4, 4])
    outside = np.isclose(edge[..., 3], 0.0)
    assert outside.sum() >= 8 * 8 * 3 and (edge[outside] == 0).all()
    assert (labels[np.isclose(edge[..., 3], 0.0)] == 0).all()


def test_intensity_transforms_keep_the_statistics_nnunet_keeps():
    """Gamma keeps each channel's mean and std (retain_stats); contrast keeps its range."""
    from unet3d.data.augment import intensity

    rng = np.random.default_rng(0)
    crop = tf.constant(rng.normal(size=(*CROP, 4)).astype(np.float32))
    seed = tf.constant([3, 4], tf.int64)
    for invert in (False, True):
        out = intensity.gamma(crop, seed, (0.7, 1.5), invert=invert).numpy()
        np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), crop.numpy().mean(axis=(0, 1, 2)),
                                   atol=1e-4)
        np.testing.assert_allclose(out.std(axis=(0, 1, 2)), crop.numpy().std(axis=(0, 1, 2)),
                                   rtol=1e-3)
    out = intensity.contrast(crop, seed, (0.75, 1.25)).numpy()
    assert (out.min(axis=(0, 1, 2)) >= crop.numpy().min(axis=(0, 1, 2)) - 1e-6).all()
    assert (out.max(axis=(0, 1, 2)) <= crop.numpy().max(axis=(0, 1, 2)) + 1e-6).all()
    factors = intensity.around_one(seed, [4000], 0.7, 1.5).numpy()
    assert 0.4 < (factors < 1.0).mean() < 0.6 and factors.min() >= 0.7 and factors.max() <= 1.5


def test_separable_filters_match_scipy():
    """Blur = scipy.ndimage.gaussian_filter (reflect); the elastic field's filter = the same
    with zeros outside; low resolution at zoom 1 = identity."""
    from scipy import ndimage

    from unet3d.data.augment import intensity

    rng = np.random.default_rng(1)
    volume = rng.normal(size=(9, 8, 7, 2)).astype(np.float32)
    sigma = np.array([0.6, 1.7], np.float32)
    for mode in ("reflect", "constant"):
        matrices = [intensity.gaussian_matrix(side, tf.constant(sigma), 2.0, mode)
                    for side in volume.shape[:3]]
        out = intensity.separable(tf.constant(volume), matrices).numpy()
        for channel in range(2):
            expected = ndimage.gaussian_filter(volume[..., channel], float(sigma[channel]),
                                               mode=mode)
            np.testing.assert_allclose(out[..., channel], expected, atol=1e-5)
    identity = [intensity.low_resolution_matrix(side, tf.ones([2])) for side in volume.shape[:3]]
    np.testing.assert_allclose(intensity.separable(tf.constant(volume), identity).numpy(),
                               volume, atol=1e-6)
    half = intensity.low_resolution_matrix(8, tf.constant([0.5])).numpy()[0]
    assert np.linalg.matrix_rank(half) == 4 and np.allclose(half.sum(axis=1), 1.0)


def test_from_config_reads_and_checks_a_section():
    from tests.test_config import compose_config
    from unet3d.errors import ConfigError

    section = compose_config("augmentation=nnunet").data.augmentation
    nnunet = Augmentation.from_config(section)
    assert nnunet.name == "nnunet" and nnunet.uses_nnunet_transforms and nnunet.resamples
    plain = dict(section)
    del plain["name"]
    with pytest.raises(ConfigError, match=r"^data\.augmentation\.name: missing"):
        Augmentation.from_config(plain)
    with pytest.raises(ConfigError, match=r"^data\.augmentation\.rotaton: unknown transform"):
        Augmentation.from_config({"rotaton": {"probability": 1.0}})


def test_resample_is_trilinear_interpolation_of_the_z_scored_volume():
    """spatial.resample = scipy map_coordinates (order 1, zeros outside) of the normalised
    volume (background 0, foreground x * scale + offset); labels = order 0 (nearest)."""
    from scipy import ndimage

    from unet3d.data.augment import spatial

    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (9, 8, 7, 4)).astype(np.uint8)
    image[rng.random((9, 8, 7, 4)) < 0.3] = 0  # background voxels, per channel
    label = rng.integers(0, 4, (9, 8, 7)).astype(np.uint8)
    scale = np.array([0.02, 0.03, 0.05, 0.01], np.float32)
    offset = np.array([-1.0, 0.5, -2.0, 0.1], np.float32)
    points = rng.uniform(-1.5, 9.5, (5, 4, 3, 3)).astype(np.float32)
    out, labels = spatial.resample(tf.constant(image), tf.constant(label), tf.constant(points),
                                   tf.constant(scale), tf.constant(offset))
    normalised = np.where(image > 0, image * scale + offset, 0.0)
    coordinates = points.reshape(-1, 3).T
    for channel in range(4):
        expected = ndimage.map_coordinates(normalised[..., channel], coordinates, order=1,
                                           mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out.numpy()[..., channel].ravel(), expected, atol=1e-4)
    fraction = points - np.floor(points)
    clear = (np.abs(fraction - 0.5) > 1e-3).all(axis=-1).ravel()
    nearest = ndimage.map_coordinates(label, coordinates, order=0, mode="grid-constant", cval=0)
    np.testing.assert_array_equal(labels.numpy().ravel()[clear], nearest[clear])


def test_gamma_and_contrast_match_batchgenerators():
    """The formulas of batchgenerators augment_gamma (retain_stats) and augment_contrast
    (preserve_range), written in NumPy, with the factors the transforms draw from the seed."""
    from unet3d.data.augment import intensity

    rng = np.random.default_rng(3)
    crop = rng.normal(size=(6, 5, 4, 4)).astype(np.float32)
    seed = tf.constant([8, 9], tf.int64)
    gammas = intensity.around_one(seed, [4], 0.7, 1.5).numpy()
    for invert in (False, True):
        data = -crop if invert else crop.copy()
        expected = np.empty_like(data)
        for c in range(4):
            x = data[..., c].astype(np.float64)
            mn, sd = x.mean(), x.std()
            minm, rnge = x.min(), x.max() - x.min()
            x = np.power((x - minm) / (rnge + 1e-7), gammas[c]) * (rnge + 1e-7) + minm
            x = x - x.mean()
            expected[..., c] = x / (x.std() + 1e-8) * sd + mn
        expected = -expected if invert else expected
        out = intensity.gamma(tf.constant(crop), seed, (0.7, 1.5), invert=invert).numpy()
        np.testing.assert_allclose(out, expected, atol=2e-4)
    factors = intensity.around_one(seed, [4], 0.75, 1.25).numpy()
    expected = np.stack([np.clip((crop[..., c] - crop[..., c].mean()) * factors[c]
                                 + crop[..., c].mean(), crop[..., c].min(), crop[..., c].max())
                         for c in range(4)], axis=-1)
    np.testing.assert_allclose(intensity.contrast(tf.constant(crop), seed, (0.75, 1.25)).numpy(),
                               expected, atol=1e-5)


def test_low_resolution_is_nearest_down_then_linear_up():
    """Zoom 0.5 of 0..7: nearest-exact keeps voxels 1, 3, 5, 7; linear upsampling with
    half-voxel centres (PyTorch align_corners=False) gives these values."""
    from unet3d.data.augment import intensity

    matrix = intensity.low_resolution_matrix(8, tf.constant([0.5])).numpy()[0]
    np.testing.assert_allclose(matrix @ np.arange(8.0), [1, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7],
                               atol=1e-6)


# ---- anisotropic spacing: in-plane only, as nnU-Net's do_dummy_2d_data_aug (issue 30) ----------


def test_lowres_axis_follows_nnunets_anisotropy_threshold():
    from unet3d.data.augment.compose import ANISO_THRESHOLD, lowres_axis

    assert ANISO_THRESHOLD == 3.0  # nnunetv2/configuration.py
    assert lowres_axis((1.0, 1.0, 5.0)) == 2 and lowres_axis((4.0, 0.8, 0.8)) == 0
    assert lowres_axis((1.0, 1.0, 3.0)) is None  # not above the threshold
    assert lowres_axis((1.0, 1.0, 1.0)) is None and lowres_axis((0.0, 1.0, 5.0)) is None


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 5.0), (1.0, 1.0, 1.0)])
def test_anisotropic_cases_are_rotated_scaled_and_deformed_in_plane_only(spacing):
    """Channel 2 of the coordinate volume is z + 1: in-plane transforms keep it, voxel by voxel
    (wherever the crop voxel's neighbours all lie inside the volume: channel 3 is 100 there)."""
    image, label = coordinate_volume()
    augmentation = dataclasses.replace(OFF, rotation=Draw(1.0, 35.0, 40.0),
                                       scaling=Draw(1.0, 0.8, 0.8), elastic=Draw(1.0, 20.0, 40.0),
                                       elastic_sigma=(2.0, 3.0))
    seed = tf.constant([5, 6], tf.int64)
    crop, _ = spatial_crop(tf.constant(image), tf.constant(label), tf.constant(ORIGIN), CROP,
                           tf.ones([4]), tf.zeros([4]), augmentation, seed,
                           tf.constant(spacing, tf.float32))
    crop = crop.numpy()
    inside = np.isclose(crop[..., 3], 100.0)
    assert inside.sum() > 50
    z = np.broadcast_to(np.arange(CROP[2], dtype=np.float32) + ORIGIN[2] + 1, CROP)
    kept = np.isclose(crop[..., 2], z, atol=1e-3)[inside]
    if spacing[2] > 1.0:
        assert kept.all()  # every slice stays in its plane
        assert not np.isclose(crop[..., 0], plain_crop()[0][..., 0])[inside].all()  # rotated
    else:
        assert not kept.all()  # isotropic: rotated about every axis, slices mix
