"""BraTS label and modality conventions shared by every stage of the pipeline."""

import numpy as np

#: Modality order of the four input channels (the reference's order).
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: Label values on disk in BraTS 2019 (there is no label 3).
BRATS_LABELS: tuple[int, ...] = (0, 1, 2, 4)
#: Number of training classes (label 4 becomes class 3).
NUM_CLASSES = 4


def to_training_classes(label: np.ndarray) -> np.ndarray:
    """Map BraTS labels {0, 1, 2, 4} to training classes {0, 1, 2, 3}."""
    classes = np.asarray(label).astype(np.uint8, copy=True)
    classes[classes == 4] = 3
    return classes


def to_brats_labels(classes: np.ndarray) -> np.ndarray:
    """Map training classes {0, 1, 2, 3} back to BraTS labels {0, 1, 2, 4}."""
    labels = np.asarray(classes).astype(np.uint8, copy=True)
    labels[labels == 3] = 4
    return labels
