"""Numeric precision: the Keras dtype policy, loss scaling and the XLA flag.

`configure_precision` resolves `precision.policy` for the device and sets Keras' global dtype
policy, returning a `PrecisionInfo`. Call it before the model is built. Policies:

- ``auto`` (``precision=auto``, the default): the fastest policy on this host
  (:mod:`unet3d.runtime.precision_auto`: on CPU mixed_bfloat16 only where a probe convolution
  runs faster in bfloat16, cached per host; on GPU mixed_float16 with Tensor Cores; MLU
  mixed_float16). A resumed run keeps the policy its run recorded (``recorded``).
- ``mixed`` (``precision=amp``): mixed_float16 on GPU/MLU, mixed_bfloat16 on CPU, whatever
  its speed; on a CPU where bfloat16 is slower it warns once with the probe's ratio.
- ``float32``, ``mixed_bfloat16``, ``mixed_float16``: as named.
 `wrap_optimizer` adds dynamic loss scaling when the policy computes in
float16. In a custom loop use `optimizer.scale_loss(loss)` inside the tape (Keras 3 optimizers
all have it; it is the identity without loss scaling); `apply_gradients` of a
`LossScaleOptimizer` unscales and skips steps with non-finite gradients.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        requested: ``precision.policy`` as configured (``auto``, ``mixed``, ``float32``, ...).
        params: MLflow params of the decision (``precision.auto_choice``,
            ``precision.probe_fp32_ms``, ``precision.probe_bf16_ms``, ``precision.cpu``, ...).
    """

    name: str
    policy_name: str
    compute_dtype: str
    variable_dtype: str
    loss_scale: bool
    xla: bool
    requested: str = ""
    params: Mapping[str, str] = field(default_factory=dict)

    def identity(self, device_type: str) -> dict[str, str]:
        """What the run identity records besides name and policy: the resolved policy and the
        device it was resolved for (a resume under ``auto`` keeps it)."""
        return {"resolved": self.policy_name, "device": device_type.upper()}


def resolve_policy(policy: str, device_type: str) -> str:
    """The Keras policy of a fixed ``precision.policy`` on ``device_type`` (pure).

    ``mixed`` is mixed_bfloat16 on CPU and mixed_float16 on GPU/MLU; ``auto`` depends on the
    host (`configure_precision`, :mod:`unet3d.runtime.precision_auto`) and is refused here.
    The policy is one of ``unet3d.config.PRECISION_POLICIES`` (checked by the config).

    Raises:
        ValueError: ``auto``.
    """
    if policy == "auto":
        raise ValueError("precision.policy=auto depends on the host: use configure_precision")
    if policy == "mixed":
        return "mixed_bfloat16" if device_type.upper() == "CPU" else "mixed_float16"
    return policy


def _auto_policy(precision_cfg: Mapping[str, Any], device_type: str, host: Any,
                 cache: Path | None, recorded: Mapping[str, Any] | None) -> Any:
    """The ``AutoChoice`` of ``precision=auto`` (see `configure_precision`)."""
    from unet3d.runtime.cpu_probe import cached_probe
    from unet3d.runtime.precision_auto import AutoChoice, choose_cpu, choose_gpu, choose_mlu

    device = device_type.upper()
    kept = (recorded or {}).get("resolved")
    if kept in _DTYPES and str((recorded or {}).get("device") or "").upper() == device:
        return AutoChoice(str(kept), "kept from the run being resumed (its run_identity.json)",
                          device, kept=True)
    if kept:
        logger.warning("precision auto: the run being resumed was trained with %s on %s; "
                       "choosing again for this %s", kept, (recorded or {}).get("device"),
                       device)
    if device == "GPU":
        return choose_gpu(host.gpu_details())
    if device != "CPU":
        return choose_mlu()
    cpu = host.cpu()
    refresh = bool(precision_cfg["reprobe"])
    min_speedup = float(precision_cfg["min_speedup"])
    return choose_cpu(cpu, lambda: cached_probe(cache, cpu, host.threads(), host.tf_version(),
                                                host.probe, refresh, host.check, min_speedup),
                      min_speedup)


def _explicit_bf16_check(precision_cfg: Mapping[str, Any], policy_name: str, host: Any,
                         cache: Path | None) -> dict[str, str]:
    """Warn (once) when an explicit bfloat16 policy is slower on this CPU; its MLflow params."""
    from unet3d.runtime.cpu_probe import cached_probe
    from unet3d.runtime.precision_auto import host_params, slow_bf16_warning

    cpu = host.cpu()
    probe, cached = cached_probe(cache, cpu, host.threads(), host.tf_version(), host.probe,
                                 bool(precision_cfg["reprobe"]), host.check, 1.0)
    slow_bf16_warning(f"precision={precision_cfg['name']} ({policy_name})", cpu, probe, cached)
    return host_params(cpu, probe, cached)


def configure_precision(precision_cfg: Mapping[str, Any], device_type: str, *,
                        cache_dir: str | Path | None = None,
                        recorded: Mapping[str, Any] | None = None,
                        host: Any = None) -> PrecisionInfo:
    """Set Keras' global dtype policy from the `precision` config group; call before building.

    Under ``policy: auto`` on CPU this may run the probe convolution (TensorFlow ops): call it
    after the distribution strategy is created (a MultiWorkerMirroredStrategy needs a runtime
    that has not started).

    Args:
        precision_cfg: the `precision` group, checked by :func:`unet3d.config.validate`:
            ``name``, ``policy``, ``xla``, ``reprobe`` (read by the CPU probe of ``auto`` and
            of an explicit bfloat16 policy on CPU), ``min_speedup`` (``auto`` only).
        device_type: "CPU", "GPU" or "MLU" (from `DeviceInfo.type`).
        cache_dir: the folder of the probe cache (``paths.data_dir``); None: no cache file.
        recorded: the ``precision`` record of the run being resumed (``run_identity.json``:
            ``resolved``, ``device``); ``auto`` keeps its resolved policy on the same device.
        host: a ``unet3d.runtime.precision_auto.Host`` (the CPU, probe and GPU facts); None:
            this machine's.

    Returns:
        PrecisionInfo describing the policy that is now global.
    """
    import keras

    from unet3d.runtime.cpu_probe import CACHE_FILE
    from unet3d.runtime.precision_auto import Host

    host = host if host is not None else Host()
    cache = Path(cache_dir).expanduser() / CACHE_FILE if cache_dir is not None else None
    requested = str(precision_cfg["policy"])
    xla = bool(precision_cfg["xla"])
    on_cpu = device_type.upper() == "CPU"
    params: dict[str, str] = {}
    if requested == "auto":
        choice = _auto_policy(precision_cfg, device_type, host, cache, recorded)
        policy_name = choice.policy
        params = choice.params()
        logger.info("%s", choice.line())
    else:
        policy_name = resolve_policy(requested, device_type)
        if on_cpu and policy_name == "mixed_bfloat16":
            params = _explicit_bf16_check(precision_cfg, policy_name, host, cache)
    if on_cpu and policy_name == "mixed_float16":
        logger.warning(
            "precision: mixed_float16 on CPU is very slow (about 12x) or lacks kernels; "
            "prefer precision=auto, bf16 (mixed_bfloat16) or amp on CPU"
        )
    if on_cpu and xla:
        logger.warning(
            "precision.xla=true on CPU: XLA runs 3D convolutions about 7x slower than plain "
            "TensorFlow on CPU"
        )
    keras.mixed_precision.set_global_policy(policy_name)
    compute_dtype, variable_dtype = _DTYPES[policy_name]
    info = PrecisionInfo(
        name=str(precision_cfg["name"]),
        policy_name=policy_name,
        compute_dtype=compute_dtype,
        variable_dtype=variable_dtype,
        loss_scale=compute_dtype == "float16",
        xla=xla,
        requested=requested,
        params=params,
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
