"""Components of a user's own, outside the unet3d package: the tested examples of
docs/contracts.md (conf/*/ beside this file names them with ``_target_``).

``tiny_net``, ``WeightedCrossEntropy``, ``step_schedule`` and ``CopiedCases`` meet their
contracts; the ``broken_*`` ones each break one rule, for the contract-error tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf


def tiny_net(name: str = "tiny_net", in_channels: int = 4, num_classes: int = 4,
             width: int = 4) -> keras.Model:
    """Two 3x3x3 convolutions and a softmax: float32 [B, H, W, D, C] -> [B, H, W, D, K]."""
    inputs = keras.Input(shape=(None, None, None, in_channels), name="image")
    features = keras.layers.Conv3D(width, 3, padding="same", activation="relu")(inputs)
    logits = keras.layers.Conv3D(num_classes, 1)(features)
    outputs = keras.layers.Activation("softmax", dtype="float32")(logits)
    return keras.Model(inputs, outputs, name=name)


class TinySubclassNet(keras.Model):
    """The same network as a subclassed model (built by the contract check's probe call)."""

    def __init__(self, in_channels: int = 4, num_classes: int = 4, width: int = 4,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        self.features = keras.layers.Conv3D(width, 3, padding="same", activation="relu")
        self.logits = keras.layers.Conv3D(num_classes, 1)
        self.softmax = keras.layers.Activation("softmax", dtype="float32")

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.softmax(self.logits(self.features(inputs)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "in_channels": self.in_channels,
                "num_classes": self.num_classes, "width": self.width}


class WeightedCrossEntropy:
    """Class-weighted voxel cross-entropy, per sample: the loss contract's tested example."""

    def __init__(self, num_classes: int = 4, weights: Sequence[float] | None = None) -> None:
        self.num_classes = num_classes
        self.weights = [1.0] * num_classes if weights is None else [float(w) for w in weights]

    def __call__(self, labels: Any, probabilities: Any) -> tuple[Any, dict[str, Any]]:
        one_hot = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=tf.float32)
        log_p = tf.math.log(tf.clip_by_value(tf.cast(probabilities, tf.float32), 1e-7, 1.0))
        weighted = -tf.reduce_sum(one_hot * log_p * tf.constant(self.weights), axis=-1)
        total = tf.reduce_mean(weighted, axis=[1, 2, 3])
        return total, {"weighted_ce": total}

    def get_config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "weights": self.weights}


def step_schedule(learning_rate: float, total_steps: int) -> Any:
    """``learning_rate``, divided by 10 for the second half of the run."""
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [max(total_steps // 2, 1)], [learning_rate, learning_rate / 10])


class CopiedCases:
    """A data set: the first ``num_cases`` case folders of ``source_dir``, copied once."""

    def __init__(self, source_dir: str, num_cases: int) -> None:
        self.source_dir, self.num_cases = Path(source_dir), num_cases

    def cases_dir(self, data_dir: Path) -> Path:
        folder = Path(data_dir) / f"copied-{self.num_cases}"
        for case in sorted(self.source_dir.iterdir())[: self.num_cases]:
            if not (folder / case.name).exists():
                shutil.copytree(case, folder / case.name)
        return folder


# ---- components that break their contract --------------------------------------------------


def broken_channels_net(in_channels: int = 4, num_classes: int = 4, **kwargs: Any) -> Any:
    """Three output channels, whatever ``num_classes`` says."""
    return tiny_net(in_channels=in_channels, num_classes=3)


def broken_rank_net(in_channels: int = 4, num_classes: int = 4, **kwargs: Any) -> Any:
    """One probability vector per volume: output rank 2."""
    inputs = keras.Input(shape=(None, None, None, in_channels))
    pooled = keras.layers.GlobalAveragePooling3D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(pooled))


def broken_not_a_model(**kwargs: Any) -> Any:
    """A layer, not a model."""
    return keras.layers.Dense(4)


def broken_logits_net(in_channels: int = 4, num_classes: int = 4, **kwargs: Any) -> Any:
    """A subclassed model without the softmax."""
    model = TinySubclassNet(in_channels, num_classes)
    model.softmax = keras.layers.Activation("linear", dtype="float32")
    return model


def broken_failing_net(**kwargs: Any) -> Any:
    """Fails when it is called."""
    raise RuntimeError("out of widgets")


class BrokenScalarLoss(WeightedCrossEntropy):
    """Reduces over the batch: a scalar instead of one value per sample."""

    def __call__(self, labels: Any, probabilities: Any) -> tuple[Any, dict[str, Any]]:
        total, parts = super().__call__(labels, probabilities)
        return tf.reduce_mean(total), {}


class BrokenArgmaxLoss(WeightedCrossEntropy):
    """Scores the argmax: no gradient reaches the probabilities."""

    def __call__(self, labels: Any, probabilities: Any) -> tuple[Any, dict[str, Any]]:
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        wrong = tf.cast(tf.not_equal(predicted, tf.cast(labels, tf.int32)), tf.float32)
        return tf.reduce_mean(wrong, axis=[1, 2, 3]), {}


def broken_schedule(learning_rate: float, total_steps: int) -> Any:
    """A negative rate."""
    return -learning_rate


class BrokenNoFolder:
    """A data set without ``cases_dir``."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
