"""Tracker against a real MLflow SQLite store in tmp_path; the store and value helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _tracking_helpers import PYTHON, REPO_ROOT, subprocess_env, wait_for_file
from omegaconf import OmegaConf

from tests.ports import free_port
from unet3d.runs.provenance import git_tags
from unet3d.runtime.signals import TerminationRequested
from unet3d.tracking.run_status import tracked_run
from unet3d.tracking.store import resolve_artifact_location, resolve_tracking_uri
from unet3d.tracking.tracker import RUN_ID_FILE, Tracker
from unet3d.tracking.values import flatten_config, sanitize_name

CONFIG = {
    "seed": 42,
    "fold": 1,
    "resume": False,
    "data": {"name": "synthetic", "crop_size": [32, 32, 32], "batch_size": 1},
    "model": {"name": "unet3d_small", "base_filters": 8},
    "training": {"learning_rate": 1.0e-3, "schedule": {}},
    "checkpoint": None,
}


def make_tracker(tracking_cfg: dict, root: Path, **kwargs) -> Tracker:
    return Tracker(tracking_cfg, root, **kwargs)


# ----------------------------------------------------------------------------- pure helpers


def test_resolve_tracking_uri_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri({"uri": None}, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri({"uri": None}, tmp_path) == "http://127.0.0.1:1"
    assert resolve_tracking_uri({"uri": "sqlite:///x.db"}, tmp_path) == "sqlite:///x.db"


def test_artifact_location_local_store_only(tmp_path: Path) -> None:
    local = resolve_artifact_location({}, tmp_path, f"sqlite:///{tmp_path}/mlflow.db")
    assert local == (tmp_path / "mlartifacts").as_uri()
    assert resolve_artifact_location({}, tmp_path, "http://127.0.0.1:5000") is None
    explicit = resolve_artifact_location({"artifact_location": str(tmp_path / "a")}, tmp_path, "x")
    assert explicit == (tmp_path / "a").as_uri()


def test_flatten_config_dotted_keys_lists_and_unresolvable() -> None:
    cfg = OmegaConf.create(
        {
            **CONFIG,
            "paths": {"root_dir": "/r", "data_dir": "${paths.root_dir}/data"},
            "out": "${hydra:runtime.output_dir}",
            "needed": "???",
        }
    )
    flat = flatten_config(cfg, exclude=("model",))
    assert flat["data.crop_size"] == "[32, 32, 32]"
    assert flat["paths.data_dir"] == "/r/data"
    assert flat["training.learning_rate"] == "0.001"
    assert flat["training.schedule"] == "{}"
    assert flat["checkpoint"] == "None"
    assert flat["out"] == "${hydra:runtime.output_dir}"
    assert flat["needed"] == "???"
    assert not any(key.startswith("model") for key in flat)


def test_sanitize_name() -> None:
    assert sanitize_name("eval/Dice_WT") == "eval/Dice_WT"
    assert sanitize_name("a=b,c") == "a_b_c"


def test_git_tags(tmp_path: Path) -> None:
    assert git_tags(tmp_path) == {}
    tags = git_tags(REPO_ROOT)
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert tags["git_dirty"] in ("true", "false")


# ----------------------------------------------------------------------------- tracker


def test_start_logs_config_tags_and_metrics(tracking_cfg, store_root, client, tmp_path) -> None:
    output_dir = tmp_path / "job"
    tracker = make_tracker(tracking_cfg, store_root)
    run_id = tracker.start(
        OmegaConf.create(CONFIG), output_dir, run_name="train-fold1", tags={"fold": 1}
    )
    assert (output_dir / RUN_ID_FILE).read_text().strip() == run_id
    tracker.log_metrics({"train/loss": 0.5, "nan": float("nan"), "text": "x"}, step=10)
    tracker.log_metrics({"train/loss": 0.25, "eval/Dice_WT": np.float32(0.75)}, step=20)
    tracker.set_tags({"device": "CPU"})
    tracker.end()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "train-fold1"
    assert run.data.params["data.crop_size"] == "[32, 32, 32]"
    assert run.data.params["model.base_filters"] == "8"
    assert run.data.tags["fold"] == "1" and run.data.tags["device"] == "CPU"
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(10, 0.5), (20, 0.25)]
    assert client.get_metric_history(run_id, "eval/Dice_WT")[0].value == pytest.approx(0.75)
    assert "nan" not in run.data.metrics and "text" not in run.data.metrics
    artifacts = {item.path for item in client.list_artifacts(run_id)}
    assert "config.yaml" in artifacts
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "unet3d-test"
    assert experiment.artifact_location == (store_root / "mlartifacts").as_uri()


def test_experiment_is_a_model_training_experiment(
    tracking_cfg, store_root, client, tmp_path
) -> None:
    """New experiments get mlflow.experimentKind; old ones without it (or inferred) get it set,
    an explicit other kind is kept."""
    tracker = make_tracker(tracking_cfg, store_root)
    run_id = tracker.start(None, tmp_path / "a", run_name="a")
    tracker.end()
    created = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert created.tags["mlflow.experimentKind"] == "custom_model_development"

    old = client.create_experiment("old-unet3d")
    inferred = client.create_experiment(
        "inferred", tags={"mlflow.experimentKind": "genai_development_inferred"})
    explicit = client.create_experiment(
        "explicit", tags={"mlflow.experimentKind": "genai_development"})
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    for name in ("old-unet3d", "inferred", "explicit"):
        job = make_tracker({**tracking_cfg, "experiment_name": name}, store_root)
        job.start(None, tmp_path / name, run_name=name)
        job.end()
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(inferred).tags["mlflow.experimentKind"] == (
        "custom_model_development")
    assert client.get_experiment(explicit).tags["mlflow.experimentKind"] == "genai_development"


def test_resume_reopens_same_run_and_keeps_first_params(
    tracking_cfg, store_root, client, tmp_path
) -> None:
    output_dir = tmp_path / "job"
    first = make_tracker(tracking_cfg, store_root)
    run_id = first.start(OmegaConf.create(CONFIG), output_dir, run_name="r")
    first.log_metrics({"loss": 1.0}, step=1)
    # Simulate SIGKILL: the run is left RUNNING, the process is gone.
    second = make_tracker(tracking_cfg, store_root)
    resumed_id = second.start(OmegaConf.create({**CONFIG, "resume": True}), output_dir, "r")
    assert resumed_id == run_id and second.resumed
    assert client.get_run(run_id).info.status == "RUNNING"
    second.log_metrics({"loss": 0.5}, step=2)
    second.end("FINISHED")

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["resume"] == "False"
    assert "resume: False -> True" in run.data.tags["unet3d.changed_params"]
    assert run.data.tags["unet3d.resumed"] == "true"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_nested_run_has_parent_tag(tracking_cfg, store_root, client, tmp_path) -> None:
    parent = make_tracker(tracking_cfg, store_root)
    parent_id = parent.start(None, tmp_path / "sweep", run_id_file="parent_id")
    child = make_tracker(tracking_cfg, store_root)
    child_id = child.start(None, tmp_path / "job", parent_run_id=parent_id)
    child.end()
    parent.end()
    assert client.get_run(child_id).data.tags["mlflow.parentRunId"] == parent_id
    found = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
    )
    assert [run.info.run_id for run in found] == [child_id]


def test_a_resumed_job_moves_to_the_new_parent_of_a_sweep_whose_parent_was_deleted(
        tracking_cfg, store_root, client, tmp_path) -> None:
    """Issue 30: the deleted parent is replaced (reopenable_run), and the resumed fold runs
    nest under the new one, so it shows its children."""
    sweep = tmp_path / "sweep"
    parent = make_tracker(tracking_cfg, store_root)
    old_parent = parent.start(None, sweep, run_id_file="parent_id")
    child = make_tracker(tracking_cfg, store_root)
    child_id = child.start(None, tmp_path / "job", parent_run_id=old_parent)
    child.end("KILLED")
    parent.end("KILLED")
    client.delete_run(old_parent)

    reopened = make_tracker(tracking_cfg, store_root)
    new_parent = reopened.start(None, sweep, run_id_file="parent_id")
    assert new_parent != old_parent  # a deleted run is not reopened
    resumed = make_tracker(tracking_cfg, store_root)
    assert resumed.start(None, tmp_path / "job", parent_run_id=new_parent) == child_id
    resumed.end()
    assert client.get_run(child_id).data.tags["mlflow.parentRunId"] == new_parent
    children = client.search_runs([client.get_run(new_parent).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{new_parent}'")
    assert [run.info.run_id for run in children] == [child_id]


@pytest.mark.parametrize(
    ("exception", "status"),
    [
        (FloatingPointError("loss is NaN at step 7"), "FAILED"),
        (RuntimeError("boom"), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
        (TerminationRequested("terminated by signal SIGTERM"), "KILLED"),
    ],
)
def test_tracked_run_records_failures(
    tracking_cfg, store_root, client, tmp_path, exception, status
) -> None:
    tracker = make_tracker(tracking_cfg, store_root)
    run_id = tracker.start(None, tmp_path / "job")
    with pytest.raises(type(exception)), tracked_run(tracker):
        raise exception
    run = client.get_run(run_id)
    assert run.info.status == status
    assert run.data.tags["error"].startswith(type(exception).__name__)
    error_text = Path(
        client.download_artifacts(run_id, "error.txt", str(tmp_path / "dl"))
    ).read_text()
    assert type(exception).__name__ in error_text and "Traceback" in error_text


def test_tracked_run_success_finishes(tracking_cfg, store_root, client, tmp_path) -> None:
    tracker = make_tracker(tracking_cfg, store_root)
    run_id = tracker.start(None, tmp_path / "job")
    with tracked_run(tracker):
        tracker.log_metrics({"x": 1}, step=0)
    assert client.get_run(run_id).info.status == "FINISHED"
    tracker.end("FAILED", "ignored: already ended")  # idempotent
    assert client.get_run(run_id).info.status == "FINISHED"


def test_end_rejects_unknown_status(tracking_cfg, store_root, tmp_path) -> None:
    tracker = make_tracker(tracking_cfg, store_root)
    tracker.start(None, tmp_path / "job")
    with pytest.raises(ValueError, match="status"):
        tracker.end("RUNNING")
    tracker.end()


@pytest.mark.parametrize(
    "kwargs", [{"is_chief": False}, {"enabled": False}, {"disabled_in_cfg": True}]
)
def test_inactive_tracker_writes_nothing(tracking_cfg, tmp_path, kwargs) -> None:
    cfg = dict(tracking_cfg, uri=f"sqlite:///{tmp_path}/never.db")
    if kwargs.pop("disabled_in_cfg", False):
        cfg["enabled"] = False
    tracker = Tracker(cfg, tmp_path, **kwargs)
    output_dir = tmp_path / "job"
    assert tracker.start(OmegaConf.create(CONFIG), output_dir, "r") is None
    tracker.log_params({"a": 1})
    tracker.log_metrics({"a": 1.0}, step=1)
    tracker.set_tags({"a": "b"})
    assert tracker.log_model(object(), np.zeros((1, 2))) is None
    with pytest.raises(RuntimeError), tracked_run(tracker):
        raise RuntimeError("x")
    assert not output_dir.exists()
    assert not (tmp_path / "never.db").exists() and not (tmp_path / "mlartifacts").exists()


def test_log_model_round_trip(tracking_cfg, store_root, client, tmp_path) -> None:
    import keras
    import mlflow
    import mlflow.tensorflow

    inputs = keras.Input((None, None, None, 2))
    outputs = keras.layers.Conv3D(3, 1, activation="softmax", dtype="float32")(inputs)
    model = keras.Model(inputs, outputs)
    tracker = make_tracker(tracking_cfg, store_root)
    run_id = tracker.start(None, tmp_path / "job")
    example = np.random.default_rng(0).random((1, 4, 4, 4, 2), dtype=np.float32)
    model_uri = tracker.log_model(model, example)
    tracker.end()
    assert model_uri is not None and model_uri.startswith("models:/")
    assert tracker.tracking_errors == 0

    mlflow.set_tracking_uri(tracking_cfg["uri"])
    bigger = np.random.default_rng(1).random((2, 8, 8, 6, 2), dtype=np.float32)
    expected = np.asarray(model(bigger))
    loaded = mlflow.pyfunc.load_model(model_uri)
    np.testing.assert_allclose(np.asarray(loaded.predict(bigger)), expected, rtol=1e-6)
    inputs_spec = loaded.metadata.get_input_schema().inputs[0]
    assert tuple(inputs_spec.shape) == (-1, -1, -1, -1, 2)
    keras_model = mlflow.tensorflow.load_model(f"runs:/{run_id}/model")
    np.testing.assert_allclose(np.asarray(keras_model(bigger)), expected, rtol=1e-6)
    outputs_of_run = client.get_run(run_id).outputs.model_outputs
    assert [output.model_id for output in outputs_of_run] == [model_uri.split("/")[-1]]


def test_sigterm_ends_run_killed(tmp_path, store_root, client) -> None:
    ready = tmp_path / "ready"
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from unet3d.tracking.run_status import tracked_run
            from unet3d.tracking.tracker import Tracker
            cfg = {{"uri": "sqlite:///{store_root}/mlflow.db", "experiment_name": "sig"}}
            tracker = Tracker(cfg, {str(tmp_path)!r})
            tracker.start(None, {str(tmp_path / "job")!r}, run_name="sig")
            with tracked_run(tracker):
                open({str(ready)!r}, "w").close()
                time.sleep(60)
            """
        )
    )
    process = subprocess.Popen(
        [PYTHON, str(script)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for_file(ready, 60), process.communicate(timeout=5)[0]
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0, output
    run_id = (tmp_path / "job" / RUN_ID_FILE).read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "KILLED", output
    assert "SIGTERM" in run.data.tags["error"]


# ----------------------------------------------------------------------------- mlflow server


def _http_json(url: str, payload: dict | None = None) -> dict:
    if payload is None:
        request = urllib.request.Request(url)
    else:
        request = urllib.request.Request(
            url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()
    return json.loads(body) if body.strip().startswith("{") else {"text": body}


@pytest.mark.slow
def test_tracker_against_local_mlflow_server(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [
                PYTHON, "-m", "mlflow", "server",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                "--serve-artifacts", "--artifacts-destination", str(tmp_path / "server-artifacts"),
            ],
            env=subprocess_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if "OK" in _http_json(f"{base}/health").get("text", ""):
                        break
                except OSError:
                    pass
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "mlflow server did not answer within 90 s"
                time.sleep(0.5)

            tracker = Tracker({"uri": base, "experiment_name": "served"}, tmp_path / "root")
            run_id = tracker.start(OmegaConf.create(CONFIG), tmp_path / "job", "served-run")
            tracker.log_metrics({"eval/Dice_WT": 0.5}, step=3)
            (tmp_path / "note.txt").write_text("hello")
            tracker.log_artifact(tmp_path / "note.txt", "notes")
            tracker.end()
            assert tracker.tracking_errors == 0

            run = _http_json(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
            params = {item["key"]: item["value"] for item in run["data"]["params"]}
            metrics = {item["key"]: item for item in run["data"]["metrics"]}
            assert params["data.crop_size"] == "[32, 32, 32]"
            assert metrics["eval/Dice_WT"]["value"] == 0.5 and metrics["eval/Dice_WT"]["step"] == 3
            assert run["info"]["status"] == "FINISHED"
            stored = list((tmp_path / "server-artifacts").rglob("note.txt"))
            assert stored and stored[0].read_text() == "hello"
            assert not (tmp_path / "root").exists()
        finally:
            # The server (uvicorn) may fork workers: end its own process group.
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
