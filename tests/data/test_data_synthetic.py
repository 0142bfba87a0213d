import time

import nibabel as nib
import numpy as np
import pytest

from unet3d.data.layouts.case_folders import CaseFolders
from unet3d.data.layouts.convention import MODALITIES
from unet3d.data.synthetic.case import TISSUE_CODES, case_grade, generate_case, make_affine
from unet3d.data.synthetic.generate import generate_dataset
from unet3d.errors import DataError

find_cases = CaseFolders().find_cases  # BraTS 2019 case folders

SHAPE = (32, 32, 24)


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("index", range(8))
def test_labels_are_brats_labels_with_a_tumour(index):
    case = generate_case(7, index, SHAPE, (1.0, 1.0, 1.0))
    values = set(np.unique(case.label).tolist())
    assert values <= {0, 1, 2, 4}
    assert {1, 2} <= values
    if case.grade == "HGG":
        assert 4 in values
    else:
        assert 4 not in values
    assert case.image.dtype == np.int16 and case.image.shape == SHAPE + (4,)
    brain = case.image[..., 0] > 0
    assert (case.image[~brain] == 0).all()  # skull-stripped background
    assert brain[case.label > 0].all()


def test_grades_are_mixed():
    grades = {case_grade(2019, index) for index in range(12)}
    assert grades == {"HGG", "LGG"}


def test_modality_contrasts():
    case = generate_case(3, 1, (64, 64, 48), (1.0, 1.0, 1.0))
    assert case.grade == "HGG"
    image = case.image.astype(np.float64)
    t1, t1ce, t2, flair = (image[..., i] for i in range(4))

    def mean(channel, tissue):
        mask = case.tissue == TISSUE_CODES[tissue]
        assert mask.sum() > 5, tissue
        return channel[mask].mean()

    assert mean(t1, "white_matter") > mean(t1, "grey_matter") > mean(t1, "csf")
    assert mean(t2, "csf") > mean(t2, "grey_matter") > mean(t2, "white_matter")
    assert mean(flair, "csf") < mean(flair, "white_matter")
    assert mean(flair, "edema") > 1.5 * mean(flair, "white_matter")
    assert mean(t2, "edema") > mean(t2, "white_matter")
    assert mean(t1ce, "enhancing") > 1.3 * mean(t1ce, "necrosis")
    assert mean(t1ce, "enhancing") > mean(t1ce, "white_matter")
    # The same through the labels.
    assert t1ce[case.label == 4].mean() > t1ce[case.label == 1].mean()
    assert flair[case.label == 2].mean() > flair[case.tissue == TISSUE_CODES["white_matter"]].mean()


def test_files_shapes_affine_and_spacing(tmp_path):
    spacing = (1.0, 1.2, 2.0)
    ids = generate_dataset(tmp_path / "raw", 2, SHAPE, spacing, seed=5)
    assert ids == ["BraTS19_SYN_0001", "BraTS19_SYN_0002"]
    expected_affine = make_affine(SHAPE, spacing)
    assert np.allclose(np.diag(expected_affine)[:3], [-1.0, -1.2, 2.0])
    for case_id in ids:
        for name in (*MODALITIES, "seg"):
            path = tmp_path / "raw" / case_id / f"{case_id}_{name}.nii.gz"
            image = nib.load(path)
            assert image.shape == SHAPE
            assert np.allclose(image.affine, expected_affine)
            assert np.allclose(image.header.get_zooms(), spacing)
            expected_dtype = np.uint8 if name == "seg" else np.int16
            assert image.get_data_dtype() == expected_dtype
    seg = np.asanyarray(nib.load(tmp_path / "raw" / ids[0] / f"{ids[0]}_seg.nii.gz").dataobj)
    assert np.array_equal(seg, generate_case(5, 0, SHAPE, spacing).label)


def test_deterministic_and_independent_of_num_cases(tmp_path):
    generate_dataset(tmp_path / "a", 2, SHAPE, (1, 1, 1), seed=11)
    generate_dataset(tmp_path / "b", 3, SHAPE, (1, 1, 1), seed=11)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.nii.gz"))
    assert len(files_a) == 10
    for relative in files_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    first = generate_case(11, 0, SHAPE, (1, 1, 1))
    again = generate_case(11, 0, SHAPE, (1, 1, 1))
    assert first.image.tobytes() == again.image.tobytes()
    assert first.label.tobytes() == again.label.tobytes()
    other = generate_case(12, 0, SHAPE, (1, 1, 1))
    assert not np.array_equal(first.image, other.image)


def test_idempotent_and_completes_missing_files(tmp_path):
    out = tmp_path / "raw"
    generate_dataset(out, 2, SHAPE, (1, 1, 1), seed=3)
    before = _mtimes(out)
    time.sleep(0.01)
    generate_dataset(out, 2, SHAPE, (1, 1, 1), seed=3)
    assert _mtimes(out) == before
    removed = out / "BraTS19_SYN_0002" / "BraTS19_SYN_0002_t2.nii.gz"
    content = removed.read_bytes()
    removed.unlink()
    (out / "BraTS19_SYN_0002" / "BraTS19_SYN_0002_flair.nii.gz.tmp-999999999").write_bytes(b"x")
    generate_dataset(out, 2, SHAPE, (1, 1, 1), seed=3)
    after = _mtimes(out)
    assert removed.read_bytes() == content
    for path, mtime in before.items():
        if "0001" in path.name or path.suffix == ".json":
            assert after[path] == mtime
    assert not list(out.rglob("*.tmp-*"))


def test_other_settings_or_foreign_folder_is_refused(tmp_path):
    out = tmp_path / "raw"
    generate_dataset(out, 1, SHAPE, (1, 1, 1), seed=3)
    with pytest.raises(DataError, match="synthetic_manifest.json"):
        generate_dataset(out, 1, SHAPE, (1, 1, 1), seed=4)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate_dataset(foreign, 1, SHAPE, (1, 1, 1), seed=3)


def test_brats2019_layout_small(tmp_path):
    ids = generate_dataset(tmp_path / "raw", 4, SHAPE, (1, 1, 1), seed=2019, layout="brats2019")
    grades = [case_grade(2019, i) for i in range(4)]
    assert set(grades) == {"HGG", "LGG"}
    for case_id, grade in zip(ids, grades, strict=True):
        assert (tmp_path / "raw" / grade / case_id / f"{case_id}_flair.nii.gz").is_file()
    assert [case.case_id for case in find_cases(tmp_path / "raw")] == ids


@pytest.mark.slow
def test_full_size_brats2019_layout(tmp_path):
    start = time.perf_counter()
    ids = generate_dataset(
        tmp_path / "raw", 3, (240, 240, 155), (1, 1, 1), seed=2019, layout="brats2019"
    )
    elapsed = time.perf_counter() - start
    cases = find_cases(tmp_path / "raw")
    assert [case.case_id for case in cases] == ids
    grades = {case.modalities["t1"].parent.parent.name for case in cases}
    assert grades == {"HGG", "LGG"}
    image = nib.load(cases[0].label)
    assert image.shape == (240, 240, 155)
    assert set(np.unique(np.asanyarray(image.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert elapsed < 60  # generous: shared CPUs; about 2-3 s per case when idle
