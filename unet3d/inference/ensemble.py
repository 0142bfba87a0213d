"""How one model or an ensemble of models segments one whole volume.

``EnsemblePredictor`` is the one sliding-window code path of ``mode=predict``, of the evaluate
modes and of ``benchmark.target=predict``: it maps a normalised volume (H, W, D, C) to class
probabilities (H, W, D, K), the mean of the members' softmax outputs. The mean is taken per
window batch, inside the sliding window; since blending and flip TTA are linear, this equals the
mean of the members' whole-volume probability maps, with one accumulator instead of one per
member. ``probabilities_to_labels`` turns probabilities into BraTS labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from unet3d.data.labels import to_brats_labels

log = logging.getLogger(__name__)


def window_size(inference: Any, crop_size: Sequence[int]) -> tuple[int, int, int]:
    """Sliding-window size: ``inference.window_size`` or, when null, the training crop.

    Args:
        inference: the ``inference`` config section (``window_size``: null or 3 sides).
        crop_size: ``data.crop_size``, the 3 sides (H, W, D) of the training crops.
    """
    size = inference.get("window_size") or crop_size
    return tuple(int(side) for side in size)  # type: ignore[return-value]


class EnsemblePredictor:
    """Whole-volume sliding-window probabilities of one model or the mean of an ensemble.

    Volumes of any size work: volumes smaller than the window are padded by the sliding
    window (``unet3d.inference.sliding_window``).

    Args:
        models: one Keras model or a list of them, each mapping float32 ``[n, h, w, d, C]`` to
            softmax probabilities ``[n, h, w, d, num_classes]``.
        window_size: window sides ``(h, w, d)`` in voxels.
        num_classes: output classes ``K``.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        blend: ``"gaussian"`` or ``"constant"`` weighting of the windows.
        batch_size: windows per forward pass.
        tta: also average the 8 flips of the spatial axes.
        jit_compile: compile the forward pass with XLA.

    Raises:
        ValueError: no model.
    """

    def __init__(self, models: Any, *, window_size: Sequence[int], num_classes: int,
                 overlap: float = 0.5, blend: str = "gaussian", batch_size: int = 1,
                 tta: bool = False, jit_compile: bool = False) -> None:
        from unet3d.inference.sliding_window import make_keras_predict_fn

        members = list(models) if isinstance(models, list | tuple) else [models]
        if not members:
            raise ValueError("EnsemblePredictor needs at least one model")
        self.window_size = tuple(int(side) for side in window_size)
        self.num_classes = int(num_classes)
        self.overlap = float(overlap)
        self.blend = str(blend)
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.num_members = len(members)
        self._member_fns = [
            make_keras_predict_fn(member, jit_compile=jit_compile, window_size=self.window_size)
            for member in members
        ]

    @classmethod
    def from_config(cls, models: Any, inference: Any, *, crop_size: Sequence[int],
                    num_classes: int, jit_compile: bool = False) -> EnsemblePredictor:
        """Build from the ``inference`` config section.

        Args:
            models: one Keras model or a list of them (see the class).
            inference: ``window_size`` (null: ``crop_size``), ``overlap``, ``blend``,
                ``batch_size``, ``tta``.
            crop_size: ``data.crop_size`` (H, W, D), the default window.
            num_classes: ``model.num_classes``.
            jit_compile: ``precision.xla``.
        """
        return cls(
            models, window_size=window_size(inference, crop_size), num_classes=num_classes,
            overlap=float(inference.overlap), blend=str(inference.blend),
            batch_size=int(inference.batch_size), tta=bool(inference.tta),
            jit_compile=jit_compile,
        )

    def describe(self) -> str:
        """``window [h, w, d], overlap o, <blend> blend, batch b[, flip TTA]`` for logs."""
        return (f"window {list(self.window_size)}, overlap {self.overlap:.2f}, {self.blend} "
                f"blend, batch {self.batch_size}{', flip TTA' if self.tta else ''}")

    def predict_windows(self, batch: np.ndarray) -> np.ndarray:
        """Mean softmax of the members on a window batch.

        Args:
            batch: float32 ``[n, h, w, d, C]`` windows.

        Returns:
            float32 ``[n, h, w, d, K]`` probabilities.
        """
        total = np.array(self._member_fns[0](batch), dtype=np.float32, copy=True)
        for member_fn in self._member_fns[1:]:
            total += member_fn(batch)
        if self.num_members > 1:
            total /= np.float32(self.num_members)
        return total

    def probabilities(self, image: np.ndarray, progress: Any = None) -> np.ndarray:
        """Class probabilities of a whole volume.

        Args:
            image: float32 ``(H, W, D, C)``, normalised as for training.
            progress: optional ``progress(done_windows, total_windows)`` callback.

        Returns:
            float32 ``(H, W, D, K)``: at every voxel the blended mean over windows and members.
        """
        from unet3d.inference.sliding_window import sliding_window_predict

        return sliding_window_predict(
            self.predict_windows, image, self.window_size, self.num_classes,
            overlap=self.overlap, blend=self.blend, batch_size=self.batch_size, tta=self.tta,
            progress=progress,
        )


def probabilities_to_labels(probabilities: np.ndarray) -> np.ndarray:
    """Argmax over classes, mapped to BraTS labels.

    Args:
        probabilities: ``(..., K)`` class probabilities (training classes 0..3).

    Returns:
        uint8 ``(...)`` labels in {0, 1, 2, 4} (class 3 becomes label 4).
    """
    classes = np.argmax(probabilities, axis=-1).astype(np.uint8)
    return to_brats_labels(classes)
