"""Spatial transforms of nnU-Net's augmentation: a training crop resampled from its whole volume.

batchgenerators' SpatialTransform (as nnU-Net uses it): the crop's voxel grid, centred on the
crop centre, is displaced by an elastic field, rotated, scaled, and moved to the crop's centre
in the cached volume; the image is sampled there trilinearly (``order_data=3`` in nnU-Net v1,
linear in v2), the label at the nearest voxel (``order_seg=0``: label values stay exactly the
stored ones). Points outside the volume read 0 (``border_mode constant``, cval 0, for both).
Since the whole cached volume (the case's brain box) is sampled, a rotated crop has no zero
corners inside the brain.

Coordinates are voxel indices of the volume ``(H, W, D)``; angles radians here (degrees in
``conf/``); the displacement is in voxels. TensorFlow has no 3D affine resampling op: it is
written with ``tf.gather`` of the 8 corners of each point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unet3d.data.augment.intensity import gaussian_matrix, separable


def rotation_matrix(angles: Any) -> Any:
    """float32 ``(3, 3)``: rotations about axes 0, 1 and 2 by ``angles`` (radians, float32 [3]).

    batchgenerators' rotate_coords_3d: ``R = Rx(a0) @ Ry(a1) @ Rz(a2)``, applied to row vectors
    (``coords @ R``).
    """
    import tensorflow as tf

    cos, sin = tf.cos(angles), tf.sin(angles)
    one, zero = tf.ones([], tf.float32), tf.zeros([], tf.float32)
    about_0 = tf.stack([[one, zero, zero], [zero, cos[0], -sin[0]], [zero, sin[0], cos[0]]])
    about_1 = tf.stack([[cos[1], zero, sin[1]], [zero, one, zero], [-sin[1], zero, cos[1]]])
    about_2 = tf.stack([[cos[2], -sin[2], zero], [sin[2], cos[2], zero], [zero, zero, one]])
    return about_0 @ about_1 @ about_2


def centred_grid(crop_size: Sequence[int]) -> np.ndarray:
    """float32 ``(h, w, d, 3)``: every crop voxel's index minus the crop centre ``(n - 1) / 2``."""
    axes = [np.arange(side, dtype=np.float32) - (side - 1) / 2.0 for side in crop_size]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def elastic_displacement(crop_size: Sequence[int], alpha: Any, sigma: Any, max_sigma: float,
                         seed: Any) -> Any:
    """float32 ``(h, w, d, 3)`` displacements (voxels): ``alpha * G_sigma * U(-1, 1)`` per axis.

    batchgenerators' elastic_deform_coordinates: uniform(-1, 1) noise on the crop grid,
    filtered by a Gaussian of ``sigma`` voxels with zeros outside (scipy ``mode="constant"``),
    times ``alpha``; the same filter for the three components.

    Args:
        crop_size: ``(h, w, d)``.
        alpha, sigma: float32 scalars (voxels), ``sigma > 0``; ``max_sigma`` bounds ``sigma``.
        seed: stateless seed ``[2]``.
    """
    import tensorflow as tf

    noise = tf.random.stateless_uniform([*crop_size, 3], seed=seed, minval=-1.0, maxval=1.0)
    sigma = tf.reshape(sigma, [1])
    matrices = [gaussian_matrix(int(side), sigma, max_sigma, "constant")[0] for side in crop_size]
    return alpha * separable(noise, matrices)


def sampling_points(grid: Any, centre: Any, matrix: Any, displacement: Any = None) -> Any:
    """float32 ``(h, w, d, 3)`` volume coordinates: ``(grid + displacement) @ matrix + centre``.

    batchgenerators' order: elastic displacement, then rotation, then scaling (both folded into
    ``matrix``, e.g. ``rotation_matrix(angles) * scale``), then the crop centre.
    """
    import tensorflow as tf

    points = grid if displacement is None else grid + displacement
    return tf.einsum("hwdi,ij->hwdj", points, matrix) + centre


def resample(image: Any, label: Any, points: Any, scale: Any, offset: Any) -> tuple[Any, Any]:
    """Sample a crop at ``points``: the z-scored image trilinearly, the label at the nearest voxel.

    The image is read as the cache holds it (uint8) and z-scored on the way: a voxel ``x > 0``
    is ``x * scale + offset``, the others 0 (``unet3d.data.preprocess.normalize``). Trilinear
    interpolation of that volume is ``scale * sum(w x) + offset * sum(w [x > 0])`` over the 8
    corners (``w``: the trilinear weights), so the 8 gathered values give it exactly; an
    integer point returns the voxel's own value. Outside the volume: 0 (image and label).

    Args:
        image: uint8 ``(H, W, D, C)``, ``C <= 4``; label: uint8 ``(H, W, D)``.
        points: float32 ``(h, w, d, 3)`` voxel coordinates in the volume.
        scale, offset: float32 ``(C,)``, the z-score of each channel.

    Returns:
        ``(float32 (h, w, d, C), uint8 (h, w, d))``.

    Raises:
        ValueError: more than 4 channels.
    """
    import tensorflow as tf

    shape = tf.shape(label)
    crop_shape = tf.shape(points)[:3]
    channels = int(image.shape[-1])
    if channels > 4:
        raise ValueError(f"resample reads at most 4 uint8 channels, got {channels}")
    points = tf.reshape(points, [-1, 3])

    nearest = tf.cast(tf.floor(points + 0.5), tf.int32)
    inside = tf.reduce_all((nearest >= 0) & (nearest < shape), axis=-1)
    flat = (nearest[:, 0] * shape[1] + nearest[:, 1]) * shape[2] + nearest[:, 2]
    labels = tf.where(inside, tf.gather(tf.reshape(label, [-1]), tf.where(inside, flat, 0)),
                      tf.zeros([], label.dtype))

    # The 4 uint8 channels of a voxel gathered as one 32-bit word (3x faster than rows of 4).
    words = image if channels == 4 else tf.pad(image, [[0, 0]] * 3 + [[0, 4 - channels]])
    words = tf.reshape(tf.bitcast(tf.reshape(words, [-1, 4]), tf.int32), [-1])
    lower = tf.floor(points)
    fraction = points - lower
    lower = tf.cast(lower, tf.int32)
    # Per axis, the two neighbours (clamped: a neighbour outside the volume gets weight 0).
    sides = []
    for axis in range(3):
        near, far = lower[:, axis], lower[:, axis] + 1
        size = shape[axis]
        sides.append([
            (tf.clip_by_value(index, 0, size - 1),
             tf.where((index >= 0) & (index < size), weight, 0.0))
            for index, weight in ((near, 1.0 - fraction[:, axis]), (far, fraction[:, axis]))
        ])
    intensity = foreground = None
    for first, first_weight in sides[0]:
        for second, second_weight in sides[1]:
            row = (first * shape[1] + second) * shape[2]
            row_weight = first_weight * second_weight
            for third, third_weight in sides[2]:
                weight = (row_weight * third_weight)[:, None]
                values = tf.cast(tf.bitcast(tf.gather(words, row + third), tf.uint8), tf.float32)
                weighted, mask = weight * values, weight * tf.minimum(values, 1.0)
                intensity = weighted if intensity is None else intensity + weighted
                foreground = mask if foreground is None else foreground + mask
    normalised = intensity[:, :channels] * scale + foreground[:, :channels] * offset
    return (tf.reshape(normalised, tf.concat([crop_shape, [channels]], 0)),
            tf.reshape(labels, crop_shape))
