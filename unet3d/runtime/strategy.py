"""One distributed-training interface over tf.distribute and Horovod.

The training loop is written once against `DistributedContext`::

    context = create_context(cfg.strategy, device_info)
    with context.scope():
        model = build_model(...)
        optimizer = wrap_optimizer(keras.optimizers.Adam(...), precision_info)
        optimizer.build(model.trainable_variables)
    context.broadcast_variables(model.variables + optimizer.variables)  # Horovod; no-op else
    dataset = context.distribute_dataset(lambda input_context: make_dataset(input_context))
    global_batch = context.global_batch_size(per_replica_batch)

    def step(images, labels):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            loss = per_sample_loss_sum(labels, probabilities) / global_batch
            scaled_loss = optimizer.scale_loss(loss)
        grads = context.gradients(tape, scaled_loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(images, labels):
        return context.reduce_sum(context.run(step, (images, labels)))

Gradient convention (the same for every backend): each replica divides its loss by the GLOBAL
batch and the replicas' gradients are SUMMED, so the update equals one step on the global
batch. Under tf.distribute the Keras 3 optimizer sums the gradients inside `apply_gradients`
(so `gradients` returns per-replica gradients); under Horovod `gradients` all-reduces them with
`hvd.Sum` through `hvd.DistributedGradientTape`.

Horovod with Keras 3: `horovod.tensorflow.keras` (DistributedOptimizer, broadcast callback) is
broken, and Horovod's tape and broadcast need `tf.Variable`s, so this module passes each Keras
variable's `.value` (its backing `tf.Variable`) to them.

`horovod_env` / `multi_worker_env` / `process_env` read rank and size from the launcher's
environment without importing Horovod or TensorFlow, so the runner can use them before Hydra
creates output folders and before devices are configured.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unet3d.errors import ConfigError, DeviceError
from unet3d.runtime.devices import DeviceInfo

logger = logging.getLogger(__name__)

STRATEGY_NAMES = ("auto", "mirrored", "multi_worker", "horovod")
CLUSTER_RESOLVERS = ("tf_config", "slurm")
COMMUNICATIONS = ("auto", "ring", "nccl")

HOROVOD_INSTALL_HINT = (
    "build it into this environment with `bash .ci/install_horovod.sh` (horovod==0.28.1 with "
    "HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1, pip install "
    "--no-build-isolation; needs TensorFlow <= 2.18.1, g++ and cmake), then launch with "
    "`horovodrun -np N python -m unet3d.run strategy=horovod`"
)


# --------------------------------------------------------------------------------------------
# Launcher environment (no TensorFlow, no Horovod import)
# --------------------------------------------------------------------------------------------


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


def process_env(strategy_cfg: Any, environ: Mapping[str, str] | None = None) -> ProcessEnv:
    """The launcher environment relevant to `strategy.name` (single process for auto/mirrored).

    Use its local_rank/local_size for `configure_devices` and its rank to agree on rank 0's
    output folder.
    """
    name = _strategy_name(strategy_cfg)
    if name == "horovod":
        return horovod_env(environ)
    if name == "multi_worker":
        return multi_worker_env(_config_get(strategy_cfg, "cluster_resolver", "tf_config"), environ)
    return ProcessEnv()


# --------------------------------------------------------------------------------------------
# The context
# --------------------------------------------------------------------------------------------


def _config_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read `key` from a DictConfig, dict or object, returning `default` when absent or None."""
    if cfg is None:
        return default
    if isinstance(cfg, str):
        return default
    getter = getattr(cfg, "get", None)
    value = getter(key, default) if getter is not None else getattr(cfg, key, default)
    return default if value is None else value


def _strategy_name(strategy_cfg: Any) -> str:
    """`strategy.name`, validated."""
    name = strategy_cfg if isinstance(strategy_cfg, str) else _config_get(strategy_cfg, "name")
    name = str(name or "auto").strip().lower()
    if name not in STRATEGY_NAMES:
        raise ConfigError(
            f"strategy.name: must be one of {', '.join(STRATEGY_NAMES)}, got {name!r}"
        )
    return name


def _tf_variable(variable: Any) -> Any:
    """The backing tf.Variable of a Keras 3 variable (or the argument itself)."""
    import keras

    if isinstance(variable, keras.Variable):
        return variable.value
    return variable


class DistributedContext:
    """Hides tf.distribute vs Horovod from one custom training loop (see the module docstring).

    Create it with `create_context`. Attributes: `strategy` (a tf.distribute.Strategy; the
    default strategy under Horovod), `name`, `num_replicas` (global replicas in sync),
    `world_size` (processes), `rank`, `local_rank`, `local_size`, `is_chief`, `uses_horovod`,
    `device_info`.
    """

    def __init__(
        self,
        strategy: Any,
        name: str,
        device_info: DeviceInfo,
        *,
        world_size: int = 1,
        rank: int = 0,
        local_rank: int = 0,
        local_size: int = 1,
        is_chief: bool = True,
        horovod: Any = None,
    ) -> None:
        self.strategy = strategy
        self.name = name
        self.device_info = device_info
        self.world_size = world_size
        self.rank = rank
        self.local_rank = local_rank
        self.local_size = local_size
        self.is_chief = is_chief
        self._hvd = horovod

    # ---- facts -----------------------------------------------------------------------------

    @property
    def uses_horovod(self) -> bool:
        """True when gradients and reductions go through Horovod."""
        return self._hvd is not None

    @property
    def num_replicas(self) -> int:
        """Global number of replicas that each compute on a slice of the global batch."""
        if self._hvd is not None:
            return int(self._hvd.size())
        return int(self.strategy.num_replicas_in_sync)

    def global_batch_size(self, per_replica_batch_size: int) -> int:
        """The global batch: per-replica batch times `num_replicas` (divide losses by it)."""
        return int(per_replica_batch_size) * self.num_replicas

    def shard_spec(self) -> tuple[int, int]:
        """(num_input_pipelines, input_pipeline_id): one input pipeline per process."""
        return self.world_size, self.rank

    def shard_files(self, files: Sequence[Any]) -> list[Any]:
        """This process's share of `files` (every `world_size`-th from `rank`; may be empty)."""
        count, index = self.shard_spec()
        return list(files)[index::count]

    def __repr__(self) -> str:
        """Short description for logs."""
        return (
            f"DistributedContext(name={self.name!r}, replicas={self.num_replicas}, "
            f"rank={self.rank}/{self.world_size}, local_rank={self.local_rank}/"
            f"{self.local_size}, chief={self.is_chief}, devices={self.device_info.names})"
        )

    # ---- building and data -------------------------------------------------------------------

    def scope(self) -> Any:
        """Context manager under which the model and optimizer must be created."""
        return self.strategy.scope()

    def input_context(self) -> Any:
        """A tf.distribute.InputContext for this process (what `distribute_dataset` passes)."""
        import tensorflow as tf

        count, index = self.shard_spec()
        return tf.distribute.InputContext(
            num_input_pipelines=count,
            input_pipeline_id=index,
            num_replicas_in_sync=self.num_replicas,
        )

    def distribute_dataset(self, dataset_fn: Callable[[Any], Any]) -> Any:
        """Build the training input: `dataset_fn(input_context) -> tf.data.Dataset`.

        `dataset_fn` must shard by `input_context.input_pipeline_id` /
        `num_input_pipelines` and batch with
        `input_context.get_per_replica_batch_size(global_batch)` (or the per-replica batch).
        Under tf.distribute the result is a distributed dataset whose elements feed
        `run`; under Horovod it is the plain dataset of this rank.

        A single CPU replica in a single process also gets the plain dataset: there the
        distributed dataset only adds a per-batch copy to the same host memory and a Python
        generator around the iterator (about 2% of a training step of the default CPU job,
        measured by ``mode=benchmark benchmark.target=runner``). Accelerators keep the
        distributed dataset, which prefetches each batch onto the device.
        """
        if self._hvd is not None or self._single_host_replica():
            return dataset_fn(self.input_context())
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _single_host_replica(self) -> bool:
        return (self.world_size == 1 and self.num_replicas == 1
                and self.device_info.type == "CPU" and self.name != "multi_worker")

    # ---- the step ------------------------------------------------------------------------------

    def run(self, step_fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        """Run `step_fn(*args, **kwargs)` on every local replica; returns per-replica values."""
        kwargs = dict(kwargs or {})
        if self._hvd is not None:
            return step_fn(*args, **kwargs)
        return self.strategy.run(step_fn, args=tuple(args), kwargs=kwargs)

    def gradients(self, tape: Any, loss: Any, variables: Sequence[Any]) -> list[Any]:
        """Gradients of `loss` for `variables`, ready for `optimizer.apply_gradients`.

        Call inside the function given to `run`, after leaving the tape. tf.distribute: the
        replica's own gradients (Keras 3's `apply_gradients` sums them over replicas); when one
        replica's gradients are not finite all replicas get NaN gradients, so a
        LossScaleOptimizer skips the step everywhere alike. Horovod: gradients summed over all
        ranks by `hvd.DistributedGradientTape(op=hvd.Sum)`.
        """
        variables = list(variables)
        if self._hvd is not None:
            hvd = self._hvd
            sources = [_tf_variable(variable) for variable in variables]
            if hvd.size() == 1:
                return list(tape.gradient(loss, sources))
            distributed_tape = hvd.DistributedGradientTape(tape, op=hvd.Sum)
            return list(distributed_tape.gradient(loss, sources))
        grads = list(tape.gradient(loss, variables))
        return self._agree_on_finiteness(grads)

    all_reduce_gradients = gradients  # the name docs/contracts.md uses

    def _agree_on_finiteness(self, grads: list[Any]) -> list[Any]:
        """Make every replica's gradients NaN when any replica has a non-finite gradient.

        Keras 3's LossScaleOptimizer checks finiteness on each replica's gradients before they
        are summed, so replicas could otherwise disagree on skipping a step (diverging weights
        or a hang). The sum of the gradients is NaN anyway in that case, so this changes
        nothing else.
        """
        import tensorflow as tf

        replica_context = tf.distribute.get_replica_context()
        if replica_context is None or replica_context.num_replicas_in_sync <= 1:
            return grads
        dense = [g for g in grads if g is not None and not isinstance(g, tf.IndexedSlices)]
        if not dense:
            return grads
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in dense]))
        non_finite_replicas = replica_context.all_reduce(
            tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)
        )
        poison = tf.where(non_finite_replicas > 0.5, float("nan"), 0.0)
        return [
            g + tf.cast(poison, g.dtype)
            if g is not None and not isinstance(g, tf.IndexedSlices)
            else g
            for g in grads
        ]

    def local_results(self, value: Any) -> tuple[Any, ...]:
        """This process's per-replica components of a value returned by `run`."""
        if self._hvd is not None:
            return (value,)
        return tuple(self.strategy.experimental_local_results(value))

    def reduce_sum(self, value: Any) -> Any:
        """Sum a (nest of) per-replica value(s) over all replicas of all processes.

        Call in cross-replica context (after `run`, inside the same tf.function). Every
        process must call it (it communicates).
        """
        return self._reduce(value, mean=False)

    def reduce_mean(self, value: Any) -> Any:
        """Mean of a (nest of) per-replica value(s) over all replicas of all processes."""
        return self._reduce(value, mean=True)

    def _reduce(self, value: Any, mean: bool) -> Any:
        """Shared body of reduce_sum / reduce_mean."""
        import tensorflow as tf

        if self._hvd is not None:
            hvd = self._hvd
            flat = tf.nest.flatten(value)
            if hvd.size() > 1 and flat:
                flat = [tf.convert_to_tensor(item) for item in flat]
                flat = hvd.grouped_allreduce(flat, op=hvd.Average if mean else hvd.Sum)
            return tf.nest.pack_sequence_as(value, list(flat))
        op = tf.distribute.ReduceOp.MEAN if mean else tf.distribute.ReduceOp.SUM
        return tf.nest.map_structure(lambda item: self.strategy.reduce(op, item, axis=None), value)

    # ---- synchronisation ------------------------------------------------------------------------

    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        """Copy rank 0's values of `variables` to every process (Horovod; no-op otherwise).

        Call once before training, after the optimizer is built
        (`optimizer.build(model.trainable_variables)`), with
        `model.variables + optimizer.variables`, and after restoring a checkpoint.
        tf.distribute needs nothing: mirrored variables start identical.
        """
        if self._hvd is None or self._hvd.size() == 1:
            return
        tf_variables = [_tf_variable(variable) for variable in variables]
        if tf_variables:
            self._hvd.broadcast_variables(tf_variables, root_rank=0)

    def barrier(self) -> None:
        """Block until every process reaches this point (eager; no-op for one process)."""
        import tensorflow as tf

        if self.world_size <= 1:
            return
        if self._hvd is not None:
            self._hvd.allreduce(tf.constant(0.0), op=self._hvd.Sum, name="unet3d_barrier")
            return
        self.strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            self.strategy.run(lambda: tf.constant(1.0)),
            axis=None,
        )


# --------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------


def _single_device_strategy(tf: Any, device_info: DeviceInfo) -> Any:
    """OneDeviceStrategy on the first device, or the default strategy when there is none."""
    if device_info.names:
        return tf.distribute.OneDeviceStrategy(device_info.names[0])
    return tf.distribute.get_strategy()


def _mirrored_strategy(tf: Any, device_info: DeviceInfo) -> Any:
    """MirroredStrategy over the configured logical devices."""
    if device_info.count <= 1:
        logger.info("strategy=mirrored over a single device %s", device_info.names)
    return tf.distribute.MirroredStrategy(devices=list(device_info.names) or None)


def _communication_options(tf: Any, strategy_cfg: Any, device_info: DeviceInfo) -> Any:
    """CollectiveCommunication options from `strategy.communication`."""
    communication = str(_config_get(strategy_cfg, "communication", "auto")).lower()
    implementations = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }
    if communication not in implementations:
        raise ConfigError(
            f"strategy.communication: must be one of {', '.join(COMMUNICATIONS)}, "
            f"got {communication!r}"
        )
    if communication == "nccl" and device_info.type != "GPU":
        raise ConfigError(
            f"strategy.communication: nccl needs GPUs, but the device is {device_info.type}; "
            "use auto or ring"
        )
    return tf.distribute.experimental.CommunicationOptions(
        implementation=implementations[communication]
    )


def _cluster_resolver(tf: Any, strategy_cfg: Any, device_info: DeviceInfo) -> Any:
    """TFConfigClusterResolver or SlurmClusterResolver per `strategy.cluster_resolver`."""
    kind = str(_config_get(strategy_cfg, "cluster_resolver", "tf_config")).lower()
    if kind == "tf_config":
        if not os.environ.get("TF_CONFIG"):
            raise DeviceError(
                "strategy=multi_worker: TF_CONFIG is not set; export TF_CONFIG with the cluster "
                "and this task (see MultiWorkerMirroredStrategy docs) or use "
                "strategy.cluster_resolver=slurm under srun"
            )
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if kind == "slurm":
        if "SLURM_PROCID" not in os.environ:
            raise DeviceError(
                "strategy=multi_worker with cluster_resolver=slurm: SLURM_PROCID is not set; "
                "launch with srun inside a SLURM allocation"
            )
        gpus = device_info.count if device_info.type == "GPU" else 0
        return tf.distribute.cluster_resolver.SlurmClusterResolver(
            gpus_per_node=gpus * max(device_info.local_size, 1),
            gpus_per_task=gpus,
            auto_set_gpu=False,
        )
    raise ConfigError(
        f"strategy.cluster_resolver: must be one of {', '.join(CLUSTER_RESOLVERS)}, got {kind!r}"
    )


def _create_multi_worker(tf: Any, strategy_cfg: Any, device_info: DeviceInfo) -> DistributedContext:
    """MultiWorkerMirroredStrategy context; must run before the TF runtime starts."""
    resolver = _cluster_resolver(tf, strategy_cfg, device_info)
    options = _communication_options(tf, strategy_cfg, device_info)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options
        )
    except (RuntimeError, ValueError) as error:
        raise DeviceError(
            f"strategy=multi_worker: could not start MultiWorkerMirroredStrategy: {error} "
            "(create the context before any tensor exists)"
        ) from error
    cluster = resolver.cluster_spec().as_dict()
    chiefs = list(cluster.get("chief", []))
    workers = list(cluster.get("worker", []))
    task_type = resolver.task_type or "worker"
    task_id = int(resolver.task_id or 0)
    if task_type == "chief":
        rank = task_id
    elif task_type == "worker":
        rank = len(chiefs) + task_id
    else:
        raise ConfigError(
            f"strategy=multi_worker: task type {task_type!r} is not supported (chief or worker)"
        )
    is_chief = task_type == "chief" or (not chiefs and task_type == "worker" and task_id == 0)
    return DistributedContext(
        strategy,
        "multi_worker",
        device_info,
        world_size=max(len(chiefs) + len(workers), 1),
        rank=rank,
        local_rank=device_info.local_rank,
        local_size=device_info.local_size,
        is_chief=is_chief,
    )


def _import_horovod(tf: Any) -> Any:
    """Import horovod.tensorflow or raise DeviceError with the install instructions."""
    try:
        import horovod.tensorflow as hvd
    except ImportError as error:
        raise DeviceError(
            f"strategy=horovod: Horovod is not importable ({error}); {HOROVOD_INSTALL_HINT}"
        ) from error
    except tf.errors.NotFoundError as error:
        raise DeviceError(
            "strategy=horovod: Horovod's TensorFlow library does not load (built against "
            f"another TensorFlow?): {str(error).splitlines()[0]}; rebuild it: "
            f"pip uninstall -y horovod && {HOROVOD_INSTALL_HINT}"
        ) from error
    return hvd


def _create_horovod(tf: Any, device_info: DeviceInfo) -> DistributedContext:
    """Horovod context: hvd.init(), one replica per process, the default strategy."""
    hvd = _import_horovod(tf)
    hvd.init()
    if (
        device_info.type != "CPU"
        and hvd.local_size() > 1
        and (device_info.count > 1 or device_info.local_size != hvd.local_size())
    ):
        logger.warning(
            "strategy=horovod: %d processes share this machine but configure_devices was given "
            "local_rank=%d local_size=%d (devices %s); pass horovod_env()'s local rank/size so "
            "each process gets its own %s",
            hvd.local_size(),
            device_info.local_rank,
            device_info.local_size,
            device_info.names,
            device_info.type,
        )
    return DistributedContext(
        tf.distribute.get_strategy(),
        "horovod",
        device_info,
        world_size=int(hvd.size()),
        rank=int(hvd.rank()),
        local_rank=int(hvd.local_rank()),
        local_size=int(hvd.local_size()),
        is_chief=hvd.rank() == 0,
        horovod=hvd,
    )


def create_context(strategy_cfg: Any, device_info: DeviceInfo) -> DistributedContext:
    """Create the distribution context from the `strategy` config group.

    Call after `configure_devices` and before any tensor or model exists (multi_worker sets up
    collectives, which TensorFlow allows only at start-up).

    Names: auto (one device: OneDeviceStrategy; several: MirroredStrategy), mirrored,
    multi_worker (MultiWorkerMirroredStrategy, cluster from TF_CONFIG or SLURM), horovod.

    Raises:
        ConfigError: unknown strategy.name, cluster_resolver or communication.
        DeviceError: Horovod missing, or the multi-worker cluster is not described.
    """
    import tensorflow as tf

    name = _strategy_name(strategy_cfg)
    if name == "horovod":
        context = _create_horovod(tf, device_info)
    elif name == "multi_worker":
        context = _create_multi_worker(tf, strategy_cfg, device_info)
    else:
        if name == "mirrored" or device_info.count > 1:
            strategy = _mirrored_strategy(tf, device_info)
        else:
            strategy = _single_device_strategy(tf, device_info)
        context = DistributedContext(
            strategy,
            name,
            device_info,
            local_rank=device_info.local_rank,
            local_size=device_info.local_size,
        )
    logger.info("strategy: %r", context)
    return context
