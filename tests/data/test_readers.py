"""The layout readers on tiny hand-written NIfTI files (8x8x8), one folder per layout.

Each modality's voxels hold ``VALUE[modality]`` (plus a gradient), so a test can tell that the
image's channels come out in MODALITIES order whatever the order on disk.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from unet3d.data.datasets import SyntheticBraTS
from unet3d.data.layouts.convention import BRATS2019, BRATS2023, MODALITIES, MSD_BRAIN
from unet3d.data.layouts.resolve import DataLayout, data_config, default_layout, resolve_layout
from unet3d.data.readers import CaseFolders, MSDFolder, NNUNetRawFolder

SHAPE = (8, 8, 8)
VALUE = {"t1": 100.0, "t1ce": 200.0, "t2": 300.0, "flair": 400.0}
NAMES = {"brats2019": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}),
         "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"})}
MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
NNUNET_REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                  "enhancing tumor": [3]}


def volume(modality):
    """Float32 8x8x8 volume of one modality: its VALUE plus a gradient along the first axis."""
    return (VALUE[modality] + np.arange(SHAPE[0])[:, None, None] * np.ones(SHAPE)).astype(
        np.float32)


def label(values=(0, 1, 2, 4)):
    """Uint8 8x8x8 label holding each of ``values`` in a slab."""
    data = np.zeros(SHAPE, dtype=np.uint8)
    for index, value in enumerate(values):
        data[index * 2:(index + 1) * 2] = value
    return data


def save(path, array, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine),
             str(path))
    return path


def write_case_folder(root, case_id, naming="brats2019", labels=(0, 1, 2, 4), grade=None,
                      with_label=True):
    """``<root>[/grade]/<case>/<case><sep><suffix>.nii.gz`` in a BraTS naming."""
    separator, files = NAMES[naming]
    folder = root / grade / case_id if grade else root / case_id
    for modality, suffix in files.items():
        save(folder / f"{case_id}{separator}{suffix}.nii.gz", volume(modality))
    if with_label:
        save(folder / f"{case_id}{separator}seg.nii.gz", label(labels))
    return folder


def write_msd(root, cases=("BRATS_001", "BRATS_002"), test_cases=("BRATS_101",), channels=4,
              labels=(0, 1, 2, 3), modality=None, dataset_labels=None):
    """An MSD Task01 folder: 4D images (FLAIR, T1w, T1gd, T2w), labels, imagesTs, dataset.json."""
    modality = dict(MSD_MODALITY if modality is None else modality)
    order = ["flair", "t1", "t1ce", "t2"]
    image = np.stack([volume(order[i % 4]) for i in range(channels)], axis=-1)
    for case in cases:
        save(root / "imagesTr" / f"{case}.nii.gz", image)
        save(root / "labelsTr" / f"{case}.nii.gz", label(labels))
    for case in test_cases:
        save(root / "imagesTs" / f"{case}.nii.gz", image)
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\0\5\26\7 AppleDouble")
    data = {"name": "BRATS", "modality": modality,
            "labels": dict(MSD_LABELS if dataset_labels is None else dataset_labels),
            "numTraining": len(cases), "numTest": len(test_cases),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                         for c in cases],
            "test": [f"./imagesTs/{c}.nii.gz" for c in test_cases]}
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def write_nnunet(root, cases=("BraTS2021_00000", "BraTS2021_00002"), test_cases=("Test_001",),
                 labels=None, channel_names=None, values=(0, 1, 2, 3), **extra):
    """An nnU-Net v2 raw folder (channels T1, T1ce, T2, FLAIR = 0000..0003), region-based by
    default like nnU-Net's Dataset137_BraTS2021."""
    channel_names = channel_names or {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    by_name = {"T1": "t1", "T1ce": "t1ce", "T2": "t2", "FLAIR": "flair", "t2f": "flair",
               "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
    for folder, names in (("imagesTr", cases), ("imagesTs", test_cases)):
        for case in names:
            for index, name in channel_names.items():
                save(root / folder / f"{case}_{int(index):04d}.nii.gz", volume(by_name[name]))
    for case in cases:
        save(root / "labelsTr" / f"{case}.nii.gz", label(values))
    data = {"channel_names": channel_names,
            "labels": NNUNET_REGIONS if labels is None else labels,
            "numTraining": len(cases), "file_ending": ".nii.gz", "name": "Dataset137_BraTS2021"}
    if labels is None:
        data["regions_class_order"] = [1, 2, 3]
    data.update(extra)
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def layout_of(name, folder):
    """``resolve_layout`` with the layout keys of ``conf/data/<name>.yaml``."""
    return resolve_layout(OmegaConf.create(data_config(name)), None, folder)


def assert_canonical(image):
    assert image.shape == (*SHAPE, 4) and image.dtype == np.float32
    for channel, modality in enumerate(MODALITIES):
        assert np.array_equal(image[..., channel], volume(modality)), modality


def test_brats2019_case_folders_with_grades(tmp_path):
    write_case_folder(tmp_path, "BraTS19_A_001", grade="HGG")
    write_case_folder(tmp_path, "BraTS19_A_002", grade="LGG", labels=(0, 2))
    layout = layout_of("brats2019", tmp_path)
    assert layout.convention == BRATS2019 and isinstance(layout.reader, CaseFolders)
    cases = layout.find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["BraTS19_A_001", "BraTS19_A_002"]
    loaded = layout.load_case(cases[0])
    assert_canonical(loaded.image)
    assert loaded.label.dtype == np.uint8 and sorted(np.unique(loaded.label)) == [0, 1, 2, 4]


def test_brats2023_case_folders(tmp_path):
    for case in ("BraTS-GLI-00000-000", "BraTS-GLI-00002-000"):
        write_case_folder(tmp_path, case, "brats2023", labels=(0, 1, 2, 3))
    layout = layout_of("brats2023", tmp_path)
    assert layout.convention == BRATS2023
    cases = layout.find_cases(tmp_path)
    assert cases[0].modalities["flair"].name == "BraTS-GLI-00000-000-t2f.nii.gz"
    loaded = layout.load_case(cases[0])
    assert_canonical(loaded.image)
    assert sorted(np.unique(loaded.label)) == [0, 1, 2, 3]


def test_a_test_set_without_labels(tmp_path):
    write_case_folder(tmp_path, "BraTS-GLI-00009-000", "brats2023", with_label=False)
    layout = layout_of("brats2023", tmp_path)
    case, = layout.find_cases(tmp_path, require_label=False)
    assert case.label is None and layout.load_case(case).label is None


def test_msd_4d_images_in_canonical_order(tmp_path):
    write_msd(tmp_path)
    layout = layout_of("msd_brain", tmp_path)
    assert layout.convention == MSD_BRAIN and isinstance(layout.reader, MSDFolder)
    cases = layout.find_cases(tmp_path)  # the hidden ._BRATS_001.nii.gz is skipped
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002"]
    assert cases[0].channels == {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}
    assert len({cases[0].source(m)[0] for m in MODALITIES}) == 1  # one 4D file
    loaded = layout.load_case(cases[0])
    assert_canonical(loaded.image)
    assert sorted(np.unique(loaded.label)) == [0, 1, 2, 3]
    assert loaded.affine.shape == (4, 4) and loaded.spacing == (1.0, 1.0, 1.0)


def test_an_msd_4d_file_is_read_once(tmp_path, monkeypatch):
    write_msd(tmp_path)
    layout = layout_of("msd_brain", tmp_path)
    case = layout.find_cases(tmp_path)[0]
    opened = []
    original = nib.load
    monkeypatch.setattr(nib, "load", lambda path, *a, **k: opened.append(Path(path).name)
                        or original(path, *a, **k))
    layout.load_case(case)
    assert opened == ["BRATS_001.nii.gz", "BRATS_001.nii.gz"]  # the image once, the label once


def test_msd_images_folder_for_prediction(tmp_path):
    write_msd(tmp_path)
    layout = layout_of("msd_brain", tmp_path / "imagesTs")
    case, = layout.find_cases(tmp_path / "imagesTs", require_label=False)
    assert case.case_id == "BRATS_101" and case.label is None
    assert_canonical(layout.load_case(case).image)
    training = layout.find_cases(tmp_path / "imagesTr")  # labels from the sibling labelsTr
    assert training[0].label == tmp_path / "labelsTr" / "BRATS_001.nii.gz"


def test_nnunet_region_based_dataset_json(tmp_path):
    write_nnunet(tmp_path)
    layout = layout_of("nnunet_raw", tmp_path)
    convention = layout.convention
    assert isinstance(layout.reader, NNUNetRawFolder)
    assert convention.name == "nnunet_raw:Dataset137_BraTS2021"
    assert convention.values == (0, 1, 2, 3)
    assert dict(convention.regions) == {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
    assert convention.region_order == ("WT", "TC", "ET")
    # nnU-Net's BraTS conversion: 1 edema, 2 necrosis/non-enhancing, 3 enhancing.
    assert convention.tissues == ("background", "SNFH", "NETC", "ET")
    assert convention.translation_to(BRATS2019).tolist() == [0, 2, 1, 4]
    cases = layout.find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00002"]
    assert cases[0].modalities["t1ce"].name == "BraTS2021_00000_0001.nii.gz"
    assert_canonical(layout.load_case(cases[0]).image)
    test_case, = layout.find_cases(tmp_path / "imagesTs", require_label=False)
    assert test_case.case_id == "Test_001" and test_case.label is None


def test_nnunet_plain_labels_and_other_channel_names(tmp_path):
    labels = {"background": 0, "NETC": 1, "SNFH": 2, "ET": 3}
    write_nnunet(tmp_path, labels=labels,
                 channel_names={"0": "t2f", "1": "t1n", "2": "t1c", "3": "t2w"})
    layout = layout_of("nnunet_raw", tmp_path)
    assert dict(layout.convention.regions) == {"NETC": (1,), "SNFH": (2,), "ET": (3,)}
    assert layout.convention.translation_to(BRATS2023).tolist() == [0, 1, 2, 3]
    cases = layout.find_cases(tmp_path)
    assert cases[0].modalities["flair"].name.endswith("_0000.nii.gz")
    assert_canonical(layout.load_case(cases[0]).image)


def test_synthetic_layouts_use_the_real_data_sets_yaml(tmp_path):
    settings = {"num_cases": 1, "shape": [8, 8, 8], "spacing": [1, 1, 1], "seed": 1}
    flat = SyntheticBraTS({**settings, "layout": "flat"}, raw_dir=None)
    assert flat.layout_config()["reader"]["separator"] == "_"
    msd = SyntheticBraTS({**settings, "layout": "msd_brain"}, raw_dir=None)
    assert msd.layout_config()["reader"] == {"_target_": "unet3d.data.readers.MSDFolder"}
    write_case_folder(tmp_path, "Case_1")
    layout = resolve_layout(OmegaConf.create({"name": "synthetic"}), flat, tmp_path)
    assert layout.convention == BRATS2019


def test_without_layout_keys_the_default_is_brats2019(tmp_path):
    layout = resolve_layout({"_target_": "my.DataSet"}, object(), tmp_path)
    assert isinstance(layout, DataLayout) and layout.convention == BRATS2019
    assert default_layout().reader.separator == "_"


@pytest.mark.parametrize("name", ["brats2019", "brats2021", "brats2023", "brats2024_post",
                                  "msd_brain", "nnunet_raw"])
def test_every_data_yaml_composes_with_hydra(name):
    from hydra import compose, initialize_config_dir

    from unet3d.data.layouts.resolve import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"data={name}", "data.raw_dir=/tmp"])
    assert cfg.data.name == name and cfg.data.reader._target_.startswith("unet3d.data.readers.")
    assert Path(cfg.data.raw_dir) == Path("/tmp")
