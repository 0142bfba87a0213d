"""Where this process sits in a multi-process launch, read from the launcher's environment.

`horovod_env` / `multi_worker_env` / `process_env` read rank and size without importing
Horovod or TensorFlow, so the runner can use them before Hydra creates output folders and
before devices are configured (`configure_devices` takes the local rank and size).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unet3d.config import CLUSTER_RESOLVERS
from unet3d.config import STRATEGIES as STRATEGY_NAMES
from unet3d.errors import ConfigError


@dataclass(frozen=True)
class ProcessEnv:
    """Where this process sits in a multi-process job, as told by its launcher.

    Attributes:
        rank: global process index (0 is the chief).
        world_size: number of processes.
        local_rank: index among the processes on this machine.
        local_size: number of processes on this machine.
        source: which environment supplied it: "horovod", "mpi", "tf_config", "slurm" or "none".
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1
    source: str = "none"

    @property
    def is_chief(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def _first_int(environ: Mapping[str, str], names: Sequence[str]) -> tuple[int | None, str | None]:
    """Return the first of `names` set in `environ` as an int, and its name."""
    for name in names:
        raw = environ.get(name)
        if raw not in (None, ""):
            try:
                return int(raw), name
            except ValueError as error:
                raise ConfigError(f"environment {name}: not an integer: {raw!r}") from error
    return None, None


def horovod_env(environ: Mapping[str, str] | None = None) -> ProcessEnv:
    """Read rank/size set by horovodrun (Gloo) or an MPI launcher, without importing Horovod.

    Looks at HOROVOD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE, then Open MPI's OMPI_COMM_WORLD_*, then
    MPICH/Intel MPI's PMI_RANK/PMI_SIZE/MPI_LOCALRANKID/MPI_LOCALNRANKS. Returns a single-process
    ProcessEnv (source "none") when none is set.
    """
    environ = os.environ if environ is None else environ
    rank, rank_name = _first_int(environ, ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"))
    if rank is None:
        return ProcessEnv()
    size, _ = _first_int(environ, ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))
    local_rank, _ = _first_int(
        environ, ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
    )
    local_size, _ = _first_int(
        environ, ("HOROVOD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
    )
    size = size if size is not None else rank + 1
    if local_rank is None or local_size is None:
        local_rank, local_size = 0, 1
    return ProcessEnv(
        rank=rank,
        world_size=size,
        local_rank=local_rank,
        local_size=local_size,
        source="horovod" if rank_name == "HOROVOD_RANK" else "mpi",
    )


def _host_of(address: str) -> str:
    """Host part of "host:port"."""
    return address.rsplit(":", 1)[0]


def _tf_config_env(environ: Mapping[str, str]) -> ProcessEnv:
    """Rank/size from TF_CONFIG: chief first, then workers (TensorFlow's worker order)."""
    raw = environ.get("TF_CONFIG")
    if not raw:
        return ProcessEnv()
    try:
        tf_config = json.loads(raw)
        cluster = tf_config.get("cluster", {})
        task = tf_config.get("task", {})
        task_type = str(task.get("type", "worker"))
        task_index = int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG: not a valid cluster description: {error}") from error
    me = (task_type, task_index)
    ordered = [
        (kind, index, address)
        for kind in ("chief", "worker")
        for index, address in enumerate(cluster.get(kind, []))
    ]
    positions = [i for i, (kind, index, _) in enumerate(ordered) if (kind, index) == me]
    if not positions:
        raise ConfigError(
            f"TF_CONFIG: task {task_type}:{task_index} is not a chief or worker of the cluster "
            "(evaluator and ps tasks are not supported)"
        )
    rank = positions[0]
    my_host = _host_of(ordered[rank][2])
    same_host = [i for i, (_, _, address) in enumerate(ordered) if _host_of(address) == my_host]
    return ProcessEnv(
        rank=rank,
        world_size=len(ordered),
        local_rank=same_host.index(rank),
        local_size=len(same_host),
        source="tf_config",
    )


def _slurm_tasks_per_node(environ: Mapping[str, str]) -> int | None:
    """Tasks on this node from SLURM_NTASKS_PER_NODE or the first SLURM_TASKS_PER_NODE entry."""
    for name in ("SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        raw = environ.get(name)
        if raw:
            head = raw.split(",")[0].split("(")[0]
            if head.isdigit():
                return int(head)
    return None


def _slurm_env(environ: Mapping[str, str]) -> ProcessEnv:
    """Rank/size from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID."""
    rank, _ = _first_int(environ, ("SLURM_PROCID",))
    if rank is None:
        return ProcessEnv()
    size, _ = _first_int(environ, ("SLURM_NTASKS",))
    local_rank, _ = _first_int(environ, ("SLURM_LOCALID",))
    local_size = _slurm_tasks_per_node(environ)
    local_rank = local_rank or 0
    local_size = local_size if local_size is not None else local_rank + 1
    return ProcessEnv(rank, size or rank + 1, local_rank, local_size, "slurm")


def multi_worker_env(
    cluster_resolver: str = "tf_config", environ: Mapping[str, str] | None = None
) -> ProcessEnv:
    """Read this worker's rank/size from TF_CONFIG or SLURM's variables, without TensorFlow."""
    environ = os.environ if environ is None else environ
    if cluster_resolver == "tf_config":
        return _tf_config_env(environ)
    if cluster_resolver == "slurm":
        return _slurm_env(environ)
    raise ConfigError(
        f"strategy.cluster_resolver: must be one of {', '.join(CLUSTER_RESOLVERS)}, "
        f"got {cluster_resolver!r}"
    )


def process_env(
    strategy_cfg: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> ProcessEnv:
    """The launcher environment relevant to `strategy.name` (single process for auto/mirrored).

    Use its local_rank/local_size for `configure_devices` and its rank to agree on rank 0's
    output folder.

    Args:
        strategy_cfg: the `strategy` config section (name; cluster_resolver for multi_worker).
        environ: the environment to read (default `os.environ`).

    Raises:
        ConfigError: unknown strategy.name or cluster_resolver, or a non-integer rank variable.
    """
    name = strategy_name(strategy_cfg)
    if name == "horovod":
        return horovod_env(environ)
    if name == "multi_worker":
        resolver = str(strategy_cfg.get("cluster_resolver") or "tf_config")
        return multi_worker_env(resolver, environ)
    return ProcessEnv()


def strategy_name(strategy_cfg: Mapping[str, Any]) -> str:
    """`strategy.name` in lower case (missing or null: "auto").

    Args:
        strategy_cfg: the `strategy` config section.

    Raises:
        ConfigError: the name is not one of `STRATEGY_NAMES`.
    """
    name = str(strategy_cfg.get("name") or "auto").strip().lower()
    if name not in STRATEGY_NAMES:
        raise ConfigError(
            f"strategy.name: must be one of {', '.join(STRATEGY_NAMES)}, got {name!r}"
        )
    return name
