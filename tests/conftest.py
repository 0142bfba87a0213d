"""Suite-wide isolation: no test sees the Keras dtype policy another test left behind.

In-process runs of the task (``precision=auto``) pick ``mixed_bfloat16`` on hosts with AMX or
AVX512-BF16 and set it as Keras' global policy, which outlives the test. Tests that build layers
after such a run would then compute in bfloat16 on those hosts only. Keras is imported lazily
here so tests that never load TensorFlow stay fast.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _reset_keras_dtype_policy() -> Iterator[None]:
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")
