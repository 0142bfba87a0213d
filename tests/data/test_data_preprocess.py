import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from unet3d.data.crop import crop_record, paste_to_full
from unet3d.data.layouts.case_folders import CaseFolders
from unet3d.data.layouts.cases import load_case
from unet3d.data.layouts.convention import MODALITIES
from unet3d.data.pipeline import iterate_eval_cases
from unet3d.data.preprocess import (
    MANIFEST_NAME,
    normalize,
    preprocess_case,
    preprocess_dataset,
    scale_to_uint8,
)
from unet3d.data.tfrecord import read_record, record_path, validate_records, write_record
from unet3d.errors import DataError

find_cases = CaseFolders().find_cases  # BraTS 2019 case folders


def _expected_uint8(volume):
    volume = np.asarray(volume, dtype=np.float64)
    ceiling = 0.85 * volume.max()
    return np.floor(np.minimum(volume, ceiling) * 255.0 / ceiling).astype(np.uint8)


def test_scale_to_uint8_reference_formula():
    volume = np.array([0, 10, 50, 84, 85, 100, 200], dtype=np.float32)
    scaled = scale_to_uint8(volume)
    assert scaled.dtype == np.uint8
    # max 200, clipped at 170, then 255 * x / 170 truncated.
    assert scaled.tolist() == [0, 15, 75, 126, 127, 150, 255]
    assert np.array_equal(scaled, _expected_uint8(volume))
    assert not scale_to_uint8(np.zeros((3, 3))).any()


def test_round_trip_and_normalize(tiny_raw, tiny_records):
    cases = find_cases(tiny_raw)
    assert tiny_records == [
        str(record_path(os.path.dirname(tiny_records[0]), c.case_id)) for c in cases
    ]
    case = cases[1]  # an HGG case (with label 4)
    record = read_record(tiny_records[1])
    assert record["case_id"] == case.case_id
    # The record holds the brain box; pasted back it is the whole preprocessed case.
    box = record["crop_box"]
    assert box.full_shape == (32, 32, 24) and record["image"].shape == (*box.shape, 4)
    assert box.shape != (32, 32, 24)  # the synthetic head does not fill its grid
    assert record["image"].dtype == np.uint8
    full_image = paste_to_full(record["image"], box, background_class=None)
    full_label = paste_to_full(record["label"], box)
    expected_mean, expected_std = [], []
    for channel, name in enumerate(MODALITIES):
        data = np.asanyarray(nib.load(case.modalities[name]).dataobj)
        expected = _expected_uint8(data)
        assert np.array_equal(full_image[..., channel], expected), name
        foreground = expected[expected > 0].astype(np.float64)
        expected_mean.append(foreground.mean())
        expected_std.append(foreground.std())
    assert np.allclose(record["mean"], expected_mean, rtol=1e-5)
    assert np.allclose(record["std"], expected_std, rtol=1e-5)
    seg = np.asanyarray(nib.load(case.label).dataobj)
    expected_label = np.where(seg == 4, 3, seg)
    assert np.array_equal(full_label, expected_label) and record["has_label"]
    assert 3 in record["label"]
    assert np.allclose(record["affine"], nib.load(case.label).affine, atol=1e-5)
    assert np.allclose(record["spacing"], (1, 1, 1))
    # The parsed record equals the in-memory preprocessing.
    direct = crop_record(preprocess_case(load_case(case)))
    assert direct["crop_box"] == box
    assert np.array_equal(direct["image"], record["image"])
    assert np.array_equal(direct["label"], record["label"])
    # normalize: voxels > 0 -> (x - mean) / (std + 1e-8), others 0, per channel.
    normalised = normalize(record["image"], record["mean"], record["std"])
    image = record["image"].astype(np.float64)
    mean = np.asarray(record["mean"], dtype=np.float64)
    std = np.asarray(record["std"], dtype=np.float64)
    expected = np.where(image > 0, (image - mean) / (std + 1e-8), 0.0)
    assert normalised.dtype == np.float32
    assert np.allclose(normalised, expected, atol=1e-5)
    evaluated = next(iterate_eval_cases(tiny_records[1:2]))
    assert np.array_equal(evaluated.image, normalised)
    assert np.array_equal(evaluated.label, record["label"])


def test_up_to_date_cases_are_skipped(raw_copy, tmp_path):
    out = tmp_path / "records"
    files = preprocess_dataset(raw_copy, out)
    assert (out / MANIFEST_NAME).is_file()
    before = {f: os.stat(f).st_mtime_ns for f in files}
    assert preprocess_dataset(raw_copy, out) == files
    assert {f: os.stat(f).st_mtime_ns for f in files} == before
    source = raw_copy / "BraTS19_SYN_0003" / "BraTS19_SYN_0003_t1.nii.gz"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    preprocess_dataset(raw_copy, out)
    after = {f: os.stat(f).st_mtime_ns for f in files}
    changed = [os.path.basename(f) for f in files if after[f] != before[f]]
    assert changed == ["BraTS19_SYN_0003.tfrecord"]


def _corrupt_source(raw, case_id):
    path = raw / case_id / f"{case_id}_t1ce.nii.gz"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def test_bad_case_keeps_other_records(raw_copy, tmp_path):
    out = tmp_path / "records"
    files = preprocess_dataset(raw_copy, out)
    snapshot = {f: open(f, "rb").read() for f in files}
    _corrupt_source(raw_copy, "BraTS19_SYN_0002")
    with pytest.raises(DataError, match="case BraTS19_SYN_0002: .*BraTS19_SYN_0002_t1ce.nii.gz"):
        preprocess_dataset(raw_copy, out)
    for f, content in snapshot.items():
        assert open(f, "rb").read() == content
    assert not list(out.glob("*.tmp-*"))


def test_bad_case_in_fresh_run(raw_copy, tmp_path):
    out = tmp_path / "records"
    _corrupt_source(raw_copy, "BraTS19_SYN_0004")
    with pytest.raises(DataError, match="case BraTS19_SYN_0004: .*BraTS19_SYN_0004_t1ce.nii.gz"):
        preprocess_dataset(raw_copy, out)
    written = sorted(p.name for p in out.glob("*.tfrecord"))
    assert written == [f"BraTS19_SYN_000{i}.tfrecord" for i in range(1, 4)]
    validate_records(sorted(str(p) for p in out.glob("*.tfrecord")))
    assert not list(out.glob("*.tmp-*"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupted_record(tiny_records, tmp_path, damage):
    copies = [shutil.copy(f, tmp_path) for f in tiny_records[:2]]
    bad = copies[1]
    content = bytearray(open(bad, "rb").read())
    if damage == "flip":
        content[len(content) // 2] ^= 0xFF
    elif damage == "truncate":
        content = content[: len(content) - 100]
    else:
        content = bytearray()
    open(bad, "wb").write(bytes(content))
    pattern = "case BraTS19_SYN_0002: .*BraTS19_SYN_0002.tfrecord: corrupted TFRecord"
    with pytest.raises(DataError, match=pattern):
        validate_records(copies)
    with pytest.raises(DataError, match=pattern):
        list(iterate_eval_cases(copies))
    with pytest.raises(
        DataError,
        match="case BraTS19_SYN_0009: .*BraTS19_SYN_0009.tfrecord: TFRecord file does not exist",
    ):
        read_record(tmp_path / "BraTS19_SYN_0009.tfrecord")


def test_record_without_label(tmp_path):
    image = np.zeros((4, 5, 6, 4), dtype=np.uint8)
    image[1:3, 1:3, 1:3] = 10
    path = tmp_path / "nolabel.tfrecord"
    write_record(
        path,
        {"case_id": "nolabel", "image": image, "label": None, "mean": [10] * 4, "std": [1] * 4},
    )
    case = next(iterate_eval_cases([str(path)]))
    assert case.label is None and case.case_id == "nolabel"
    assert np.allclose(case.image[1, 1, 1], 0.0) and case.image[0, 0, 0, 0] == 0.0
    validate_records([path], require_label=False)
    with pytest.raises(DataError, match="case nolabel: .*nolabel.tfrecord: record has no label"):
        validate_records([path])


def test_records_hold_the_conventions_classes_and_a_changed_convention_reruns(tmp_path):
    from tests.data.test_readers import layout_of, write_case_folder, write_msd
    from unet3d.data._files import read_json
    from unet3d.data.layouts.convention import MSD_BRAIN

    raw = tmp_path / "raw"
    write_case_folder(raw, "BraTS-GLI-00000-000", "brats2023", labels=(0, 1, 2, 3))
    out = tmp_path / "records"
    layout = layout_of("brats2023", raw)
    files = preprocess_dataset(raw, out, layout)
    record = read_record(files[0])
    assert sorted(np.unique(record["label"])) == [0, 1, 2, 3]  # 2023 values are the classes
    manifest = read_json(out / MANIFEST_NAME)
    assert manifest["convention"] == layout.convention.to_dict()
    before = os.stat(files[0]).st_mtime_ns
    assert preprocess_dataset(raw, out, layout) == files
    assert os.stat(files[0]).st_mtime_ns == before
    post = layout_of("brats2024_post", raw)  # same files, another convention: rewritten
    preprocess_dataset(raw, out, post)
    assert os.stat(files[0]).st_mtime_ns != before
    assert read_json(out / MANIFEST_NAME)["convention"]["name"] == "brats2024_post"

    msd = write_msd(tmp_path / "msd")
    layout = layout_of("msd_brain", msd)
    assert layout.convention == MSD_BRAIN
    msd_files = preprocess_dataset(msd, tmp_path / "msd_records", layout)
    assert [os.path.basename(f) for f in msd_files] == ["BRATS_001.tfrecord",
                                                        "BRATS_002.tfrecord"]
    record = read_record(msd_files[0])
    assert record["image"].shape == (8, 8, 8, 4)
    assert sorted(np.unique(record["label"])) == [0, 1, 2, 3]


def test_records_written_before_conventions_are_reused_for_brats2019(raw_copy, tmp_path):
    from unet3d.data._files import read_json
    from unet3d.runs.files import write_json_atomic

    out = tmp_path / "records"
    files = preprocess_dataset(raw_copy, out)
    manifest = read_json(out / MANIFEST_NAME)
    del manifest["convention"]  # as written before this change
    write_json_atomic(out / MANIFEST_NAME, manifest)
    before = {f: os.stat(f).st_mtime_ns for f in files}
    preprocess_dataset(raw_copy, out)
    assert {f: os.stat(f).st_mtime_ns for f in files} == before


def test_worker_processes_write_the_same_records_and_a_bad_case_is_named(
        tiny_raw, tiny_records, raw_copy, tmp_path, caplog):
    # Two spawned workers (issue 32): the same bytes as one process, the space needed logged
    # first, and a bad case still raises its one-line DataError with the records before it kept.
    import logging

    out = tmp_path / "parallel"
    with caplog.at_level(logging.INFO, logger="unet3d.data.preprocess"):
        files = preprocess_dataset(tiny_raw, out, workers=2)
    assert [os.path.basename(f) for f in files] == [os.path.basename(f) for f in tiny_records]
    for mine, theirs in zip(files, tiny_records, strict=True):
        assert open(mine, "rb").read() == open(theirs, "rb").read()
    assert "with 2 process(es)" in caplog.text
    assert ("The records of 4 case(s) need at most 0.00 GB on disk (0.1 MB each for the full "
            "32x32x24 grid") in caplog.text
    _corrupt_source(raw_copy, "BraTS19_SYN_0003")
    with pytest.raises(DataError, match="case BraTS19_SYN_0003: .*BraTS19_SYN_0003_t1ce.nii.gz"):
        preprocess_dataset(raw_copy, tmp_path / "bad", workers=2)
    written = sorted(p.name for p in (tmp_path / "bad").glob("*.tfrecord"))
    assert written[:2] == ["BraTS19_SYN_0001.tfrecord", "BraTS19_SYN_0002.tfrecord"]
    assert "BraTS19_SYN_0003.tfrecord" not in written
    assert not list((tmp_path / "bad").glob("*.tmp-*"))


def test_records_unchanged_since_preprocessing_are_not_reread(raw_copy, tmp_path, caplog):
    # A job's start validates only what changed since preprocessing wrote it (issue 32: BraTS
    # 2021's records are about 20 GB): a record damaged afterwards is still caught, by name.
    import logging

    from unet3d.data.preprocess import unchanged_records

    out = tmp_path / "records"
    files = preprocess_dataset(raw_copy, out)
    known = unchanged_records(out)
    assert sorted(known) == [f"BraTS19_SYN_000{i}" for i in range(1, 5)]
    with caplog.at_level(logging.INFO, logger="unet3d.data.tfrecord"):
        validate_records(files, unchanged=known)
    assert "Validated 0 TFRecord file(s) (4 unchanged since preprocessing wrote them)" \
        in caplog.text
    content = bytearray(open(files[2], "rb").read())
    content[len(content) // 2] ^= 0xFF  # the same size, a new modification time
    open(files[2], "wb").write(bytes(content))
    with pytest.raises(DataError, match="case BraTS19_SYN_0003: .*corrupted TFRecord"):
        validate_records(files, unchanged=known)
    assert unchanged_records(tmp_path / "nowhere") == {}
