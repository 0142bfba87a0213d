"""How one model or an ensemble of models segments one whole volume.

``EnsemblePredictor`` is the one sliding-window code path of ``mode=predict``, of the evaluate
modes and of ``benchmark.target=predict``: it maps a normalised volume (H, W, D, C) to class
probabilities (H, W, D, K), the mean of the members' softmax outputs. The mean is taken per
window batch, inside the sliding window; since blending and flip TTA are linear, this equals the
mean of the members' whole-volume probability maps, with one accumulator instead of one per
member.
(``unet3d.inference.labels`` turns probabilities into a data set's labels.)

With ``crop_to_brain`` (``inference.crop_to_brain``) the sliding window runs on the case's
non-zero bounding box only and the probabilities are pasted back with background outside
(``unet3d.data.crop``, nnU-Net's crop_to_nonzero): a BraTS brain fills about a third of
its 240 x 240 x 155 grid, so most windows of the whole grid hold background only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

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
    window (``unet3d.inference.sliding_window``). Every argument is required: a job builds it
    with ``from_config`` (the values of ``conf/inference/``, checked by
    :func:`unet3d.config.validate`).

    Args:
        models: one Keras model or engine (``unet3d.inference.engines``: anything with an
            ``engine`` attribute runs as is) or a list of them, each mapping float32
            ``[n, h, w, d, C]`` to probabilities ``[n, h, w, d, num_classes]``.
        window_size: window sides ``(h, w, d)`` in voxels.
        num_classes: output classes ``K``.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        blend: ``"gaussian"`` or ``"constant"`` weighting of the windows.
        batch_size: windows per forward pass.
        tta: also average the 8 flips of the spatial axes.
        jit_compile: compile the forward pass with XLA.
        crop_to_brain: run the sliding window on the non-zero bounding box of the volume
            only; outside it the probabilities are background.
        background_class: the softmax channel that is background outside the box (0), or
            None for one-sigmoid-per-region outputs (all channels 0 outside).
        crop_margin: voxels kept around the non-zero box on every side (clipped to the grid).
        single_window: one window over the whole (cropped) volume, its sides rounded up to
            ``input_divisor`` (``window_size`` is then unused).
        input_divisor: the network's input divisor (``single_window``).

    Raises:
        ValueError: no model.
    """

    def __init__(self, models: Any, *, window_size: Sequence[int], num_classes: int,
                 overlap: float, blend: str, batch_size: int, tta: bool, jit_compile: bool,
                 crop_to_brain: bool, background_class: int | None, crop_margin: int,
                 single_window: bool, input_divisor: int) -> None:
        from unet3d.inference.engines import KerasEngine

        members = list(models) if isinstance(models, list | tuple) else [models]
        if not members:
            raise ValueError("EnsemblePredictor needs at least one model")
        self.window_size = tuple(int(side) for side in window_size)
        self.num_classes = int(num_classes)
        self.overlap = float(overlap)
        self.blend = str(blend)
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.crop_to_brain = bool(crop_to_brain)
        self.background_class = background_class
        self.crop_margin = int(crop_margin)
        self.single_window = bool(single_window)
        self.input_divisor = int(input_divisor)
        self.num_members = len(members)
        # A Keras model is traced once for the window shape (any shape for a single window).
        self._member_fns = [
            member if hasattr(member, "engine") else
            KerasEngine(member, None if self.single_window else self.window_size, jit_compile)
            for member in members
        ]
        self.engine = str(getattr(self._member_fns[0], "engine", "tensorflow"))

    @classmethod
    def from_config(cls, models: Any, inference: Any, *, crop_size: Sequence[int],
                    num_classes: int, jit_compile: bool, background_class: int | None,
                    input_divisor: int) -> EnsemblePredictor:
        """Build from the ``inference`` config group (``conf/inference/default.yaml``).

        Args:
            models: one Keras model or a list of them (see the class).
            inference: ``window_size`` (null: ``crop_size``), ``overlap``, ``blend``,
                ``batch_size``, ``tta``, ``crop_to_brain``, ``crop_margin``.
            crop_size: ``data.crop_size`` (H, W, D), the default window.
            num_classes: the members' output channels.
            jit_compile: ``precision.xla``.
            background_class: see the class.
            input_divisor: the network's input divisor (``inference.single_window``).
        """
        return cls(
            models, window_size=window_size(inference, crop_size), num_classes=num_classes,
            overlap=float(inference.overlap), blend=str(inference.blend),
            batch_size=int(inference.batch_size), tta=bool(inference.tta),
            jit_compile=jit_compile, crop_to_brain=bool(inference.crop_to_brain),
            background_class=background_class, crop_margin=int(inference.crop_margin),
            single_window=bool(inference.single_window), input_divisor=input_divisor,
        )

    def describe(self) -> str:
        """``window [h, w, d], overlap o, <blend> blend, batch b[, flip TTA]`` for logs."""
        crop = ""
        if self.crop_to_brain:
            crop = ", cropped to the brain" + (f" + {self.crop_margin} voxels"
                                               if self.crop_margin else "")
        engine = getattr(self._member_fns[0], "describe", None)
        shown = f", engine {engine()}" if engine is not None else ""
        if self.single_window:
            return (f"one window over the volume (sides rounded up to {self.input_divisor})"
                    f"{', flip TTA' if self.tta else ''}{crop}{shown}")
        return (f"window {list(self.window_size)}, overlap {self.overlap:.2f}, {self.blend} "
                f"blend, batch {self.batch_size}{', flip TTA' if self.tta else ''}{crop}{shown}")

    def trace(self) -> None:
        """Prepare every member for the window shape now (trace the Keras forward pass, compile
        OpenVINO; no model execution), e.g. while the first case is being read. With a single
        window the shape is the case's: nothing is prepared."""
        if self.single_window:
            return
        for member_fn in self._member_fns:
            prepare = getattr(member_fn, "prepare", None)
            if prepare is not None:
                prepare(self.window_size)

    def predict_windows(self, batch: np.ndarray) -> np.ndarray:
        """Mean softmax of the members on a window batch.

        Args:
            batch: float32 ``[n, h, w, d, C]`` windows.

        Returns:
            float32 ``[n, h, w, d, K]`` probabilities (one member: its output as is, no copy).
        """
        first = np.asarray(self._member_fns[0](batch), dtype=np.float32)
        if self.num_members == 1:
            return first
        total = np.array(first, copy=True)
        for member_fn in self._member_fns[1:]:
            total += member_fn(batch)
        total /= np.float32(self.num_members)
        return total

    def probabilities(self, image: np.ndarray, progress: Any = None) -> np.ndarray:
        """Class probabilities of a whole volume.

        Args:
            image: float32 ``(H, W, D, C)``, normalised as for training.
            progress: optional ``progress(done_windows, total_windows)`` callback.

        Returns:
            float32 ``(H, W, D, K)``: at every voxel the blended mean over windows and members
            (with ``crop_to_brain``: background outside the non-zero box).
        """
        from unet3d.inference.brain_box import predict_in_brain_box
        from unet3d.inference.sliding_window import sliding_window_predict

        def whole(volume: np.ndarray) -> np.ndarray:
            window = self.window_size
            if self.single_window:
                step = self.input_divisor
                window = tuple(-(-int(side) // step) * step for side in volume.shape[:3])
            return sliding_window_predict(
                self.predict_windows, volume, window, self.num_classes,
                overlap=self.overlap, blend=self.blend, batch_size=self.batch_size,
                tta=self.tta, progress=progress,
            )

        if not self.crop_to_brain:
            return whole(image)
        return predict_in_brain_box(whole, np.asarray(image, dtype=np.float32),
                                    self.num_classes, self.background_class,
                                    margin=self.crop_margin)
