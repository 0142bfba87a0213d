"""The synthetic generator writes every data-set layout and label convention (issue 13)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from unet3d.config import SYNTHETIC_LAYOUTS
from unet3d.data.layouts.convention import MODALITIES
from unet3d.data.synthetic.case import case_grade, generate_case
from unet3d.data.synthetic.generate import generate_dataset, synthetic_settings_key
from unet3d.data.synthetic.layouts import LAYOUTS
from unet3d.errors import ConfigError

SHAPE = (32, 32, 24)
SPACING = (1.0, 1.2, 2.0)
SEED = 2019  # the first 4 cases: HGG and LGG
NUM = 4


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """The same 4 cases (and, for MSD/nnU-Net, 2 test cases) in every layout."""
    root = tmp_path_factory.mktemp("layouts")
    folders = {}
    for layout in LAYOUTS:
        num_test = 2 if layout in ("msd_brain", "nnunet_raw") else 0
        generate_dataset(root / layout, NUM, SHAPE, SPACING, SEED, layout=layout,
                         num_test=num_test)
        folders[layout] = root / layout
    return folders


def test_layouts_match_the_config_vocabulary() -> None:
    assert tuple(SYNTHETIC_LAYOUTS) == LAYOUTS


def test_file_names_of_each_layout(written: dict[str, Path]) -> None:
    grades = [case_grade(SEED, i) for i in range(NUM)]
    assert set(grades) == {"HGG", "LGG"}
    flat_ids = [f"BraTS19_SYN_{i + 1:04d}" for i in range(NUM)]
    assert _files(written["flat"]) == {"synthetic_manifest.json"} | {
        f"{c}/{c}_{m}.nii.gz" for c in flat_ids for m in (*MODALITIES, "seg")}
    assert _files(written["brats2019"]) == {"synthetic_manifest.json"} | {
        f"{g}/{c}/{c}_{m}.nii.gz" for c, g in zip(flat_ids, grades, strict=True)
        for m in (*MODALITIES, "seg")}
    ids_2023 = [f"BraTS-GLI-{i:05d}-000" for i in range(NUM)]
    assert ids_2023[0] == "BraTS-GLI-00000-000"
    assert _files(written["brats2023"]) == {"synthetic_manifest.json"} | {
        f"{c}/{c}-{m}.nii.gz" for c in ids_2023 for m in ("t1n", "t1c", "t2w", "t2f", "seg")}
    msd = [f"BRATS_{i:03d}" for i in range(1, NUM + 3)]
    assert _files(written["msd_brain"]) == {"synthetic_manifest.json", "dataset.json"} | {
        f"imagesTr/{c}.nii.gz" for c in msd[:NUM]} | {f"labelsTr/{c}.nii.gz" for c in msd[:NUM]} | {
        f"imagesTs/{c}.nii.gz" for c in msd[NUM:]}
    ids_2021 = [f"BraTS2021_{i:05d}" for i in range(NUM)]
    assert _files(written["brats2021"]) == {"synthetic_manifest.json"} | {
        f"{c}/{c}_{m}.nii.gz" for c in ids_2021 for m in (*MODALITIES, "seg")}
    nnunet = [f"BraTS2021_{i:05d}" for i in range(NUM + 2)]
    assert _files(written["nnunet_raw"]) == {"synthetic_manifest.json", "dataset.json"} | {
        f"imagesTr/{c}_{k:04d}.nii.gz" for c in nnunet[:NUM] for k in range(4)} | {
        f"labelsTr/{c}.nii.gz" for c in nnunet[:NUM]} | {
        f"imagesTs/{c}_{k:04d}.nii.gz" for c in nnunet[NUM:] for k in range(4)}


# BraTS 2019 label -> the layout's label of the same tissue.
MAPS = {"brats2019": {0: 0, 1: 1, 2: 2, 4: 4}, "brats2021": {0: 0, 1: 1, 2: 2, 4: 4},
        "brats2023": {0: 0, 1: 1, 2: 2, 4: 3}, "brats2024_post": {0: 0, 1: 1, 2: 2, 4: 3},
        "msd_brain": {0: 0, 1: 2, 2: 1, 4: 3}, "nnunet_raw": {0: 0, 1: 2, 2: 1, 4: 3}}


def _case_paths(layout: str, folder: Path, index: int) -> tuple[list[Path], Path]:
    """(image files in the layout's order, label file) of training case ``index``."""
    if layout == "brats2019":
        c = f"BraTS19_SYN_{index + 1:04d}"
        base = folder / case_grade(SEED, index) / c
        return [base / f"{c}_{m}.nii.gz" for m in MODALITIES], base / f"{c}_seg.nii.gz"
    if layout == "brats2021":
        base = folder / f"BraTS2021_{index:05d}"
        return ([base / f"{base.name}_{m}.nii.gz" for m in MODALITIES],
                base / f"{base.name}_seg.nii.gz")
    if layout in ("brats2023", "brats2024_post"):
        c = f"BraTS-GLI-{index:05d}-000"
        return ([folder / c / f"{c}-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")],
                folder / c / f"{c}-seg.nii.gz")
    if layout == "msd_brain":
        c = f"BRATS_{index + 1:03d}"
        return [folder / "imagesTr" / f"{c}.nii.gz"], folder / "labelsTr" / f"{c}.nii.gz"
    c = f"BraTS2021_{index:05d}"
    return ([folder / "imagesTr" / f"{c}_{k:04d}.nii.gz" for k in range(4)],
            folder / "labelsTr" / f"{c}.nii.gz")


@pytest.mark.parametrize("layout", ["brats2019", "brats2021", "brats2023", "msd_brain",
                                    "nnunet_raw"])
def test_labels_and_channels_are_the_flat_cases_in_the_layouts_convention(
        written: dict[str, Path], layout: str) -> None:
    # The layout's files hold the flat layout's arrays: channel k of the 4D MSD volume is
    # FLAIR, T1w, T1gd, T2w; nnU-Net's _0000.._0003 are T1, T1ce, T2, Flair (Dataset137).
    order = {"msd_brain": ("flair", "t1", "t1ce", "t2"), "nnunet_raw": MODALITIES,
             "brats2023": MODALITIES, "brats2019": MODALITIES, "brats2021": MODALITIES}[layout]
    seen: set[int] = set()
    for index in range(NUM):
        flat_id = f"BraTS19_SYN_{index + 1:04d}"
        flat = written["flat"] / flat_id
        images, label_path = _case_paths(layout, written[layout], index)
        if layout == "msd_brain":
            volume = nib.load(images[0])
            assert volume.shape == SHAPE + (4,) and volume.get_data_dtype() == np.int16
            channels = [np.asanyarray(volume.dataobj)[..., k] for k in range(4)]
        else:
            channels = [_load(path) for path in images]
        for channel, name in zip(channels, order, strict=True):
            assert np.array_equal(channel, _load(flat / f"{flat_id}_{name}.nii.gz")), name
        flat_label = _load(flat / f"{flat_id}_seg.nii.gz")
        label_image = nib.load(label_path)
        label = np.asanyarray(label_image.dataobj)
        assert label_image.get_data_dtype() == np.uint8
        assert np.allclose(label_image.affine, nib.load(flat / f"{flat_id}_seg.nii.gz").affine)
        lookup = np.zeros(5, dtype=np.uint8)
        for old, new in MAPS[layout].items():
            lookup[old] = new
        assert np.array_equal(label, lookup[flat_label])
        seen |= set(np.unique(label).tolist())
    expected = {"brats2019": {0, 1, 2, 4}, "brats2021": {0, 1, 2, 4}}.get(layout, {0, 1, 2, 3})
    assert seen == expected


def test_msd_dataset_json_and_test_images(written: dict[str, Path]) -> None:
    folder = written["msd_brain"]
    data = json.loads((folder / "dataset.json").read_text())
    assert data["name"] == "BRATS" and data["tensorImageSize"] == "4D"
    assert data["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert data["labels"] == {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                              "3": "enhancing tumour"}
    assert data["numTraining"] == NUM and data["numTest"] == 2
    assert data["training"][0] == {"image": "./imagesTr/BRATS_001.nii.gz",
                                   "label": "./labelsTr/BRATS_001.nii.gz"}
    assert [entry["image"] for entry in data["training"]] == [
        f"./imagesTr/BRATS_{i:03d}.nii.gz" for i in range(1, NUM + 1)]
    assert data["test"] == ["./imagesTs/BRATS_005.nii.gz", "./imagesTs/BRATS_006.nii.gz"]
    # A test case is the case that index would be: the same arrays, without a label file.
    test_image = np.asanyarray(nib.load(folder / "imagesTs" / "BRATS_005.nii.gz").dataobj)
    case = generate_case(SEED, NUM, SHAPE, SPACING)
    assert np.array_equal(test_image[..., 0], case.image[..., 3])  # FLAIR first


def test_nnunet_dataset_json_mirrors_dataset137(written: dict[str, Path]) -> None:
    data = json.loads((written["nnunet_raw"] / "dataset.json").read_text())
    assert data["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
    assert data["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                              "enhancing tumor": [3]}
    assert data["regions_class_order"] == [1, 2, 3]
    assert data["numTraining"] == NUM and data["file_ending"] == ".nii.gz"
    assert list(data)[:4] == ["channel_names", "labels", "numTraining", "file_ending"]


def test_each_layout_is_deterministic_and_idempotent(written: dict[str, Path],
                                                     tmp_path: Path) -> None:
    for layout in ("brats2023", "msd_brain", "nnunet_raw"):
        num_test = 0 if layout == "brats2023" else 2
        again = tmp_path / layout
        generate_dataset(again, NUM, SHAPE, SPACING, SEED, layout=layout, num_test=num_test)
        assert _files(again) == _files(written[layout])
        for name in _files(again):
            assert (again / name).read_bytes() == (written[layout] / name).read_bytes(), name
        stamps = {name: (again / name).stat().st_mtime_ns for name in _files(again)}
        generate_dataset(again, NUM, SHAPE, SPACING, SEED, layout=layout, num_test=num_test)
        assert {name: (again / name).stat().st_mtime_ns for name in _files(again)} == stamps


def test_growing_a_msd_folder_updates_dataset_json(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "msd", 2, SHAPE, SPACING, SEED, layout="msd_brain")
    generate_dataset(tmp_path / "msd", 3, SHAPE, SPACING, SEED, layout="msd_brain")
    data = json.loads((tmp_path / "msd" / "dataset.json").read_text())
    assert data["numTraining"] == 3 and data["numTest"] == 0 and data["test"] == []
    assert (tmp_path / "msd" / "labelsTr" / "BRATS_003.nii.gz").is_file()


def test_settings_key_differs_per_layout_and_keeps_the_default() -> None:
    default = {"num_cases": 40, "shape": [96, 96, 64], "spacing": [1.0, 1.0, 1.0],
               "seed": 2019, "layout": "flat"}
    # The cache folder of the default job (data/synthetic/<key>/raw) stays where it was.
    assert synthetic_settings_key(OmegaConf.create(default)) == "7e414da21b"
    assert synthetic_settings_key({**default, "layout": "brats2019"}) == "052dd69170"
    keys = {synthetic_settings_key({**default, "layout": layout}) for layout in LAYOUTS}
    assert len(keys) == len(LAYOUTS)
    with_test = synthetic_settings_key({**default, "layout": "msd_brain", "num_test": 2})
    assert with_test not in keys


@pytest.mark.parametrize(("arguments", "message"), [
    ({"layout": "brats2077"}, r"^data\.synthetic\.layout: must be one of \['flat', 'brats2019', "
                              r"'brats2021', 'brats2023', 'brats2024_post', 'msd_brain', "
                              r"'nnunet_raw'\], "
                              r"got 'brats2077'$"),
    ({"layout": "flat", "num_test": 2}, r"^data\.synthetic\.num_test: only the layouts"),
    ({"layout": "msd_brain", "num_test": -1}, r"^data\.synthetic\.num_test: must be an integer"),
    ({"noise_level": 0.1}, r"^data\.synthetic\.noise_level: unknown generator setting"),
    ({"noise": [0.2, 0.1]}, r"^data\.synthetic\.noise: low must be <= high"),
])
def test_bad_settings_are_one_line_and_write_nothing(tmp_path: Path, arguments: dict,
                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generate_dataset(tmp_path / "out", 2, SHAPE, SPACING, SEED, **arguments)
    assert not (tmp_path / "out").exists()


READERS = {"flat": "brats2019", "brats2019": "brats2019", "brats2021": "brats2021",
           "brats2023": "brats2023", "brats2024_post": "brats2024_post",
           "msd_brain": "msd_brain", "nnunet_raw": "nnunet_raw"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_data_sets_reader_reads_the_same_cases(written: dict[str, Path], layout: str) -> None:
    # Integration with the readers of conf/data/<data set>.yaml (unet3d.data.layouts.resolve):
    # images in MODALITIES order and the same tissue in every voxel, whatever the layout.
    from unet3d.data.layouts.convention import BRATS2019
    from unet3d.data.layouts.resolve import data_config, resolve_layout

    reader = resolve_layout(data_config(READERS[layout]), None, written[layout])
    cases = reader.find_cases(written[layout])
    assert len(cases) == NUM
    for index, case in enumerate(cases):
        loaded = reader.load_case(case)
        truth = generate_case(SEED, index, SHAPE, SPACING)
        assert np.array_equal(loaded.image, truth.image.astype(np.float32))
        tissues = np.array(reader.convention.tissues)[reader.convention.to_classes(loaded.label)]
        expected = np.array(BRATS2019.tissues)[BRATS2019.to_classes(truth.label)]
        assert np.array_equal(tissues, expected)


def test_resection_cavities_are_rc_in_brats2024_post(tmp_path: Path) -> None:
    # Post-treatment cases: the cavity is label 4 (RC) in brats2024_post, background elsewhere;
    # without resection_fraction the generator's first stream, and so the cases, are unchanged.
    import nibabel as nib

    for layout in ("brats2024_post", "brats2023"):
        generate_dataset(tmp_path / layout, 2, SHAPE, SPACING, SEED, layout=layout,
                         resection_fraction=1.0)
    post = nib.load(tmp_path / "brats2024_post" / "BraTS-GLI-00000-000" /
                    "BraTS-GLI-00000-000-seg.nii.gz").get_fdata()
    old = nib.load(tmp_path / "brats2023" / "BraTS-GLI-00000-000" /
                   "BraTS-GLI-00000-000-seg.nii.gz").get_fdata()
    assert (post == 4).sum() > 0 and set(np.unique(old)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(np.where(post == 4, 0, post), old)


def test_processes_write_the_same_files_and_a_bad_worker_count_is_refused(
        written: dict[str, Path], tmp_path: Path) -> None:
    # Two spawned worker processes (issue 32) write byte for byte what one process writes.
    parallel = tmp_path / "parallel"
    generate_dataset(parallel, NUM, SHAPE, SPACING, SEED, layout="brats2021", workers=2)
    assert _files(parallel) == _files(written["brats2021"])
    for name in _files(parallel):
        assert (parallel / name).read_bytes() == (written["brats2021"] / name).read_bytes(), name
    with pytest.raises(ConfigError, match=r"^workers: must be an integer >= 0, got -1$"):
        generate_dataset(tmp_path / "bad", NUM, SHAPE, SPACING, SEED, workers=-1)
    assert not (tmp_path / "bad").exists()
