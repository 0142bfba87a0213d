"""Every ``data=`` option end to end: train, evaluate and predict on cases in its own layout.

Tiny synthetic cases are written in each data set's exact layout and label values
(``unet3d.data.synthetic.generate.generate_dataset``), then read back through ``data=<name>
data.raw_dir=...`` as a user with the real data would: the held-out metrics carry the data set's
own region names, and ``mode=predict`` writes the data set's own label values, at the input's
grid, voxel for voxel the argmax of the saved probabilities mapped through the convention.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.e2e.conftest import results, run_cli
from unet3d.data.layouts.convention import BRATS2019
from unet3d.data.layouts.resolve import data_config
from unet3d.data.synthetic.generate import generate_dataset

pytestmark = pytest.mark.slow

#: ``data=`` option -> the synthetic layout that writes its files.
DATA_SETS = {"brats2019": "flat", "brats2023": "brats2023", "msd_brain": "msd_brain",
             "nnunet_raw": "nnunet_raw"}
#: Each data set's evaluation regions as its results name them.
REGIONS = {"brats2019": ("WT", "TC", "ET"), "brats2023": ("ET", "TC", "WT", "NETC", "SNFH"),
           "msd_brain": ("WT", "TC", "ET"), "nnunet_raw": ("WT", "TC", "ET")}
#: The label values on disk of each data set.
VALUES = {"brats2019": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3), "msd_brain": (0, 1, 2, 3),
          "nnunet_raw": (0, 1, 2, 3)}

SMALL = ("debug=fast", "training.max_steps=2", "training.checkpoint_every=2", "num_folds=2",
         "tracking.log_model=false")


def _write(folder: Path, layout: str, num_test: int = 0) -> Path:
    generate_dataset(folder, num_cases=4, shape=[40, 40, 32], spacing=[1.0, 1.0, 1.0], seed=7,
                     layout=layout, num_test=num_test)
    return folder


def _train(tmp_path: Path, name: str, raw: Path) -> Path:
    run_dir = tmp_path / f"train_{name}"
    done = run_cli(f"data={name}", f"data.raw_dir={raw}", *SMALL, f"hydra.run.dir={run_dir}",
                   f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def _predict(tmp_path: Path, name: str, checkpoint: Path, input_dir: Path, tag: str) -> Path:
    run_dir = tmp_path / f"predict_{tag}"
    done = run_cli("mode=predict", f"data={name}", f"checkpoint={checkpoint}",
                   f"predict.input_dir={input_dir}", "predict.save_probabilities=true",
                   "debug=fast", f"hydra.run.dir={run_dir}",
                   f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir / "predictions"


def _check_predictions(folder: Path, values: tuple[int, ...], classes_to_values: np.ndarray,
                       count: int) -> None:
    segmentations = sorted(p for p in folder.glob("*.nii.gz") if "_probabilities" not in p.name)
    assert len(segmentations) == count
    for path in segmentations:
        image = nib.load(str(path))
        labels = np.asarray(image.dataobj)
        assert labels.dtype == np.uint8 and image.shape == (40, 40, 32)
        assert set(np.unique(labels).tolist()) <= set(values)
        probabilities = np.asarray(nib.load(str(path).replace(
            ".nii.gz", "_probabilities.nii.gz")).dataobj)
        expected = classes_to_values[np.argmax(probabilities, axis=-1)]
        np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("name", list(DATA_SETS))
def test_each_data_set_trains_evaluates_and_predicts_in_its_own_labels(tmp_path, name):
    raw = _write(tmp_path / "raw", DATA_SETS[name])
    run_dir = _train(tmp_path, name, raw)
    metrics = results(run_dir)["metrics"]
    for region in REGIONS[name]:
        assert 0.0 <= metrics[f"Dice_{region}"] <= 1.0, region
        assert f"HD95_{region}" in metrics
    if name != "brats2019":
        assert "TumorCore" not in metrics  # the seed's names belong to the 2019 labels

    layout = data_config(name)
    values = VALUES[name]
    if layout.get("labels"):
        assert tuple(sorted(int(v) for v in layout["labels"])) == values
    predictions = _predict(tmp_path, name, run_dir, raw, name)
    _check_predictions(predictions, values, np.asarray(values), count=4)


def test_msd_test_set_without_labels_and_a_2019_model_on_2023_files(tmp_path):
    # A BraTS 2019-format model...
    raw_2019 = _write(tmp_path / "raw2019", "flat")
    run_dir = _train(tmp_path, "brats2019", raw_2019)
    # ... predicts BraTS 2023 files in the 2023 labels (ET is 3, not 4).
    raw_2023 = _write(tmp_path / "raw2023", "brats2023")
    predictions = _predict(tmp_path, "brats2023", run_dir, raw_2023, "2023")
    _check_predictions(predictions, VALUES["brats2023"], np.array([0, 1, 2, 3]), count=4)
    # ... and an MSD test set (imagesTs, no labels) in the MSD labels (1 edema, 2 core).
    raw_msd = _write(tmp_path / "msd", "msd_brain", num_test=2)
    predictions = _predict(tmp_path, "msd_brain", run_dir, raw_msd / "imagesTs", "msd_test")
    assert BRATS2019.values == (0, 1, 2, 4)
    _check_predictions(predictions, VALUES["msd_brain"], np.array([0, 2, 1, 3]), count=2)
