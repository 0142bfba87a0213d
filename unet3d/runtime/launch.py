"""Agreement between the processes of one multi-process launch, before Hydra starts.

Hydra names the output directory from the clock; ranks started a second apart would each
create their own. Every rank therefore uses one launch time: ``UNET3D_LAUNCH_TIME`` when the
launcher exported it, else SLURM's job id folded into rank 0's clock via Horovod's broadcast,
else (a single process) the local clock.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime

log = logging.getLogger(__name__)


def horovod_world_size() -> int:
    """Number of processes that horovodrun (or mpirun) started, read from the environment."""
    for name in ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        value = os.environ.get(name)
        if value:
            return int(value)
    return 1


def share_launch_time(variable: str, time_format: str) -> None:
    """Make ``os.environ[variable]`` the same launch time on every rank of this launch."""
    if os.environ.get(variable):
        return
    if horovod_world_size() > 1:
        import horovod.tensorflow as hvd  # only under horovodrun: imports TensorFlow

        hvd.init()
        stamp = hvd.broadcast_object(datetime.now().strftime(time_format), root_rank=0)
        os.environ[variable] = stamp
        log.debug("rank %d uses launch time %s", hvd.rank(), stamp)

