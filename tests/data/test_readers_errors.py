"""Bad input in each layout: one DataError line naming the case and file (or dataset.json)."""

import json
import re

import numpy as np
import pytest

from tests.data.test_readers import (
    MSD_LABELS,
    MSD_MODALITY,
    label,
    layout_of,
    save,
    write_case_folder,
    write_msd,
    write_nnunet,
)
from unet3d.data.preprocess import preprocess_dataset
from unet3d.errors import ConfigError, DataError


def _raises(call, pattern):
    with pytest.raises(DataError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    assert re.search(pattern, message), message
    return message


def test_a_2023_case_among_2019_cases(tmp_path):
    write_case_folder(tmp_path, "BraTS19_A_001")
    write_case_folder(tmp_path, "BraTS-GLI-00000-000", "brats2023")
    layout = layout_of("brats2019", tmp_path)
    _raises(lambda: layout.find_cases(tmp_path),
            r"^case BraTS-GLI-00000-000: .*BraTS-GLI-00000-000-\w+\.nii\.gz: mixed naming "
            r"conventions in .* \(case BraTS19_A_001 is brats2019\); file named as brats2023")
    layout_2023 = layout_of("brats2023", tmp_path)
    _raises(lambda: layout_2023.find_cases(tmp_path),
            r"^case BraTS19_A_001: .*BraTS19_A_001_\w+\.nii\.gz: mixed naming conventions .*"
            r"use data=brats2019")


def test_a_2023_folder_read_as_2019_names_the_right_option(tmp_path):
    write_case_folder(tmp_path, "BraTS-GLI-00000-000", "brats2023")
    layout = layout_of("brats2019", tmp_path)
    message = _raises(lambda: layout.find_cases(tmp_path),
                      r"^case BraTS-GLI-00000-000: .*: file named as brats2023, but this data "
                      r"set reads brats2019 names")
    assert message.endswith("use data=brats2023 for such a folder")


def test_mixed_names_in_one_case(tmp_path):
    folder = write_case_folder(tmp_path, "Case_1")
    save(folder / "Case_1-t1n.nii.gz", np.zeros((8, 8, 8), np.float32))
    for name in ("brats2019", "brats2023"):
        layout = layout_of(name, tmp_path)
        _raises(lambda layout=layout: layout.find_cases(tmp_path),
                r"^case Case_1: .*/Case_1[-_]\w+\.nii\.gz: mixed naming conventions in one "
                r"case \(Case_1[-_]\w+\.nii\.gz is brats20(19|23), Case_1[-_]\w+\.nii\.gz "
                r"is brats20(19|23)\)$")


def test_a_2023_case_missing_a_modality(tmp_path):
    folder = write_case_folder(tmp_path, "BraTS-GLI-00000-000", "brats2023")
    (folder / "BraTS-GLI-00000-000-t2f.nii.gz").unlink()
    layout = layout_of("brats2023", tmp_path)
    _raises(lambda: layout.find_cases(tmp_path),
            r"^case BraTS-GLI-00000-000: missing file .*/BraTS-GLI-00000-000-t2f\.nii\.gz$")
    case, = layout.find_cases(tmp_path, allow_missing=True)  # prediction: fails alone
    _raises(lambda: layout.load_case(case), r"BraTS-GLI-00000-000-t2f\.nii\.gz: file does not")


def test_labels_outside_the_declared_set(tmp_path):
    write_case_folder(tmp_path, "BraTS-GLI-00000-000", "brats2023", labels=(0, 1, 4))
    layout = layout_of("brats2023", tmp_path)
    case, = layout.find_cases(tmp_path)
    _raises(lambda: layout.load_case(case),
            r"^case BraTS-GLI-00000-000: .*-seg\.nii\.gz: label values \[4\] outside "
            r"\[0, 1, 2, 3\]$")
    assert layout_of("brats2024_post", tmp_path).load_case(case).label.max() == 4
    out = tmp_path / "records"
    _raises(lambda: preprocess_dataset(tmp_path, out, layout), r"label values \[4\]")
    assert not list(out.glob("*.tfrecord"))


def test_msd_image_with_the_wrong_number_of_channels(tmp_path):
    write_msd(tmp_path, channels=3)
    layout = layout_of("msd_brain", tmp_path)
    case = layout.find_cases(tmp_path)[0]
    _raises(lambda: layout.load_case(case),
            r"^case BRATS_001: .*imagesTr/BRATS_001\.nii\.gz: expected a 4D volume with 4 "
            r"channels \(H, W, D, 4\), got shape \(8, 8, 8, 3\)$")
    save(tmp_path / "imagesTr" / "BRATS_002.nii.gz", np.zeros((8, 8, 8), np.float32))
    _raises(lambda: layout.load_case(layout.find_cases(tmp_path)[1]),
            r"^case BRATS_002: .*got shape \(8, 8, 8\)$")


def test_msd_dataset_json_naming_a_missing_file(tmp_path):
    write_msd(tmp_path)
    (tmp_path / "labelsTr" / "BRATS_002.nii.gz").unlink()
    layout = layout_of("msd_brain", tmp_path)
    _raises(lambda: layout.find_cases(tmp_path),
            r"dataset\.json: training names label '\./labelsTr/BRATS_002\.nii\.gz', which does "
            r"not exist")


def test_msd_labels_differing_from_the_yaml(tmp_path):
    write_msd(tmp_path, dataset_labels={"0": "background", "1": "enhancing tumour",
                                        "2": "non-enhancing tumor", "3": "edema"})
    _raises(lambda: layout_of("msd_brain", tmp_path),
            r"dataset\.json: labels .* differ from data\.labels .* set data\.labels=null")


def test_msd_modalities_that_are_not_the_four(tmp_path):
    write_msd(tmp_path, modality={"0": "FLAIR", "1": "T1w", "2": "ADC", "3": "T2w"})
    layout = layout_of("msd_brain", tmp_path)
    _raises(lambda: layout.find_cases(tmp_path),
            r"dataset\.json: modality '2': 'ADC' is none of \['t1', 't1ce', 't2', 'flair'\]")


@pytest.mark.parametrize("content, pattern", [
    ("{not json", r"dataset\.json: unreadable dataset\.json"),
    ("[1, 2]", r"dataset\.json: expected a JSON object, got list"),
    (json.dumps({"labels": MSD_LABELS}), r"dataset\.json: missing key\(s\) \['modality'\]"),
    (json.dumps({"labels": {"0": "background"}, "modality": MSD_MODALITY}),
     r"dataset\.json: labels .* name no label besides"),
])
def test_unreadable_msd_dataset_json(tmp_path, content, pattern):
    write_msd(tmp_path)
    (tmp_path / "dataset.json").write_text(content)
    _raises(lambda: MSDFolderLayout(tmp_path), pattern)


def MSDFolderLayout(folder):  # noqa: N802 - reads like the reader it builds
    layout = layout_of("msd_brain", folder)
    return layout.find_cases(folder)


def test_nnunet_num_training_mismatch(tmp_path):
    write_nnunet(tmp_path, numTraining=3)
    layout = layout_of("nnunet_raw", tmp_path)
    _raises(lambda: layout.find_cases(tmp_path),
            r"dataset\.json: numTraining is 3 but .*imagesTr holds 2 case\(s\)$")


def test_nnunet_missing_channel_and_label(tmp_path):
    write_nnunet(tmp_path)
    (tmp_path / "imagesTr" / "BraTS2021_00002_0003.nii.gz").unlink()
    layout = layout_of("nnunet_raw", tmp_path)
    _raises(lambda: layout.find_cases(tmp_path),
            r"^case BraTS2021_00002: missing file .*imagesTr/BraTS2021_00002_0003\.nii\.gz$")
    save(tmp_path / "imagesTr" / "BraTS2021_00002_0003.nii.gz", np.zeros((8, 8, 8), np.float32))
    (tmp_path / "labelsTr" / "BraTS2021_00000.nii.gz").unlink()
    _raises(lambda: layout.find_cases(tmp_path),
            r"^case BraTS2021_00000: missing file .*labelsTr/BraTS2021_00000\.nii\.gz$")


def test_nnunet_extra_channel_file(tmp_path):
    write_nnunet(tmp_path)
    save(tmp_path / "imagesTr" / "BraTS2021_00000_0004.nii.gz", np.zeros((8, 8, 8), np.float32))
    layout = layout_of("nnunet_raw", tmp_path)
    _raises(lambda: layout.find_cases(tmp_path),
            r"^case BraTS2021_00000: .*_0004\.nii\.gz: channel 0004 is not in channel_names")


@pytest.mark.parametrize("change, pattern", [
    ({"regions_class_order": None}, r"region-based labels need regions_class_order with 3 "
                                    r"values, got None"),
    ({"labels": {"tumour": 1}}, r"labels must map names to values with background 0"),
    ({"channel_names": {"0": "T1", "1": "T1", "2": "T2", "3": "FLAIR"}}, r"'T1' appears twice"),
])
def test_nnunet_bad_dataset_json(tmp_path, change, pattern):
    write_nnunet(tmp_path)
    data = json.loads((tmp_path / "dataset.json").read_text())
    data.update(change)
    (tmp_path / "dataset.json").write_text(json.dumps(data))

    def read():
        layout = layout_of("nnunet_raw", tmp_path)
        layout.find_cases(tmp_path)

    _raises(read, r"dataset\.json: .*" + pattern)


def test_nnunet_labels_outside_dataset_json(tmp_path):
    write_nnunet(tmp_path)
    save(tmp_path / "labelsTr" / "BraTS2021_00000.nii.gz", label((0, 1, 5)))
    layout = layout_of("nnunet_raw", tmp_path)
    _raises(lambda: layout.load_case(layout.find_cases(tmp_path)[0]),
            r"^case BraTS2021_00000: .*labelsTr/BraTS2021_00000\.nii\.gz: label values \[5\] "
            r"outside \[0, 1, 2, 3\]$")


def test_no_dataset_json(tmp_path):
    write_case_folder(tmp_path, "Case_1")
    _raises(lambda: layout_of("msd_brain", tmp_path), r"no dataset\.json here nor in its parent")


def test_bad_reader_config(tmp_path):
    from omegaconf import OmegaConf

    from unet3d.data.layouts.resolve import resolve_layout

    with pytest.raises(ConfigError, match=r"^data\.reader\._target_: .*has no attribute 'Nope'"):
        resolve_layout(OmegaConf.create({"reader": {"_target_": "unet3d.data.readers.Nope"}}),
                       None, tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.reader\.files: must map exactly"):
        resolve_layout({"reader": {"_target_": "unet3d.data.readers.CaseFolders",
                                   "files": {"t1": "t1"}}}, None, tmp_path)
    with pytest.raises(ConfigError, match=r"^data\.labels: required with the CaseFolders"):
        resolve_layout({"reader": {"_target_": "unet3d.data.readers.CaseFolders"}}, None,
                       tmp_path)


def test_the_wrong_data_option_for_a_dataset_json_folder_is_named(tmp_path):
    msd, nnunet = write_msd(tmp_path / "msd"), write_nnunet(tmp_path / "nnunet")
    _raises(lambda: layout_of("brats2019", msd).find_cases(msd),
            r"no BraTS case found .*; it holds a dataset\.json: use data=msd_brain or "
            r"data=nnunet_raw$")
    _raises(lambda: layout_of("msd_brain", nnunet).find_cases(nnunet),
            r"missing key\(s\) \['modality'\]; an nnU-Net raw data set: use data=nnunet_raw$")
    _raises(lambda: layout_of("nnunet_raw", msd),
            r"missing key\(s\) \['channel_names'\]; a Medical Segmentation Decathlon task: "
            r"use data=msd_brain$")
