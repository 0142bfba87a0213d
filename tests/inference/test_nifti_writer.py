"""NIfTI writer: outputs on the reference grid, uint8 BraTS labels, written atomically."""

import os

import nibabel as nib
import numpy as np
import pytest

from unet3d.errors import DataError
from unet3d.inference import nifti_writer
from unet3d.inference.nifti_writer import (
    OutputExistsError,
    reference_from_affine,
    write_probabilities,
    write_segmentation,
)

SHAPE = (9, 7, 5)


def oblique_affine():
    affine = np.array(
        [
            [-0.9, 0.05, 0.0, 91.5],
            [0.04, -1.1, 0.02, 120.0],
            [0.0, 0.03, 2.5, -60.25],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return affine


@pytest.fixture
def reference(tmp_path):
    """A float32 modality with scaling, distinct qform/sform codes and mm units, loaded lazily."""
    affine = oblique_affine()
    data = np.random.default_rng(0).uniform(0, 900, SHAPE).astype(np.float32)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    image.header.set_slope_inter(2.0, 10.0)
    path = tmp_path / "case_t1.nii.gz"
    nib.save(image, path)
    return nib.load(path)


def labels_volume(seed=1, shape=SHAPE):
    return np.random.default_rng(seed).choice(np.array([0, 1, 2, 4]), size=shape)


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if ".tmp-" in path.name)


@pytest.mark.parametrize("name", ["seg.nii.gz", "seg.nii"])
def test_segmentation_round_trip_keeps_the_reference_grid(tmp_path, reference, name):
    labels = labels_volume()
    path = write_segmentation(labels, reference, tmp_path / "out" / name)
    written = nib.load(path)
    assert written.shape == SHAPE
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-6)
    np.testing.assert_allclose(written.header.get_zooms(), reference.header.get_zooms())
    assert int(written.header["qform_code"]) == 1
    assert int(written.header["sform_code"]) == 2
    np.testing.assert_allclose(written.header.get_sform(), reference.header.get_sform(), atol=1e-6)
    np.testing.assert_allclose(written.header.get_qform(), reference.header.get_qform(), atol=1e-5)
    assert written.header.get_xyzt_units() == ("mm", "sec")
    slope, inter = written.header.get_slope_inter()
    assert slope is None and inter is None
    data = np.asanyarray(written.dataobj)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, labels)
    assert set(np.unique(data)) <= {0, 1, 2, 4}
    assert leftovers(path.parent) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path, reference):
    path = write_segmentation(labels_volume(1), reference, tmp_path / "seg.nii.gz")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="seg.nii.gz.*exists"):
        write_segmentation(labels_volume(2), reference, path)
    assert path.read_bytes() == before
    assert isinstance(OutputExistsError("x"), DataError)
    write_segmentation(labels_volume(2), reference, path, overwrite=True)
    np.testing.assert_array_equal(np.asanyarray(nib.load(path).dataobj), labels_volume(2))
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_no_temporary_file_and_no_output(tmp_path, reference, monkeypatch):
    path = tmp_path / "seg.nii.gz"
    original = nifti_writer._nifti_image

    class Boom(RuntimeError):
        pass

    def broken(data, reference_image):
        image = original(data, reference_image)

        def fail(file_map):
            file_map["image"].fileobj.write(b"partial")
            raise Boom("disk full")

        image.to_file_map = fail
        return image

    monkeypatch.setattr(nifti_writer, "_nifti_image", broken)
    with pytest.raises(Boom):
        write_segmentation(labels_volume(), reference, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "case_t1.nii.gz"]


def test_bad_inputs_are_rejected(tmp_path, reference):
    with pytest.raises(ValueError, match=r"labels \[3\] outside the data set's labels "
                       r"\[0, 1, 2, 4\]"):
        write_segmentation(np.full(SHAPE, 3), reference, tmp_path / "a.nii.gz")
    # BraTS 2023 writes 3 (ET), but not 4.
    written = write_segmentation(np.full(SHAPE, 3), reference, tmp_path / "b.nii.gz",
                                 allowed=(0, 1, 2, 3))
    written.unlink()
    with pytest.raises(ValueError, match=r"labels \[4\] outside"):
        write_segmentation(np.full(SHAPE, 4), reference, tmp_path / "c.nii.gz",
                           allowed=(0, 1, 2, 3))
    with pytest.raises(ValueError, match="differs from the reference"):
        write_segmentation(np.zeros((9, 7, 6)), reference, tmp_path / "b.nii.gz")
    with pytest.raises(ValueError, match=r"\.nii\.gz or \.nii"):
        write_segmentation(np.zeros(SHAPE), reference, tmp_path / "c.npy")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["case_t1.nii.gz"]


def test_probabilities_are_a_4d_float32_map_on_the_grid(tmp_path, reference):
    probabilities = np.random.default_rng(3).dirichlet(np.ones(4), size=SHAPE).astype(np.float32)
    path = write_probabilities(probabilities, reference, tmp_path / "p.nii.gz")
    written = nib.load(path)
    assert written.shape == (*SHAPE, 4)
    assert written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-6)
    np.testing.assert_allclose(written.header.get_zooms()[:3], reference.header.get_zooms())
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), probabilities)
    assert leftovers(tmp_path) == []


def test_reference_from_a_stored_affine(tmp_path):
    affine = np.diag([-1.0, -1.0, 1.5, 1.0])
    affine[:3, 3] = [20.0, 17.5, -12.0]
    reference = reference_from_affine(affine.astype(np.float32), (6, 5, 4))
    path = write_segmentation(labels_volume(shape=(6, 5, 4)), reference, tmp_path / "r.nii.gz")
    written = nib.load(path)
    assert written.shape == (6, 5, 4)
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    np.testing.assert_allclose(written.header.get_zooms(), (1.0, 1.0, 1.5))
    assert int(written.header["sform_code"]) == 1 and int(written.header["qform_code"]) == 1
    with pytest.raises(ValueError, match="affine"):
        reference_from_affine(np.zeros((4, 4)), (6, 5, 4))
    assert not any(".tmp-" in name for name in os.listdir(tmp_path))
