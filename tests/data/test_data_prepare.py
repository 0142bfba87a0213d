import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unet3d.data.prepare import prepare_data
from unet3d.errors import ConfigError, DataError


def _cfg(data_dir, data=None, **overrides):
    cfg = OmegaConf.create(
        {
            "seed": 42,
            "fold": 1,
            "num_folds": 3,
            "paths": {"data_dir": str(data_dir)},
            "data": {
                "_target_": "unet3d.data.datasets.SyntheticBraTS",
                "name": "synthetic",
                "raw_dir": None,
                "preprocessed_dir": None,
                "synthetic": {
                    "num_cases": 6,
                    "shape": [24, 24, 16],
                    "spacing": [1.0, 1.0, 1.0],
                    "seed": 2019,
                    "layout": "brats2019",
                },
            },
        }
    )
    if data is not None:  # another data set: its own group, nothing of the synthetic one
        cfg.data = OmegaConf.create({"name": "brats2019", "preprocessed_dir": None, **data})
    return OmegaConf.merge(cfg, OmegaConf.create(overrides))


def test_prepare_synthetic(tmp_path):
    prepared = prepare_data(_cfg(tmp_path))
    assert prepared.preprocessed_dir.parent == tmp_path / "preprocessed"
    assert prepared.preprocessed_dir.name.startswith("synthetic-")
    assert prepared.case_ids == [f"BraTS19_SYN_000{i}" for i in range(1, 7)]
    assert len(prepared.split) == 3
    assert (prepared.preprocessed_dir / "splits_k3_seed42.json").is_file()
    assert len(prepared.train_files) == 4 and len(prepared.eval_files) == 2
    assert not set(prepared.train_files) & set(prepared.eval_files)
    assert all(os.path.isfile(f) for f in prepared.train_files + prepared.eval_files)
    assert [Path(f).stem for f in prepared.eval_files] == prepared.split[1]["val"]
    mtimes = {f: os.stat(f).st_mtime_ns for f in prepared.train_files}
    again = prepare_data(_cfg(tmp_path))
    assert again.train_files == prepared.train_files
    assert {f: os.stat(f).st_mtime_ns for f in again.train_files} == mtimes


def test_prepare_real_layout_and_errors(tmp_path, tiny_raw):
    cfg = _cfg(
        tmp_path,
        fold=0,
        num_folds=2,
        data={"_target_": "unet3d.data.datasets.BraTSFolder", "raw_dir": str(tiny_raw)},
    )
    prepared = prepare_data(cfg)
    assert prepared.preprocessed_dir.name.startswith("brats2019-")
    assert len(prepared.train_files) == 2 and len(prepared.eval_files) == 2
    explicit = _cfg(tmp_path)
    explicit.data.preprocessed_dir = str(tmp_path / "mine")
    assert prepare_data(explicit).preprocessed_dir == (tmp_path / "mine").resolve()
    with pytest.raises(DataError, match="data.raw_dir does not exist"):
        prepare_data(_cfg(tmp_path, data={"_target_": "unet3d.data.datasets.BraTSFolder",
                                          "raw_dir": str(tmp_path / "nope")}))
    with pytest.raises(ConfigError, match=r"^data\._target_: .*has no attribute 'Nope'"):
        prepare_data(_cfg(tmp_path, data={"_target_": "unet3d.data.datasets.Nope"}))


def test_prepare_reads_the_layout_of_the_data_group(tmp_path):
    from tests.data.test_readers import write_nnunet
    from unet3d.data.layouts.resolve import data_config
    from unet3d.data.tfrecord import read_record

    raw = write_nnunet(tmp_path / "Dataset137_BraTS2021",
                       cases=[f"BraTS2021_0000{i}" for i in range(4)])
    group = {"_target_": "unet3d.data.datasets.BraTSFolder", "raw_dir": str(raw),
             **data_config("nnunet_raw")}
    prepared = prepare_data(_cfg(tmp_path, data=group, fold=0, num_folds=2))
    assert prepared.layout.convention.name == "nnunet_raw:Dataset137_BraTS2021"
    assert prepared.case_ids == [f"BraTS2021_0000{i}" for i in range(4)]
    record = read_record(prepared.train_files[0])
    assert record["image"].shape == (8, 8, 8, 4) and record["label"].max() == 3
    default = prepare_data(_cfg(tmp_path / "synthetic"))
    assert default.layout.convention.name == "brats2019"
    (raw / "dataset.json").write_text("{")
    with pytest.raises(DataError, match=r"dataset\.json: unreadable dataset\.json"):
        prepare_data(_cfg(tmp_path, data=group, fold=0, num_folds=2))
