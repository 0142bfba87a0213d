"""Shared fixtures of the data tests: a tiny synthetic data set and its records (built once)."""

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY_SHAPE = (32, 32, 24)
TINY_SEED = 2019


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """Four flat synthetic cases of 32x32x24 (read-only: copy before modifying)."""
    from unet3d.data.synthetic.generate import generate_dataset

    out = tmp_path_factory.mktemp("tiny") / "raw"
    generate_dataset(out, num_cases=4, shape=TINY_SHAPE, spacing=(1.0, 1.0, 1.0), seed=TINY_SEED)
    return out


@pytest.fixture(scope="session")
def tiny_records(tiny_raw, tmp_path_factory) -> list[str]:
    """The records of ``tiny_raw`` (read-only)."""
    from unet3d.data.preprocess import preprocess_dataset

    return preprocess_dataset(tiny_raw, tmp_path_factory.mktemp("tiny_records"))


@pytest.fixture
def raw_copy(tiny_raw, tmp_path) -> Path:
    """A writable copy of ``tiny_raw`` (without its manifest)."""
    target = tmp_path / "raw"
    shutil.copytree(tiny_raw, target, ignore=shutil.ignore_patterns("*.json"))
    return target
