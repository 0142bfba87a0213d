import gzip

import nibabel as nib
import numpy as np
import pytest

from unet3d.data.layouts.case_folders import CaseFolders
from unet3d.data.layouts.cases import load_case
from unet3d.data.layouts.convention import MODALITIES
from unet3d.errors import DataError

find_cases = CaseFolders().find_cases  # BraTS 2019 case folders

CASE = "BraTS19_SYN_0002"


def _path(raw, name, case=CASE):
    return raw / case / f"{case}_{name}.nii.gz"


def _rewrite(raw, name, data, affine=None, case=CASE):
    original = nib.load(_path(raw, name, case))
    nib.save(
        nib.Nifti1Image(data, original.affine if affine is None else affine), _path(raw, name, case)
    )


def _load(raw, case=CASE):
    return load_case(next(c for c in find_cases(raw) if c.case_id == case))


def test_find_and_load(tiny_raw):
    cases = find_cases(tiny_raw)
    assert [c.case_id for c in cases] == [f"BraTS19_SYN_000{i}" for i in range(1, 5)]
    assert list(cases[0].modalities) == list(MODALITIES)
    loaded = load_case(cases[1])
    assert loaded.case_id == CASE
    assert loaded.image.shape == (32, 32, 24, 4) and loaded.image.dtype == np.float32
    assert loaded.label.dtype == np.uint8
    flair = np.asanyarray(nib.load(cases[1].modalities["flair"]).dataobj)
    assert np.array_equal(loaded.image[..., 3], flair)
    assert loaded.spacing == (1.0, 1.0, 1.0)
    assert loaded.affine.shape == (4, 4)


def test_missing_modality(raw_copy):
    _path(raw_copy, "t2").unlink()
    with pytest.raises(DataError, match=f"case {CASE}: missing file .*{CASE}_t2.nii.gz"):
        find_cases(raw_copy)


def test_missing_label_allowed_only_without_require_label(raw_copy):
    _path(raw_copy, "seg").unlink()
    with pytest.raises(DataError, match=f"case {CASE}: .*{CASE}_seg.nii.gz"):
        find_cases(raw_copy)
    case = next(c for c in find_cases(raw_copy, require_label=False) if c.case_id == CASE)
    assert case.label is None
    assert load_case(case).label is None


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("t2", lambda d: d[:-2].copy(), "shape"),
        ("seg", lambda d: d[:, :-1].copy(), "shape"),
        ("seg", lambda d: np.where(d == 2, 3, d).astype(np.uint8), r"label values \[3\]"),
        ("flair", lambda d: np.where(d > 0, np.nan, 0).astype(np.float32), "NaN or infinite"),
        ("t1ce", lambda d: np.where(d > 500, np.inf, d).astype(np.float32), "NaN or infinite"),
        ("t1", lambda d: np.stack([d, d], axis=-1), "3D volume"),
        ("t1", lambda d: d[:, :, :0].copy(), r"empty volume: shape \(\d+, \d+, 0\) holds no voxel"),
        ("seg", lambda d: d.astype(np.float32) + 0.5, "non-integer"),
    ],
)
def test_bad_volume(raw_copy, name, make, message):
    data = np.asanyarray(nib.load(_path(raw_copy, name)).dataobj)
    _rewrite(raw_copy, name, make(data))
    with pytest.raises(DataError, match=f"case {CASE}: .*{CASE}_{name}.nii.gz: .*{message}"):
        _load(raw_copy)


def test_affine_mismatch(raw_copy):
    image = nib.load(_path(raw_copy, "t1ce"))
    affine = image.affine.copy()
    affine[0, 3] += 2.0
    _rewrite(raw_copy, "t1ce", np.asanyarray(image.dataobj), affine=affine)
    with pytest.raises(DataError, match=f"case {CASE}: .*{CASE}_t1ce.nii.gz: affine differs"):
        _load(raw_copy)


def test_truncated_gzip(raw_copy):
    path = _path(raw_copy, "t1ce")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match=f"case {CASE}: .*{CASE}_t1ce.nii.gz: truncated "
                                        r"(or corrupt gzip )?file \(Compressed file ended"):
        _load(raw_copy)


def test_gzip_cut_within_its_first_bytes(raw_copy):
    """nibabel only says "Cannot work out file type": the line says the gzip stream breaks."""
    path = _path(raw_copy, "t1ce")
    noise = np.random.default_rng(0).uniform(0, 100, nib.load(path).shape).astype(np.float32)
    _rewrite(raw_copy, "t1ce", noise)  # noise compresses little: 600 bytes hold the header
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(DataError, match=f"case {CASE}: .*{CASE}_t1ce.nii.gz: truncated or "
                                        r"corrupt gzip file \(Compressed file ended"):
        _load(raw_copy)


def test_truncated_nifti_payload(raw_copy):
    path = _path(raw_copy, "t2")
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) - 1000]))
    with pytest.raises(DataError, match=f"case {CASE}: .*{CASE}_t2.nii.gz: truncated file "
                                        r"\(its header declares \d+ bytes of voxels, the file "
                                        r"holds \d+\)"):
        _load(raw_copy)


# Test ids must be the same in every pytest-xdist worker: no time stamp in the gzip stream.
@pytest.mark.parametrize("content", [b"not a nifti file at all" * 40,
                                     gzip.compress(b"x" * 500, mtime=0)],
                         ids=["text", "gzip-of-text"])
def test_not_nifti(raw_copy, content):
    _path(raw_copy, "flair").write_bytes(content)
    with pytest.raises(DataError, match=f"case {CASE}: .*{CASE}_flair.nii.gz: "):
        _load(raw_copy)


def test_missing_empty_and_foreign_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_cases(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}: data folder is empty"):
        find_cases(empty)
    foreign = tmp_path / "foreign"
    (foreign / "photos").mkdir(parents=True)
    (foreign / "photos" / "cat.jpg").write_bytes(b"x")
    (foreign / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match=f"{foreign}: no BraTS case found"):
        find_cases(foreign)
    with pytest.raises(DataError, match="not a folder"):
        find_cases(foreign / "readme.txt")


def test_grade_folders_and_extra_files(raw_copy, tmp_path):
    layout = tmp_path / "brats"
    (layout / "HGG").mkdir(parents=True)
    (layout / "LGG").mkdir()
    for index, case in enumerate(sorted(p for p in raw_copy.iterdir() if p.is_dir())):
        case.rename(layout / ("HGG" if index % 2 else "LGG") / case.name)
    (layout / "name_mapping.csv").write_text("a,b\n")
    cases = find_cases(layout)
    assert [c.case_id for c in cases] == [f"BraTS19_SYN_000{i}" for i in range(1, 5)]
    assert cases[0].modalities["t1"].parent.parent.name == "LGG"


def test_non_integer_float_label_lists_the_offending_values(raw_copy):
    data = np.asanyarray(nib.load(_path(raw_copy, "seg")).dataobj).astype(np.float64)
    assert (data == 4).any()
    _rewrite(raw_copy, "seg", np.where(data == 4, 3.9999998, data))
    assert nib.load(_path(raw_copy, "seg")).get_data_dtype() == np.float64
    with pytest.raises(DataError) as raised:
        _load(raw_copy)
    message = str(raised.value)
    assert message.startswith(f"case {CASE}: {_path(raw_copy, 'seg')}: non-integer label values")
    assert "3.9999998" in message
    assert "scl_slope" not in message  # no scaling in the header: not mentioned


def test_non_integer_label_from_header_scaling_names_scl_slope(raw_copy):
    original = nib.load(_path(raw_copy, "seg"))
    stored = np.asanyarray(original.dataobj).astype(np.int16)
    image = nib.Nifti1Image(stored, original.affine)
    image.header.set_slope_inter(1.0000001, 0.0)
    nib.save(image, _path(raw_copy, "seg"))
    with pytest.raises(DataError) as raised:
        _load(raw_copy)
    message = str(raised.value)
    assert message.startswith(f"case {CASE}: {_path(raw_copy, 'seg')}: non-integer label values")
    assert "header scl_slope 1.0000001 / scl_inter 0 scales the stored integers" in message
    assert "4.000000476837158" in message  # a scaled value is shown (float64 after scaling)


def test_a_bad_label_can_be_loaded_leniently_for_prediction(raw_copy):
    data = np.asanyarray(nib.load(_path(raw_copy, "seg")).dataobj)
    _rewrite(raw_copy, "seg", np.where(data == 2, 3, data).astype(np.uint8))
    case = next(c for c in find_cases(raw_copy) if c.case_id == CASE)
    with pytest.raises(DataError, match=r"label values \[3\]"):
        load_case(case)  # the default (training, preprocessing) still rejects it
    loaded = load_case(case, strict_label=False)
    assert loaded.image.shape == (32, 32, 24, 4) and loaded.image.dtype == np.float32
    assert loaded.label is None
    assert loaded.label_error == (
        f"case {CASE}: {_path(raw_copy, 'seg')}: label values [3] outside [0, 1, 2, 4]"
    )
    good = next(c for c in find_cases(raw_copy) if c.case_id != CASE)
    assert load_case(good, strict_label=False).label_error is None
