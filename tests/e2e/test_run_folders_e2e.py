"""End-to-end run folders: one folder per job, used folders refused, resumes checked.

Every job is ``python -m unet3d.run`` in a subprocess with the debug preset. Two fold-0
``mode=train`` runs (fp32 and bf16, started concurrently in the same second) are shared by the
tests of this module; the refusal tests leave them byte-identical, then the bf16 run gets a
corrupted checkpoint (failed resume) and the fp32 run an accepted resume. A refused or failed
job must leave its folder exactly as it was: every check compares {relative path: sha256} of
the whole folder (directories included) and the MLflow store (every run's status, end time,
params, tags, metrics and number of ``loss`` points) before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import ROOT, mlflow_client, results, run_cli, run_dirs

pytestmark = pytest.mark.slow

#: Exported to both concurrent jobs so that they are sure to start in the same second.
LAUNCH_TIME = "2030-01-02_03-04-05"
LAUNCH_DATE, LAUNCH_CLOCK = LAUNCH_TIME.split("_")
PRECISIONS = ("fp32", "bf16")
#: What every finished training run folder holds.
RUN_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "run.log",
             "checkpoints/checkpoint", "mlflow_run_id", "results.json", "run_identity.json")


# ------------------------------------------------------------------------------ helpers


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, _output(result)[-4000:]


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "ERROR" in line]


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The job failed with exactly one ERROR line (returned) and no traceback."""
    output = _output(result)
    assert result.returncode != 0, output[-4000:]
    errors = _error_lines(output)
    assert len(errors) == 1, "\n".join(errors) + "\n---\n" + output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    return errors[0]


def _names(line: str, folder: Path) -> bool:
    return str(folder) in line or str(folder.resolve()) in line


def _tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``; directories as ``path/: dir``."""
    tree = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_dir():
            tree[relative + "/"] = "dir"
        else:
            tree[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return tree


def _assert_same_tree(before: dict[str, str], folder: Path) -> None:
    after = _tree(folder)
    changed = sorted(key for key in before.keys() | after.keys()
                     if before.get(key) != after.get(key))
    assert not changed, f"{folder} changed: " + ", ".join(
        f"{key} ({'added' if key not in before else 'removed' if key not in after else 'modified'})"
        for key in changed)


def _store(cwd: Path) -> dict[str, dict]:
    """Every MLflow run of the store in ``cwd``: what a job that changes nothing leaves alone."""
    client = mlflow_client(cwd)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    state = {}
    for run in client.search_runs(experiments, max_results=1000):
        state[run.info.run_id] = {
            "status": run.info.status,
            "end_time": run.info.end_time,
            "loss_points": len(client.get_metric_history(run.info.run_id, "loss")),
            "params": dict(run.data.params),
            "tags": dict(run.data.tags),
            "metrics": dict(run.data.metrics),
        }
    return state


def _read_id(run_dir: Path) -> str:
    return (run_dir / "mlflow_run_id").read_text().strip()


def _overrides(run_dir: Path) -> list[str]:
    return yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())


def _data(shared_workdir: Path) -> str:
    """One synthetic data set for every run of this module (MLflow stores stay per module)."""
    return f"paths.data_dir={shared_workdir / 'data'}"


def _start(*args: str, cwd: Path, log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start the task runner as run_cli does, without waiting (output to ``log_path``)."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), **env}
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.pop("UNET3D_LAUNCH_ID", None)
    with open(log_path, "w") as log_file:
        return subprocess.Popen([sys.executable, "-m", "unet3d.run", *args], cwd=cwd,
                                stdout=log_file, stderr=subprocess.STDOUT, env=environment)


class Runs:
    """The module's two concurrent fold-0 training runs."""

    def __init__(self, cwd: Path, data: str, dirs: dict[str, Path], logs: dict[str, str],
                 returncodes: dict[str, int]) -> None:
        self.cwd = cwd
        self.data = data
        self.dirs = dirs
        self.logs = logs
        self.returncodes = returncodes

    def train(self, precision: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """``mode=train`` in the run folder of ``precision`` (hydra.run.dir)."""
        return run_cli("mode=train", "debug=fast", f"precision={precision}", self.data,
                       f"hydra.run.dir={self.dirs[precision]}", *args, cwd=self.cwd, **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, shared_workdir: Path) -> Runs:
    """Two ``mode=train`` jobs (fp32, bf16) started together with the same launch second."""
    cwd = tmp_path_factory.mktemp("run_folders")
    data = _data(shared_workdir)
    processes = {
        precision: _start("mode=train", "debug=fast", f"precision={precision}",
                          "training.max_steps=2", data, cwd=cwd,
                          log_path=cwd / f"{precision}.log",
                          env={"UNET3D_LAUNCH_TIME": LAUNCH_TIME})
        for precision in PRECISIONS
    }
    returncodes = {precision: process.wait(timeout=600)
                   for precision, process in processes.items()}
    logs = {precision: (cwd / f"{precision}.log").read_text() for precision in PRECISIONS}
    dirs = {}
    for run_dir in run_dirs(cwd):
        (precision,) = [item.split("=", 1)[1] for item in _overrides(run_dir)
                        if item.startswith("precision=")]
        dirs[precision] = run_dir
    return Runs(cwd, data, dirs, logs, returncodes)


# ------------------------------------------------------------------------------ tests


def test_concurrent_jobs_in_one_second_get_their_own_folders(runs: Runs) -> None:
    for precision in PRECISIONS:
        assert runs.returncodes[precision] == 0, runs.logs[precision][-4000:]
    folders = run_dirs(runs.cwd)
    assert len(folders) == 2, folders
    assert sorted(runs.dirs) == sorted(PRECISIONS)
    pattern = re.compile(rf"{LAUNCH_CLOCK}_train_fold0_[0-9a-f]{{6}}")
    for run_dir in folders:
        assert run_dir.parent == runs.cwd / "outputs" / LAUNCH_DATE
        assert pattern.fullmatch(run_dir.name), run_dir.name
    assert folders[0].name != folders[1].name

    client = mlflow_client(runs.cwd)
    run_ids = set()
    for precision, run_dir in runs.dirs.items():
        missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
        assert not missing, f"{run_dir}: missing {missing}"
        overrides = _overrides(run_dir)
        assert f"precision={precision}" in overrides
        assert not any(item.startswith("precision=") and item != f"precision={precision}"
                       for item in overrides), overrides
        # Its own checkpoints, its own results and MLflow run, tagged with its own folder.
        assert (run_dir / "checkpoints" / "ckpt-2.index").is_file()
        assert list((run_dir / "checkpoints").glob("ckpt-2.data-*"))
        run_id = _read_id(run_dir)
        run_ids.add(run_id)
        assert results(run_dir)["mlflow_run_id"] == run_id
        assert results(run_dir)["status"] == "FINISHED"
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert Path(run.data.tags["output_dir"]).resolve() == run_dir.resolve()
        assert Path(run.data.tags["unet3d.output_dir"]).resolve() == run_dir.resolve()
        assert run.data.params["precision.name"] == precision
        identity = json.loads((run_dir / "run_identity.json").read_text())
        assert identity["precision"]["name"] == precision and identity["fold"] == 0
    assert len(run_ids) == 2


def test_fresh_job_in_a_used_folder_is_refused_and_changes_nothing(runs: Runs) -> None:
    run_dir = runs.dirs["fp32"]
    tree, store = _tree(run_dir), _store(runs.cwd)
    assert all(name in tree for name in RUN_FILES), sorted(tree)
    result = runs.train("fp32", "training.max_steps=2")
    line = _one_error_line(result)
    assert _names(line, run_dir), line
    assert "resume=true" in line and "another folder" in line, line
    _assert_same_tree(tree, run_dir)
    assert _store(runs.cwd) == store


@pytest.mark.parametrize(("override", "named"), [
    ("fold=1", "is fold 0 of 5, not fold 1"),
    ("model.base_filters=8", "model.base_filters"),
    ("seed=7", "seed=42 (now 7)"),
], ids=["fold", "model", "seed"])
def test_refused_resume_changes_nothing(runs: Runs, override: str, named: str) -> None:
    run_dir = runs.dirs["fp32"]
    tree, store = _tree(run_dir), _store(runs.cwd)
    result = runs.train("fp32", "resume=true", "training.max_steps=4", override)
    line = _one_error_line(result)
    assert named in line, line
    assert _names(line, run_dir), line
    _assert_same_tree(tree, run_dir)
    assert _store(runs.cwd) == store


def test_failed_resume_changes_nothing(runs: Runs) -> None:
    run_dir = runs.dirs["bf16"]
    checkpoints = run_dir / "checkpoints"
    (newest,) = re.findall(r'^model_checkpoint_path: "([^"]+)"',
                           (checkpoints / "checkpoint").read_text(), re.MULTILINE)
    (data_file,) = checkpoints.glob(f"{Path(newest).name}.data-*")
    size = data_file.stat().st_size
    data_file.write_bytes((b"garbage!" * (size // 8 + 1))[:size])
    tree, store = _tree(run_dir), _store(runs.cwd)
    result = runs.train("bf16", "resume=true", "training.max_steps=4")
    output = _output(result)
    assert result.returncode != 0, output[-4000:]
    assert _error_lines(output), output[-4000:]
    assert "training steps" not in output, output[-4000:]
    _assert_same_tree(tree, run_dir)
    assert _store(runs.cwd) == store


def _evaluate_fold1(runs: Runs, launch_id: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``mode=evaluate`` of the fp32 (fold 0) run on fold 1, with a known launch id."""
    result = run_cli("mode=evaluate", "debug=fast", runs.data,
                     f"checkpoint={runs.dirs['fp32']}", "fold=1", cwd=runs.cwd,
                     env={"UNET3D_LAUNCH_TIME": LAUNCH_TIME, "UNET3D_LAUNCH_ID": launch_id})
    return result, runs.cwd / "outputs" / LAUNCH_DATE / f"{LAUNCH_CLOCK}_evaluate_fold1_{launch_id}"


def test_accepted_resume_continues_and_evaluate_still_warns_of_the_fold(runs: Runs) -> None:
    run_dir = runs.dirs["fp32"]
    # Evaluating a fold-0 model on fold 1 warns; the evaluated folder is only read.
    tree = _tree(run_dir)
    evaluated, eval_dir = _evaluate_fold1(runs, "evalbefore")
    _assert_ok(evaluated)
    assert "trained as fold 0" in _output(evaluated), _output(evaluated)[-4000:]
    assert (eval_dir / "results.json").is_file(), run_dirs(runs.cwd)  # UNET3D_LAUNCH_ID names it
    _assert_same_tree(tree, run_dir)

    identity = (run_dir / "run_identity.json").read_bytes()
    run_id = _read_id(run_dir)
    resumed = runs.train("fp32", "resume=true", "training.max_steps=4")
    _assert_ok(resumed)
    output = _output(resumed)
    assert "training steps 3..4" in output, output[-4000:]
    assert (run_dir / "checkpoints" / "ckpt-4.index").is_file()
    assert results(run_dir)["metrics"]["train_steps"] == 4
    assert (run_dir / "run_identity.json").read_bytes() == identity
    overrides = _overrides(run_dir)
    assert "training.max_steps=4" in overrides and "resume=true" in overrides, overrides
    assert _read_id(run_dir) == run_id == results(run_dir)["mlflow_run_id"]
    client = mlflow_client(runs.cwd)
    assert [m.step for m in client.get_metric_history(run_id, "loss")][-1] == 4
    assert client.get_run(run_id).info.status == "FINISHED"

    # The identity record is never rewritten: the resumed run is still fold 0.
    again, again_dir = _evaluate_fold1(runs, "evalafter")
    _assert_ok(again)
    assert "trained as fold 0" in _output(again), _output(again)[-4000:]
    assert (again_dir / "results.json").is_file()


def test_sweep_into_a_used_sweep_dir_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    command = ("--multirun", "fold=0", "debug=fast", "mode=train", "training.max_steps=2",
               f"hydra.sweep.dir={sweep_dir}")
    _assert_ok(run_cli(*command, cwd=tmp_path))
    (job_dir,) = [path.parent for path in sweep_dir.rglob(".hydra")]
    assert (job_dir / "checkpoints" / "ckpt-2.index").is_file()
    job_tree, sweep_tree, store = _tree(job_dir), _tree(sweep_dir), _store(tmp_path)

    result = run_cli(*command, cwd=tmp_path)
    output = _output(result)
    assert result.returncode != 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    # Logged before Hydra sets up job logging: the sweep's format shows no level name.
    lines = [line for line in output.splitlines() if _names(line, sweep_dir)]
    assert len(lines) == 1, output[-4000:]
    assert "resume=true" in lines[0] and "another folder" in lines[0], lines[0]
    _assert_same_tree(job_tree, job_dir)
    _assert_same_tree(sweep_tree, sweep_dir)
    assert _store(tmp_path) == store
