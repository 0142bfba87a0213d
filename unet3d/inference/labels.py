"""From a model's probabilities to the label values of the data set being segmented.

A model learns the classes of its training data set's label convention (class ``k`` is the
label value ``convention.values[k]``, e.g. BraTS 2019 class 3 = label 4). ``make_labeler``
returns the function that turns its probabilities into the label values of the data set it
segments now, which may follow another convention with the same meaning (a BraTS 2021 model
on BraTS 2023 files writes 3 for enhancing tumour, not 4): classes are matched by tissue
(``LabelConvention.translation_to``). A model with a region head (one sigmoid channel per
evaluation region) is painted back into its own labels first
(``unet3d.data.layouts.regions.region_probabilities_to_labels``), then translated the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _brats2019() -> Any:
    from unet3d.data.layouts.convention import BRATS2019

    return BRATS2019


def value_translation(source: Any, target: Any) -> np.ndarray:
    """A lookup table from ``source``'s label values to ``target``'s with the same tissue.

    Args:
        source: the model's ``LabelConvention``.
        target: the segmented data set's ``LabelConvention``.

    Returns:
        uint8 array of length ``max(source.values) + 1``: ``table[v]`` is the target value of
        the tissue that ``source`` labels ``v`` (0 for values ``source`` does not use).

    Raises:
        ConfigError: a tissue of ``source`` has no label in ``target`` (from
            ``translation_to``).
    """
    classes_to_target = np.asarray(source.translation_to(target))
    table = np.zeros(max(source.values) + 1, dtype=np.uint8)
    for index, value in enumerate(source.values):
        table[value] = classes_to_target[index]
    return table


def make_labeler(model_convention: Any = None, target_convention: Any = None,
                 head: str = "softmax",
                 threshold: float = 0.5) -> Callable[[np.ndarray], np.ndarray]:
    """The function from a model's probabilities to the target data set's label values.

    Args:
        model_convention: the ``LabelConvention`` the model was trained on (recorded with its
            run); None = BraTS 2018-2021.
        target_convention: the convention of the data set being segmented; None = the model's.
        head: ``softmax`` (probabilities ``(H, W, D, K)`` over the model's classes, argmax) or
            ``regions`` (``(H, W, D, R)`` sigmoid per evaluation region of the model's
            convention, thresholded at ``threshold`` and painted in its region order).
        threshold: the region probability above which a voxel belongs to a region.

    Returns:
        ``labeler(probabilities float32 (H, W, D, K or R)) -> uint8 (H, W, D)`` label values of
        ``target_convention``.

    Raises:
        ConfigError: a class of the model has no counterpart in the target convention (one
            line naming the tissue and both data sets).
    """
    source = model_convention if model_convention is not None else _brats2019()
    target = target_convention if target_convention is not None else source
    if head == "regions":
        from unet3d.data.layouts.regions import region_probabilities_to_labels

        values = value_translation(source, target)

        def regions_labeler(probabilities: np.ndarray) -> np.ndarray:
            own = region_probabilities_to_labels(probabilities, source, threshold=threshold)
            return values[own]

        return regions_labeler

    classes_to_target = np.asarray(source.translation_to(target), dtype=np.uint8)

    def softmax_labeler(probabilities: np.ndarray) -> np.ndarray:
        classes = np.argmax(probabilities, axis=-1)
        return classes_to_target[classes]

    return softmax_labeler
