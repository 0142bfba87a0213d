"""Model Registry (unet3d.serving.registration): registration of a job / a sweep ensemble and
``models:/`` checkpoint specs resolving to it, on a real SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

from unet3d.errors import CheckpointError, ConfigError
from unet3d.inference.checkpoints import resolve_model_checkpoints
from unet3d.serving.registration import register_job_model, register_run_model, registry_settings
from unet3d.tracking.tracker import Tracker


def _checkpointed(path: Path, step: int = 6) -> Path:
    folder = path / "checkpoints"
    folder.mkdir(parents=True)
    (folder / f"ckpt-{step}.index").write_text("")
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{step}"\n')
    return path


def _job_run(client, tmp_path: Path, name: str) -> tuple[str, Path]:
    experiment = client.get_experiment_by_name("reg") or None
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment("reg", (tmp_path / "art").as_uri()))
    folder = _checkpointed(tmp_path / name)
    run = client.create_run(experiment_id, run_name=name, tags={"output_dir": str(folder)})
    return run.info.run_id, folder


def test_settings_are_checked() -> None:
    assert registry_settings({"register_model": None, "model_alias": None}) == (None, None)
    assert registry_settings({"register_model": "unet", "model_alias": "champion"}) == (
        "unet", "champion")
    with pytest.raises(ConfigError, match="tracking.model_alias: needs tracking.register_model"):
        registry_settings({"model_alias": "champion"})
    for alias in ("latest", "v2", "a b"):
        with pytest.raises(ConfigError, match="tracking.model_alias: must be null or an alias"):
            registry_settings({"register_model": "unet", "model_alias": alias})
    with pytest.raises(ConfigError, match="tracking.register_model"):
        registry_settings({"register_model": "a@b"})


def test_versions_aliases_and_checkpoint_specs(client, tracking_cfg, tmp_path: Path) -> None:
    uri = tracking_cfg["uri"]
    first_run, first_dir = _job_run(client, tmp_path, "first")
    second_run, second_dir = _job_run(client, tmp_path, "second")
    v1 = register_run_model(client, "unet", first_run, {"eval/Dice_WT": 0.5, "x": "no"},
                            alias="champion")
    assert str(v1.version) == "1" and "- eval/Dice_WT: 0.5000" in v1.description
    assert "x:" not in v1.description and v1.run_id == first_run
    ckpt = "checkpoints/ckpt-6"
    assert resolve_model_checkpoints("models:/unet@champion", tracking_uri=uri) == [
        str(first_dir / ckpt)]
    v2 = register_run_model(client, "unet", second_run, {"eval/Dice_WT": 0.7}, alias="champion")
    assert str(v2.version) == "2"
    assert str(client.get_model_version_by_alias("unet", "champion").version) == "2"
    assert resolve_model_checkpoints("models:/unet@champion", tracking_uri=uri) == [
        str(second_dir / ckpt)]
    assert resolve_model_checkpoints(["models:/unet/1", "models:/unet/2"], tracking_uri=uri) == [
        str(first_dir / ckpt), str(second_dir / ckpt)]

    with pytest.raises(CheckpointError, match=r"^predict.checkpoint: models:/nope@champion: no "
                                              r"registered model 'nope' in sqlite"):
        resolve_model_checkpoints("models:/nope@champion", tracking_uri=uri)
    with pytest.raises(CheckpointError, match=r"has no alias 'best' \(aliases: champion; "
                                              r"versions: 1, 2\)"):
        resolve_model_checkpoints("models:/unet@best", tracking_uri=uri)
    with pytest.raises(CheckpointError, match="has no version 9"):
        resolve_model_checkpoints("models:/unet/9", tracking_uri=uri, key="checkpoint")
    with pytest.raises(ConfigError, match="need a tracking URI"):
        resolve_model_checkpoints("models:/unet@champion")
    # The run's folder is gone: one clear error naming the reference.
    import shutil

    shutil.rmtree(first_dir)
    with pytest.raises(CheckpointError, match=r"models:/unet/1 \(run .*\): its output dir .* "
                                              "does not exist on this machine"):
        resolve_model_checkpoints("models:/unet/1", tracking_uri=uri)


def test_job_and_sweep_parent_registration_through_the_tracker(
    tracking_cfg, store_root, client, tmp_path: Path
) -> None:
    uri = tracking_cfg["uri"]
    # A finished job: its run's output dir holds the checkpoints.
    cfg = {**tracking_cfg, "register_model": "brats", "model_alias": "champion"}
    job = Tracker(cfg, store_root)
    job_dir = _checkpointed(tmp_path / "job")
    job.start(None, job_dir, run_name="train_and_evaluate-fold0",
              tags={"output_dir": str(job_dir)})
    version = register_job_model(job, {"eval/Dice_TC": 0.25})
    job.end()
    assert version is not None and str(version.version) == "1"
    assert client.get_run(job.run_id).data.tags["unet3d.registered_model"] == "brats/1"
    assert resolve_model_checkpoints("models:/brats@champion", tracking_uri=uri) == [
        str(job_dir / "checkpoints" / "ckpt-6")]

    # A sweep's parent run: its sweep dir's fold jobs make an ensemble.
    sweep_dir = tmp_path / "sweep"
    fold_dirs = [_checkpointed(sweep_dir / str(fold), step=fold + 1) for fold in (0, 1)]
    parent = Tracker(cfg, store_root)
    parent.start(None, sweep_dir, run_name="cv", tags={"unet3d.sweep_dir": str(sweep_dir)})
    ensemble = register_job_model(parent, {"Dice_WT_mean": 0.8}, kind="ensemble")
    parent.end()
    assert str(ensemble.version) == "2" and ensemble.tags["unet3d.kind"] == "ensemble"
    assert "Fold ensemble of sweep" in ensemble.description
    assert resolve_model_checkpoints("models:/brats@champion", tracking_uri=uri) == [
        str(fold_dirs[0] / "checkpoints" / "ckpt-1"), str(fold_dirs[1] / "checkpoints" / "ckpt-2")]

    # Not configured, or tracking off: nothing is registered.
    plain = Tracker(tracking_cfg, store_root)
    plain.start(None, tmp_path / "plain", run_name="plain")
    assert register_job_model(plain, {}) is None
    plain.end()
    assert register_job_model(Tracker(cfg, store_root, enabled=False), {}) is None
    assert len(client.search_model_versions("name = 'brats'")) == 2
