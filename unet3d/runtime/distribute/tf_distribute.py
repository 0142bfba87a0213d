"""The tf.distribute backend: one device, MirroredStrategy or MultiWorkerMirroredStrategy.

Gradients: each replica returns its own gradients and Keras 3's `apply_gradients` sums them
over the replicas; when one replica's gradients are not finite, every replica gets NaN
gradients, so a LossScaleOptimizer skips the step everywhere alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from unet3d.config import COMMUNICATIONS
from unet3d.errors import ConfigError, DeviceError
from unet3d.runtime.devices import DeviceInfo
from unet3d.runtime.distribute.context import DistributedContext
from unet3d.runtime.distribute.process_env import CLUSTER_RESOLVERS

logger = logging.getLogger(__name__)



class TFDistributeContext(DistributedContext):
    """`DistributedContext` over a tf.distribute.Strategy (see `DistributedContext`)."""

    @property
    def num_replicas(self) -> int:
        """Global number of replicas in sync (devices of all workers)."""
        return int(self.strategy.num_replicas_in_sync)

    def distribute_dataset(self, dataset_fn: Callable[[Any], Any]) -> Any:
        """A distributed dataset from `dataset_fn(input_context)`; see `DistributedContext`.

        A single CPU replica in a single process gets the plain dataset: there the
        distributed dataset only adds a per-batch copy to the same host memory and a Python
        generator around the iterator (about 2% of a training step of the default CPU job,
        measured by ``mode=benchmark benchmark.target=runner``). Accelerators keep the
        distributed dataset, which prefetches each batch onto the device.
        """
        if self._single_host_replica():
            return dataset_fn(self.input_context())
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _single_host_replica(self) -> bool:
        return (self.world_size == 1 and self.num_replicas == 1
                and self.device_info.type == "CPU" and self.name != "multi_worker")

    def run(self, step_fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        """`strategy.run(step_fn, args, kwargs)`: per-replica values."""
        return self.strategy.run(step_fn, args=tuple(args), kwargs=dict(kwargs or {}))

    def gradients(self, tape: Any, loss: Any, variables: Sequence[Any]) -> list[Any]:
        """The replica's own gradients (Keras 3's `apply_gradients` sums them over replicas).

        When one replica's gradients are not finite, all replicas get NaN gradients.
        """
        grads = list(tape.gradient(loss, list(variables)))
        return self._agree_on_finiteness(grads)

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
        return tuple(self.strategy.experimental_local_results(value))

    def _all_reduce(self, value: Any, mean: bool) -> Any:
        import tensorflow as tf

        op = tf.distribute.ReduceOp.MEAN if mean else tf.distribute.ReduceOp.SUM
        return tf.nest.map_structure(lambda item: self.strategy.reduce(op, item, axis=None), value)

    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        """Nothing to do: mirrored variables start identical."""

    def barrier(self) -> None:
        """Block until every worker gets here (a cross-worker reduction; no-op for one)."""
        import tensorflow as tf

        if self.world_size <= 1:
            return
        self.strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            self.strategy.run(lambda: tf.constant(1.0)),
            axis=None,
        )


# --------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------


def create_tf_distribute_context(
    name: str, strategy_cfg: Mapping[str, Any], device_info: DeviceInfo
) -> TFDistributeContext:
    """The tf.distribute context for `strategy.name` auto, mirrored or multi_worker.

    Args:
        name: the validated `strategy.name`.
        strategy_cfg: the `strategy` section (cluster_resolver, communication for multi_worker).
        device_info: the configured devices (`configure_devices`).

    Raises:
        ConfigError: unknown cluster_resolver or communication, nccl without GPUs.
        DeviceError: the multi-worker cluster is not described, or the runtime already started.
    """
    import tensorflow as tf

    if name == "multi_worker":
        return _create_multi_worker(tf, strategy_cfg, device_info)
    if name == "mirrored" or device_info.count > 1:
        strategy = _mirrored_strategy(tf, device_info)
    else:
        strategy = _single_device_strategy(tf, device_info)
    return TFDistributeContext(
        strategy,
        name,
        device_info,
        local_rank=device_info.local_rank,
        local_size=device_info.local_size,
    )


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


def _communication_options(
    tf: Any, strategy_cfg: Mapping[str, Any], device_info: DeviceInfo
) -> Any:
    """CollectiveCommunication options from `strategy.communication`."""
    communication = str(strategy_cfg.get("communication") or "auto").lower()
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


def _cluster_resolver(tf: Any, strategy_cfg: Mapping[str, Any], device_info: DeviceInfo) -> Any:
    """TFConfigClusterResolver or SlurmClusterResolver per `strategy.cluster_resolver`."""
    kind = str(strategy_cfg.get("cluster_resolver") or "tf_config").lower()
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


def _create_multi_worker(
    tf: Any, strategy_cfg: Mapping[str, Any], device_info: DeviceInfo
) -> TFDistributeContext:
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
    return TFDistributeContext(
        strategy,
        "multi_worker",
        device_info,
        world_size=max(len(chiefs) + len(workers), 1),
        rank=rank,
        local_rank=device_info.local_rank,
        local_size=device_info.local_size,
        is_chief=is_chief,
    )
