"""``mode=score``'s file pairing and reading (``unet3d.modes.score``): clear one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from unet3d.errors import ConfigError, DataError
from unet3d.modes.score import find_pairs, read_labels, score_convention


def _nifti(path: Path, volume: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.diag([*spacing, 1.0])), str(path))
    return path


def test_pairs_in_every_reference_layout(tmp_path):
    volume = np.zeros((4, 4, 4), np.uint8)
    for case in ("a", "b", "c", "d"):
        _nifti(tmp_path / "p" / f"{case}.nii.gz", volume)
    _nifti(tmp_path / "r" / "a.nii.gz", volume)
    _nifti(tmp_path / "r" / "b-seg.nii.gz", volume)
    _nifti(tmp_path / "r" / "c" / "c-seg.nii.gz", volume)
    _nifti(tmp_path / "r" / "d" / "d_seg.nii", volume)
    pairs = find_pairs(tmp_path / "p", tmp_path / "r")
    assert [(case, ref.relative_to(tmp_path / "r").as_posix()) for case, _, ref in pairs] == [
        ("a", "a.nii.gz"), ("b", "b-seg.nii.gz"), ("c", "c/c-seg.nii.gz"), ("d", "d/d_seg.nii")]


def test_missing_files_are_named(tmp_path):
    volume = np.zeros((4, 4, 4), np.uint8)
    (tmp_path / "p").mkdir()
    with pytest.raises(DataError, match="no .nii.gz / .nii predictions"):
        find_pairs(tmp_path / "p", tmp_path)
    _nifti(tmp_path / "p" / "a.nii.gz", volume)
    (tmp_path / "r").mkdir()
    with pytest.raises(DataError, match=r"a.nii.gz: no reference for case a in"):
        find_pairs(tmp_path / "p", tmp_path / "r")
    _nifti(tmp_path / "r" / "a.nii.gz", volume)
    _nifti(tmp_path / "r" / "z" / "z-seg.nii.gz", volume)
    with pytest.raises(DataError, match=r"1 reference case\(s\) of .* have no prediction: z"):
        find_pairs(tmp_path / "p", tmp_path / "r")


def test_read_labels_checks_values(tmp_path):
    labels, spacing = read_labels(_nifti(tmp_path / "a.nii.gz", np.full((3, 3, 3), 2.0),
                                         (1.0, 1.0, 2.5)))
    assert labels.dtype == np.uint8 and labels.max() == 2 and spacing == (1.0, 1.0, 2.5)
    with pytest.raises(DataError, match="label values must be integers"):
        read_labels(_nifti(tmp_path / "b.nii.gz", np.full((3, 3, 3), 1.5)))
    with pytest.raises(DataError, match="must be 3D"):
        read_labels(_nifti(tmp_path / "c.nii.gz", np.zeros((3, 3), np.uint8)))
    (tmp_path / "d.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="d.nii.gz: unreadable NIfTI"):
        read_labels(tmp_path / "d.nii.gz")


def test_convention_from_the_data_group():
    cfg = OmegaConf.create({"data": {"name": "x", "synthetic": {"layout": "brats2023"}}})
    assert score_convention(cfg).name == "brats2023"
    cfg = OmegaConf.create({"data": {"name": "nnunet_raw", "labels": None, "regions": None}})
    with pytest.raises(ConfigError, match="^data.labels: mode=score needs"):
        score_convention(cfg)
