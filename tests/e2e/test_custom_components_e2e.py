"""A user's own model and loss, defined outside unet3d (tests/components/custom.py) and chosen
from a config dir of the user's own with ``hydra.searchpath``, run end to end: a 2-fold
cross-validation sweep of train_and_evaluate jobs, then ``mode=predict`` with the sweep (which
rebuilds each fold's network from its run's recorded settings, not from the command line), and
a model that breaks the contract stops the job with one line before training.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, results, run_cli

pytestmark = pytest.mark.slow

SEARCHPATH = f"hydra.searchpath=[file://{ROOT / 'tests' / 'components' / 'conf'}]"
#: The user's components, tiny sizes, two folds, two steps, no MLflow model export.
CUSTOM = (SEARCHPATH, "model=tiny_net", "loss=weighted_ce", "debug=fast", "num_folds=2",
          "training.max_steps=2", "tracking.log_model=false")


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder (data set, MLflow store, outputs) for the tests of this module."""
    return tmp_path_factory.mktemp("custom_components")


def test_custom_model_and_loss_sweep_then_predict(workdir: Path) -> None:
    tmp_path = workdir
    sweep = run_cli("--multirun", *CUSTOM, "fold=0,1", cwd=tmp_path)
    _assert_ok(sweep)
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(path.parent for path in sweep_dir.glob("*/results.json"))
    assert [results(job)["status"] for job in jobs] == ["FINISHED", "FINISHED"]
    for job in jobs:
        record = results(job)
        assert record["metrics"]["train_steps"] == 2 and 0 <= record["metrics"]["MeanDice"] <= 1
        identity = json.loads((job / "run_identity.json").read_text())
        assert identity["model"]["_target_"] == "tests.components.custom.tiny_net"
    assert "weighted_ce" in (jobs[0] / "run.log").read_text()
    assert (sweep_dir / "cv_summary.md").exists()

    # Predict new cases with the sweep's two folds as an ensemble; the command line keeps the
    # default model group: each member is rebuilt from its run's recorded tiny_net.
    new_cases = tmp_path / "new_cases"
    raw = next((tmp_path / "data" / "synthetic").glob("*/raw"))
    case = sorted(path for path in raw.iterdir() if path.is_dir())[0]
    (new_cases / case.name).mkdir(parents=True)
    for image in case.glob(f"{case.name}_[tf]*.nii.gz"):  # t1, t1ce, t2, flair: no label
        (new_cases / case.name / image.name).symlink_to(image)
    predicted = run_cli("debug=fast", "mode=predict",
                        f"predict.checkpoint={sweep_dir}", f"predict.input_dir={new_cases}",
                        f"predict.output_dir={tmp_path / 'segmentations'}", cwd=tmp_path)
    _assert_ok(predicted)
    assert (tmp_path / "segmentations" / f"{case.name}.nii.gz").is_file()
    assert "from its run's recorded model settings" in predicted.stdout + predicted.stderr


def test_a_model_that_breaks_the_contract_stops_before_training(workdir: Path) -> None:
    before = set((workdir / "outputs").rglob("ckpt-*.index"))
    broken = run_cli(*CUSTOM, "model._target_=tests.components.custom.broken_channels_net",
                     cwd=workdir)
    assert broken.returncode == 1
    errors = [line for line in (broken.stdout + broken.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1, broken.stderr[-3000:]
    assert ("model._target_: tests.components.custom.broken_channels_net output has 3 "
            "channels") in errors[0]
    assert "Traceback" not in broken.stderr
    assert set((workdir / "outputs").rglob("ckpt-*.index")) == before
