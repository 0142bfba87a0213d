"""The interface the training loop is written against: `DistributedContext`.

Two backends implement it, each in its own module: `tf_distribute.TFDistributeContext` (one
device, MirroredStrategy, MultiWorkerMirroredStrategy) and `horovod.HorovodContext`. The
facts every backend shares (ranks, batch arithmetic, input sharding) live here.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

from unet3d.runtime.devices import DeviceInfo


class DistributedContext(abc.ABC):
    """Hides tf.distribute vs Horovod from one custom training loop (`unet3d.runtime.distribute`).

    Create it with `create_context`.

    Attributes:
        strategy: the tf.distribute.Strategy whose `scope()` builds variables (the default
            strategy under Horovod).
        name: `strategy.name` ("auto", "mirrored", "multi_worker" or "horovod").
        device_info: the devices this process computes on.
        world_size: number of processes.
        rank: this process's index (0 .. world_size - 1).
        local_rank: its index among the processes on its machine.
        local_size: the number of processes on its machine.
        is_chief: True for the process that writes files and logs to MLflow.
        uses_horovod: True when gradients and reductions go through Horovod.
    """

    uses_horovod: bool = False

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
    ) -> None:
        self.strategy = strategy
        self.name = name
        self.device_info = device_info
        self.world_size = world_size
        self.rank = rank
        self.local_rank = local_rank
        self.local_size = local_size
        self.is_chief = is_chief

    # ---- facts -------------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def num_replicas(self) -> int:
        """Global number of replicas that each compute on a slice of the global batch."""

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

    # ---- building and data ---------------------------------------------------------------------

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

    @abc.abstractmethod
    def distribute_dataset(self, dataset_fn: Callable[[Any], Any]) -> Any:
        """Build the training input: `dataset_fn(input_context) -> tf.data.Dataset`.

        `dataset_fn` must shard by `input_context.input_pipeline_id` /
        `num_input_pipelines` and batch with
        `input_context.get_per_replica_batch_size(global_batch)` (or the per-replica batch).
        Returns what `run` takes its per-replica inputs from: a distributed dataset, or the
        plain dataset of this process.
        """

    # ---- the step ------------------------------------------------------------------------------

    @abc.abstractmethod
    def run(self, step_fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        """Run `step_fn(*args, **kwargs)` on every local replica; returns per-replica values."""

    @abc.abstractmethod
    def gradients(self, tape: Any, loss: Any, variables: Sequence[Any]) -> list[Any]:
        """Gradients of `loss` for `variables`, ready for `optimizer.apply_gradients`.

        Call inside the function given to `run`, after leaving the tape. Each replica's loss
        is divided by the GLOBAL batch; the replicas' gradients are summed (by the optimizer
        under tf.distribute, here under Horovod), so the update equals one step on the global
        batch.
        """

    @abc.abstractmethod
    def local_results(self, value: Any) -> tuple[Any, ...]:
        """This process's per-replica components of a value returned by `run`."""

    def reduce_sum(self, value: Any) -> Any:
        """Sum a (nest of) per-replica value(s) over all replicas of all processes.

        Call in cross-replica context (after `run`, inside the same tf.function). Every
        process must call it (it communicates).
        """
        return self._all_reduce(value, mean=False)

    def reduce_mean(self, value: Any) -> Any:
        """Mean of a (nest of) per-replica value(s) over all replicas of all processes."""
        return self._all_reduce(value, mean=True)

    @abc.abstractmethod
    def _all_reduce(self, value: Any, mean: bool) -> Any:
        """Shared body of reduce_sum / reduce_mean."""

    # ---- synchronisation ------------------------------------------------------------------------

    @abc.abstractmethod
    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        """Copy rank 0's values of `variables` to every process, where the backend needs it.

        Call once before training, after the optimizer is built
        (`optimizer.build(model.trainable_variables)`), with
        `model.variables + optimizer.variables`, and after restoring a checkpoint.
        """

    @abc.abstractmethod
    def barrier(self) -> None:
        """Block until every process reaches this point (eager; no-op for one process)."""
