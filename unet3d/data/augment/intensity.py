"""Intensity transforms of nnU-Net's augmentation on one z-scored training crop (TensorFlow).

Every function takes ``image``: float32 ``(h, w, d, C)`` (spatial axes H, W, D, channels last;
the crop after the z-score, background 0) and a stateless ``seed`` (int32/int64 ``[2]``), and
returns a float32 tensor of the same shape; the same seed gives the same output. They run
inside ``tf.data`` map functions (graph mode, CPU). The crop's label is never touched.

The transforms and their conventions are batchgenerators' (MIC-DKFZ), as nnU-Net uses them:
``augment_gaussian_noise``, ``augment_gaussian_blur``, ``augment_brightness_multiplicative``,
``augment_contrast`` (``preserve_range``), ``augment_linear_downsampling_scipy`` and
``augment_gamma`` (``retain_stats``). Statistics (mean, std, min, max) are per channel over the
whole crop, background included, as there. The per-crop probabilities are applied by
``unet3d.data.augment.compose``.

Separable linear filters (Gaussian blur, down- then upsampling) are applied as one ``(n, n)``
matrix per spatial axis and channel (``separable``): TensorFlow has no 3D depthwise
convolution on the CPU, and these crops' sides are small (<= 128) so a matrix product along
each axis is as fast as a convolution and takes any boundary rule exactly.
"""

from __future__ import annotations

from typing import Any

#: scipy.ndimage.gaussian_filter's default: the kernel is cut at 4 standard deviations.
GAUSSIAN_TRUNCATE = 4.0
#: batchgenerators augment_gamma's epsilon.
GAMMA_EPSILON = 1e-7
_SPATIAL = (0, 1, 2)


def _split(seed: Any, count: int) -> Any:
    import tensorflow as tf

    return tf.unstack(tf.random.experimental.stateless_split(seed, num=count), num=count)


def uniform(seed: Any, shape: list[int], low: float, high: float) -> Any:
    """float32 draws of ``shape``, uniform in ``[low, high)``."""
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def around_one(seed: Any, shape: list[int], low: float, high: float) -> Any:
    """float32 factors of ``shape``: half uniform in ``[low, 1]``, half in ``[max(low, 1), high]``.

    batchgenerators' draw of contrast, gamma and scale factors (``if random() < 0.5 and
    low < 1: uniform(low, 1) else uniform(max(low, 1), high)``): as many shrink as grow. A
    range entirely below (above) 1 draws uniformly in it.
    """
    import tensorflow as tf

    pick, below, above = _split(seed, 3)
    if high < 1.0 or low >= 1.0:
        return uniform(below if high < 1.0 else above, shape, low, high)
    use_below = tf.random.stateless_uniform(shape, seed=pick) < 0.5
    return tf.where(use_below, uniform(below, shape, low, 1.0), uniform(above, shape, 1.0, high))


def separable(volume: Any, matrices: list[Any]) -> Any:
    """One matrix per spatial axis: ``out[i, j, k] = sum M0[i, a] M1[j, b] M2[k, c] x[a, b, c]``.

    Args:
        volume: float32 ``(h, w, d, C)``.
        matrices: three float32 matrices for the axes H, W, D, all ``(n_out, n_in)`` (the same
            for every channel) or all ``(C, n_out, n_in)`` (one per channel).

    Returns:
        float32 ``(h', w', d', C)`` with the matrices' ``n_out`` sides.
    """
    import tensorflow as tf

    if matrices[0].shape.rank == 2:
        for matrix, spec in zip(matrices, ("ih,hwdc->iwdc", "jw,iwdc->ijdc", "kd,ijdc->ijkc"),
                                strict=True):
            volume = tf.einsum(spec, matrix, volume)
        return volume
    # One matrix per channel: plain batched matrix products on the channel-first volume (an
    # einsum with a batch axis is several times slower on the CPU).
    first, second, third = matrices
    channels = int(volume.shape[-1])
    height, width, depth = (int(side) for side in volume.shape[:3])
    values = tf.transpose(volume, [3, 0, 1, 2])
    values = tf.matmul(first, tf.reshape(values, [channels, height, width * depth]))
    height = int(first.shape[1])
    values = tf.matmul(second[:, None], tf.reshape(values, [channels, height, width, depth]))
    width = int(second.shape[1])
    values = tf.matmul(tf.reshape(values, [channels, height * width, depth]), third,
                       transpose_b=True)
    values = tf.reshape(values, [channels, height, width, int(third.shape[1])])
    return tf.transpose(values, [1, 2, 3, 0])


def channel_statistics(image: Any, *names: str) -> list[Any]:
    """Per-channel ``mean``, ``std``, ``min`` or ``max`` of ``(h, w, d, C)``: float32 ``(C,)``."""
    import tensorflow as tf

    flat = tf.reshape(image, [-1, int(image.shape[-1])])  # faster than reducing 3 axes
    found: dict[str, Any] = {}
    if {"mean", "std"} & set(names):
        mean, variance = tf.nn.moments(flat, axes=[0])
        found.update(mean=mean, std=tf.sqrt(variance))
    if "min" in names:
        found["min"] = tf.reduce_min(flat, axis=0)
    if "max" in names:
        found["max"] = tf.reduce_max(flat, axis=0)
    return [found[name] for name in names]


def gaussian_matrix(size: int, sigma: Any, max_sigma: float, mode: str) -> Any:
    """The ``(C, size, size)`` matrices of a 1-D Gaussian filter along an axis of ``size``.

    scipy.ndimage.gaussian_filter1d's kernel: ``exp(-k^2 / (2 sigma^2))`` for
    ``|k| <= int(4 sigma + 0.5)``, normalised to sum 1.

    Args:
        size: the axis' length (voxels).
        sigma: float32 ``(C,)`` standard deviations (voxels), > 0.
        max_sigma: an upper bound of ``sigma`` (the kernel's largest radius).
        mode: ``"reflect"`` (scipy's default: ``d c b a | a b c d | d c b a``, batchgenerators'
            blur) or ``"constant"`` (zeros outside, its elastic deformation).
    """
    import tensorflow as tf

    radius = int(GAUSSIAN_TRUNCATE * max_sigma + 0.5)
    offsets = tf.range(-radius, radius + 1)
    sigma = tf.reshape(tf.cast(sigma, tf.float32), [-1, 1])
    distance = tf.cast(offsets, tf.float32)[None, :]
    kept = tf.abs(distance) <= tf.floor(GAUSSIAN_TRUNCATE * sigma + 0.5)
    weights = tf.where(kept, tf.exp(-0.5 * tf.square(distance / sigma)), 0.0)
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)  # (C, K)
    source = tf.range(size)[:, None] + offsets[None, :]  # (size, K)
    if mode == "reflect":
        folded = tf.math.floormod(source, 2 * size)
        source, valid = tf.where(folded < size, folded, 2 * size - 1 - folded), None
    elif mode == "constant":
        valid = tf.cast((source >= 0) & (source < size), tf.float32)
        source = tf.clip_by_value(source, 0, size - 1)
    else:
        raise ValueError(f"mode must be reflect or constant, got {mode!r}")
    picks = tf.one_hot(source, size, dtype=tf.float32)  # (size, K, size)
    if valid is not None:
        picks = picks * valid[..., None]
    return tf.einsum("ikj,ck->cij", picks, weights)


def low_resolution_matrix(size: int, zoom: Any) -> Any:
    """``(C, size, size)``: nearest downsampling to ``round(zoom * size)``, then linear back up.

    Down: nearest with half-voxel centres (PyTorch ``nearest-exact``, skimage ``order=0``);
    up: linear with half-voxel centres and edge clamping (PyTorch ``trilinear``,
    ``align_corners=False``; nnU-Net v2's SimulateLowResolutionTransform). ``zoom = 1`` gives
    the identity.

    Args:
        size: the axis' length (voxels).
        zoom: float32 ``(C,)`` in ``(0, 1]``.
    """
    import tensorflow as tf

    full = float(size)
    coarse = tf.maximum(1.0, tf.round(tf.reshape(tf.cast(zoom, tf.float32), [-1, 1]) * full))
    position = (tf.range(size, dtype=tf.float32)[None, :] + 0.5) * coarse / full - 0.5
    position = tf.clip_by_value(position, 0.0, coarse - 1.0)  # (C, size) on the coarse grid
    lower = tf.floor(position)
    upper = tf.minimum(lower + 1.0, coarse - 1.0)
    fraction = position - lower

    def fine_source(index: Any) -> Any:  # the voxel a coarse sample took (nearest-exact)
        return tf.cast(tf.minimum(tf.floor((index + 0.5) * full / coarse), full - 1.0), tf.int32)

    return ((1.0 - fraction)[..., None] * tf.one_hot(fine_source(lower), size)
            + fraction[..., None] * tf.one_hot(fine_source(upper), size))


def _channels(image: Any) -> int:
    return int(image.shape[-1])


def _chosen_channels(seed: Any, channels: int, probability: float) -> Any:
    import tensorflow as tf

    return tf.random.stateless_uniform([channels], seed=seed) < probability


def gaussian_noise(image: Any, seed: Any, std_range: tuple[float, float]) -> Any:
    """Add N(0, std^2) noise to every voxel; one ``std`` per crop, uniform in ``std_range``."""
    import tensorflow as tf

    draw, noise = _split(seed, 2)
    std = uniform(draw, [], *std_range)
    return image + std * tf.random.stateless_normal(tf.shape(image), seed=noise)


def gaussian_blur(image: Any, seed: Any, sigma_range: tuple[float, float],
                  channel_probability: float) -> Any:
    """Blur each channel with ``channel_probability``: its own sigma (voxels, every axis)."""
    import tensorflow as tf

    draw, choose = _split(seed, 2)
    channels = _channels(image)
    sigma = uniform(draw, [channels], *sigma_range)
    chosen = _chosen_channels(choose, channels, channel_probability)

    def blur() -> Any:
        matrices = [gaussian_matrix(int(image.shape[axis]), sigma, sigma_range[1], "reflect")
                    for axis in _SPATIAL]
        return tf.where(chosen, separable(image, matrices), image)

    return tf.cond(tf.reduce_any(chosen), blur, lambda: image)


def multiplicative_brightness(image: Any, seed: Any, factor_range: tuple[float, float]) -> Any:
    """Multiply each channel by its own factor, uniform in ``factor_range``."""
    return image * uniform(seed, [_channels(image)], *factor_range)


def contrast(image: Any, seed: Any, factor_range: tuple[float, float]) -> Any:
    """Per channel ``(x - mean) * factor + mean``, clipped to the channel's former [min, max].

    Factors: ``around_one`` (half below 1).
    """
    import tensorflow as tf

    factor = around_one(seed, [_channels(image)], *factor_range)
    mean, low, high = channel_statistics(image, "mean", "min", "max")
    return tf.clip_by_value(image * factor + mean * (1.0 - factor), low, high)


def low_resolution(image: Any, seed: Any, zoom_range: tuple[float, float],
                   channel_probability: float) -> Any:
    """Simulate a coarser scan: each channel with ``channel_probability`` down- and upsampled.

    One zoom per channel (uniform in ``zoom_range``), the same for all three axes
    (``low_resolution_matrix``).
    """
    import tensorflow as tf

    draw, choose = _split(seed, 2)
    channels = _channels(image)
    zoom = uniform(draw, [channels], *zoom_range)
    chosen = _chosen_channels(choose, channels, channel_probability)

    def resample() -> Any:
        matrices = [low_resolution_matrix(int(image.shape[axis]), zoom) for axis in _SPATIAL]
        return tf.where(chosen, separable(image, matrices), image)

    return tf.cond(tf.reduce_any(chosen), resample, lambda: image)


def gamma(image: Any, seed: Any, gamma_range: tuple[float, float], invert: bool) -> Any:
    """Per channel: rescale to [0, 1], raise to gamma, rescale back, restore mean and std.

    ``invert``: the same on ``-image``, negated back (nnU-Net's inverted gamma). Gammas:
    ``around_one`` (half below 1). batchgenerators augment_gamma with ``retain_stats``.
    """
    import tensorflow as tf

    values = -image if invert else image
    exponent = around_one(seed, [_channels(image)], *gamma_range)
    mean, std, low, high = channel_statistics(values, "mean", "std", "min", "max")
    span = high - low + GAMMA_EPSILON
    # x ** gamma as exp(gamma log x) (several times faster than tf.pow on the CPU; 0 -> 0).
    powered = tf.exp(exponent * tf.math.log((values - low) / span))
    # Back to the range (* span + low), then the mean and std restored (batchgenerators:
    # (y - mean(y)) / (std(y) + 1e-8) * std + mean), folded into one affine map of ``powered``.
    powered_mean, powered_std = channel_statistics(powered, "mean", "std")
    gain = span * std / (span * powered_std + 1e-8)
    if invert:
        return powered * -gain - (mean - powered_mean * gain)
    return powered * gain + (mean - powered_mean * gain)
