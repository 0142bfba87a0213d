"""unet3d: a Hydra-configured 3D U-Net framework for BraTS brain-tumour segmentation.

Importing the package turns TensorFlow's oneDNN CPU kernels on where TensorFlow itself would
leave them off (see :data:`ONEDNN`), so it must come before ``import tensorflow`` to take
effect; every entry point (``python -m unet3d.run``, the served model, the benchmarks, the
tests' ``conftest.py``) imports it first.
"""

import os as _os
import platform as _platform
import sys as _sys

__version__ = "0.1.0"

#: TensorFlow's switch for its oneDNN (Intel MKL-DNN) CPU kernels, read once when TensorFlow
#: starts (``tensorflow/core/util/util.cc``, ``IsMklEnabled``).
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def _prefer_onednn() -> str:
    """Set ``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64 Linux when nobody chose; say who decided.

    TensorFlow (2.9+) turns oneDNN on by default on Linux only for CPUs with AVX512_VNNI,
    AVX512_BF16, AVX_VNNI or AMX (``DefaultOneDnnPolicy`` in ``tensorflow/core/util/util.cc``);
    on the others (AMD Zen 2/3, Intel before Cascade Lake) it runs Eigen's kernels, and this
    project's 3D convolutions then train several times slower (measured: benchmarks/README.md,
    "oneDNN on every x86 CPU").
    An explicit ``TF_ENABLE_ONEDNN_OPTS`` (``0`` to opt out) is always kept.

    Returns:
        One of ``"environment"`` (the variable was set), ``"unet3d"`` (set here),
        ``"tensorflow imported first"`` (too late to set it: TensorFlow's own default holds) or
        ``"not x86-64 Linux"`` (TensorFlow's own default holds).
    """
    if ONEDNN_VARIABLE in _os.environ:
        return "environment"
    if "tensorflow" in _sys.modules:
        return "tensorflow imported first"
    if not _sys.platform.startswith("linux") or _platform.machine().lower() not in (
            "x86_64", "amd64"):
        return "not x86-64 Linux"
    _os.environ[ONEDNN_VARIABLE] = "1"
    return "unet3d"


#: Who decided whether TensorFlow uses oneDNN in this process (see ``_prefer_onednn``); the
#: runner logs it with the device line (``unet3d.runtime.devices.onednn_state``).
ONEDNN: str = _prefer_onednn()
