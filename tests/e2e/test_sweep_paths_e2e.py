"""A cross-validation sweep with a path-valued override stays usable (issue, section 3).

The README's real-data command run as a sweep, ``--multirun data=brats2019
data.raw_dir=/abs/path fold=0,1``: every job folder is a direct child of the sweep dir (no path
separator in its name), and ``mode=predict`` finds the sweep's models as an ensemble, as one
fold, and through ``runs:/<parent run id>``. Real subprocesses, a tiny synthetic data set in
BraTS layout read as real data (``data=brats2019``), ``debug=fast``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import results, run_cli

pytestmark = pytest.mark.slow

#: The model and crops of the sweep; every predict command passes the same.
COMMON = ("debug=fast", "num_folds=2", "data=brats2019")
SHAPE = (40, 40, 32)


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def _segmentations(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("*.nii.gz"))


def test_sweep_with_an_absolute_raw_dir_is_flat_and_predicts(tmp_path: Path) -> None:
    from unet3d.data.synthetic.generate import generate_dataset
    from unet3d.runs.identity import read_identity
    from unet3d.tracking.parent_run import read_parent_run_id

    raw_dir = tmp_path / "brats" / "MICCAI_BraTS_2019_Data_Training"  # absolute, with slashes
    generate_dataset(raw_dir, num_cases=4, shape=SHAPE, spacing=(1.0, 1.0, 1.0), seed=7)
    new_cases = tmp_path / "new_cases"
    (case,) = generate_dataset(new_cases, num_cases=1, shape=SHAPE, spacing=(1.0, 1.0, 1.0),
                               seed=8)
    data = (*COMMON, f"data.raw_dir={raw_dir}")

    sweep = run_cli("--multirun", *data, "fold=0,1", "training.max_steps=2",
                    "tracking.log_model=false", cwd=tmp_path)
    _assert_ok(sweep)
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")

    # Every job folder is a direct child of the sweep dir, named without a path separator.
    jobs = sorted(path.parent for path in sweep_dir.rglob("results.json"))
    assert len(jobs) == 2, [str(job) for job in jobs]
    for job in jobs:
        assert job.parent == sweep_dir and "/" not in job.name and "\\" not in job.name
        assert results(job)["status"] == "FINISHED"
        assert (job / "checkpoints").is_dir()
    assert sorted(read_identity(job).fold for job in jobs) == [0, 1]

    # The sweep as an ensemble, one fold of it (its held-out cases), and its parent run.
    parent_run_id = read_parent_run_id(sweep_dir)
    assert parent_run_id
    predictions = {
        "ensemble": (f"predict.checkpoint={sweep_dir}", f"predict.input_dir={new_cases}"),
        "fold1": (f"predict.checkpoint={sweep_dir}", "fold=1"),
        "parent": (f"predict.checkpoint=runs:/{parent_run_id}", f"predict.input_dir={new_cases}"),
    }
    chosen = {"ensemble": "ensemble of 2 model(s) (folds [0, 1])", "fold1": "fold 1 of sweep",
              "parent": "ensemble of 2 model(s) (folds [0, 1])"}
    written = {}
    for name, arguments in predictions.items():
        output_dir = tmp_path / "segmentations" / name
        result = run_cli(*data, "mode=predict", *arguments, f"predict.output_dir={output_dir}",
                         "tracking.enabled=false", cwd=tmp_path)
        _assert_ok(result)
        assert chosen[name] in result.stdout + result.stderr, name
        written[name] = _segmentations(output_dir)
    assert written["ensemble"] == written["parent"] == [f"{case}.nii.gz"]
    assert len(written["fold1"]) == 2  # the 2 held-out cases of fold 1
