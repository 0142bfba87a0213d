"""The Horovod backend: one replica per process, gradients summed with `hvd.Sum`.

Horovod with Keras 3: `horovod.tensorflow.keras` (DistributedOptimizer, broadcast callback) is
broken, and Horovod's tape and broadcast need `tf.Variable`s, so this module passes each Keras
variable's `.value` (its backing `tf.Variable`) to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from unet3d.errors import DeviceError
from unet3d.runtime.devices import DeviceInfo
from unet3d.runtime.distribute.context import DistributedContext

logger = logging.getLogger(__name__)

HOROVOD_INSTALL_HINT = (
    "build it into this environment with `bash .ci/install_horovod.sh` (horovod==0.28.1 with "
    "HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1, pip install "
    "--no-build-isolation; needs TensorFlow <= 2.18.1, g++ and cmake), then launch with "
    "`horovodrun -np N python -m unet3d.run strategy=horovod`"
)


def _tf_variable(variable: Any) -> Any:
    """The backing tf.Variable of a Keras 3 variable (or the argument itself)."""
    import keras

    if isinstance(variable, keras.Variable):
        return variable.value
    return variable


class HorovodContext(DistributedContext):
    """`DistributedContext` over Horovod (see `DistributedContext`).

    Args:
        horovod: the initialised `horovod.tensorflow` module.
        device_info: the configured devices (`configure_devices`).
    """

    uses_horovod = True

    def __init__(self, horovod: Any, device_info: DeviceInfo) -> None:
        import tensorflow as tf

        super().__init__(
            tf.distribute.get_strategy(),
            "horovod",
            device_info,
            world_size=int(horovod.size()),
            rank=int(horovod.rank()),
            local_rank=int(horovod.local_rank()),
            local_size=int(horovod.local_size()),
            is_chief=horovod.rank() == 0,
        )
        self._hvd = horovod

    @property
    def num_replicas(self) -> int:
        """The number of Horovod processes (one replica each)."""
        return int(self._hvd.size())

    def distribute_dataset(self, dataset_fn: Callable[[Any], Any]) -> Any:
        """The plain dataset of this rank, `dataset_fn(input_context)`."""
        return dataset_fn(self.input_context())

    def run(self, step_fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        """Call `step_fn(*args, **kwargs)` (one replica per process)."""
        return step_fn(*args, **dict(kwargs or {}))

    def gradients(self, tape: Any, loss: Any, variables: Sequence[Any]) -> list[Any]:
        """Gradients summed over all ranks by `hvd.DistributedGradientTape(op=hvd.Sum)`."""
        hvd = self._hvd
        sources = [_tf_variable(variable) for variable in variables]
        if hvd.size() == 1:
            return list(tape.gradient(loss, sources))
        distributed_tape = hvd.DistributedGradientTape(tape, op=hvd.Sum)
        return list(distributed_tape.gradient(loss, sources))

    def local_results(self, value: Any) -> tuple[Any, ...]:
        """`(value,)`: the one replica of this process."""
        return (value,)

    def _all_reduce(self, value: Any, mean: bool) -> Any:
        import tensorflow as tf

        hvd = self._hvd
        flat = tf.nest.flatten(value)
        if hvd.size() > 1 and flat:
            flat = [tf.convert_to_tensor(item) for item in flat]
            flat = hvd.grouped_allreduce(flat, op=hvd.Average if mean else hvd.Sum)
        return tf.nest.pack_sequence_as(value, list(flat))

    def broadcast_variables(self, variables: Sequence[Any]) -> None:
        """Copy rank 0's values of `variables` to every rank (no-op for one process)."""
        if self._hvd.size() == 1:
            return
        tf_variables = [_tf_variable(variable) for variable in variables]
        if tf_variables:
            self._hvd.broadcast_variables(tf_variables, root_rank=0)

    def barrier(self) -> None:
        """Block until every rank gets here (an all-reduce; no-op for one process)."""
        import tensorflow as tf

        if self.world_size <= 1:
            return
        self._hvd.allreduce(tf.constant(0.0), op=self._hvd.Sum, name="unet3d_barrier")


def import_horovod() -> Any:
    """Import `horovod.tensorflow`.

    Raises:
        DeviceError: Horovod is missing or built against another TensorFlow, with the install
            instructions.
    """
    import tensorflow as tf

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


def create_horovod_context(device_info: DeviceInfo) -> HorovodContext:
    """`hvd.init()` and the Horovod context; warns when ranks of one machine share devices.

    Args:
        device_info: the configured devices; pass `horovod_env()`'s local rank/size to
            `configure_devices` so each process gets its own accelerator.

    Raises:
        DeviceError: Horovod is not importable (see `import_horovod`).
    """
    hvd = import_horovod()
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
    return HorovodContext(hvd, device_info)
