"""Output heads of a segmentation network: class softmax or one sigmoid per evaluation region.

``model.head`` chooses what the network's last layer predicts:

- ``softmax`` (the default and the reference's head): ``num_classes`` channels, a softmax over
  the training classes (class ``k`` is disk label ``convention.values[k]``);
- ``regions`` (nnU-Net's region-based training, Isensee et al., "nnU-Net for Brain Tumor
  Segmentation", BrainLes 2020): one sigmoid channel per painted evaluation region of the data
  set, in the convention's ``region_order`` (BraTS: WT, TC, ET), trained with
  ``unet3d.training.region_loss.RegionLoss`` and turned back into disk labels by
  ``unet3d.data.regions.region_probabilities_to_labels``.

Either head's activation computes in float32 (``dtype="float32"``), so mixed precision still
returns float32 probabilities. TensorFlow / Keras are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unet3d.config import HEADS, REGION_LOSS_TARGET, SEGMENTATION_LOSS_TARGET

#: Activation of each head (``unet3d.config.HEADS``).
HEAD_ACTIVATIONS = {"softmax": "softmax", "regions": "sigmoid"}
#: ``model.num_regions`` when a model group has none: BraTS's WT, TC and ET.
DEFAULT_NUM_REGIONS = 3


def check_head(head: Any) -> str:
    """Return ``head`` when it is one of ``HEADS``.

    Raises:
        ValueError: another value (``model.head: must be one of ...``).
    """
    if head not in HEADS:
        raise ValueError(f"model.head: must be one of {', '.join(HEADS)}, got {head!r}")
    return str(head)


def model_head(model_cfg: Mapping[str, Any]) -> str:
    """The head a ``model`` group asks for: its ``head`` key, ``softmax`` when absent/null.

    Raises:
        ValueError: an unknown head.
    """
    return check_head(model_cfg.get("head") or "softmax")


def output_channels(model_cfg: Mapping[str, Any]) -> int:
    """Channels of a ``model`` group's output: ``num_classes`` (softmax) or ``num_regions``.

    Args:
        model_cfg: the ``model`` group (``num_classes``; ``head`` and ``num_regions`` optional,
            ``num_regions`` defaulting to ``DEFAULT_NUM_REGIONS``).

    Raises:
        ValueError: unknown head, or a non-positive ``num_regions``.
    """
    if model_head(model_cfg) == "softmax":
        return int(model_cfg["num_classes"])
    regions = model_cfg.get("num_regions")
    regions = DEFAULT_NUM_REGIONS if regions is None else regions
    if isinstance(regions, bool) or not isinstance(regions, int) or regions < 1:
        raise ValueError(f"model.num_regions: must be an integer >= 1, got {regions!r}")
    return regions


def head_problem(model_cfg: Mapping[str, Any], loss_cfg: Mapping[str, Any],
                 num_painted_regions: int | None = None) -> str | None:
    """What is inconsistent between the head, the loss and the data set; None when nothing.

    A config-time rule (no TensorFlow): ``model.head=regions`` needs the region loss
    (``loss=regions``) and the region loss needs ``model.head=regions``; with the data set's
    convention known, ``model.num_regions`` must equal its painted regions.

    Args:
        model_cfg: the ``model`` group; loss_cfg: the ``loss`` group.
        num_painted_regions: ``len(unet3d.data.regions.painted_regions(convention))``
            when the data set's convention is known.

    Returns:
        One line starting with the key to change, or None.
    """
    head = model_cfg.get("head") or "softmax"
    if head not in HEADS:
        return f"model.head: must be one of {', '.join(HEADS)}, got {head!r}"
    region_loss = loss_cfg.get("_target_") == REGION_LOSS_TARGET
    if head == "regions" and loss_cfg.get("_target_") == SEGMENTATION_LOSS_TARGET:
        return ("loss: model.head=regions predicts one sigmoid per region; use loss=regions "
                "(BCE + soft Dice per region) instead of the class loss")
    if region_loss and head != "regions":
        return "model.head: loss=regions needs model.head=regions, got model.head=softmax"
    if head == "regions" and num_painted_regions is not None:
        regions = model_cfg.get("num_regions") or DEFAULT_NUM_REGIONS
        if regions != num_painted_regions:
            return (f"model.num_regions: the data set paints {num_painted_regions} regions, "
                    f"got {regions}")
    return None


def head_layers(features: Any, head: str, channels: int, kernel_size: int = 1,
                conv_name: str = "head_conv", activation_name: str = "probabilities") -> Any:
    """Append a head to a feature tensor: Conv3D (with bias) then the float32 activation.

    Args:
        features: a symbolic ``[B, h, w, d, F]`` Keras tensor.
        head: one of ``HEADS``.
        channels: output channels (classes or regions).
        kernel_size: kernel of the convolution (``same`` padding).
        conv_name: name of the convolution layer; activation_name: of the activation layer.

    Returns:
        The float32 probabilities ``[B, h, w, d, channels]``.

    Raises:
        ValueError: unknown ``head``.
    """
    import keras

    activation = HEAD_ACTIVATIONS[check_head(head)]
    logits = keras.layers.Conv3D(channels, kernel_size=kernel_size, padding="same",
                                 name=conv_name)(features)
    return keras.layers.Activation(activation, dtype="float32", name=activation_name)(logits)
