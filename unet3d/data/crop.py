"""Crop a case to its brain (non-zero) bounding box and paste results back into the full grid.

Preprocessing stores the box of every case (``crop_record``); inference runs its sliding window
on the box (``unet3d.inference.brain_box``).

nnU-Net's ``crop_to_nonzero``: the box is the smallest axis-aligned box holding every voxel
where any modality is non-zero. In skull-stripped BraTS data (and after this framework's
normalisation, which keeps background voxels at exactly 0) everything outside the box is
background, so a model need not see it: inference runs on the box and the probabilities are
pasted back with background (class 0 probability 1) outside. The same box, recorded with the
original grid shape, lets training records store only the box (``CropBox.to_record`` /
``CropBox.from_record``) and predictions from such records return to the original grid
(``paste_to_full``).

Box convention: ``start`` (inclusive) and ``stop`` (exclusive) voxel indices per spatial axis
(H, W, D), i.e. the slices ``start[a]:stop[a]`` of NumPy; ``full_shape`` the original (H, W, D).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

def _three(values: Sequence[int], name: str) -> tuple[int, int, int]:
    sides = tuple(int(value) for value in values)
    if len(sides) != 3:
        raise ValueError(f"{name} must have 3 entries (H, W, D), got {list(values)}")
    return sides  # type: ignore[return-value]


@dataclass(frozen=True)
class CropBox:
    """A spatial box inside a grid.

    Attributes:
        start: first voxel index per axis (H, W, D), inclusive.
        stop: end index per axis, exclusive (``stop - start`` is the box's shape).
        full_shape: the original grid (H, W, D) the box lies in.

    Raises:
        ValueError: not 3 axes, or ``0 <= start <= stop <= full_shape`` does not hold.
    """

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    full_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        start = _three(self.start, "crop box start")
        stop = _three(self.stop, "crop box stop")
        full = _three(self.full_shape, "crop box full_shape")
        if any(not 0 <= lo <= hi <= side for lo, hi, side in zip(start, stop, full, strict=True)):
            raise ValueError(f"crop box start {list(start)} / stop {list(stop)} does not lie in "
                             f"the grid {list(full)}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "full_shape", full)

    @classmethod
    def full(cls, shape: Sequence[int]) -> CropBox:
        """The box covering the whole grid ``shape`` (H, W, D)."""
        sides = _three(shape, "shape")
        return cls((0, 0, 0), sides, sides)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The box's sides (H, W, D) in voxels."""
        return tuple(hi - lo for lo, hi in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """The box as NumPy slices of the 3 spatial axes."""
        return tuple(slice(lo, hi) for lo, hi in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def is_empty(self) -> bool:
        """True when the box holds no voxel (an all-zero case)."""
        return any(side == 0 for side in self.shape)

    @property
    def is_full(self) -> bool:
        """True when the box is the whole grid."""
        return self.start == (0, 0, 0) and self.stop == self.full_shape

    def expanded(self, margin: int) -> CropBox:
        """The box grown by ``margin`` voxels on every side, clipped to the grid.

        Raises:
            ValueError: a negative margin.
        """
        if int(margin) < 0:
            raise ValueError(f"crop margin must be >= 0, got {margin}")
        if self.is_empty or int(margin) == 0:
            return self
        return CropBox(tuple(max(0, lo - int(margin)) for lo in self.start),
                       tuple(min(side, hi + int(margin))
                             for hi, side in zip(self.stop, self.full_shape, strict=True)),
                       self.full_shape)

    def to_record(self) -> dict[str, list[int]]:
        """``{"crop_start", "crop_stop", "full_shape"}`` as lists of ints (records, manifests)."""
        return {"crop_start": list(self.start), "crop_stop": list(self.stop),
                "full_shape": list(self.full_shape)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], shape: Sequence[int]) -> CropBox:
        """The box a record stores, or the whole grid for records written without one.

        Args:
            record: a mapping with ``crop_start``, ``crop_stop``, ``full_shape`` (3 ints each;
                absent or negative entries mean "no box recorded").
            shape: the stored (cropped) volume's sides (H, W, D).

        Raises:
            ValueError: the recorded box does not match ``shape`` or lies outside its grid.
        """
        sides = _three(shape, "shape")
        values = [record.get(key) for key in ("crop_start", "crop_stop", "full_shape")]
        if any(value is None for value in values) or any(
            int(entry) < 0 for value in values for entry in np.ravel(value)
        ):
            return cls.full(sides)
        box = cls(*(tuple(int(entry) for entry in np.ravel(value)) for value in values))
        if box.shape != sides:
            raise ValueError(f"recorded crop box {list(box.start)}:{list(box.stop)} has shape "
                             f"{list(box.shape)}, the stored volume {list(sides)}")
        return box


def nonzero_box(image: np.ndarray) -> CropBox:
    """The bounding box of the voxels where any channel is non-zero (nnU-Net crop_to_nonzero).

    Args:
        image: ``(H, W, D, C)`` any dtype (raw, uint8 or normalised: background is exactly 0).

    Returns:
        The box; an all-zero image gives an empty box (``is_empty``) at the origin.

    Raises:
        ValueError: ``image`` is not 4-D.
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (H, W, D, C), got shape {image.shape}")
    full_shape = image.shape[:3]
    mask = np.any(image != 0, axis=-1)
    start, stop = [], []
    for axis in range(3):
        others = tuple(other for other in range(3) if other != axis)
        present = np.flatnonzero(np.any(mask, axis=others))
        if present.size == 0:
            return CropBox((0, 0, 0), (0, 0, 0), full_shape)
        start.append(int(present[0]))
        stop.append(int(present[-1]) + 1)
    return CropBox(tuple(start), tuple(stop), full_shape)  # type: ignore[arg-type]


def crop_to_box(array: np.ndarray, box: CropBox) -> np.ndarray:
    """The box's part of ``array`` (a view): spatial axes first, e.g. (H, W, D[, C]).

    Raises:
        ValueError: ``array``'s spatial shape is not the box's ``full_shape``.
    """
    if tuple(array.shape[:3]) != box.full_shape:
        raise ValueError(f"array of spatial shape {list(array.shape[:3])} does not match the "
                         f"crop box's grid {list(box.full_shape)}")
    return array[box.slices]


def paste_to_full(values: np.ndarray, box: CropBox,
                  full_shape: Sequence[int] | None = None,
                  background_class: int | None = 0) -> np.ndarray:
    """Put a box's probabilities or labels back into the original grid.

    Outside the box: background, i.e. class ``background_class`` with probability 1 for
    probabilities (all channels 0 when it is None: one sigmoid per region, no region
    present), label 0 for labels.

    Args:
        values: probabilities ``(h, w, d, K)`` (float) or labels ``(h, w, d)`` (any integer
            dtype), ``(h, w, d)`` equal to ``box.shape``.
        box: where ``values`` lie.
        full_shape: the original grid (H, W, D); default ``box.full_shape`` (must agree).
        background_class: the softmax channel of the background (0), or None for region
            (sigmoid) outputs.

    Returns:
        ``(H, W, D, K)`` or ``(H, W, D)`` of ``values``' dtype.

    Raises:
        ValueError: ``values`` is not 3-D or 4-D, its shape is not the box's, or
            ``full_shape`` differs from the box's grid.
    """
    values = np.asarray(values)
    grid = box.full_shape if full_shape is None else _three(full_shape, "full_shape")
    if grid != box.full_shape:
        raise ValueError(f"full_shape {list(grid)} differs from the crop box's grid "
                         f"{list(box.full_shape)}")
    if values.ndim not in (3, 4) or tuple(values.shape[:3]) != box.shape:
        raise ValueError(f"values of shape {list(values.shape)} do not fill the crop box "
                         f"{list(box.shape)} (expected (h, w, d) labels or (h, w, d, K) "
                         "probabilities)")
    if box.is_full:
        return values
    full = np.zeros((*grid, *values.shape[3:]), dtype=values.dtype)
    if values.ndim == 4 and background_class is not None:
        full[..., int(background_class)] = 1
    full[box.slices] = values
    return full


def crop_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Crop a preprocessed case (``unet3d.data.preprocess.preprocess_case``) to its brain box.

    The box holds every voxel where any modality of ``record["image"]`` is non-zero and every
    labelled (class > 0) voxel, so no reference voxel is lost. The per-modality ``mean`` and
    ``std`` (over voxels > 0) are unchanged: only zeros are cut away. An all-zero case keeps
    its whole grid.

    Args:
        record: ``image`` uint8 ``(H, W, D, 4)``, ``label`` uint8 ``(H, W, D)`` or None, and
            the other preprocessed keys (kept as they are).

    Returns:
        A new dict: ``image`` and ``label`` cropped (contiguous copies) and ``crop_box`` the
        ``CropBox`` in the original grid.

    Raises:
        ValueError: ``image`` is not 4-D or ``label``'s shape differs from it.
    """
    image = np.asarray(record["image"])
    label = record.get("label")
    box = nonzero_box(image)
    if label is not None:
        label = np.asarray(label)
        if label.shape != image.shape[:3]:
            raise ValueError(f"label shape {list(label.shape)} differs from image "
                             f"{list(image.shape[:3])}")
        labelled = nonzero_box(label[..., None])
        if not labelled.is_empty:
            box = labelled if box.is_empty else CropBox(
                tuple(min(a, b) for a, b in zip(box.start, labelled.start, strict=True)),
                tuple(max(a, b) for a, b in zip(box.stop, labelled.stop, strict=True)),
                box.full_shape,
            )
    if box.is_empty:
        box = CropBox.full(image.shape[:3])
    cropped = dict(record)
    cropped["image"] = np.ascontiguousarray(image[box.slices])
    cropped["label"] = None if label is None else np.ascontiguousarray(label[box.slices])
    cropped["crop_box"] = box
    return cropped
