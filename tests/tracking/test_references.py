"""``runs:/<run id>`` references resolve to the run's folder in a real local MLflow store;
the syntax of ``models:/`` references (their resolution: tests/serving/test_registration.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unet3d.errors import CheckpointError, ConfigError
from unet3d.inference.checkpoints import resolve_model_checkpoints
from unet3d.tracking.references import (
    is_model_reference,
    is_reference,
    is_run_reference,
    parse_model_reference,
    resolve_run_references,
    run_folder,
    run_id_of,
)


@pytest.fixture()
def store(tmp_path: Path) -> tuple[str, object]:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("unet3d", artifact_location=(tmp_path / "a").as_uri())
    return uri, (client, experiment)


def _run(store: tuple[str, object], **tags: str) -> str:
    client, experiment = store[1]
    return client.create_run(experiment, tags=tags).info.run_id


def _checkpointed_run_dir(path: Path, step: int = 6) -> Path:
    folder = path / "checkpoints"
    folder.mkdir(parents=True)
    (folder / f"ckpt-{step}.index").write_text("")
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{step}"\n')
    return path


def test_reference_syntax() -> None:
    assert is_run_reference("runs:/abc") and not is_run_reference("outputs/runs/abc")
    assert not is_run_reference(None)
    assert run_id_of("runs:/abc123", "checkpoint") == "abc123"
    assert run_id_of("runs:/abc123/model", "checkpoint") == "abc123"
    with pytest.raises(ConfigError, match="checkpoint: 'runs:/': expected runs:/<MLflow run id>"):
        run_id_of("runs:/", "checkpoint")


def test_model_reference_syntax() -> None:
    assert is_model_reference("models:/unet@champion") and not is_model_reference("runs:/a")
    assert is_reference("models:/unet/1") and is_reference("runs:/a") and not is_reference("a")
    assert parse_model_reference("models:/unet@champion", "k") == ("unet", "champion", None)
    assert parse_model_reference("models:/unet/3", "k") == ("unet", None, "3")
    assert parse_model_reference("models:/m-abc", "k") == ("m-abc", None, None)
    for bad in ("models:/", "models:/unet@", "models:/@a", "models:/unet/x"):
        with pytest.raises(ConfigError, match="predict.checkpoint: .*expected models:/<name>@"):
            parse_model_reference(bad, "predict.checkpoint")


def test_job_and_sweep_parent_runs_resolve_to_their_folders(store, tmp_path: Path) -> None:
    uri = store[0]
    job_dir = _checkpointed_run_dir(tmp_path / "outputs" / "job")
    job = _run(store, output_dir=str(job_dir))
    sweep_dir = tmp_path / "multirun" / "sweep"
    sweep_dir.mkdir(parents=True)
    parent = _run(store, **{"unet3d.sweep_dir": str(sweep_dir), "output_dir": "ignored"})
    assert run_folder(f"runs:/{job}", uri, "checkpoint") == job_dir
    assert run_folder(f"runs:/{parent}", uri, "checkpoint") == sweep_dir
    # Lists keep their other items; a single value stays a single value.
    assert resolve_run_references(["a/b", f"runs:/{job}"], uri, "k") == ["a/b", str(job_dir)]
    assert resolve_run_references("a/b", None, "k") == "a/b"
    # Through the model resolver: the run's newest checkpoint.
    assert resolve_model_checkpoints(f"runs:/{job}", tracking_uri=uri) == [
        str(job_dir / "checkpoints" / "ckpt-6")]


def test_bad_references_name_the_key_and_the_reason(store, tmp_path: Path) -> None:
    uri = store[0]
    with pytest.raises(CheckpointError,
                       match=r"predict.checkpoint: runs:/0123: no MLflow run 0123"):
        run_folder("runs:/0123", uri, "predict.checkpoint")
    untagged = _run(store)
    with pytest.raises(CheckpointError, match="has no output_dir tag"):
        run_folder(f"runs:/{untagged}", uri, "checkpoint")
    gone = _run(store, output_dir=str(tmp_path / "deleted"))
    with pytest.raises(CheckpointError, match="deleted does not exist on this machine"):
        run_folder(f"runs:/{gone}", uri, "checkpoint")
    with pytest.raises(ConfigError, match="need a tracking URI"):
        resolve_run_references("runs:/abc", None, "checkpoint")


def test_a_missing_local_store_is_named_and_not_created(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "mlflow.db"
    with pytest.raises(CheckpointError, match="no MLflow store at .*elsewhere/mlflow.db"):
        run_folder("runs:/abc", f"sqlite:///{database}", "checkpoint")
    assert not database.exists()
