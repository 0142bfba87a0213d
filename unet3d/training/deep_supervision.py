"""Deep supervision: extra outputs at the decoder's lower resolutions, for training only.

nnU-Net's scheme (Isensee et al., Nature Methods 2021; nnU-Net v2
``nnUNetTrainer._get_deep_supervision_scales`` and ``DeepSupervisionWrapper``): besides the
full-resolution output, the decoder's lower-resolution stages get a head of their own (a
1x1x1 convolution and the model's activation); output ``i`` (resolution ``1 / 2**i``) is
compared with the labels downsampled by ``2**i``, and the losses are summed with weights
``1 / 2**i`` for ``i = 0 .. n-1``, the lowest resolution's set to 0, normalised to sum 1
(n = 3: 2/3, 1/3, 0; n = 5: 16/30, 8/30, 4/30, 2/30, 0).

Targets are downsampled by nearest-neighbour subsampling of the integer class labels
(``labels[:, ::s, ::s, ::s]``, the first voxel of each ``s``-cube; nnU-Net resizes the
segmentation with nearest-neighbour interpolation too), so any loss of the ``loss`` group,
the class loss and the region loss alike, scores every output.

The training model shares every layer of the network: only the heads are new. Only the
full-resolution output is used at inference, and the checkpoint written during training loads
into the network itself (its variables keep their checkpoint paths; the heads' are extra, and
``restore_weights`` skips them), so evaluate, predict and the logged model see one output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from unet3d.errors import ConfigError
from unet3d.model.heads import head_layers

log = logging.getLogger(__name__)

#: Decoder feature layers of the built-in U-Net, by level (0: full resolution).
DECODER_LAYER = "up{level}_2_act"


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's loss weights of ``num_outputs`` outputs, full resolution first.

    ``1 / 2**i`` for ``i = 0 .. n-1``, the last (lowest resolution) set to 0 when ``n > 1``,
    normalised to sum 1.

    Raises:
        ValueError: ``num_outputs < 1``.
    """
    if num_outputs < 1:
        raise ValueError(f"deep supervision needs at least one output, got {num_outputs}")
    weights = [1.0 / 2**index for index in range(num_outputs)]
    if num_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [weight / total for weight in weights]


def decoder_levels(model: Any) -> int:
    """How many decoder stages ``model`` exposes as ``up<level>_2_act`` (levels 0, 1, ...)."""
    names = {layer.name for layer in model.layers}
    count = 0
    while DECODER_LAYER.format(level=count) in names:
        count += 1
    return count


def deep_supervision_model(model: Any, num_outputs: int | None = None,
                           head: str = "softmax") -> Any:
    """The training model: ``model``'s output plus heads at lower decoder resolutions.

    Build it inside the distribution strategy's scope (the heads create variables).

    Args:
        model: the network (the built-in U-Net: its decoder layers ``up<level>_2_act``).
        num_outputs: supervised resolutions n, full resolution included (None: every decoder
            stage, ``num_levels - 1`` for the U-Net).
        head: ``softmax`` or ``regions``: the activation of the extra heads (the model's).

    Returns:
        A ``keras.Model`` sharing ``model``'s layers, mapping ``[B, H, W, D, C]`` to
        ``[full, out_1, ..., out_{n-1}]`` with ``out_i`` float32 ``[B, H/2**i, W/2**i,
        D/2**i, channels]``.

    Raises:
        ConfigError: ``training.deep_supervision_levels`` out of range, or a model without
            the decoder layers.
        RuntimeError: the shared layers would not keep their checkpoint paths (a Keras change).
    """
    import keras

    available = decoder_levels(model)
    if available < 2:
        raise ConfigError(
            f"training.deep_supervision: model {model.name} has no decoder layers named "
            f"{DECODER_LAYER.format(level='<level>')} below full resolution; deep supervision "
            f"needs the built-in U-Net (unet3d.model.unet3d.build_unet3d, num_levels >= 3)")
    outputs = available if num_outputs is None else int(num_outputs)
    if not 1 <= outputs <= available:
        raise ConfigError(f"training.deep_supervision_levels: must be in [1, {available}] for "
                          f"model {model.name}, got {num_outputs}")
    channels = int(model.outputs[0].shape[-1])
    heads = [model.outputs[0]]
    for level in range(1, outputs):
        features = model.get_layer(DECODER_LAYER.format(level=level)).output
        heads.append(head_layers(features, head, channels, 1, conv_name=f"ds{level}_head_conv",
                                 activation_name=f"ds{level}_probabilities"))
    training_model = keras.Model(model.input, heads, name=f"{model.name}_deep_supervision")
    _check_checkpoint_paths(model, training_model)
    log.info("deep supervision: %d outputs (resolutions %s), loss weights %s", outputs,
             ", ".join(f"1/{2**level}" for level in range(outputs)),
             ", ".join(f"{weight:.3f}" for weight in deep_supervision_weights(outputs)))
    return training_model


def _check_checkpoint_paths(model: Any, training_model: Any) -> None:
    """Every layer of ``model`` with weights keeps its index in the training model.

    TensorFlow checkpoints a Keras 3 functional model's layers by their index in its
    operations, so equal indices mean the training checkpoint restores into ``model``.
    """
    mine, theirs = getattr(model, "_operations", None), getattr(training_model, "_operations",
                                                                None)
    if mine is None or theirs is None:  # pragma: no cover - another Keras layout
        log.debug("deep supervision: cannot check the checkpoint paths of this Keras version")
        return
    for index, operation in enumerate(mine):
        if operation.weights and (index >= len(theirs) or theirs[index] is not operation):
            raise RuntimeError(
                f"deep supervision: layer {operation.name} moves from index {index} in the "
                f"training model; its checkpoints would not load into {model.name}")


class DeepSupervisionLoss:
    """A loss of the ``loss`` group applied to every output, targets downsampled, weighted.

    Args:
        loss_fn: ``loss_fn(labels int32 [B, h, w, d], probabilities [B, h, w, d, K or R])``
            -> ``(total [B], parts)`` (``unet3d.training.losses.build_loss``).
        weights: one weight per output, full resolution first (``deep_supervision_weights``).

    Raises:
        ValueError: no weight, or a negative one.
    """

    def __init__(self, loss_fn: Any, weights: Sequence[float]) -> None:
        weights = [float(weight) for weight in weights]
        if not weights or min(weights) < 0:
            raise ValueError(f"training.deep_supervision_weights: must be >= 0, got {weights}")
        self.loss_fn = loss_fn
        self.weights = weights

    def __call__(self, labels: Any, outputs: Any) -> tuple[Any, dict[str, Any]]:
        """Weighted sum over the outputs of the loss against labels subsampled by ``2**i``.

        Args:
            labels: int32 ``[B, h, w, d]``.
            outputs: the training model's list ``[full, out_1, ...]`` (one tensor: no deep
                supervision, the loss as it is).

        Returns:
            ``(total [B], {part: weighted sum of that part over the outputs [B]})``.

        Raises:
            ValueError: another number of outputs than of weights.
        """
        if not isinstance(outputs, list | tuple):
            return self.loss_fn(labels, outputs)
        if len(outputs) != len(self.weights):
            raise ValueError(f"deep supervision: {len(outputs)} outputs but "
                             f"{len(self.weights)} weights")
        total, parts = 0.0, {}
        for index, (output, weight) in enumerate(zip(outputs, self.weights, strict=True)):
            step = 2**index
            targets = labels[:, ::step, ::step, ::step] if step > 1 else labels
            value, terms = self.loss_fn(targets, output)
            total = total + weight * value
            for name, term in terms.items():
                parts[name] = parts.get(name, 0.0) + weight * term
        return total, parts

    def get_config(self) -> dict[str, Any]:
        """The weights (the wrapped loss has its own config)."""
        return {"weights": list(self.weights)}


def apply_deep_supervision(model: Any, loss_fn: Any, training: Mapping[str, Any],
                           head: str) -> tuple[Any, Any]:
    """The model and loss the training loop runs, with ``training.deep_supervision`` applied.

    Call inside the distribution strategy's scope. Keys read (``conf/training/default.yaml``,
    checked by :func:`unet3d.config.validate`): ``deep_supervision``,
    ``deep_supervision_levels`` (null: every decoder stage), ``deep_supervision_weights``
    (null: ``deep_supervision_weights(n)``).

    Args:
        model: the network (kept for inference, checkpoint loading and the logged model).
        loss_fn: the loss of the ``loss`` group.
        training: the ``training`` config section.
        head: ``model.head`` (the extra heads' activation).

    Returns:
        ``(training_model, training_loss)``: ``(model, loss_fn)`` unchanged when deep
        supervision is off.

    Raises:
        ConfigError: a model of your own without the U-Net's decoder layers, or with fewer
            decoder stages than ``deep_supervision_levels``.
    """
    if not training["deep_supervision"]:
        return model, loss_fn
    training_model = deep_supervision_model(model, training["deep_supervision_levels"], head)
    weights = training["deep_supervision_weights"]
    if weights is None:
        weights = deep_supervision_weights(len(training_model.outputs))
    return training_model, DeepSupervisionLoss(loss_fn, list(weights))
