"""Output heads of a segmentation network: class softmax or one sigmoid per evaluation region.

``model.head`` chooses what the network's last layer predicts:

- ``softmax`` (the default and the reference's head): ``num_classes`` channels, a softmax over
  the training classes (class ``k`` is disk label ``convention.values[k]``);
- ``regions`` (nnU-Net's region-based training, Isensee et al., "nnU-Net for Brain Tumor
  Segmentation", BrainLes 2020): one sigmoid channel per painted evaluation region of the data
  set, in the convention's ``region_order`` (BraTS: WT, TC, ET), trained with
  ``unet3d.training.region_loss.RegionLoss`` and turned back into disk labels by
  ``unet3d.data.layouts.regions.region_probabilities_to_labels``.

Either head's activation computes in float32 (``dtype="float32"``), so mixed precision still
returns float32 probabilities. TensorFlow / Keras are imported inside the functions. The rules
between the head, the loss and the data set are config checks: ``unet3d.config.head_problem``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unet3d.config import model_head, model_regions

#: Activation of each head (``unet3d.config.HEADS``).
HEAD_ACTIVATIONS = {"softmax": "softmax", "regions": "sigmoid"}


def output_channels(model_cfg: Mapping[str, Any]) -> int:
    """Channels of a ``model`` group's output: ``num_classes`` (softmax) or ``num_regions``.

    Args:
        model_cfg: the ``model`` group (``num_classes``; ``head`` and ``num_regions`` optional,
            see :func:`unet3d.config.model_head` and :func:`unet3d.config.model_regions`),
            checked by :func:`unet3d.config.validate`.
    """
    if model_head(model_cfg) == "softmax":
        return int(model_cfg["num_classes"])
    return model_regions(model_cfg)


def head_layers(features: Any, head: str, channels: int, kernel_size: int = 1,
                conv_name: str = "head_conv", activation_name: str = "probabilities") -> Any:
    """Append a head to a feature tensor: Conv3D (with bias) then the float32 activation.

    Args:
        features: a symbolic ``[B, h, w, d, F]`` Keras tensor.
        head: one of ``unet3d.config.HEADS``.
        channels: output channels (classes or regions).
        kernel_size: kernel of the convolution (``same`` padding).
        conv_name: name of the convolution layer; activation_name: of the activation layer.

    Returns:
        The float32 probabilities ``[B, h, w, d, channels]``.
    """
    import keras

    activation = HEAD_ACTIVATIONS[head]
    logits = keras.layers.Conv3D(channels, kernel_size=kernel_size, padding="same",
                                 name=conv_name)(features)
    return keras.layers.Activation(activation, dtype="float32", name=activation_name)(logits)
