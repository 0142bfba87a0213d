"""Agreement between the processes of one multi-process launch, before Hydra starts.

Hydra names the output directory from the clock; ranks started a second apart would each
create their own. Every rank therefore uses one launch time: ``UNET3D_LAUNCH_TIME`` when the
launcher exported it, else (under ``horovodrun`` / ``mpirun``) rank 0's clock broadcast with
Horovod, else the local clock. tf.distribute launches (``TF_CONFIG``, SLURM) have no channel
before the strategy exists: export ``UNET3D_LAUNCH_TIME`` for all their processes.

Only rank 0 writes into the shared output directory: `non_chief_overrides` turns off Hydra's
``.hydra/`` folder and the job's log file on the other ranks (they still log to stdout).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime

log = logging.getLogger(__name__)


def horovod_world_size() -> int:
    """Number of processes that horovodrun (or mpirun) started, read from the environment."""
    for name in ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        value = os.environ.get(name)
        if value:
            return int(value)
    return 1


def launch_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank in a multi-process launch (0 for a single process), without imports.

    Read from horovodrun / MPI (``HOROVOD_RANK``, ``OMPI_COMM_WORLD_RANK``, ``PMI_RANK``), else
    ``TF_CONFIG`` (chief first, then workers), else SLURM (``SLURM_PROCID`` when the job step
    runs several tasks). An unreadable environment counts as rank 0; the strategy reports it.
    """
    from unet3d.errors import ConfigError
    from unet3d.runtime.strategy import horovod_env, multi_worker_env

    environ = os.environ if environ is None else environ
    try:
        process = horovod_env(environ)
        if process.source == "none" and environ.get("TF_CONFIG"):
            process = multi_worker_env("tf_config", environ)
        if process.source == "none" and _slurm_tasks(environ) > 1:
            process = multi_worker_env("slurm", environ)
    except ConfigError:
        return 0
    return process.rank


def _slurm_tasks(environ: Mapping[str, str]) -> int:
    """Tasks of this SLURM job step (1 outside SLURM)."""
    tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1"
    return int(tasks) if tasks.isdigit() else 1


def non_chief_overrides(arguments: Sequence[str]) -> list[str]:
    """Hydra overrides that keep a non-chief rank from writing into the shared output dir.

    ``hydra.output_subdir=null`` (no ``.hydra/``) and a console-only job logging config (no
    ``run.log``). An override the user gave for the same setting wins (it is left out).
    """
    overrides = []
    if not any("hydra.output_subdir" in argument for argument in arguments):
        overrides.append("hydra.output_subdir=null")
    if not any("job_logging" in argument for argument in arguments):
        overrides += ["~hydra.job_logging.handlers.file",
                      "hydra.job_logging.root.handlers=[console]"]
    return overrides


def share_launch_time(variable: str, time_format: str) -> None:
    """Make ``os.environ[variable]`` the same launch time on every rank of this launch.

    Under Horovod the broadcast runs in a throw-away TF1 graph session that sees no
    accelerator: the eager runtime stays uninitialised, so `configure_devices` can still pin
    one GPU / MLU per local rank, set memory growth and split CPUs afterwards.
    """
    if os.environ.get(variable):
        return
    if horovod_world_size() > 1:
        import horovod.tensorflow as hvd  # only under horovodrun: imports TensorFlow
        import tensorflow as tf

        hvd.init()
        config = tf.compat.v1.ConfigProto(device_count={"GPU": 0, "MLU": 0})
        with tf.Graph().as_default(), tf.compat.v1.Session(config=config) as session:
            stamp = hvd.broadcast_object(datetime.now().strftime(time_format), root_rank=0,
                                         session=session, name="unet3d_launch_time")
        os.environ[variable] = stamp
        log.debug("rank %d uses launch time %s", hvd.rank(), stamp)
    elif os.environ.get("TF_CONFIG") or _slurm_tasks(os.environ) > 1:
        log.warning("%s is not set: the processes of this multi-worker launch may pick "
                    "different output directories; export %s=$(date +%%Y-%%m-%%d_%%H-%%M-%%S) "
                    "for all of them", variable, variable)
