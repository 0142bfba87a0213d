"""Device selection: pure logic with faked device lists, and configure_devices in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from unet3d.errors import ConfigError, DeviceError
from unet3d.runtime import devices
from unet3d.runtime.devices import (
    NO_GPU_MESSAGE,
    DeviceInfo,
    resolve_device_type,
    select_devices,
)

WORKER = Path(__file__).with_name("_runtime_worker.py")
REPO = Path(__file__).resolve().parents[2]


def _available(gpus: int = 0, mlus: int = 0) -> dict[str, list[str]]:
    return {
        "CPU": ["/physical_device:CPU:0"],
        "GPU": [f"/physical_device:GPU:{i}" for i in range(gpus)],
        "MLU": [f"/physical_device:MLU:{i}" for i in range(mlus)],
    }


@pytest.mark.parametrize(
    ("gpus", "mlus", "expected"),
    [(0, 0, "CPU"), (2, 0, "GPU"), (0, 4, "MLU"), (2, 4, "MLU")],
)
def test_auto_prefers_mlu_then_gpu_then_cpu(gpus, mlus, expected):
    assert resolve_device_type("auto", _available(gpus, mlus)) == expected


def test_explicit_cpu_on_gpu_machine():
    selection = select_devices("cpu", _available(gpus=2))
    assert selection.type == "CPU"
    assert selection.logical_names == ["/device:CPU:0"]


def test_single_process_uses_all_accelerators():
    selection = select_devices("GPU", _available(gpus=3))
    assert selection.type == "GPU"
    assert selection.visible == [f"/physical_device:GPU:{i}" for i in range(3)]
    assert selection.logical_names == ["/device:GPU:0", "/device:GPU:1", "/device:GPU:2"]


@pytest.mark.parametrize("device_type", ["GPU", "MLU"])
def test_local_rank_picks_its_own_accelerator(device_type):
    available = _available(gpus=4, mlus=4)
    selection = select_devices(device_type.lower(), available, local_rank=2, local_size=4)
    assert selection.visible == [f"/physical_device:{device_type}:2"]
    # TensorFlow renumbers the one visible device from 0.
    assert selection.logical_names == [f"/device:{device_type}:0"]


def test_more_processes_than_accelerators_is_a_device_error():
    with pytest.raises(DeviceError, match="local rank 2 of 3.*only 2 visible"):
        select_devices("gpu", _available(gpus=2), local_rank=2, local_size=3)


def test_cpu_processes_share_the_cpu():
    selection = select_devices("cpu", _available(), local_rank=1, local_size=2)
    assert selection.logical_names == ["/device:CPU:0"]


def test_bad_local_rank_and_type_are_config_errors():
    with pytest.raises(ConfigError, match="local_rank"):
        select_devices("cpu", _available(), local_rank=2, local_size=2)
    with pytest.raises(ConfigError, match=r"^device\.type: must be one of"):
        select_devices("tpu", _available())


def test_missing_gpu_and_mlu_messages():
    with pytest.raises(DeviceError) as gpu_error:
        resolve_device_type("gpu", _available())
    assert str(gpu_error.value) == NO_GPU_MESSAGE
    with pytest.raises(DeviceError) as mlu_error:
        resolve_device_type("mlu", _available(gpus=1))
    message = str(mlu_error.value)
    assert message.startswith("device=mlu: no MLU device is visible")
    assert "Cambricon" in message and "CNTensorFlow" in message and "cnmon" in message


def test_device_info_count():
    assert DeviceInfo("GPU", ["/device:GPU:0", "/device:GPU:1"]).count == 2


class _FakeTF:
    """Records what configure_devices asks of tf.config, with a faked device list."""

    def __init__(self, gpus: int = 0, mlus: int = 0):
        self.devices = {
            kind: [SimpleNamespace(name=name, device_type=kind) for name in names]
            for kind, names in _available(gpus, mlus).items()
        }
        self.visible: dict[str, list[str]] = {}
        self.growth: list[str] = []
        self.threads: dict[str, int] = {}
        self.seen_env: dict[str, str | None] = {}
        threading = SimpleNamespace(
            set_intra_op_parallelism_threads=lambda n: self.threads.__setitem__("intra", n),
            set_inter_op_parallelism_threads=lambda n: self.threads.__setitem__("inter", n),
        )
        self.config = SimpleNamespace(
            list_physical_devices=self._list,
            set_visible_devices=self._set_visible,
            get_logical_device_configuration=lambda device: None,
            experimental=SimpleNamespace(
                set_memory_growth=lambda device, value: self.growth.append(device.name)
            ),
            threading=threading,
        )

    def _list(self, kind):
        if kind == "MLU" and "MLU" not in self.seen_env:
            self.seen_env["MLU"] = os.environ.get("TF_MLU_THREAD_MODE")
        return list(self.devices[kind])

    def _set_visible(self, devices_, kind):
        self.visible[kind] = [device.name for device in devices_]


@pytest.fixture
def fake_tf(monkeypatch):
    def install(gpus: int = 0, mlus: int = 0) -> _FakeTF:
        fake = _FakeTF(gpus, mlus)
        monkeypatch.setitem(sys.modules, "tensorflow", fake)
        monkeypatch.delenv("TF_MLU_THREAD_MODE", raising=False)
        monkeypatch.delenv("TF_MLU_THREAD_COUNT", raising=False)
        return fake

    return install


def _cfg(kind: str, **overrides):
    cfg = {
        "type": kind,
        "memory_growth": True,
        "intra_op_threads": 0,
        "inter_op_threads": 0,
        "mlu_thread_mode": "mlu_private",
        "mlu_thread_count": 8,
    }
    cfg.update(overrides)
    return cfg


def test_configure_gpu_per_process_with_fakes(fake_tf):
    fake = fake_tf(gpus=4)
    info = devices.configure_devices(_cfg("gpu"), local_rank=3, local_size=4)
    assert (info.type, info.names, info.count) == ("GPU", ["/device:GPU:0"], 1)
    assert fake.visible == {"GPU": ["/physical_device:GPU:3"]}
    assert fake.growth == ["/physical_device:GPU:3"]


def test_configure_auto_mlu_sets_env_first_and_hides_gpus(fake_tf):
    fake = fake_tf(gpus=2, mlus=2)
    info = devices.configure_devices(_cfg("auto", mlu_thread_count=4), local_rank=1, local_size=2)
    assert (info.type, info.names) == ("MLU", ["/device:MLU:0"])
    assert fake.seen_env["MLU"] == "mlu_private"  # exported before MLUs were listed
    assert os.environ["TF_MLU_THREAD_COUNT"] == "4"
    assert fake.visible == {"GPU": [], "MLU": ["/physical_device:MLU:1"]}
    assert fake.growth == []


def test_configure_single_process_all_gpus_and_threads(fake_tf):
    fake = fake_tf(gpus=2)
    info = devices.configure_devices(
        _cfg("auto", memory_growth=False, intra_op_threads=2, inter_op_threads=1)
    )
    assert info.names == ["/device:GPU:0", "/device:GPU:1"]
    assert fake.visible == {}  # nothing to hide
    assert fake.growth == []
    assert fake.threads == {"intra": 2, "inter": 1}


def _run_worker(*args: str, env: dict | None = None, timeout: float = 120) -> dict:
    completed = subprocess.run(
        [sys.executable, str(WORKER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["gpu", "mlu"])
def test_configure_missing_accelerator_raises_clear_error(kind):
    result = _run_worker("devices", kind)
    assert result["error"] == "DeviceError"
    assert result["message"].startswith(f"device={kind}: no {kind.upper()}")
    if kind == "gpu":
        assert result["message"] == NO_GPU_MESSAGE
    else:
        assert "Cambricon" in result["message"]
        assert result["mlu_env"] == ["mlu_private", "8"]


def test_configure_cpu_in_subprocess():
    result = _run_worker("devices", "auto")
    assert result == {"type": "CPU", "names": ["/device:CPU:0"], "count": 1, "intra": 1}
