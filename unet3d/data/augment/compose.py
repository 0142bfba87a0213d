"""Data augmentation of the training crops: the reference recipe's and nnU-Net's.

``conf/augmentation/`` (mounted at ``data.augmentation``) holds every probability and range
with its source; ``Augmentation.from_config`` reads it (checks: ``unet3d.config.augmentation``).
``data.augment=false`` turns everything off.

- ``augmentation=reference`` (the default): mirroring and the seed's brightness
  (``intensity_scale``: raw intensities scaled before the z-score). The pipeline keeps its
  uint8 path for it (``unet3d.data.pipeline``), so its batches are those of before.
- ``augmentation=nnunet``: nnU-Net's set (Isensee et al., Nature Methods 2021; batchgenerators'
  transforms): rotation, scaling and elastic deformation (one resampling of the cached volume,
  ``unet3d.data.augment.spatial``), then Gaussian noise, Gaussian blur, multiplicative
  brightness, contrast, simulated low resolution, inverted gamma and gamma on the z-scored
  crop (``unet3d.data.augment.intensity``), then mirroring, in nnU-Net's order. Each
  transform is applied to a crop with its own probability.

Every draw is a stateless op seeded by the crop's seed, so the same seed gives the same crops
whatever ``tf.data``'s parallelism.

Anisotropic cases (e.g. 1 x 1 x 5 mm): where a case's largest voxel spacing exceeds its
smallest by more than ``ANISO_THRESHOLD`` (3), its crops are rotated only about the axis of
lowest resolution (in-plane) and scaled and deformed only in-plane, as nnU-Net does: its
``do_dummy_2d_data_aug`` (nnunetv2 ``nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_
inital_patch_size``: ``max(patch_size) / patch_size[0] > ANISO_THRESHOLD``, the patch's low
resolution axis first) runs the spatial transforms slice by slice in 2D, with
``ANISO_THRESHOLD = 3`` (``nnunetv2/configuration.py``: "the spacing in the low resolution axis
must be 3x as large as the next largest spacing"; its resampling's ``get_do_separate_z``: max /
min spacing > 3). Here the rule reads each case's own spacing (``lowres_axis``), in the graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unet3d.data.augment import intensity, spatial


@dataclass(frozen=True)
class Draw:
    """A transform's probability per crop and the ``[low, high]`` range of its parameter.

    ``channel_probability``: the probability of each channel, once the crop is chosen (blur
    and low resolution; 1 for the others).
    """

    probability: float = 0.0
    low: float = 1.0
    high: float = 1.0
    channel_probability: float = 1.0

    @property
    def range(self) -> tuple[float, float]:
        """``(low, high)``."""
        return self.low, self.high


_OFF = Draw()
#: The transforms that need the float (resampled, z-scored per crop) path, by field name.
NNUNET_TRANSFORMS = ("rotation", "scaling", "elastic", "noise", "blur", "brightness",
                     "contrast", "low_resolution", "inverted_gamma", "gamma")
#: The reference recipe's values (the seed's flips and brightness,
#: conf/augmentation/reference.yaml): what ``unet3d.data.pipeline.train_dataset`` does when
#: it is given no augmentation.
REFERENCE_MIRROR_PROBABILITY = 0.5
REFERENCE_INTENSITY_SCALE = Draw(0.5, 0.7, 1.3)


@dataclass(frozen=True)
class Augmentation:
    """The augmentation of a training crop (the fields of ``conf/augmentation/nnunet.yaml``).

    Units: ``rotation`` degrees (each axis its own angle), ``elastic`` alpha and
    ``elastic_sigma`` voxels, ``blur`` sigma voxels, ``noise`` a standard deviation of the
    z-scored intensities, ``low_resolution`` a zoom in (0, 1]; the others are factors.
    """

    name: str = "reference"
    mirror_probability: float = REFERENCE_MIRROR_PROBABILITY
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    intensity_scale: Draw = REFERENCE_INTENSITY_SCALE
    rotation: Draw = _OFF
    scaling: Draw = _OFF
    elastic: Draw = _OFF  # its range: alpha
    elastic_sigma: tuple[float, float] = (1.0, 1.0)
    noise: Draw = _OFF
    blur: Draw = _OFF
    brightness: Draw = _OFF
    contrast: Draw = _OFF
    low_resolution: Draw = _OFF
    inverted_gamma: Draw = _OFF
    gamma: Draw = _OFF

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Augmentation:
        """Read a ``data.augmentation`` section (a DictConfig or a dict).

        Raises:
            ConfigError: a key is unknown or a value is out of range (one line naming it).
        """
        from unet3d.config.augmentation import check_augmentation

        values = check_augmentation(section)

        def draw(name: str, key: str) -> Draw:
            entry = values[name]
            return Draw(float(entry["probability"]), *(float(v) for v in entry[key]),
                        channel_probability=float(entry.get("channel_probability", 1.0)))

        return cls(
            name=str(values["name"]),
            mirror_probability=float(values["mirror"]["probability"]),
            mirror_axes=tuple(int(axis) for axis in values["mirror"]["axes"]),
            intensity_scale=draw("intensity_scale", "range"),
            rotation=draw("rotation", "angle"),
            scaling=draw("scaling", "range"),
            elastic=draw("elastic", "alpha"),
            elastic_sigma=tuple(float(v) for v in values["elastic"]["sigma"]),  # type: ignore[arg-type]
            noise=draw("noise", "std"),
            blur=draw("blur", "sigma"),
            brightness=draw("brightness", "range"),
            contrast=draw("contrast", "range"),
            low_resolution=draw("low_resolution", "zoom"),
            inverted_gamma=draw("inverted_gamma", "range"),
            gamma=draw("gamma", "range"),
        )

    @property
    def uses_nnunet_transforms(self) -> bool:
        """True when any transform beyond mirroring and ``intensity_scale`` can happen."""
        return any(getattr(self, name).probability > 0.0 for name in NNUNET_TRANSFORMS)

    def describe(self) -> str:
        """One line for the job log: the transforms that can happen, with probability and range."""
        parts = [f"mirror {self.mirror_probability:g} per axis {list(self.mirror_axes)}"]
        for name in ("intensity_scale", *NNUNET_TRANSFORMS):
            draw: Draw = getattr(self, name)
            if draw.probability > 0.0:
                parts.append(f"{name} {draw.probability:g} [{draw.low:g}, {draw.high:g}]")
        return f"{self.name}: " + ", ".join(parts)

    @property
    def resamples(self) -> bool:
        """True when a crop may be rotated, scaled or deformed (resampled from the volume)."""
        return any(getattr(self, name).probability > 0.0
                   for name in ("rotation", "scaling", "elastic"))


#: nnU-Net's anisotropy threshold (``nnunetv2/configuration.py`` ``ANISO_THRESHOLD``).
ANISO_THRESHOLD = 3.0


def lowres_axis(spacing: Sequence[float], threshold: float = ANISO_THRESHOLD) -> int | None:
    """The axis of lowest resolution when ``max(spacing) / min(spacing) > threshold``, else None.

    Args:
        spacing: voxel spacing (mm) of the axes ``(H, W, D)``.
        threshold: nnU-Net's ``ANISO_THRESHOLD`` (3).
    """
    values = [float(side) for side in spacing]
    if min(values) <= 0.0 or max(values) / min(values) <= threshold:
        return None
    return values.index(max(values))


def _plane_masks(spacing: Any) -> tuple[Any, Any]:
    """float32 ``[3]`` masks of a case (see ``lowres_axis``): the axes rotated about, and the
    axes scaled and deformed; all ones for an isotropic enough case."""
    import tensorflow as tf

    spacing = tf.cast(tf.reshape(spacing, [3]), tf.float32)
    anisotropic = tf.reduce_max(spacing) > ANISO_THRESHOLD * tf.reduce_min(spacing)
    lowres = tf.one_hot(tf.argmax(spacing), 3, dtype=tf.float32)
    ones = tf.ones([3], tf.float32)
    return tf.where(anisotropic, lowres, ones), tf.where(anisotropic, 1.0 - lowres, ones)


def _applies(seed: Any, probability: float) -> Any:
    import tensorflow as tf

    return tf.random.stateless_uniform([], seed=seed) < probability


def spatial_crop(image: Any, label: Any, origin: Any, crop_size: Sequence[int], scale: Any,
                 offset: Any, augmentation: Augmentation, seed: Any,
                 spacing: Any = None) -> tuple[Any, Any]:
    """The z-scored crop at ``origin``, rotated / scaled / deformed about its centre when drawn.

    A crop none of the three is drawn for is the plain block ``origin : origin + crop_size``
    (zeros outside the volume): the same values ``spatial.resample`` gives at integer points.
    A case of anisotropic ``spacing`` is rotated about its low-resolution axis only and scaled
    and deformed in-plane only (see the module doc).

    Args:
        image: uint8 ``(H, W, D, C)``; label: uint8 ``(H, W, D)`` (the cached case).
        origin: int32 ``[3]``, the volume voxel of crop voxel ``(0, 0, 0)`` (may be < 0 when
            the volume is smaller than the crop).
        crop_size: ``(h, w, d)``.
        scale, offset: float32 ``(C,)``: voxels ``x > 0`` become ``x * scale + offset``.
        augmentation: the probabilities and ranges.
        seed: stateless seed ``[2]`` of this crop's spatial draws.
        spacing: float32 ``[3]``, the case's voxel spacing (mm); None: treated as isotropic.

    Returns:
        ``(float32 (h, w, d, C), uint8 (h, w, d))``.
    """
    import tensorflow as tf

    rotated_about, in_plane = _plane_masks([1.0, 1.0, 1.0] if spacing is None else spacing)
    keys = tf.random.experimental.stateless_split(seed, num=8)
    rotate = _applies(keys[0], augmentation.rotation.probability)
    zoom = _applies(keys[1], augmentation.scaling.probability)
    deform = _applies(keys[2], augmentation.elastic.probability)
    degrees = intensity.uniform(keys[3], [3], *augmentation.rotation.range)
    angles = tf.where(rotate, degrees * (math.pi / 180.0), tf.zeros([3])) * rotated_about
    factor = tf.where(zoom, intensity.around_one(keys[4], [], *augmentation.scaling.range), 1.0)
    factors = tf.where(in_plane > 0.0, factor, 1.0)  # per output axis (commutes with R)
    alpha = intensity.uniform(keys[5], [], *augmentation.elastic.range)
    sigma = intensity.uniform(keys[6], [], *augmentation.elastic_sigma)
    crop = [int(side) for side in crop_size]
    channels = int(image.shape[-1])

    def plain() -> tuple[Any, Any]:
        shape = tf.shape(label)
        start = tf.clip_by_value(origin, 0, shape)
        stop = tf.clip_by_value(origin + crop, 0, shape)
        before = tf.clip_by_value(start - origin, 0, crop)  # a crop wholly outside: zeros
        after = crop - before - (stop - start)
        block = tf.slice(image, tf.concat([start, [0]], 0),
                         tf.concat([stop - start, [channels]], 0))
        paddings = tf.stack([before, after], axis=1)
        block = tf.pad(block, tf.concat([paddings, tf.zeros([1, 2], tf.int32)], 0))
        values = tf.cast(block, tf.float32)
        return (tf.where(block > 0, values * scale + offset, 0.0),
                tf.pad(tf.slice(label, start, stop - start), paddings))

    def resampled() -> tuple[Any, Any]:
        displacement = tf.cond(
            deform,
            lambda: spatial.elastic_displacement(crop, alpha, sigma,
                                                 augmentation.elastic_sigma[1], keys[7]),
            lambda: tf.zeros([*crop, 3])) * in_plane
        centre = tf.cast(origin, tf.float32) + tf.constant([(side - 1) / 2.0 for side in crop])
        points = spatial.sampling_points(spatial.centred_grid(crop), centre,
                                         spatial.rotation_matrix(angles) * factors[None, :],
                                         displacement)
        return spatial.resample(image, label, points, scale, offset)

    if not augmentation.resamples:
        image_crop, label_crop = plain()
    else:
        image_crop, label_crop = tf.cond(rotate | zoom | deform, resampled, plain)
    return (tf.ensure_shape(image_crop, [*crop, channels]), tf.ensure_shape(label_crop, crop))


def intensity_transforms(image: Any, augmentation: Augmentation, seed: Any) -> Any:
    """nnU-Net's intensity transforms on a z-scored crop float32 ``(h, w, d, C)``, each drawn
    with its probability, in nnU-Net's order (noise, blur, brightness, contrast, low resolution,
    inverted gamma, gamma)."""
    import tensorflow as tf

    steps = (
        ("noise", lambda x, s, d: intensity.gaussian_noise(x, s, d.range)),
        ("blur", lambda x, s, d: intensity.gaussian_blur(x, s, d.range, d.channel_probability)),
        ("brightness", lambda x, s, d: intensity.multiplicative_brightness(x, s, d.range)),
        ("contrast", lambda x, s, d: intensity.contrast(x, s, d.range)),
        ("low_resolution", lambda x, s, d: intensity.low_resolution(x, s, d.range,
                                                                    d.channel_probability)),
        ("inverted_gamma", lambda x, s, d: intensity.gamma(x, s, d.range, invert=True)),
        ("gamma", lambda x, s, d: intensity.gamma(x, s, d.range, invert=False)),
    )
    keys = tf.random.experimental.stateless_split(seed, num=2 * len(steps))
    for index, (name, transform) in enumerate(steps):
        draw: Draw = getattr(augmentation, name)
        if draw.probability <= 0.0:
            continue
        key = keys[2 * index + 1]
        image = tf.cond(_applies(keys[2 * index], draw.probability),
                        lambda x=image, k=key, t=transform, d=draw: t(x, k, d),
                        lambda x=image: x)
    return image


def mirror(image: Any, label: Any, seed: Any, probability: float,
           axes: Sequence[int]) -> tuple[Any, Any]:
    """Flip image ``(h, w, d, ...)`` and label ``(h, w, d)`` together along each of ``axes``
    with ``probability`` (one uniform draw per spatial axis from ``seed``)."""
    import tensorflow as tf

    flips = tf.random.stateless_uniform([3], seed=seed)
    for axis in axes:
        flip = flips[axis] < probability
        image = tf.cond(flip, lambda a=axis, x=image: tf.reverse(x, [a]), lambda x=image: x)
        label = tf.cond(flip, lambda a=axis, y=label: tf.reverse(y, [a]), lambda y=label: y)
    return image, label


def intensity_scale(seeds: Sequence[Any], draw: Draw) -> Any:
    """float32 scalar: the seed's brightness factor, drawn with ``draw.probability`` (else 1).

    ``seeds``: two stateless seeds (whether, and the factor, uniform in ``draw.range``).
    """
    import tensorflow as tf

    apply = tf.random.stateless_uniform([], seed=seeds[0]) < draw.probability
    factor = tf.random.stateless_uniform([], seed=seeds[1], minval=draw.low, maxval=draw.high)
    return tf.where(apply, factor, tf.constant(1.0, tf.float32))
