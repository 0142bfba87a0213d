"""End-to-end K-fold sweeps tracked in MLflow (issue 3), with the real runner in subprocesses.

Every check goes through the MLflow client (or the tracking server's REST API): parent run,
nested fold runs, their tags, params, metrics, artifacts, the logged model, the
cross-validation summary, failed and killed jobs, resume.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import ROOT, mlflow_client, results, run_cli
from tests.ports import free_port

pytestmark = pytest.mark.slow

#: Evaluation metrics of every finished train_and_evaluate job (and of the CV summary).
EVAL_METRICS = ("Dice_WT", "Dice_TC", "Dice_ET", "TumorCore", "PeritumoralEdema",
                "EnhancingTumor", "MeanDice", "WholeTumor", "HD95_WT", "HD95_TC", "HD95_ET")
#: Training metrics logged every `training.log_every` steps.
TRAIN_METRICS = ("loss", "dice_loss", "ce_loss", "learning_rate", "volumes_per_second",
                 "step_time")
#: Tags every job run carries.
JOB_TAGS = ("mode", "fold", "num_folds", "device", "precision", "strategy", "replicas",
            "output_dir", "overrides")
#: The params precision=auto adds (unet3d.runtime.precision_auto.AutoChoice.params).
AUTO_PRECISION_PARAMS = {"precision.auto_choice", "precision.auto_reason", "precision.cpu",
                         "precision.cpu_bf16_flags", "precision.probe_fp32_ms",
                         "precision.probe_bf16_ms", "precision.probe"}
GIT_TAGS = ("mlflow.source.git.commit", "mlflow.source.git.branch", "git_dirty")
#: The tiny 2-fold sweep every test builds on.
TWO_FOLDS = ("debug=fast", "num_folds=2", "fold=0,1", "training.max_steps=2")
JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")


# ------------------------------------------------------------------------------ helpers


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def _sweep_dir(cwd: Path) -> Path:
    (sweep_dir,) = (cwd / "outputs" / "multirun").glob("*/*")
    return sweep_dir


def _runs(client, filter_string: str = "") -> list:
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments, filter_string=filter_string, max_results=1000)


def _parent_and_jobs(client) -> tuple:
    """The sweep's parent run and its nested job runs (group summary runs left out)."""
    (parent,) = _runs(client, "tags.`unet3d.run_kind` = 'cv_parent'")
    nested = _runs(client, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    jobs = [run for run in nested if "mode" in run.data.tags]
    assert all(run.data.tags.get("unet3d.run_kind") == "cv_group_summary"
               for run in nested if run not in jobs)
    return parent, sorted(jobs, key=lambda run: run.data.tags["overrides"])


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run, recursively."""
    files = set()
    for entry in client.list_artifacts(run_id, path):
        if entry.is_dir:
            files |= _artifacts(client, run_id, entry.path)
        else:
            files.add(entry.path)
    return files


def _check_job_run(client, run, max_steps: int, git: dict[str, str]) -> None:
    """Tags, params, metrics (with steps) and artifacts of one finished job run."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    for key in JOB_TAGS:
        assert tags.get(key), f"tag {key} missing: {tags}"
    assert tags["mode"] == "train_and_evaluate" and tags["num_folds"] == "2"
    assert tags["device"] == "CPU" and tags["replicas"] == "1"
    assert f"fold={tags['fold']}" in tags["overrides"].split()
    assert run.info.run_name == f"train_and_evaluate-fold{tags['fold']}"
    # Git tags: present with the right values when the root dir is a repository, else absent.
    assert {key: tags[key] for key in GIT_TAGS if key in tags} == git
    # Params: the whole composed config, flattened.
    # Params: the whole composed config, flattened, plus what precision=auto chose and why
    # (the host facts and probe timings; which ones depends on the host's CPU).
    config_keys = _config_keys(Path(tags["output_dir"]))
    assert set(params) - config_keys <= AUTO_PRECISION_PARAMS
    assert config_keys <= set(params)
    # One precision tag: the option; what it resolved to is in the dtype tags.
    assert tags["precision"] == params["precision.name"] and "precision_policy" not in tags
    if params.get("precision.name") == "auto":
        compute = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
        assert compute[params["precision.auto_choice"]] == tags["compute_dtype"]
    assert params["training.max_steps"] == str(max_steps)
    assert params["fold"] == tags["fold"] and params["num_folds"] == "2"
    assert params["model.num_levels"] == "3" and params["mode.name"] == "train_and_evaluate"
    assert params["data.crop_size"] == "[32, 32, 32]"
    # Training metrics every log_every (2) steps, evaluation metrics at the last step.
    for name in TRAIN_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert [metric.step for metric in history] == list(range(2, max_steps + 1, 2)), name
        assert all(np.isfinite(metric.value) for metric in history)
    for name in EVAL_METRICS:
        assert np.isfinite(metrics[name]), name
        if not name.startswith("HD95"):
            assert 0.0 <= metrics[name] <= 1.0
    assert client.get_metric_history(run.info.run_id, "Dice_WT")[0].step == max_steps
    # The job's results.json agrees with MLflow.
    record = results(Path(tags["output_dir"]))
    assert record["status"] == "FINISHED" and record["mlflow_run_id"] == run.info.run_id
    for name in EVAL_METRICS:
        assert record["metrics"][name] == pytest.approx(metrics[name], rel=1e-9)
    # Artifacts: config, Hydra's folder, the log, per-case metrics, figures, training curves.
    artifacts = _artifacts(client, run.info.run_id)
    assert {"config.yaml", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
            "run.log", "metrics/per_case.csv", "figures/training_curves.png"} <= artifacts
    case_figures = {path for path in artifacts if re.fullmatch(r"figures/case_.*\.png", path)}
    assert {path.split("_")[1] for path in case_figures} == {"best", "median", "worst"}
    log_text = client.download_artifacts(run.info.run_id, "run.log", str(_scratch(run)))
    assert "training steps 1..2" in Path(log_text).read_text()


def _config_keys(job_dir: Path) -> set[str]:
    """Dotted keys of the job's composed config (Hydra's .hydra/config.yaml)."""
    from omegaconf import OmegaConf

    from unet3d.tracking.values import flatten_config

    return set(flatten_config(OmegaConf.load(job_dir / ".hydra" / "config.yaml")))


def _scratch(run) -> Path:
    path = Path(run.data.tags["output_dir"]) / "downloaded"
    path.mkdir(exist_ok=True)
    return path


def _check_summary(parent, jobs: list, group_prefix: str | None = None) -> None:
    """cv_mean/std/min/max on the parent equal numpy's over the jobs' logged values."""
    prefix = f"{group_prefix}/" if group_prefix else ""
    metrics = parent.data.metrics
    for name in EVAL_METRICS:
        values = np.array([run.data.metrics[name] for run in jobs])
        expected = {"mean": np.mean(values), "std": np.std(values, ddof=1),
                    "min": np.min(values), "max": np.max(values)}
        for statistic, value in expected.items():
            key = f"cv_{statistic}/{prefix}{name}"
            assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    folds = f"cv_folds/{prefix}"
    assert metrics[folds + "total"] == metrics[folds + "finished"] == len(jobs)
    assert metrics[folds + "failed"] == 0


def _git_init(path: Path) -> dict[str, str]:
    """Make `path` a git repository with one commit; return the git tags runs should carry."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(path), "-c", "user.name=test",
                               "-c", "user.email=test@example.com", *arguments],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    (path / "README").write_text("sweep test\n")
    git("add", "README")
    git("commit", "-q", "-m", "initial")
    return {"mlflow.source.git.commit": git("rev-parse", "HEAD"),
            "mlflow.source.git.branch": "main", "git_dirty": "false"}


def _no_git(path: Path) -> dict[str, str]:
    from unet3d.runs.provenance import git_tags

    return git_tags(path)  # {} unless the temporary folder sits inside a repository


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen | None,
              timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process ended ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _start_cli(*args: str, cwd: Path, log_path: Path) -> subprocess.Popen:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "w") as log_file:
        return subprocess.Popen([sys.executable, "-m", "unet3d.run", *args], cwd=cwd,
                                stdout=log_file, stderr=subprocess.STDOUT, env=environment)


# ------------------------------------------------------------------------------ tests


def test_two_fold_sweep_basic_launcher(tmp_path: Path, mlflow_server) -> None:
    # (mlflow_server: only started here, to boot while this sweep runs)
    git = _git_init(tmp_path)
    result = run_cli("--multirun", *TWO_FOLDS, cwd=tmp_path)
    _assert_ok(result)
    output = result.stdout + result.stderr

    client = mlflow_client(tmp_path)
    parent, jobs = _parent_and_jobs(client)
    assert parent.info.status == "FINISHED"
    assert [run.data.tags["fold"] for run in jobs] == ["0", "1"]
    for run in jobs:
        _check_job_run(client, run, max_steps=2, git=git)
    _check_summary(parent, jobs)

    # The parent: sweep tags, the summary tables as artifacts and as its description.
    sweep_dir = _sweep_dir(tmp_path)
    tags = parent.data.tags
    assert tags["unet3d.sweep_dir"] == str(sweep_dir.resolve())
    assert tags["unet3d.launcher"] == "BasicLauncher"
    assert tags["cv.failed_folds"] == "none"
    assert {key: tags[key] for key in GIT_TAGS if key in tags} == git
    assert {"cv_summary/cv_summary.md", "cv_summary/cv_folds.csv", "cv_summary/cv_summary.csv",
            "cv_summary/multirun.yaml"} <= _artifacts(client, parent.info.run_id)
    markdown = (sweep_dir / "cv_summary.md").read_text()
    assert tags["mlflow.note.content"] == markdown
    assert "### Cross-validation: all (2/2 folds finished)" in markdown
    folds_csv = (sweep_dir / "cv_folds.csv").read_text().splitlines()
    assert len(folds_csv) == 3 and all(run.info.run_id in "".join(folds_csv) for run in jobs)

    # The same table is printed at the end of the sweep.
    assert "### Cross-validation: all (2/2 folds finished)" in output
    mean = parent.data.metrics["cv_mean/Dice_WT"]
    row = [line for line in output.splitlines() if line.startswith("| Dice_WT |")]
    assert row and f"| {mean:.4f} |" in row[0]

    # The logged model (a run output, MLflow 3 LoggedModel) loads and predicts.
    import mlflow

    run = jobs[0]
    (model_output,) = client.get_run(run.info.run_id).outputs.model_outputs
    model_uri = f"models:/{model_output.model_id}"
    assert run.data.tags["unet3d.model_uri"] == model_uri
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model(model_uri)
        prediction = np.asarray(model.predict(np.zeros((1, 8, 8, 8, 4), np.float32)))
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert prediction.shape == (1, 8, 8, 8, 4)
    np.testing.assert_allclose(prediction.sum(axis=-1), 1.0, rtol=1e-5)  # softmax

    # Resume the sweep as if fold 1 had been SIGKILLed after its last checkpoint (run left
    # RUNNING, no results.json): the same command plus resume=true in the same sweep dir
    # reopens the parent and both fold runs (job dirs are named without `resume`).
    killed = jobs[1]
    client.update_run(killed.info.run_id, status="RUNNING")
    (Path(killed.data.tags["output_dir"]) / "results.json").unlink()
    resumed = run_cli("--multirun", *TWO_FOLDS, "resume=true", f"hydra.sweep.dir={sweep_dir}",
                      cwd=tmp_path)
    _assert_ok(resumed)
    assert "nothing to train" in resumed.stdout + resumed.stderr
    assert len(_runs(client)) == 3  # no new run
    parent_after, jobs_after = _parent_and_jobs(client)
    assert parent_after.info.run_id == parent.info.run_id
    assert parent_after.info.status == "FINISHED"
    assert parent_after.data.tags["unet3d.resumed"] == "true"
    assert [run.info.run_id for run in jobs_after] == [run.info.run_id for run in jobs]
    assert all(run.info.status == "FINISHED" for run in jobs_after)
    assert jobs_after[1].data.tags["unet3d.resumed"] == "true"
    assert results(Path(killed.data.tags["output_dir"]))["mlflow_run_id"] == killed.info.run_id
    _check_summary(parent_after, jobs_after)

    # Continue the sweep with more steps (job folders are named without training.max_steps),
    # its parent run deleted meanwhile (issue 30): the same folds go on from step 2 in their
    # own runs, nested under a new parent run.
    job_dirs = sorted(path.parent for path in sweep_dir.glob("*/.hydra"))
    client.delete_run(parent.info.run_id)
    more_steps = [item for item in TWO_FOLDS if not item.startswith("training.max_steps=")]
    longer = run_cli("--multirun", *more_steps, "training.max_steps=4", "resume=true",
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    _assert_ok(longer)
    assert sorted(path.parent for path in sweep_dir.glob("*/.hydra")) == job_dirs
    assert all((job / "checkpoints" / "ckpt-4.index").is_file() for job in job_dirs)
    new_parent, jobs_longer = _parent_and_jobs(client)
    assert new_parent.info.run_id != parent.info.run_id
    assert new_parent.info.status == "FINISHED"
    assert [run.info.run_id for run in jobs_longer] == [run.info.run_id for run in jobs]
    assert all(run.data.tags["unet3d.resumed_from_step"] == "2" for run in jobs_longer)
    _check_summary(new_parent, jobs_longer)


def test_failing_jobs_are_recorded_and_others_summarised(tmp_path: Path) -> None:
    # learning rate 1e30: the loss is NaN at step 2 -> FloatingPointError in both of its folds.
    result = run_cli("--multirun", *JOBLIB, *TWO_FOLDS, "training.learning_rate=1e-3,1e30",
                     "tracking.log_model=false", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]

    client = mlflow_client(tmp_path)
    parent, jobs = _parent_and_jobs(client)
    assert len(jobs) == 4
    failed = [run for run in jobs if "learning_rate=1e+30" in run.data.tags["overrides"]]
    finished = [run for run in jobs if run not in failed]
    assert len(failed) == 2 and len(finished) == 2
    for run in failed:
        assert run.info.status == "FAILED"
        assert run.data.tags["error"].startswith("FloatingPointError: training: loss became nan")
        assert {"error.txt", "run.log", ".hydra/overrides.yaml"} <= _artifacts(
            client, run.info.run_id)
        assert results(Path(run.data.tags["output_dir"]))["status"] == "FAILED"
    for run in finished:
        assert run.info.status == "FINISHED"
        assert all(name in run.data.metrics for name in EVAL_METRICS)

    # The parent: FAILED, names the failed folds, summarises the finished group.
    (good_override,) = {item for item in finished[0].data.tags["overrides"].split()
                        if item.startswith("training.learning_rate=")}
    (bad_override,) = {item for item in failed[0].data.tags["overrides"].split()
                       if item.startswith("training.learning_rate=")}
    from unet3d.tracking.summary import sanitize_group

    assert parent.info.status == "FAILED"
    assert parent.data.tags["cv.failed_folds"] == f"{bad_override}:fold0, {bad_override}:fold1"
    _check_summary(parent, finished, sanitize_group(good_override))
    bad = f"cv_folds/{sanitize_group(bad_override)}/"
    assert parent.data.metrics[bad + "failed"] == 2 and parent.data.metrics[bad + "finished"] == 0
    assert not any(key.startswith(f"cv_mean/{sanitize_group(bad_override)}/")
                   for key in parent.data.metrics)
    note = parent.data.tags["mlflow.note.content"]
    assert f"### Cross-validation: {bad_override} (0/2 folds finished)" in note
    assert f"### Cross-validation: {good_override} (2/2 folds finished)" in note
    # Printed too, with the failed folds, and the sweep says why it exits non-zero.
    assert "Failed folds:\n- fold 0: FAILED — training: loss became nan" in output
    assert f"Sweep FAILED (failed folds: {bad_override} fold 0: FAILED; {bad_override} " \
           "fold 1: FAILED)" in output


def test_joblib_parallel_sweep_sqlite_grouped_by_precision(tmp_path: Path) -> None:
    """2 folds x 2 precisions, 2 jobs at a time in parallel processes, one SQLite store."""
    result = run_cli("--multirun", *JOBLIB, *TWO_FOLDS, "precision=fp32,amp", cwd=tmp_path)
    _assert_ok(result)
    output = result.stdout + result.stderr

    client = mlflow_client(tmp_path)
    parent, jobs = _parent_and_jobs(client)
    assert parent.info.status == "FINISHED" and len(jobs) == 4
    assert parent.data.tags["unet3d.launcher"] == "JoblibLauncher"
    git = _no_git(tmp_path)
    for run in jobs:  # nothing lost: every tag, param, metric, artifact and model
        _check_job_run(client, run, max_steps=2, git=git)
        assert len(client.get_run(run.info.run_id).outputs.model_outputs) == 1
    # Two jobs ran at the same time, in two processes.
    first, second = sorted((run.info for run in jobs), key=lambda info: info.start_time)[:2]
    assert second.start_time < first.end_time

    # The summary groups the runs by the non-fold override.
    groups = {"precision=amp": "bfloat16", "precision=fp32": "float32"}
    for override, compute in groups.items():
        members = [run for run in jobs if override in run.data.tags["overrides"].split()]
        assert sorted(run.data.tags["fold"] for run in members) == ["0", "1"]
        assert {run.data.tags["precision"] for run in members} == {override[10:]}
        assert {run.data.tags["compute_dtype"] for run in members} == {compute}
        assert {run.data.params["precision.name"] for run in members} == {override[10:]}
        # Metric names per group: cv_<stat>/precision-amp/<metric>.
        _check_summary(parent, members, override.replace("=", "-"))
        # One nested summary run per group, with the group's override as a param.
        (summary_run,) = _runs(client, f"tags.`unet3d.cv_group` = '{override}'")
        assert summary_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert summary_run.data.params == {"precision": override[10:]}
        _check_summary(summary_run, members)
        assert f"### Cross-validation: {override} (2/2 folds finished)" in output
        assert f"### Cross-validation: {override} (2/2 folds finished)" in (
            parent.data.tags["mlflow.note.content"])
    assert parent.data.tags["cv.num_groups"] == "2"
    assert not any(key.startswith("cv_mean/Dice") for key in parent.data.metrics)


#: Jobs that a test stops with a signal: far more steps than it ever trains (debug=fast steps
#: take 0.06 s with oneDNN on, so 200 steps could end before a test under load sends its signal).
UNTIL_STOPPED = "training.max_steps=1000000"


def test_sigterm_ends_run_killed_and_sigkill_resumes_same_run(tmp_path: Path) -> None:
    common = ("debug=fast", "mode=train", UNTIL_STOPPED, "tracking.log_model=false")
    term_dir, kill_dir = tmp_path / "term", tmp_path / "kill"
    # Both jobs run at once (one data set: the first to arrive generates it).
    term = _start_cli(*common, f"hydra.run.dir={term_dir}", cwd=tmp_path,
                      log_path=tmp_path / "term.out")
    kill = _start_cli(*common, "training.checkpoint_every=2", f"hydra.run.dir={kill_dir}",
                      cwd=tmp_path, log_path=tmp_path / "kill.out")
    try:
        _wait_for(lambda: (term_dir / "mlflow_run_id").exists()
                  and "training steps" in _read(term_dir / "run.log"), term, 240,
                  "training to start")
        term.send_signal(signal.SIGTERM)
        assert term.wait(timeout=120) == 143  # 128 + SIGTERM, like a shell reports it
        _wait_for(lambda: "ckpt-" in _read(kill_dir / "checkpoints" / "checkpoint"), kill, 240,
                  "the first checkpoint")
        kill.kill()
        kill.wait(timeout=60)
    finally:
        for process in (term, kill):
            if process.poll() is None:
                process.kill()
                process.wait()

    client = mlflow_client(tmp_path)
    run = client.get_run((term_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "KILLED", _read(tmp_path / "term.out")[-3000:]
    assert run.data.tags["error"].startswith("TerminationRequested: terminated by signal SIGTERM")
    # One ERROR line, no traceback.
    term_output = _read(tmp_path / "term.out")
    assert "job stopped: terminated by signal SIGTERM; its MLflow run is KILLED" in term_output
    assert "Traceback" not in term_output
    assert {"error.txt", "run.log", ".hydra/config.yaml"} <= _artifacts(client, run.info.run_id)

    # SIGKILL leaves no chance to clean up: the run stays RUNNING until it is resumed.
    run_id = (kill_dir / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "RUNNING"
    checkpoint = _read(kill_dir / "checkpoints" / "checkpoint")
    last = int(re.search(r'model_checkpoint_path: "ckpt-(\d+)"', checkpoint).group(1))
    resumed = run_cli("debug=fast", "mode=train", "resume=true", f"training.max_steps={last + 2}",
                      "training.checkpoint_every=2", "tracking.log_model=false",
                      f"hydra.run.dir={kill_dir}", cwd=tmp_path)
    _assert_ok(resumed)
    assert f"training steps {last + 1}..{last + 2}" in resumed.stdout + resumed.stderr
    assert (kill_dir / "mlflow_run_id").read_text().strip() == run_id
    assert results(kill_dir)["mlflow_run_id"] == run_id
    assert len(_runs(client, f"attributes.run_name = '{run.info.run_name}'")) == 2
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["unet3d.resumed"] == "true"
    steps = [metric.step for metric in client.get_metric_history(run_id, "loss")]
    assert steps[-1] == last + 2 and last in steps


def test_ctrl_c_ends_run_killed_with_one_line_and_status_130(tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    job = _start_cli("debug=fast", "mode=train", UNTIL_STOPPED,
                     "tracking.log_model=false", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                     log_path=tmp_path / "job.out")
    try:
        _wait_for(lambda: "training steps" in _read(run_dir / "run.log"), job, 240,
                  "training to start")
        job.send_signal(signal.SIGINT)
        assert job.wait(timeout=120) == 130
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    output = _read(tmp_path / "job.out")
    assert "job stopped: interrupted (Ctrl-C); its MLflow run is KILLED" in output
    assert "Traceback" not in output
    run = mlflow_client(tmp_path).get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "KILLED"


def _rest(base_url: str, endpoint: str, body: dict | None = None) -> dict:
    """GET (no body) or POST (JSON body) a tracking server REST endpoint."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base_url}/api/2.0/mlflow/{endpoint}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on a free loopback port (SQLite store, artifacts in a tmp dir).

    Yields `(base_url, process)` at once: the server boots (tens of seconds) while the first
    test of this file runs, which requests this fixture for that reason only.
    """
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    environment = {**os.environ}
    environment.pop("MLFLOW_TRACKING_URI", None)
    with open(folder / "server.log", "w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts")],
            cwd=folder, stdout=log_file, stderr=subprocess.STDOUT, env=environment,
            start_new_session=True,  # its own process group: the teardown ends all of it
        )
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_parallel_sweep_against_mlflow_server(tmp_path: Path, mlflow_server) -> None:
    base_url, server = mlflow_server
    _wait_for(lambda: _healthy(base_url), server, 240, f"mlflow server on {base_url}")
    result = run_cli("--multirun", *JOBLIB, *TWO_FOLDS, f"tracking.uri={base_url}",
                     cwd=tmp_path)
    _assert_ok(result)
    experiments = _rest(base_url, "experiments/search", {"max_results": 100})["experiments"]
    (experiment,) = [item for item in experiments if item["name"] != "Default"]
    runs = _rest(base_url, "runs/search", {"experiment_ids": [experiment["experiment_id"]],
                                           "max_results": 100})["runs"]
    by_kind: dict[str, list] = {}
    for run in runs:
        tags = {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
        run["tags"] = tags
        run["params"] = {item["key"]: item["value"] for item in run["data"].get("params", [])}
        run["metrics"] = {item["key"]: item["value"]
                          for item in run["data"].get("metrics", [])}
        by_kind.setdefault(tags.get("unet3d.run_kind", "job"), []).append(run)
    (parent,) = by_kind["cv_parent"]
    jobs = sorted(by_kind["job"], key=lambda run: run["tags"]["fold"])
    assert len(runs) == 3 and [run["tags"]["fold"] for run in jobs] == ["0", "1"]
    parent_id = parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    for run in jobs:
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        assert run["tags"]["mlflow.parentRunId"] == parent_id
        assert set(JOB_TAGS) <= set(run["tags"])
        assert run["params"]["training.max_steps"] == "2"
        config_keys = _config_keys(Path(run["tags"]["output_dir"]))
        assert config_keys <= set(run["params"])
        assert set(run["params"]) - config_keys <= AUTO_PRECISION_PARAMS
        assert set(EVAL_METRICS) | set(TRAIN_METRICS) <= set(run["metrics"])
        history = _rest(base_url, f"metrics/get-history?run_id={run_id}&metric_key=loss")
        assert [item["step"] for item in history["metrics"]] == [2]
        listed = _rest(base_url, f"artifacts/list?run_id={run_id}")
        assert {"config.yaml", ".hydra", "run.log", "figures", "metrics"} <= {
            item["path"] for item in listed["files"]}
    for name in EVAL_METRICS:
        values = np.array([run["metrics"][name] for run in jobs])
        assert parent["metrics"][f"cv_mean/{name}"] == pytest.approx(np.mean(values))
        assert parent["metrics"][f"cv_std/{name}"] == pytest.approx(np.std(values, ddof=1))
    # The models went through the server's artifact proxy.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=base_url)
    for run in jobs:
        assert len(client.get_run(run["info"]["run_id"]).outputs.model_outputs) == 1
    # Nothing was written to the default local store.
    assert not (tmp_path / "mlflow.db").exists()
    assert parent["tags"]["unet3d.launcher"] == "JoblibLauncher"
