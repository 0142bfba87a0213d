"""Pick and configure the compute devices (CPU, GPU or Cambricon MLU) before any tensor exists.

`configure_devices` is the one entry point: it resolves `device.type` (auto: MLU > GPU > CPU),
makes one accelerator visible per process when several processes share a machine (Horovod,
multi-worker), sets GPU memory growth and the thread pools, and returns a `DeviceInfo` naming the
logical devices the strategy will use.

The decision itself lives in pure functions (`resolve_device_type`, `select_devices`) over plain
lists of device names, so it is unit-testable without the hardware.

TensorFlow device settings can be changed only until the TensorFlow runtime starts (the first
tensor or op). `configure_devices` never starts the runtime itself, so a
`MultiWorkerMirroredStrategy` can still be created afterwards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from unet3d.config import DEVICE_TYPES as REQUESTABLE_TYPES
from unet3d.errors import ConfigError, DeviceError
from unet3d.runtime.onednn import ignored_value_warning, onednn_state

logger = logging.getLogger(__name__)

DEVICE_TYPES = ("CPU", "GPU", "MLU")
ACCELERATOR_TYPES = ("MLU", "GPU")  # auto preference order

NO_GPU_MESSAGE = (
    "device=gpu: no GPU is visible to TensorFlow (tf.config.list_physical_devices('GPU') is "
    "empty); install the CUDA build (pip install -e '.[gpu]') and check nvidia-smi / "
    "CUDA_VISIBLE_DEVICES, or use device=cpu"
)
NO_MLU_MESSAGE = (
    "device=mlu: no MLU device is visible (tf.config.list_physical_devices('MLU') is empty); "
    "MLUs need Cambricon's TensorFlow build (the Cambricon docker image / CNTensorFlow) and the "
    "Cambricon driver (check cnmon and MLU_VISIBLE_DEVICES), or use device=cpu"
)


@dataclass
class DeviceInfo:
    """The devices this process computes on.

    Attributes:
        type: "CPU", "GPU" or "MLU".
        names: logical device names, e.g. ["/device:GPU:0", "/device:GPU:1"], in the order the
            strategy should use them.
        count: len(names).
        local_rank: this process's index among the processes on its machine.
        local_size: the number of processes on this machine.
        onednn: whether TensorFlow's oneDNN CPU kernels are on and who decided
            (``onednn_state``), e.g. ``"on (TF_ENABLE_ONEDNN_OPTS=1 set by unet3d)"``.
    """

    type: str
    names: list[str]
    local_rank: int = 0
    local_size: int = 1
    onednn: str = ""
    count: int = field(init=False)

    def __post_init__(self) -> None:
        """Derive `count` from `names`."""
        self.count = len(self.names)


@dataclass(frozen=True)
class DeviceSelection:
    """Result of `select_devices`: which physical devices to keep visible.

    Attributes:
        type: the chosen device type ("CPU", "GPU" or "MLU").
        visible: physical device names (e.g. "/physical_device:GPU:1") this process keeps.
        logical_names: the logical names those devices get once visibility is set
            (TensorFlow renumbers visible devices from 0).
    """

    type: str
    visible: list[str]
    logical_names: list[str]


def _normalise_requested(requested: str) -> str:
    """Return the lower-case requested type or raise ConfigError naming device.type."""
    value = str(requested).strip().lower()
    if value not in REQUESTABLE_TYPES:
        raise ConfigError(
            f"device.type: must be one of {', '.join(REQUESTABLE_TYPES)}, got {requested!r}"
        )
    return value


def resolve_device_type(requested: str, available_by_type: Mapping[str, Sequence[str]]) -> str:
    """Return the device type to use: "CPU", "GPU" or "MLU".

    Args:
        requested: "auto", "cpu", "gpu" or "mlu" (case-insensitive).
        available_by_type: physical device names per type, e.g. {"GPU": ["/physical_device:GPU:0"]}.

    Raises:
        ConfigError: unknown `requested`.
        DeviceError: an explicitly requested accelerator is absent.
    """
    value = _normalise_requested(requested)
    if value == "auto":
        for device_type in ACCELERATOR_TYPES:
            if available_by_type.get(device_type):
                return device_type
        return "CPU"
    device_type = value.upper()
    if device_type == "GPU" and not available_by_type.get("GPU"):
        raise DeviceError(NO_GPU_MESSAGE)
    if device_type == "MLU" and not available_by_type.get("MLU"):
        raise DeviceError(NO_MLU_MESSAGE)
    return device_type


def select_devices(
    requested: str,
    available_by_type: Mapping[str, Sequence[str]],
    local_rank: int = 0,
    local_size: int = 1,
) -> DeviceSelection:
    """Decide which devices this process uses (pure: no TensorFlow).

    One process per machine (`local_size == 1`) uses every device of the chosen type. Several
    processes per machine (Horovod, multi-worker) each take one accelerator: the one at
    `local_rank`. CPU processes always use the (single physical) CPU.

    Args:
        requested: "auto", "cpu", "gpu" or "mlu".
        available_by_type: physical device names per type ("CPU", "GPU", "MLU").
        local_rank: this process's index on its machine, 0 <= local_rank < local_size.
        local_size: the number of processes on this machine.

    Raises:
        ConfigError: unknown `requested` or inconsistent local rank/size.
        DeviceError: the requested accelerator is absent, or fewer accelerators than processes.
    """
    if local_size < 1 or not 0 <= local_rank < local_size:
        raise ConfigError(
            f"device: local_rank must be in [0, local_size), got local_rank={local_rank}, "
            f"local_size={local_size}"
        )
    device_type = resolve_device_type(requested, available_by_type)
    devices = list(available_by_type.get(device_type, []))
    if device_type == "CPU":
        cpus = devices or ["/physical_device:CPU:0"]
        return DeviceSelection("CPU", cpus, ["/device:CPU:0"])
    if local_size > 1:
        if local_rank >= len(devices):
            raise DeviceError(
                f"device={device_type.lower()}: process with local rank {local_rank} of "
                f"{local_size} on this machine has no {device_type} of its own: only "
                f"{len(devices)} visible; start at most {len(devices)} processes per machine"
            )
        visible = [devices[local_rank]]
    else:
        visible = devices
    logical = [f"/device:{device_type}:{index}" for index in range(len(visible))]
    return DeviceSelection(device_type, visible, logical)


def _list_available(tf: Any) -> dict[str, list[Any]]:
    """List physical devices per type as TensorFlow PhysicalDevice objects."""
    available: dict[str, list[Any]] = {}
    for device_type in DEVICE_TYPES:
        try:
            available[device_type] = list(tf.config.list_physical_devices(device_type))
        except Exception as error:  # noqa: BLE001 - an unknown type on some builds
            logger.debug("listing %s devices failed: %s", device_type, error)
            available[device_type] = []
    return available


def _set_mlu_environment(device_cfg: Mapping[str, Any]) -> None:
    """Export Cambricon's MLU thread settings; they must be set before MLUs are enumerated."""
    mode = device_cfg.get("mlu_thread_mode")
    count = device_cfg.get("mlu_thread_count")
    if mode:
        os.environ["TF_MLU_THREAD_MODE"] = str(mode)
    if count:
        os.environ["TF_MLU_THREAD_COUNT"] = str(int(count))


def _set_visible(tf: Any, devices: list[Any], device_type: str) -> None:
    """Set visible devices of one type, tolerating an already-started runtime with a warning."""
    try:
        tf.config.set_visible_devices(devices, device_type)
    except RuntimeError as error:
        logger.warning(
            "could not restrict visible %s devices (TensorFlow already started; configure "
            "devices before creating tensors): %s",
            device_type,
            error,
        )


def _set_threads(tf: Any, intra_op: int, inter_op: int) -> None:
    """Set the CPU thread pools when positive; warn if the runtime already started."""
    for setter, value, label in (
        (tf.config.threading.set_intra_op_parallelism_threads, intra_op, "intra_op_threads"),
        (tf.config.threading.set_inter_op_parallelism_threads, inter_op, "inter_op_threads"),
    ):
        if value > 0:
            try:
                setter(value)
            except RuntimeError as error:
                logger.warning("device.%s=%d not applied: %s", label, value, error)


def configure_devices(
    device_cfg: Mapping[str, Any], local_rank: int = 0, local_size: int = 1
) -> DeviceInfo:
    """Configure TensorFlow's devices from `cfg.device`; call before any tensor is created.

    Args:
        device_cfg: the `device` config group (type, memory_growth, intra_op_threads,
            inter_op_threads, mlu_thread_mode, mlu_thread_count; optional logical_cpus: split
            the CPU into that many logical devices, e.g. `+device.logical_cpus=2` to try
            MirroredStrategy on a CPU-only machine).
        local_rank: this process's index on its machine (Horovod's local rank, SLURM_LOCALID).
        local_size: the number of processes on this machine; above 1 each process keeps only the
            accelerator at `local_rank`.

    Returns:
        DeviceInfo with the chosen type and the logical device names.

    Raises:
        ConfigError: unknown `device.type`.
        DeviceError: the requested GPU or MLU is not visible to TensorFlow.
    """
    import tensorflow as tf

    requested = _normalise_requested(device_cfg.get("type") or "auto")
    if requested in ("auto", "mlu"):
        _set_mlu_environment(device_cfg)
    available = _list_available(tf)
    names_by_type = {kind: [device.name for device in devs] for kind, devs in available.items()}
    selection = select_devices(requested, names_by_type, local_rank, local_size)
    device_type = selection.type

    # Hide the accelerators we do not use, so no op lands on them by default.
    for other in ACCELERATOR_TYPES:
        if other != device_type and available.get(other):
            _set_visible(tf, [], other)

    names = selection.logical_names
    if device_type in ACCELERATOR_TYPES:
        chosen = [device for device in available[device_type] if device.name in selection.visible]
        if len(chosen) != len(available[device_type]):
            _set_visible(tf, chosen, device_type)
        if device_type == "GPU" and bool(device_cfg.get("memory_growth", True)):
            for device in chosen:
                try:
                    tf.config.experimental.set_memory_growth(device, True)
                except (RuntimeError, ValueError) as error:
                    logger.warning("memory growth not set on %s: %s", device.name, error)
    else:
        cpu = available["CPU"][0] if available.get("CPU") else None
        logical = tf.config.get_logical_device_configuration(cpu) if cpu is not None else None
        logical_cpus = int(device_cfg.get("logical_cpus") or 0)
        if logical_cpus > 1 and not logical:
            names = split_logical_cpus(logical_cpus)
            logical = names
        if logical:
            names = [f"/device:CPU:{index}" for index in range(len(logical))]

    _set_threads(
        tf,
        int(device_cfg.get("intra_op_threads") or 0),
        int(device_cfg.get("inter_op_threads") or 0),
    )
    info = DeviceInfo(device_type, list(names), local_rank=local_rank, local_size=local_size,
                      onednn=onednn_state())
    logger.info(
        "devices: %s x%d %s (local rank %d of %d), oneDNN %s",
        info.type,
        info.count,
        info.names,
        local_rank,
        local_size,
        info.onednn,
    )
    if device_type == "CPU":
        ignored_value_warning(info.onednn.startswith("on"))
    if device_type == "CPU" and info.onednn.startswith("off (TensorFlow's default: TensorFlow"):
        logger.warning(
            "oneDNN is off: TensorFlow was imported before unet3d and this CPU is not one on "
            "which TensorFlow turns it on itself; 3D convolutions run several times slower. "
            "Export %s=1 (or import unet3d before tensorflow)", "TF_ENABLE_ONEDNN_OPTS")
    return info


def split_logical_cpus(count: int) -> list[str]:
    """Split the physical CPU into `count` logical CPU devices (for MirroredStrategy on CPU).

    Must run before the TensorFlow runtime starts (before any tensor exists), and before
    `configure_devices`, which then reports the logical CPUs in `DeviceInfo.names`.

    Returns:
        The logical names, ["/device:CPU:0", ..., f"/device:CPU:{count - 1}"].

    Raises:
        ValueError: count < 1.
        DeviceError: the runtime has already started with a different CPU layout.
    """
    import tensorflow as tf

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise DeviceError(
            f"cannot split the CPU into {count} logical devices: TensorFlow has already "
            f"started ({error})"
        ) from error
    return [f"/device:CPU:{index}" for index in range(count)]
