"""Whether TensorFlow runs its oneDNN CPU kernels, who decided, and values it ignores.

``import unet3d`` sets ``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64 Linux when nobody chose
(``unet3d._prefer_onednn``); the runner logs the state with its device line
(:func:`onednn_state`, called by ``unet3d.runtime.devices.configure_devices``).

TensorFlow reads the variable once, when it first asks ``IsMklEnabled()``
(``tensorflow/core/util/util.cc``), with ``ReadBoolFromEnvVar`` (``tsl/util/env_var.cc``): the
value, lower-cased (ASCII), must be exactly ``0``, ``false``, ``1`` or ``true``. Anything else
(``yes``, ``on``, an empty value, ``1 `` with the trailing space that Windows' ``set X=1 ``
keeps) is ignored: TensorFlow logs a warning (hidden at the log level the project sets) and
keeps its default, ``DefaultOneDnnPolicy``: on, on Linux, only for CPUs with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX. On the other x86 CPUs (AMD Zen 2/3, Intel before Cascade Lake)
oneDNN then stays off and 3D convolutions train several times slower (README, "oneDNN on every
x86 CPU"). :func:`ignored_value_warning` says so in one WARNING.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

logger = logging.getLogger(__name__)

#: The values TensorFlow's ``ReadBoolFromEnvVar`` accepts, after ASCII lower-casing.
ACCEPTED_VALUES = ("0", "false", "1", "true")


def ignored_value(environ: Mapping[str, str] | None = None) -> str | None:
    """The value of ``TF_ENABLE_ONEDNN_OPTS`` when TensorFlow ignores it; None when unset or
    accepted (see ``ACCEPTED_VALUES``)."""
    import unet3d

    environ = os.environ if environ is None else environ
    value = environ.get(unet3d.ONEDNN_VARIABLE)
    if value is None or value.lower() in ACCEPTED_VALUES:
        return None
    return value


def tensorflow_onednn_enabled() -> bool | None:
    """TensorFlow's ``IsMklEnabled()`` (None when this TensorFlow build cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    try:
        return bool(_pywrap_util_port.IsMklEnabled())
    except AttributeError:  # a TensorFlow build without the query
        return None


def onednn_state(enabled: bool | None = None, source: str | None = None,
                 environ: Mapping[str, str] | None = None) -> str:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process, and who decided.

    Args:
        enabled: oneDNN on or off (default: TensorFlow's ``IsMklEnabled()``, read once the
            variable can no longer change).
        source: who decided (default: ``unet3d.ONEDNN``, see ``unet3d._prefer_onednn``).
        environ: the environment (default ``os.environ``).

    Returns:
        ``"on"`` or ``"off"`` with the reason, e.g. ``"on (TF_ENABLE_ONEDNN_OPTS=1 set by
        unet3d)"``, ``"off (TF_ENABLE_ONEDNN_OPTS=0 from the environment)"``, ``"off
        (TensorFlow's default: TensorFlow was imported before unet3d)"``, ``"off
        (TF_ENABLE_ONEDNN_OPTS='yes' from the environment, ignored by TensorFlow: its
        default)"``.
    """
    import unet3d

    environ = os.environ if environ is None else environ
    source = unet3d.ONEDNN if source is None else source
    if enabled is None:
        enabled = tensorflow_onednn_enabled()
        if enabled is None:
            enabled = environ.get(unet3d.ONEDNN_VARIABLE, "").lower() in ("1", "true")
    variable = f"{unet3d.ONEDNN_VARIABLE}={environ.get(unet3d.ONEDNN_VARIABLE)}"
    ignored = ignored_value(environ)
    if ignored is not None:
        variable = (f"{unet3d.ONEDNN_VARIABLE}={ignored!r} from the environment, ignored by "
                    "TensorFlow: its default")
    reason = {
        "environment": variable if ignored is not None else f"{variable} from the environment",
        "unet3d": f"{variable} set by unet3d",
        "tensorflow imported first": "TensorFlow's default: TensorFlow was imported before "
                                     "unet3d",
    }.get(source, f"TensorFlow's default: {source}")
    return f"{'on' if enabled else 'off'} ({reason})"


def ignored_value_warning(enabled: bool | None = None,
                          environ: Mapping[str, str] | None = None) -> str | None:
    """Log one WARNING when ``TF_ENABLE_ONEDNN_OPTS`` holds a value TensorFlow ignores.

    Args:
        enabled: whether oneDNN is on (default: TensorFlow's ``IsMklEnabled()``).
        environ: the environment (default ``os.environ``).

    Returns:
        The warning (also logged), quoting the value and saying whether oneDNN is off; None
        when the value is unset or one TensorFlow reads.
    """
    import unet3d

    value = ignored_value(environ)
    if value is None:
        return None
    if enabled is None:
        enabled = tensorflow_onednn_enabled()
    name = unet3d.ONEDNN_VARIABLE
    if enabled is False:
        state = ("oneDNN is off (TensorFlow's default on this CPU): 3D convolutions run "
                 "several times slower")
    elif enabled:
        state = "oneDNN is on only because TensorFlow turns it on by default on this CPU"
    else:
        state = "oneDNN keeps TensorFlow's default"
    message = (f"{name}={value!r} is not a value TensorFlow reads (only 0, 1, true or false, "
               f"without spaces), so TensorFlow ignored it: {state}. Set {name}=1 (oneDNN on) "
               f"or {name}=0 (off), or unset it (unet3d then turns oneDNN on)")
    logger.warning("%s", message)
    return message


__all__ = [
    "ACCEPTED_VALUES",
    "ignored_value",
    "ignored_value_warning",
    "onednn_state",
    "tensorflow_onednn_enabled",
]
