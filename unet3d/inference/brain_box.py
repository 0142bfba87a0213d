"""Sliding-window inference on a case's brain box only (``inference.crop_to_brain``).

The box and the pasting back into the full grid are ``unet3d.data.crop`` (nnU-Net's
``crop_to_nonzero``); the same box is what preprocessing stores in the records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from unet3d.data.crop import _three, crop_to_box, nonzero_box, paste_to_full

log = logging.getLogger(__name__)

#: ``predict_volume(image (h, w, d, C)) -> probabilities (h, w, d, K)`` on a cropped volume.
VolumePredictFn = Callable[[np.ndarray], np.ndarray]


def background_probabilities(full_shape: Sequence[int], num_classes: int,
                             background_class: int | None = 0) -> np.ndarray:
    """float32 ``(H, W, D, K)``: ``background_class`` with probability 1 everywhere (all 0
    when it is None)."""
    probabilities = np.zeros((*_three(full_shape, "full_shape"), int(num_classes)),
                             dtype=np.float32)
    if background_class is not None:
        probabilities[..., int(background_class)] = 1.0
    return probabilities


def predict_in_brain_box(predict_volume: VolumePredictFn, image: np.ndarray,
                         num_classes: int, background_class: int | None = 0,
                         margin: int = 0) -> np.ndarray:
    """Probabilities of a whole volume computed on its non-zero box only.

    Args:
        predict_volume: maps a float32 ``(h, w, d, C)`` volume to float32 probabilities
            ``(h, w, d, K)`` (e.g. the sliding window; it pads a box smaller than a window).
        image: float32 ``(H, W, D, C)``, normalised (background exactly 0).
        num_classes: ``K``.
        background_class: see ``paste_to_full`` (None for region outputs).
        margin: voxels of (zero) context kept around the box on every side, clipped to the
            grid: windows then see more background, closer to uncropped inference.

    Returns:
        float32 ``(H, W, D, K)``: the box's probabilities, background outside. An
        all-zero image is background everywhere (``predict_volume`` is not called).

    Raises:
        ValueError: ``image`` is not 4-D, or a negative margin.
    """
    box = nonzero_box(image).expanded(margin)
    if box.is_empty:
        log.warning("crop to brain: the volume %s is zero everywhere; predicting background",
                    list(box.full_shape))
        return background_probabilities(box.full_shape, num_classes, background_class)
    log.debug("crop to brain: box %s:%s (%s of %s)", list(box.start), list(box.stop),
              list(box.shape), list(box.full_shape))
    cropped = np.ascontiguousarray(crop_to_box(image, box))
    return paste_to_full(predict_volume(cropped), box, background_class=background_class)
