"""Suite-wide set-up: oneDNN as the runner has it, and no Keras dtype policy left behind.

``import unet3d`` comes first, before any test module imports TensorFlow: it turns TensorFlow's
oneDNN CPU kernels on where TensorFlow would leave them off (``unet3d._prefer_onednn``), so
in-process tests compute as ``python -m unet3d.run`` does (and 6x faster on such CPUs); the
subprocesses the tests start inherit the variable.

In-process runs of the task (``precision=auto``) pick ``mixed_bfloat16`` on hosts with AMX or
AVX512-BF16 and set it as Keras' global policy, which outlives the test. Tests that build layers
after such a run would then compute in bfloat16 on those hosts only. Keras is imported lazily
here so tests that never load TensorFlow stay fast.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

import unet3d  # noqa: F401  (before TensorFlow: see the module docstring)


@pytest.fixture(autouse=True)
def _reset_keras_dtype_policy() -> Iterator[None]:
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")
