"""Agreement between the processes of one multi-process launch, before Hydra starts.

Hydra names the output directory from the clock; ranks started a second apart would each
create their own. Every rank therefore uses one launch time and one launch id (the folder
name's suffix that keeps two jobs started in the same second apart): ``UNET3D_LAUNCH_TIME`` /
``UNET3D_LAUNCH_ID`` when the launcher exported them, else (under ``horovodrun`` / ``mpirun``)
rank 0's values broadcast with Horovod, else the local clock and a random id. tf.distribute
launches (``TF_CONFIG``, SLURM) have no channel before the strategy exists: export
``UNET3D_LAUNCH_TIME`` for all their processes; their id is derived alike on every worker
(`derived_launch_id`) unless ``UNET3D_LAUNCH_ID`` is exported.

Only rank 0 writes into the shared output directory: `non_chief_overrides` turns off Hydra's
``.hydra/`` folder and the job's log file on the other ranks (they still log to stdout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime

from unet3d.runs.resolvers import (
    LAUNCH_ID_LENGTH,
    LAUNCH_ID_VARIABLE,
    LAUNCH_TIME_FORMAT,
    LAUNCH_TIME_VARIABLE,
)

log = logging.getLogger(__name__)


def prepare_launch(argv: list[str] | None = None) -> None:
    """Set up what must exist before Hydra creates the output directory.

    Every rank of a multi-process launch agrees on rank 0's launch time and id (hence one
    output directory, named by :mod:`unet3d.runs.resolvers`); ranks other than 0 write neither
    ``.hydra/`` nor the log file there (``non_chief_overrides`` added to ``argv``, by default
    ``sys.argv``).
    """
    argv = sys.argv if argv is None else argv
    share_launch_time(LAUNCH_TIME_VARIABLE, LAUNCH_TIME_FORMAT, LAUNCH_ID_VARIABLE)
    if launch_rank() > 0:
        argv.extend(non_chief_overrides(argv[1:]))


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
    from unet3d.runtime.distribute.process_env import horovod_env, multi_worker_env

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


def derived_launch_id(environ: Mapping[str, str] | None = None) -> str:
    """A launch id every process of one tf.distribute launch derives alike, or a random one.

    Under SLURM (several tasks) it hashes the job and step ids; with ``TF_CONFIG`` it hashes the
    cluster spec and ``UNET3D_LAUNCH_TIME``; a single process gets 6 random hex digits.
    """
    environ = os.environ if environ is None else environ
    shared = ""
    if _slurm_tasks(environ) > 1 and environ.get("SLURM_JOB_ID"):
        shared = f"slurm:{environ['SLURM_JOB_ID']}.{environ.get('SLURM_STEP_ID', '')}"
    elif environ.get("TF_CONFIG"):
        try:
            cluster = json.loads(environ["TF_CONFIG"]).get("cluster", {})
        except (ValueError, AttributeError):
            cluster = environ["TF_CONFIG"]
        shared = f"tf_config:{json.dumps(cluster, sort_keys=True)}:" \
                 f"{environ.get('UNET3D_LAUNCH_TIME', '')}"
    if shared:
        return hashlib.sha256(shared.encode()).hexdigest()[:LAUNCH_ID_LENGTH]
    return secrets.token_hex(LAUNCH_ID_LENGTH // 2)


def share_launch_time(variable: str, time_format: str,
                      id_variable: str = "UNET3D_LAUNCH_ID") -> None:
    """Make ``os.environ[variable]`` (launch time) and ``os.environ[id_variable]`` (launch id)
    the same on every rank of this launch.

    Under Horovod rank 0's values are broadcast (when either is not exported). The broadcast
    runs in a throw-away TF1 graph session that sees no accelerator: the eager runtime stays
    uninitialised, so `configure_devices` can still pin one GPU / MLU per local rank, set
    memory growth and split CPUs afterwards. tf.distribute launches derive the id alike on
    every worker (`derived_launch_id`); a single process leaves both unset (the runner takes
    its clock and a random id).
    """
    if os.environ.get(variable) and os.environ.get(id_variable):
        return
    if horovod_world_size() > 1:
        import horovod.tensorflow as hvd  # only under horovodrun: imports TensorFlow
        import tensorflow as tf

        hvd.init()
        mine = (os.environ.get(variable) or datetime.now().strftime(time_format),
                os.environ.get(id_variable) or secrets.token_hex(LAUNCH_ID_LENGTH // 2))
        config = tf.compat.v1.ConfigProto(device_count={"GPU": 0, "MLU": 0})
        with tf.Graph().as_default(), tf.compat.v1.Session(config=config) as session:
            stamp, launch_id = hvd.broadcast_object(mine, root_rank=0, session=session,
                                                    name="unet3d_launch_time")
        os.environ[variable] = stamp
        os.environ[id_variable] = launch_id
        log.debug("rank %d uses launch time %s, id %s", hvd.rank(), stamp, launch_id)
    elif os.environ.get("TF_CONFIG") or _slurm_tasks(os.environ) > 1:
        if not os.environ.get(variable):
            log.warning("%s is not set: the processes of this multi-worker launch may pick "
                        "different output directories; export %s=$(date +%%Y-%%m-%%d_%%H-%%M-%%S) "
                        "for all of them", variable, variable)
        if not os.environ.get(id_variable):
            os.environ[id_variable] = derived_launch_id()
