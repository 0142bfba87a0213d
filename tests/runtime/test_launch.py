"""Rank detection and non-chief Hydra overrides used before Hydra starts (no TensorFlow)."""

from __future__ import annotations

import json

from unet3d.runtime.launch import launch_rank, non_chief_overrides


def test_launch_rank_from_each_launcher():
    assert launch_rank({}) == 0
    assert launch_rank({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2"}) == 1
    assert launch_rank({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"}) == 3
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    assert launch_rank({"TF_CONFIG": tf_config}) == 1
    assert launch_rank({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}) == 2
    # A one-task SLURM job is a single process, whatever its procid says.
    assert launch_rank({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == 0
    # An unreadable environment counts as rank 0 (the strategy reports it later).
    assert launch_rank({"TF_CONFIG": "{not json"}) == 0


def test_non_chief_overrides_leave_user_settings_alone():
    assert non_chief_overrides(["debug=fast"]) == [
        "hydra.output_subdir=null",
        "~hydra.job_logging.handlers.file",
        "hydra.job_logging.root.handlers=[console]",
    ]
    assert non_chief_overrides(["hydra/job_logging=disabled", "hydra.output_subdir=x"]) == []


def test_launch_id_alike_on_every_worker_of_one_launch_and_random_otherwise():
    from unet3d.runtime.launch import LAUNCH_ID_LENGTH, derived_launch_id

    slurm = {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "812", "SLURM_STEP_ID": "0"}
    assert derived_launch_id({**slurm, "SLURM_PROCID": "0"}) == derived_launch_id(
        {**slurm, "SLURM_PROCID": "3"})
    assert derived_launch_id(slurm) != derived_launch_id({**slurm, "SLURM_JOB_ID": "813"})
    cluster = {"worker": ["host1:1", "host2:1"]}
    workers = [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
               for index in (0, 1)]
    time = {"UNET3D_LAUNCH_TIME": "2026-01-01_10-00-00"}
    first, second = (derived_launch_id({"TF_CONFIG": worker, **time}) for worker in workers)
    assert first == second
    assert first != derived_launch_id({"TF_CONFIG": workers[0],
                                       "UNET3D_LAUNCH_TIME": "2026-01-01_10-00-01"})
    single = {derived_launch_id({}) for _ in range(20)}
    assert len(single) == 20
    assert all(len(value) == LAUNCH_ID_LENGTH and int(value, 16) >= 0 for value in single)


def test_run_folder_names_carry_the_launch_id(monkeypatch):
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import unet3d.runs.resolvers as resolvers
    from unet3d.config import CONFIG_DIR

    monkeypatch.setattr(resolvers, "_launch_id_value", None)
    monkeypatch.setenv("UNET3D_LAUNCH_ID", "abc123")
    resolvers.register_resolvers()
    GlobalHydra.instance().clear()
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra.compose("config", overrides=["mode=train", "fold=2"],
                            return_hydra_config=True)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    sweep_dir = OmegaConf.select(cfg, "hydra.sweep.dir")
    assert run_dir.endswith("_train_fold2_abc123")
    assert sweep_dir.endswith("_abc123")
    assert cfg.hydra.output_subdir is None  # unet3d.runs.folder writes .hydra/ itself
    monkeypatch.setattr(resolvers, "_launch_id_value", None)
    monkeypatch.setenv("UNET3D_LAUNCH_ID", "a/b")
    try:
        resolvers.launch_id()
    except SystemExit as error:
        assert "UNET3D_LAUNCH_ID" in str(error)
    else:
        raise AssertionError("a launch id with a path separator was accepted")
