"""The built-in data sets (data=synthetic, data=brats2019) as components of the data group."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unet3d.data.datasets import BraTSFolder, SyntheticBraTS, build_dataset, cases_dir_of
from unet3d.data.layouts.case_folders import CaseFolders
from unet3d.errors import ConfigError, DataError

find_cases = CaseFolders().find_cases  # BraTS 2019 case folders

SETTINGS = {"num_cases": 2, "shape": [32, 32, 24], "spacing": [1, 1, 1], "seed": 1,
            "layout": "flat"}


def test_synthetic_cases_live_under_a_folder_named_by_their_settings(tmp_path: Path) -> None:
    first = SyntheticBraTS(SETTINGS, raw_dir=None).cases_dir(tmp_path)
    assert first.parent.parent == tmp_path / "synthetic" and first.name == "raw"
    assert len(find_cases(first)) == 2
    assert SyntheticBraTS(SETTINGS, raw_dir=None).cases_dir(tmp_path) == first
    other = SyntheticBraTS({**SETTINGS, "shape": [24, 24, 16]}, raw_dir=None).cases_dir(tmp_path)
    assert other != first and len(find_cases(other)) == 2
    chosen = SyntheticBraTS(SETTINGS, raw_dir=str(tmp_path / "mine")).cases_dir(tmp_path)
    assert chosen == (tmp_path / "mine").resolve() and len(find_cases(chosen)) == 2


def test_the_data_group_builds_its_data_set(tmp_path: Path) -> None:
    group = OmegaConf.create({"_target_": "unet3d.data.datasets.SyntheticBraTS",
                              "name": "synthetic", "raw_dir": None, "synthetic": SETTINGS,
                              "crop_size": [32, 32, 32], "batch_size": 1, "cache": True})
    dataset = build_dataset(group)
    assert isinstance(dataset, SyntheticBraTS) and dataset.settings()["num_cases"] == 2
    folder = build_dataset({"_target_": "unet3d.data.datasets.BraTSFolder", "name": "brats",
                            "raw_dir": str(tmp_path), "crop_size": [32, 32, 32]})
    assert isinstance(folder, BraTSFolder)
    assert cases_dir_of(folder, tmp_path, "BraTSFolder") == tmp_path.resolve()


def test_data_set_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.raw_dir does not exist"):
        BraTSFolder(str(tmp_path / "nope")).cases_dir(tmp_path)
    with pytest.raises(ConfigError, match=r"^data\._target_: .*BraTSFolder\(\.\.\.\) failed: "
                                          r"TypeError: .*'synthetic'"):
        build_dataset({"_target_": "unet3d.data.datasets.BraTSFolder", "raw_dir": "x",
                       "synthetic": SETTINGS})


def test_layout_keys_are_not_arguments_of_the_data_set(tmp_path: Path) -> None:
    from unet3d.data.layouts.resolve import data_config

    group = {"_target_": "unet3d.data.datasets.BraTSFolder", "name": "brats2023",
             "raw_dir": str(tmp_path), **data_config("brats2023")}
    folder = build_dataset(group)
    assert isinstance(folder, BraTSFolder) and folder.raw_dir == str(tmp_path)


def test_a_synthetic_layout_without_a_data_set_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.synthetic\.layout: no data set 'nope'"):
        SyntheticBraTS({**SETTINGS, "layout": "nope"}, raw_dir=None).layout_config()
