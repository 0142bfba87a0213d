"""DistributedContext over OneDevice, Mirrored, MultiWorkerMirrored and Horovod."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.ports import free_ports
from unet3d.errors import ConfigError, DeviceError
from unet3d.runtime.devices import DeviceInfo
from unet3d.runtime.distribute import (
    ProcessEnv,
    create_context,
    horovod_env,
    multi_worker_env,
    process_env,
)

WORKER = Path(__file__).with_name("_runtime_worker.py")
REPO = Path(__file__).resolve().parents[2]
CPU = DeviceInfo("CPU", ["/device:CPU:0"])


# ---- launcher environments (no TensorFlow) ---------------------------------------------------


def test_horovod_env_from_horovodrun_variables():
    env = horovod_env(
        {
            "HOROVOD_RANK": "3",
            "HOROVOD_SIZE": "4",
            "HOROVOD_LOCAL_RANK": "1",
            "HOROVOD_LOCAL_SIZE": "2",
        }
    )
    assert env == ProcessEnv(3, 4, 1, 2, "horovod")
    assert not env.is_chief


def test_horovod_env_from_mpi_and_absent():
    assert horovod_env({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}) == ProcessEnv(
        0, 2, 0, 1, "mpi"
    )
    assert horovod_env(
        {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}
    ) == ProcessEnv(1, 2, 1, 2, "mpi")
    assert horovod_env({}) == ProcessEnv()
    with pytest.raises(ConfigError, match="HOROVOD_RANK"):
        horovod_env({"HOROVOD_RANK": "x"})


def test_multi_worker_env_from_tf_config():
    cluster = {"chief": ["hostA:1"], "worker": ["hostA:2", "hostB:3", "hostB:4"]}
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}})
    env = multi_worker_env("tf_config", {"TF_CONFIG": tf_config})
    assert env == ProcessEnv(rank=3, world_size=4, local_rank=1, local_size=2, source="tf_config")
    chief = json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    assert multi_worker_env("tf_config", {"TF_CONFIG": chief}).is_chief
    evaluator = json.dumps({"cluster": cluster, "task": {"type": "evaluator", "index": 0}})
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        multi_worker_env("tf_config", {"TF_CONFIG": evaluator})


def test_multi_worker_env_from_slurm_and_process_env():
    slurm = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_TASKS_PER_NODE": "4(x2)",
    }
    assert multi_worker_env("slurm", slurm) == ProcessEnv(5, 8, 1, 4, "slurm")
    with pytest.raises(ConfigError, match=r"^strategy\.cluster_resolver"):
        multi_worker_env("kubernetes", {})
    assert process_env({"name": "multi_worker", "cluster_resolver": "slurm"}, slurm).rank == 5
    assert process_env({"name": "horovod"}, {"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2"}).rank == 1
    assert process_env({"name": "auto"}, {"HOROVOD_RANK": "1"}) == ProcessEnv()


# ---- in-process contexts (no device configuration needed) -----------------------------------


def test_unknown_strategy_is_config_error():
    with pytest.raises(ConfigError, match=r"^strategy\.name: must be one of"):
        create_context({"name": "parameter_server"}, CPU)


def test_multi_worker_without_cluster_is_device_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DeviceError, match="TF_CONFIG is not set"):
        create_context({"name": "multi_worker", "cluster_resolver": "tf_config"}, CPU)
    tf_config = {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    with pytest.raises(ConfigError, match=r"^strategy\.communication: nccl needs GPUs"):
        create_context({"name": "multi_worker", "communication": "nccl"}, CPU)


def test_horovod_missing_is_device_error_with_instructions(monkeypatch):
    monkeypatch.setitem(sys.modules, "horovod.tensorflow", None)  # makes the import fail
    with pytest.raises(DeviceError) as error:
        create_context({"name": "horovod"}, CPU)
    message = str(error.value)
    assert message.startswith("strategy=horovod: Horovod is not importable")
    assert "install_horovod.sh" in message and "horovodrun" in message


def test_auto_single_device_context_runs_a_step():
    import keras
    import tensorflow as tf

    context = create_context({"name": "auto"}, CPU)
    assert isinstance(context.strategy, tf.distribute.OneDeviceStrategy)
    assert (context.num_replicas, context.world_size, context.rank) == (1, 1, 0)
    assert context.is_chief and not context.uses_horovod
    assert context.shard_spec() == (1, 0)
    assert context.shard_files(["a", "b"]) == ["a", "b"]
    assert context.global_batch_size(2) == 2
    with context.scope():
        layer = keras.layers.Dense(1, kernel_initializer="ones", use_bias=False)
        layer.build((None, 2))
        optimizer = keras.optimizers.SGD(1.0)
    dataset = context.distribute_dataset(
        lambda ctx: tf.data.Dataset.from_tensors(tf.ones((1, 2))).repeat()
    )
    # One CPU replica: the plain dataset (no per-batch copy through a distributed iterator).
    assert isinstance(dataset, tf.data.Dataset)

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x))
        grads = context.gradients(tape, loss, layer.trainable_variables)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables, strict=True))
        return {"loss": loss}

    @tf.function
    def train_step(x):
        return context.reduce_sum(context.run(step, (x,)))

    result = train_step(next(iter(dataset)))
    assert float(result["loss"]) == 2.0
    np.testing.assert_allclose(layer.kernel.numpy(), np.zeros((2, 1)))
    context.broadcast_variables(layer.variables)  # no-op
    context.barrier()  # no-op


# ---- subprocess runs -------------------------------------------------------------------------


def _run(args: list[str], env: dict | None = None, timeout: float = 180):
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def _load(prefix: Path) -> tuple[dict, dict[str, np.ndarray]]:
    summary = json.loads(prefix.with_suffix(".json").read_text())
    with np.load(prefix.with_suffix(".npz")) as arrays:
        return summary, {key: arrays[key] for key in arrays.files}


def _assert_matches_reference(arrays: dict[str, np.ndarray], count: int) -> None:
    for index in range(count):
        final, reference = arrays[f"final_{index}"], arrays[f"reference_{index}"]
        np.testing.assert_allclose(final, reference, rtol=1e-5, atol=1e-6)
        assert not np.allclose(final, arrays[f"initial_{index}"]), "weights did not change"


def test_mirrored_two_logical_cpus_equals_one_device(tmp_path):
    completed = _run([sys.executable, str(WORKER), "mirrored", str(tmp_path / "mirrored")])
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary, arrays = _load(tmp_path / "mirrored")
    assert summary["num_replicas"] == 2 and summary["world_size"] == 1
    assert summary["shard_spec"] == [1, 0]
    np.testing.assert_allclose(summary["losses"], summary["reference_losses"], rtol=1e-6)
    _assert_matches_reference(arrays, summary["num_weights"])


def test_mirrored_loss_scaling_skips_on_every_replica(tmp_path):
    out = tmp_path / "nonfinite.json"
    completed = _run([sys.executable, str(WORKER), "nonfinite", str(out)])
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["replicas_equal"] and result["unchanged"]
    assert result["scale"] == result["initial_scale"] / 2


def _assert_ranks_agree(out_dir: Path, world_size: int) -> None:
    summaries, weights = [], []
    for rank in range(world_size):
        summary, arrays = _load(out_dir / f"rank{rank}")
        summaries.append(summary)
        weights.append(arrays)
        assert summary["rank"] == rank and summary["world_size"] == world_size
        assert summary["num_replicas"] == world_size
        assert summary["shard_spec"] == [world_size, rank]
        assert summary["is_chief"] == (rank == 0)
        _assert_matches_reference(arrays, summary["num_weights"])
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key], err_msg=key)
    np.testing.assert_allclose(summaries[0]["losses"], summaries[0]["reference_losses"], rtol=1e-5)
    assert summaries[0]["losses"] == summaries[1]["losses"]


@pytest.mark.slow
def test_multi_worker_two_processes_agree(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), "multi_worker", str(tmp_path)],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), "TF_CONFIG": tf_config},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=240)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    _assert_ranks_agree(tmp_path, 2)


HOROVOD_AVAILABLE = importlib.util.find_spec("horovod") is not None and shutil.which("horovodrun")


@pytest.mark.slow
@pytest.mark.horovod
@pytest.mark.skipif(
    not HOROVOD_AVAILABLE,
    reason="Horovod is not installed (build it with: bash .ci/install_horovod.sh)",
)
def test_horovod_two_ranks_agree(tmp_path):
    completed = _run(
        [
            "horovodrun",
            "-np",
            "2",
            "--gloo",
            "-H",
            "localhost:2",
            sys.executable,
            str(WORKER),
            "horovod",
            str(tmp_path),
        ],
        timeout=300,
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    _assert_ranks_agree(tmp_path, 2)


def test_backends_implement_one_interface() -> None:
    from unet3d.runtime.distribute import DistributedContext
    from unet3d.runtime.distribute.horovod import HorovodContext
    from unet3d.runtime.distribute.tf_distribute import TFDistributeContext

    assert issubclass(TFDistributeContext, DistributedContext)
    assert issubclass(HorovodContext, DistributedContext) and HorovodContext.uses_horovod
    assert not TFDistributeContext.uses_horovod
    with pytest.raises(TypeError):
        DistributedContext(None, "auto", CPU)  # abstract
    context = create_context({"name": "auto"}, CPU)
    assert isinstance(context, TFDistributeContext) and context.name == "auto"
