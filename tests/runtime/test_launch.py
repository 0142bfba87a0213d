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
