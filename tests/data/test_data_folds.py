import json

import numpy as np
import pytest

from unet3d.data.folds import load_or_create_split, make_split
from unet3d.errors import DataError

IDS = [f"case_{i:03d}" for i in range(23)]


def test_folds_are_disjoint_covering_and_balanced(tmp_path):
    folds = load_or_create_split(tmp_path / "split.json", IDS[::-1], 5, seed=42)
    assert len(folds) == 5
    vals = [fold["val"] for fold in folds]
    assert sorted(case for val in vals for case in val) == IDS
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == IDS
    order = np.random.default_rng(42).permutation(len(IDS))
    assert folds[0]["val"] == sorted(IDS[i] for i in np.array_split(order, 5)[0])


def test_split_is_stable_and_persisted(tmp_path):
    path = tmp_path / "split.json"
    first = load_or_create_split(path, IDS, 5, seed=1)
    stored = json.loads(path.read_text())
    assert stored["num_folds"] == 5 and stored["seed"] == 1 and stored["case_ids"] == IDS
    assert stored["folds"] == first
    assert load_or_create_split(path, list(reversed(IDS)), 5, seed=1) == first
    assert load_or_create_split(tmp_path / "other.json", IDS, 5, seed=1) == first
    assert make_split(IDS, 5, seed=2) != first


def test_mismatch_names_the_split_file(tmp_path):
    path = tmp_path / "split.json"
    load_or_create_split(path, IDS, 5, seed=1)
    with pytest.raises(DataError, match=f"{path}: existing split names other cases.*delete it"):
        load_or_create_split(path, IDS[:-1], 5, seed=1)
    with pytest.raises(DataError, match=f"{path}: .*num_folds 5 instead of 4"):
        load_or_create_split(path, IDS, 4, seed=1)
    path.write_text("{not json")
    with pytest.raises(DataError, match=f"{path}: split file is not valid JSON"):
        load_or_create_split(path, IDS, 5, seed=1)


def test_a_data_set_smaller_than_the_folds_is_refused():
    # num_folds >= 2 is the config's (tests/test_config.py); the data set must fill every fold.
    with pytest.raises(DataError, match="has 3 cases, fewer than num_folds=4"):
        make_split(IDS[:3], 4, seed=0)
