"""The model of any ``model`` group: built from its ``_target_`` and checked against the contract.

Every mode builds its network here (training, evaluate, predict, benchmark), from the
``model`` config group or, for evaluate and predict, from the group a trained run recorded.
The contract (``docs/contracts.md``): the target returns a ``keras.Model`` with one input of
rank 5, float32 ``[B, H, W, D, in_channels]`` (channels last, spatial sides free or divisible
by ``unet3d.config.settings.input_divisor``), and one output of the same rank, float32 probabilities
``[B, H, W, D, num_classes]`` (a softmax over the last axis, computed in float32 under mixed
precision), and a working ``get_config``. With ``model.head=regions`` (``unet3d.model.heads``)
the output is ``[B, H, W, D, num_regions]`` sigmoid region probabilities (each in [0, 1]).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from unet3d.config import model_head
from unet3d.config.components import check_contract, instantiate, one_line
from unet3d.config.settings import input_divisor
from unet3d.errors import ConfigError
from unet3d.model.heads import output_channels

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

#: Smallest side of the probe batch that builds a subclassed model (see ``check_model``).
PROBE_SIDE = 8
#: Tolerance of the probe's "probabilities sum to 1 over the classes" check.
PROBABILITY_TOLERANCE = 1e-3


def build_model_from_config(model_cfg: Mapping[str, Any]) -> keras.Model:
    """Build the network that a ``model`` group names with ``_target_`` and check it.

    Call it inside the distribution strategy's scope, after seeding, with the dtype policy
    set: the target builds the weights.

    Args:
        model_cfg: the ``model`` group: ``_target_``, ``name``, ``in_channels``,
            ``num_classes`` (and, optionally, ``num_levels``, ``head``, ``num_regions``) plus
            the target's own arguments; every key but ``_target_`` is passed to the target.

    Returns:
        The built ``keras.Model`` (float32 ``[B, H, W, D, in_channels]`` ->
        float32 ``[B, H, W, D, num_classes]``, or ``[B, H, W, D, num_regions]`` with
        ``head=regions``).

    Raises:
        ConfigError: one line starting with ``model._target_``: the target does not import,
            its call fails, or the model breaks the contract (not a ``keras.Model``, wrong
            input or output rank, channels or dtype, no ``get_config``).
    """
    sizes = {}
    for key in ("in_channels", "num_classes"):
        value = model_cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"model.{key}: the framework needs it in every model group, "
                              f"got {value!r}")
        sizes[key] = value
    try:
        head, channels = model_head(model_cfg), output_channels(model_cfg)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    model = instantiate(model_cfg, "model")
    check_model(model, sizes["in_channels"], channels, input_divisor(model_cfg),
                str(model_cfg.get("_target_")), head=head)
    return model


def check_model(model: Any, in_channels: int, num_classes: int, divisor: int = 1,
                target: str = "the model", head: str = "softmax") -> None:
    """Check a built model against the model contract (``docs/contracts.md``).

    A functional model is checked from its symbolic input and output. A subclassed model that
    has not been called yet is built by one call on zeros ``[1, s, s, s, in_channels]``
    (``s``: ``PROBE_SIDE`` rounded up to a multiple of ``divisor``), and its output is also
    checked to be probabilities.

    Args:
        model: what the target returned.
        in_channels: the ``model.in_channels`` the data provides (C).
        num_classes: the output channels the loss and metrics expect: ``model.num_classes``
            (K) for the softmax head, ``model.num_regions`` (R) for the regions head.
        divisor: what every input side must be divisible by (``input_divisor``).
        target: the ``_target_``, named in errors.
        head: ``softmax`` (probabilities sum to 1 over the channels) or ``regions`` (each
            channel a probability in [0, 1]).

    Raises:
        ConfigError: ``model._target_: <target> ...`` naming what is wrong.
    """
    import keras

    check_contract(isinstance(model, keras.Model), "model",
                   lambda: f"{target} returned a {type(model).__name__}, not a keras.Model")
    inputs = _symbolic(model, "inputs")
    if inputs is not None:
        check_contract(len(inputs) == 1, "model",
                       f"{target} has {len(inputs)} inputs; expected one image input")
        _check_tensor(target, "input", tuple(inputs[0].shape), in_channels, "in_channels")
        outputs = _symbolic(model, "outputs") or []
        check_contract(len(outputs) == 1, "model",
                       f"{target} has {len(outputs)} outputs; expected one probability map")
        shape, dtype = tuple(outputs[0].shape), str(outputs[0].dtype)
    else:
        shape, dtype = _probe(model, target, in_channels, divisor, num_classes, head)
    _check_tensor(target, "output", shape, num_classes,
                  "num_classes" if head == "softmax" else "num_regions")
    check_contract(dtype == "float32", "model", lambda: (
        f"{target} outputs {dtype}; the probabilities must be float32 (give the final "
        f"activation dtype='float32' so that mixed precision keeps it)"))
    try:
        model.get_config()
    except Exception as error:  # noqa: BLE001 - any failure breaks the contract
        check_contract(False, "model", f"{target}: get_config() fails ({one_line(error)}); "
                                       f"custom layers and models must implement it")
    log.debug("model %s meets the contract: output %s %s", target, shape, dtype)


def _symbolic(model: Any, attribute: str) -> list | None:
    """``model.inputs`` / ``model.outputs`` of a functional model, None when not defined."""
    try:
        value = getattr(model, attribute, None)
    except (AttributeError, ValueError):
        return None
    return list(value) if value else None


def _check_tensor(target: str, which: str, shape: tuple, channels: int, key: str) -> None:
    check_contract(len(shape) == 5, "model", lambda: (
        f"{target} {which} has shape {shape} (rank {len(shape)}); expected rank 5, "
        f"(batch, H, W, D, {key}={channels}), channels last"))
    check_contract(shape[-1] == channels, "model", lambda: (
        f"{target} {which} has {shape[-1]} channels (shape {shape}); model.{key} is {channels}"))


def example_side(model_cfg: Mapping[str, Any]) -> int:
    """The side of the smallest cube a ``model`` group's network surely takes.

    ``PROBE_SIDE`` rounded up to a multiple of ``input_divisor(model_cfg)``: the side of the
    probe batch of ``check_model``, and of an example input (e.g. for logging the model).
    """
    divisor = input_divisor(model_cfg)
    return -(-PROBE_SIDE // divisor) * divisor


def _probe(model: Any, target: str, in_channels: int, divisor: int,
           num_classes: int, head: str = "softmax") -> tuple[tuple, str]:
    """Build a subclassed model by calling it once; return its output's shape and dtype."""
    import numpy as np

    side = -(-PROBE_SIDE // divisor) * divisor
    batch = np.zeros((1, side, side, side, in_channels), dtype=np.float32)
    try:
        output = model(batch, training=False)
    except Exception as error:  # noqa: BLE001 - any failure breaks the contract
        check_contract(False, "model", f"{target} cannot be called on a float32 batch of shape "
                                       f"{batch.shape}: {one_line(error)}")
    check_contract(hasattr(output, "shape") and hasattr(output, "dtype"), "model",
                   lambda: f"{target} returned a {type(output).__name__}, not one tensor")
    shape = tuple(output.shape)
    dtype = getattr(output.dtype, "name", None) or str(output.dtype)
    if len(shape) == 5 and shape[-1] == num_classes and dtype == "float32" and head != "softmax":
        values = np.asarray(output)
        check_contract(bool(np.all((values >= 0.0) & (values <= 1.0))), "model", lambda: (
            f"{target} outputs no region probabilities: values in [{values.min():.3g}, "
            f"{values.max():.3g}]; model.head=regions ends with a sigmoid"))
    elif len(shape) == 5 and shape[-1] == num_classes and dtype == "float32":
        values = np.asarray(output)
        sums = values.sum(axis=-1)
        check_contract(bool(np.all(values >= 0.0)) and bool(
            np.all(np.abs(sums - 1.0) <= PROBABILITY_TOLERANCE)), "model", lambda: (
            f"{target} outputs no probabilities: values in [{values.min():.3g}, "
            f"{values.max():.3g}] summing to {sums.min():.3g}..{sums.max():.3g} over the "
            f"classes; end with a softmax"))
    return (None, *shape[1:]), dtype
