"""The reference 3D U-Net (channels last) and analytic counts of its size and work.

Architecture (the NVIDIA / Cambricon reference, see ``/work/shared/REFERENCE.md``):

- conv unit: Conv3D 3x3x3 ``same`` (no bias when normalised) -> norm -> LeakyReLU(0.01);
- input block: two conv units at ``base_filters``;
- ``num_levels - 1`` down blocks: a stride-2 conv unit then a conv unit, with
  ``min(base_filters * 2**level, max_filters)`` filters;
- up blocks mirror them: Conv3DTranspose (kernel 2, stride 2, with bias) -> concat skip ->
  two conv units;
- head (``unet3d.model.heads``): Conv3D (kernel ``output_kernel_size``, with bias) to
  ``num_classes`` then a softmax (``head="softmax"``, the reference's), or to ``num_regions``
  then a sigmoid (``head="regions"``); the activation's dtype is float32, so mixed precision
  still returns float32 probabilities.

``build_unet3d`` is the ``_target_`` of ``conf/model/unet3d*.yaml``; the framework builds any
model through ``unet3d.model.build.build_model_from_config``.

Every spatial side of the input must be divisible by ``2 ** (num_levels - 1)`` (32 for the
reference 6 levels) so that the transposed convolutions restore the skip shapes.

TensorFlow / Keras are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from unet3d.config import NORMS, UNET3D_TARGET
from unet3d.model.heads import head_layers, output_channels

if TYPE_CHECKING:  # pragma: no cover
    import keras

logger = logging.getLogger(__name__)

#: Target number of groups of group normalisation (fewer when the width needs it).
GROUP_NORM_GROUPS = 16
#: Epsilon of instance and group normalisation (the reference's instance norm uses 1e-6).
NORM_EPSILON = 1e-6
#: Negative slope of the LeakyReLU activations.
LEAKY_SLOPE = 0.01


def level_filters(base_filters: int, max_filters: int, num_levels: int) -> list[int]:
    """Return the filter count of each resolution level, full resolution first."""
    _check_widths(base_filters, max_filters, num_levels)
    return [min(base_filters * 2**level, max_filters) for level in range(num_levels)]


def group_count(channels: int, target: int = GROUP_NORM_GROUPS) -> int:
    """Return the largest number of groups <= ``target`` that divides ``channels``."""
    if channels <= 0:
        raise ValueError(f"channels must be > 0, got {channels}")
    for groups in range(min(target, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1  # pragma: no cover - 1 always divides


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_widths(base_filters: int, max_filters: int, num_levels: int) -> None:
    _check_int("base_filters", base_filters, 1)
    _check_int("max_filters", max_filters, 1)
    _check_int("num_levels", num_levels, 1)


def _spatial_input_shape(
    input_shape: Sequence[int | None] | None, in_channels: int, num_levels: int
) -> tuple[int | None, ...]:
    """Validate ``input_shape`` (3 spatial sides, optionally + channels) -> 4-tuple."""
    if input_shape is None:
        return (None, None, None, in_channels)
    shape = tuple(input_shape)
    if len(shape) == 4:
        if shape[3] != in_channels:
            raise ValueError(f"input_shape {shape}: last axis must be in_channels={in_channels}")
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"input_shape must give 3 spatial sides (channels last), got {shape}")
    divisor = 2 ** (num_levels - 1)
    for side in shape:
        if side is None:
            continue
        if isinstance(side, bool) or not isinstance(side, int) or side <= 0:
            raise ValueError(f"input_shape sides must be positive integers, got {shape}")
        if side % divisor:
            raise ValueError(
                f"input_shape {shape}: every spatial side must be divisible by "
                f"2**(num_levels-1) = {divisor}"
            )
    return (*shape, in_channels)


def _norm_layer(norm: str, channels: int, name: str) -> Any:
    import keras

    if norm == "instance":
        # groups=-1: one group per channel = instance norm with learnable per-channel affine.
        return keras.layers.GroupNormalization(groups=-1, epsilon=NORM_EPSILON, name=name)
    if norm == "group":
        return keras.layers.GroupNormalization(
            groups=group_count(channels), epsilon=NORM_EPSILON, name=name
        )
    if norm == "batch":
        return keras.layers.BatchNormalization(name=name)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def _conv_unit(x: Any, filters: int, norm: str, name: str, strides: int = 1) -> Any:
    import keras

    normalised = norm != "none"
    x = keras.layers.Conv3D(
        filters,
        kernel_size=3,
        strides=strides,
        padding="same",
        use_bias=not normalised,
        name=f"{name}_conv",
    )(x)
    if normalised:
        x = _norm_layer(norm, filters, f"{name}_norm")(x)
    return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_act")(x)


def build_unet3d(
    *,
    name: str,
    in_channels: int,
    num_classes: int,
    base_filters: int,
    max_filters: int,
    num_levels: int,
    norm: str,
    output_kernel_size: int,
    head: str,
    num_regions: int,
    input_shape: Sequence[int | None] | None = None,
) -> keras.Model:
    """Build the 3D U-Net as a Keras 3 functional model (channels last).

    The ``_target_`` of ``conf/model/unet3d.yaml`` (the reference network, 31,196,196
    parameters) and ``unet3d_small.yaml``: every key of those groups is an argument here, and
    only there do the arguments get their values (no defaults but ``input_shape``, which is not
    a setting). The values are checked by :func:`unet3d.config.validate`.

    Args:
        name: model name.
        in_channels: input channels C (4 MRI modalities: t1, t1ce, t2, flair).
        num_classes: output classes K (softmax over the last axis).
        base_filters: filters of the full-resolution level.
        max_filters: cap on the filters of the deeper levels (``>= base_filters``).
        num_levels: resolution levels including the bottleneck (``num_levels - 1`` stride-2
            down blocks); spatial sides must be divisible by ``2 ** (num_levels - 1)``.
        norm: one of ``unet3d.config.NORMS``: ``instance``, ``group`` (16 groups, or the
            largest divisor of the width below 16), ``batch`` or ``none`` (conv units then
            carry a bias).
        output_kernel_size: kernel of the head convolution: 3 is the reference's 3x3x3 head,
            1 a 1x1x1 head (3,328 fewer parameters at the reference widths).
        head: ``softmax`` (K class probabilities) or ``regions`` (one sigmoid per evaluation
            region, ``unet3d.model.heads``).
        num_regions: output channels R of the ``regions`` head (BraTS: 3, WT, TC, ET);
            ignored by the softmax head.
        input_shape: ``None`` for ``(None, None, None, in_channels)``, or the 3 spatial sides
            (optionally followed by ``in_channels``); ``None`` sides stay dynamic.

    Returns:
        A ``keras.Model`` mapping float32 ``[B, H, W, D, C]`` to float32 softmax probabilities
        ``[B, H, W, D, K]``, or with ``head="regions"`` to float32 sigmoid region
        probabilities ``[B, H, W, D, R]`` (the final activation computes in float32 under mixed
        precision). The decoder's feature maps are the layers ``up<level>_2_act`` (level 0 at
        full resolution), which ``unet3d.training.deep_supervision`` taps.

    Raises:
        ValueError: unknown ``norm``, non-positive widths, or an input shape whose sides are
            not divisible by ``2 ** (num_levels - 1)``.
    """
    import keras

    _check_int("in_channels", in_channels, 1)
    _check_int("num_classes", num_classes, 1)
    _check_int("output_kernel_size", output_kernel_size, 1)
    channels = num_classes if head == "softmax" else _check_int("num_regions", num_regions, 1)
    filters = level_filters(base_filters, max_filters, num_levels)
    shape = _spatial_input_shape(input_shape, in_channels, num_levels)

    inputs = keras.Input(shape=shape, name="image")
    x = _conv_unit(inputs, filters[0], norm, "input_block_1")
    x = _conv_unit(x, filters[0], norm, "input_block_2")
    skips = [x]
    for level in range(1, num_levels):
        x = _conv_unit(x, filters[level], norm, f"down{level}_1", strides=2)
        x = _conv_unit(x, filters[level], norm, f"down{level}_2")
        skips.append(x)
    for level in range(num_levels - 2, -1, -1):
        x = keras.layers.Conv3DTranspose(
            filters[level], kernel_size=2, strides=2, padding="same", name=f"up{level}_transpose"
        )(x)
        x = keras.layers.Concatenate(axis=-1, name=f"up{level}_concat")([x, skips[level]])
        x = _conv_unit(x, filters[level], norm, f"up{level}_1")
        x = _conv_unit(x, filters[level], norm, f"up{level}_2")
    outputs = head_layers(x, head, channels, output_kernel_size)
    model = keras.Model(inputs, outputs, name=name)
    logger.debug(
        "built %s: levels %d, filters %s, norm %s, %s head of %d channels, %d parameters",
        name,
        num_levels,
        filters,
        norm,
        head,
        channels,
        model.count_params(),
    )
    return model


def _unet_arguments(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The U-Net's size arguments from a ``model`` group (the keys of conf/model/unet3d.yaml).

    Raises:
        ValueError: the group names another ``_target_`` than ``build_unet3d``.
    """
    target = model_cfg.get("_target_")
    if target not in (None, UNET3D_TARGET):
        raise ValueError(f"count_forward_flops counts {UNET3D_TARGET} only; model._target_ is "
                         f"{target!r}")
    names = ("in_channels", "num_classes", "base_filters", "max_filters", "num_levels",
             "output_kernel_size")
    arguments = {argument: int(model_cfg[argument]) for argument in names}
    arguments["output_channels"] = output_channels(model_cfg)
    return arguments


def _spatial_sides(spatial_shape: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(spatial_shape, int):
        return (spatial_shape,) * 3
    sides = tuple(int(side) for side in spatial_shape)
    if len(sides) != 3:
        raise ValueError(f"spatial_shape must have 3 sides, got {spatial_shape!r}")
    return sides  # type: ignore[return-value]


def count_forward_flops(
    model_cfg: Mapping[str, Any], spatial_shape: int | Sequence[int]
) -> float:
    """Analytic FLOPs of one forward pass of one volume (2 FLOPs per multiply-add).

    Counts the convolutions and transposed convolutions only (no norms, activations, biases).
    Multiply by the batch size for a batch; training is roughly 3x the forward pass.

    Args:
        model_cfg: a ``model`` group of ``build_unet3d`` (or a mapping of its arguments).
        spatial_shape: an int for a cube, or the 3 sides (H, W, D), each divisible by
            ``2 ** (num_levels - 1)``.

    Returns:
        Forward FLOPs of one volume.

    Raises:
        ValueError: another model than the U-Net, or indivisible sides.
    """
    kwargs = _unet_arguments(model_cfg)
    num_levels = kwargs["num_levels"]
    filters = level_filters(kwargs["base_filters"], kwargs["max_filters"], num_levels)
    sides = _spatial_sides(spatial_shape)
    divisor = 2 ** (num_levels - 1)
    if any(side <= 0 or side % divisor for side in sides):
        raise ValueError(
            f"spatial_shape {sides}: every side must be a positive multiple of {divisor}"
        )
    full = sides[0] * sides[1] * sides[2]
    voxels = [full // 8**level for level in range(num_levels)]
    macs = voxels[0] * 27 * (kwargs["in_channels"] * filters[0] + filters[0] * filters[0])
    for level in range(1, num_levels):
        macs += voxels[level] * 27 * (filters[level - 1] + filters[level]) * filters[level]
    for level in range(num_levels - 2, -1, -1):
        # transposed conv: every output voxel receives one tap per input channel
        macs += voxels[level] * filters[level + 1] * filters[level]
        macs += voxels[level] * 27 * (2 * filters[level] + filters[level]) * filters[level]
    macs += voxels[0] * kwargs["output_kernel_size"] ** 3 * filters[0] * kwargs["output_channels"]
    return 2.0 * float(macs)
