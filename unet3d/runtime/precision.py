"""Numeric precision: the Keras dtype policy, loss scaling and the XLA flag.

`configure_precision` resolves `precision.policy` for the device (auto: mixed_float16 on GPU/MLU,
mixed_bfloat16 on CPU), sets Keras' global dtype policy and returns a `PrecisionInfo`. Call it
before the model is built. `wrap_optimizer` adds dynamic loss scaling when the policy computes in
float16. In a custom loop use `optimizer.scale_loss(loss)` inside the tape (Keras 3 optimizers
all have it; it is the identity without loss scaling); `apply_gradients` of a
`LossScaleOptimizer` unscales and skips steps with non-finite gradients.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unet3d.config import PRECISION_POLICIES as POLICIES
from unet3d.errors import ConfigError

logger = logging.getLogger(__name__)


_DTYPES = {
    "float32": ("float32", "float32"),
    "mixed_bfloat16": ("bfloat16", "float32"),
    "mixed_float16": ("float16", "float32"),
}


@dataclass(frozen=True)
class PrecisionInfo:
    """The resolved precision settings.

    Attributes:
        name: the config's name (amp, fp32, bf16, fp16).
        policy_name: the Keras policy set globally: float32, mixed_bfloat16 or mixed_float16.
        compute_dtype: dtype of layer computations ("float32", "bfloat16", "float16").
        variable_dtype: dtype of the weights (always "float32").
        loss_scale: True iff compute_dtype is float16 (use `wrap_optimizer`).
        xla: compile the train step with XLA (`tf.function(jit_compile=True)`).
    """

    name: str
    policy_name: str
    compute_dtype: str
    variable_dtype: str
    loss_scale: bool
    xla: bool


def resolve_policy(policy: str, device_type: str) -> str:
    """Return the Keras policy name for `precision.policy` on `device_type` (pure).

    Raises:
        ConfigError: unknown policy (the message names precision.policy).
    """
    value = str(policy).strip().lower()
    if value not in POLICIES:
        raise ConfigError(f"precision.policy: must be one of {', '.join(POLICIES)}, got {policy!r}")
    if value == "auto":
        return "mixed_bfloat16" if device_type.upper() == "CPU" else "mixed_float16"
    return value


def configure_precision(precision_cfg: Mapping[str, Any], device_type: str) -> PrecisionInfo:
    """Set Keras' global dtype policy from the `precision` config group; call before building.

    Args:
        precision_cfg: the `precision` group (name, policy, xla).
        device_type: "CPU", "GPU" or "MLU" (from `DeviceInfo.type`).

    Returns:
        PrecisionInfo describing the policy that is now global.

    Raises:
        ConfigError: unknown precision.policy.
    """
    import keras

    policy_name = resolve_policy(precision_cfg.get("policy") or "float32", device_type)
    xla = bool(precision_cfg.get("xla", False))
    on_cpu = device_type.upper() == "CPU"
    if on_cpu and policy_name == "mixed_float16":
        logger.warning(
            "precision: mixed_float16 on CPU is very slow (about 12x) or lacks kernels; "
            "prefer precision=bf16 (mixed_bfloat16) or precision=amp on CPU"
        )
    if on_cpu and xla:
        logger.warning(
            "precision.xla=true on CPU: XLA runs 3D convolutions about 7x slower than plain "
            "TensorFlow on CPU"
        )
    keras.mixed_precision.set_global_policy(policy_name)
    compute_dtype, variable_dtype = _DTYPES[policy_name]
    info = PrecisionInfo(
        name=str(precision_cfg.get("name") or policy_name),
        policy_name=policy_name,
        compute_dtype=compute_dtype,
        variable_dtype=variable_dtype,
        loss_scale=compute_dtype == "float16",
        xla=xla,
    )
    logger.info(
        "precision: %s (policy %s, loss scaling %s, xla %s)",
        info.name,
        info.policy_name,
        "on" if info.loss_scale else "off",
        "on" if info.xla else "off",
    )
    return info


def wrap_optimizer(optimizer: Any, info: PrecisionInfo) -> Any:
    """Wrap `optimizer` in a dynamic `keras.mixed_precision.LossScaleOptimizer` when needed.

    Returns the optimizer unchanged when `info.loss_scale` is False or it is already wrapped.
    """
    import keras

    if not info.loss_scale or isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        return optimizer
    return keras.mixed_precision.LossScaleOptimizer(optimizer)


def model_dtypes(model: Any) -> dict[str, Any]:
    """The dtypes a built Keras model really uses (not only the policy that was asked for).

    Args:
        model: a built ``keras.Model``.

    Returns:
        ``{"compute": [...], "variables": [...], "output": str}``: the sorted compute dtypes of
        the layers that hold weights, the sorted variable dtypes, and the first output's dtype
        (``"float32"`` when the model has no symbolic outputs).
    """
    compute = sorted({str(layer.compute_dtype) for layer in model.layers if layer.weights})
    variables = sorted({str(getattr(variable.dtype, "name", variable.dtype))
                        for variable in model.weights})
    outputs = getattr(model, "outputs", None)
    output = str(getattr(outputs[0].dtype, "name", outputs[0].dtype)) if outputs else "float32"
    return {"compute": compute, "variables": variables, "output": output}


def check_inference_precision(models: Any, info: PrecisionInfo) -> list[dict[str, Any]]:
    """Check that models rebuilt for inference compute in the configured precision.

    A model built before ``configure_precision`` (or under another global policy) keeps the
    dtypes it was built with; it would silently predict in float32 under ``precision=amp``.

    Args:
        models: one ``keras.Model`` or a list of them (an ensemble).
        info: the job's ``PrecisionInfo``.

    Returns:
        ``model_dtypes`` of each model, in order.

    Raises:
        ConfigError: a model computes in another dtype than ``info.compute_dtype`` (the message
            names ``precision.policy``), or outputs something other than float32.
    """
    members = list(models) if isinstance(models, list | tuple) else [models]
    found = []
    for index, model in enumerate(members):
        dtypes = model_dtypes(model)
        if dtypes["compute"] and dtypes["compute"] != [info.compute_dtype]:
            raise ConfigError(
                f"precision.policy: model {index} ({model.name}) computes in "
                f"{', '.join(dtypes['compute'])}, the job's policy {info.policy_name} in "
                f"{info.compute_dtype}; build the models after configure_precision"
            )
        if dtypes["output"] != "float32":
            raise ConfigError(f"precision.policy: model {index} ({model.name}) outputs "
                              f"{dtypes['output']}; probabilities must be float32")
        found.append(dtypes)
    logger.info("inference precision: %d model(s) compute in %s, output float32",
                len(found), info.compute_dtype)
    return found
