"""Issue 4 end to end through the real runner: Horovod, tf.distribute, precision, devices.

Every run is a subprocess of ``python -m unet3d.run`` with the debug preset and a few steps on
the CPU. Ranks prove they stayed in sync with the loop's last line, ``weights checksum <sha256>
after step N (rank R of W)``: a bit-exact hash of the model weights, equal only when the
initial weights were broadcast (weights are not seeded, so ranks start apart) and the
gradients were all-reduced (ranks train on different shards).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ports import free_ports

from .conftest import ROOT, mlflow_client, results, run_cli

pytestmark = pytest.mark.slow

TINY = ("debug=fast", "mode=train")
CHECKSUM = re.compile(r"weights checksum ([0-9a-f]{16}) after step (\d+) \(rank (\d) of (\d)\)")
PROGRESS = re.compile(r"step \d+/\d+  loss ")


def _environment(**extra: str) -> dict[str, str]:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), **extra}
    for name in ("MLFLOW_TRACKING_URI", "UNET3D_LAUNCH_TIME", "TF_CONFIG"):
        if name not in extra:
            environment.pop(name, None)
    return environment


def _assert_ok(output: str, returncode: int) -> None:
    assert returncode == 0, output[-4000:]


def _data_dir(shared_workdir: Path) -> str:
    """One synthetic data set for every run of this module (MLflow stores stay per test)."""
    return f"paths.data_dir={shared_workdir / 'data'}"


def _output_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "outputs").glob("*/*"))


def _checkpoint_folders(cwd: Path) -> list[Path]:
    return sorted(path.parent for path in (cwd / "outputs").rglob("checkpoint"))


def _all_runs(cwd: Path) -> list:
    client = mlflow_client(cwd)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments)


def _checksums(text: str) -> dict[int, tuple[str, int]]:
    """{rank: (checksum, step)} from the loop's last line of each rank."""
    found: dict[int, tuple[str, int]] = {}
    for checksum, step, rank, _ in CHECKSUM.findall(text):
        assert int(rank) not in found, f"rank {rank} logged two checksums"
        found[int(rank)] = (checksum, int(step))
    return found


# ---- Horovod ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def horovodrun() -> str:
    """The horovodrun launcher, or a skip when Horovod's TensorFlow binding is not importable."""
    probe = subprocess.run([sys.executable, "-c", "import horovod.tensorflow"],
                           capture_output=True, text=True, env=_environment(), timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"horovod.tensorflow is not importable ({last}); build it with "
                    "`bash .ci/install_horovod.sh`")
    launcher = shutil.which("horovodrun") or str(Path(sys.executable).with_name("horovodrun"))
    if not Path(launcher).exists():
        pytest.skip("horovodrun is not on PATH")
    return launcher


def _horovodrun(launcher: str, cwd: Path, *args: str, stagger: int = 0,
                timeout: int = 600) -> tuple[str, dict[int, str]]:
    """``horovodrun -np 2 --gloo`` the runner; rank r starts ``r * stagger`` seconds late.

    Returns the whole output and each rank's lines (without horovodrun's ``[r]<stdout>:``).
    """
    runner = f'sleep "$((HOROVOD_RANK * {stagger}))"; exec "$0" -m unet3d.run "$@"'
    completed = subprocess.run(
        [launcher, "-np", "2", "--gloo", "-H", "localhost:2",
         "sh", "-c", runner, sys.executable, *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_environment(),
    )
    output = completed.stdout + completed.stderr
    _assert_ok(output, completed.returncode)
    per_rank: dict[int, list[str]] = {0: [], 1: []}
    for line in output.splitlines():
        match = re.match(r"\[(\d+)\]<std(?:out|err)>:(.*)", line)
        if match:
            per_rank[int(match.group(1))].append(match.group(2))
    return output, {rank: "\n".join(lines) for rank, lines in per_rank.items()}


@pytest.mark.horovod
def test_horovodrun_two_ranks_train_then_resume(horovodrun: str, tmp_path: Path,
                                                shared_workdir: Path) -> None:
    # max_steps=6 over 2 processes: 3 steps each (the reference divides by the world size).
    # Rank 1 starts 3 s late: without rank 0's broadcast launch time it would name its own
    # output dir.
    _, ranks = _horovodrun(horovodrun, tmp_path, "strategy=horovod", *TINY,
                           "training.max_steps=6", _data_dir(shared_workdir), stagger=3)
    assert "training.max_steps=6 divided by 2 Horovod processes: 3 steps per process" in ranks[0]
    for rank in (0, 1):
        assert "training steps 1..3 (global batch 2, 2 replica(s), 2 process(es))" in ranks[rank]
    # Only rank 0 prints progress, saves checkpoints and talks to MLflow.
    assert PROGRESS.search(ranks[0]) and not PROGRESS.search(ranks[1])
    assert "saved checkpoint" in ranks[0] and "saved checkpoint" not in ranks[1]
    assert "MLflow" in ranks[0] and "MLflow" not in ranks[1]
    # Identical weights on both ranks after training.
    sums = _checksums(ranks[0] + "\n" + ranks[1])
    assert sorted(sums) == [0, 1] and sums[0] == sums[1] and sums[0][1] == 3, sums

    # One output dir (rank 0's), written by rank 0 only: .hydra/, run.log, one checkpoints/.
    (run_dir,) = _output_dirs(tmp_path)
    assert (run_dir / ".hydra" / "config.yaml").exists()
    log_text = (run_dir / "run.log").read_text()
    assert "(rank 0 of 2)" in log_text and "(rank 1 of 2)" not in log_text
    assert "local rank 1 of 2" not in log_text
    assert _checkpoint_folders(tmp_path) == [run_dir / "checkpoints"]
    assert (run_dir / "checkpoints" / "ckpt-3.index").exists()
    record = results(run_dir)
    assert record["metrics"]["train_steps"] == 3
    (run,) = _all_runs(tmp_path)
    assert run.info.run_id == record["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["strategy"] == "horovod" and run.data.tags["replicas"] == "2"
    client = mlflow_client(tmp_path)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 3]

    # Resume: 10 steps over 2 processes = 5. Only rank 0 restores; the broadcast gives rank 1
    # the weights, the optimizer state and the step, so both continue at step 4.
    _, ranks = _horovodrun(horovodrun, tmp_path, "strategy=horovod", *TINY,
                           "training.max_steps=10", "resume=true", f"hydra.run.dir={run_dir}",
                           _data_dir(shared_workdir))
    assert "restored" in ranks[0] and "at step 3" in ranks[0] and "restored" not in ranks[1]
    for rank in (0, 1):
        assert "training steps 4..5 (global batch 2" in ranks[rank]
    sums = _checksums(ranks[0] + "\n" + ranks[1])
    assert sums[0] == sums[1] and sums[0][1] == 5, sums
    assert _output_dirs(tmp_path) == [run_dir]
    assert (run_dir / "checkpoints" / "ckpt-5.index").exists()
    (resumed,) = _all_runs(tmp_path)
    assert resumed.info.run_id == run.info.run_id
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps[-1] == 5


def test_horovod_rejects_xla(tmp_path: Path) -> None:
    result = run_cli("strategy=horovod", "precision.xla=true", *TINY, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "precision.xla: XLA cannot compile Horovod" in errors[0], errors


# ---- tf.distribute -------------------------------------------------------------------------


def test_multi_worker_two_processes(tmp_path: Path, shared_workdir: Path) -> None:
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    launch_time = "2026-01-02_03-04-05"
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        environment = _environment(TF_CONFIG=tf_config, UNET3D_LAUNCH_TIME=launch_time)
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "unet3d.run", "strategy=multi_worker", *TINY,
             "training.max_steps=3", _data_dir(shared_workdir)],
            cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        ))
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=600)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    for worker, output in zip(workers, outputs, strict=True):
        _assert_ok(output, worker.returncode)
    for output in outputs:
        assert "training steps 1..3 (global batch 2, 2 replica(s), 2 process(es))" in output
    assert PROGRESS.search(outputs[0]) and not PROGRESS.search(outputs[1])
    sums = _checksums("\n".join(outputs))
    assert sorted(sums) == [0, 1] and sums[0] == sums[1] and sums[0][1] == 3, sums

    # Both workers used the launch time's output dir, with the launch id both derived from
    # TF_CONFIG; only the chief wrote into it. The other worker's checkpoint went to a scratch
    # folder that is gone.
    (run_dir,) = _output_dirs(tmp_path)
    assert run_dir.parent == tmp_path / "outputs" / "2026-01-02"
    assert re.fullmatch(r"03-04-05_train_fold0_[0-9a-f]{6}", run_dir.name), run_dir.name
    assert "(rank 1 of 2)" not in (run_dir / "run.log").read_text()
    assert _checkpoint_folders(tmp_path) == [run_dir / "checkpoints"]
    assert (run_dir / "checkpoints" / "ckpt-3.index").exists()
    assert not list(run_dir.glob(".checkpoints-worker*"))
    (run,) = _all_runs(tmp_path)
    assert run.data.tags["strategy"] == "multi_worker" and run.data.tags["replicas"] == "2"
    assert run.info.run_id == results(run_dir)["mlflow_run_id"]


def test_mirrored_over_two_logical_cpus(tmp_path: Path, shared_workdir: Path) -> None:
    result = run_cli("strategy=mirrored", "+device.logical_cpus=2", "data.batch_size=1",
                     *TINY, "training.max_steps=3", "tracking.enabled=false",
                     _data_dir(shared_workdir), cwd=tmp_path)
    output = result.stdout + result.stderr
    _assert_ok(output, result.returncode)
    assert "devices: CPU x2" in output
    assert "strategy mirrored with 2 replica(s) in 1 process(es)" in output
    assert "training steps 1..3 (global batch 2, 2 replica(s), 1 process(es))" in output
    assert "step 3/3" in output
    (run_dir,) = _output_dirs(tmp_path)
    assert (run_dir / "checkpoints" / "ckpt-3.index").exists()


# ---- benchmark mode under each strategy ------------------------------------------------------


def _benchmark_report(cwd: Path) -> dict:
    (run_dir,) = _output_dirs(cwd)
    report = json.loads((run_dir / "benchmark.json").read_text())
    latency = report["latency_ms"]
    # Global throughput: the global batch (all replicas, all processes) per mean step time.
    assert report["throughput"] == pytest.approx(report["batch"] * 1000.0 / latency["mean"])
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"]
    return report


@pytest.mark.horovod
def test_horovodrun_benchmark_reports_global_throughput(horovodrun: str, tmp_path: Path,
                                                        shared_workdir: Path) -> None:
    _, ranks = _horovodrun(horovodrun, tmp_path, "strategy=horovod", "debug=fast",
                           "mode=benchmark", "benchmark.target=train",
                           "benchmark.synthetic_input=false", _data_dir(shared_workdir))
    report = _benchmark_report(tmp_path)
    assert (report["strategy"], report["world_size"], report["num_replicas"]) == ("horovod", 2, 2)
    assert (report["per_replica_batch"], report["batch"]) == (1, 2)
    assert report["devices"] == "2 x CPU"
    # Only rank 0 reports.
    assert "throughput_train [vol/s]" in ranks[0] and "throughput_train" not in ranks[1]


def test_mirrored_runner_benchmark_over_two_logical_cpus(tmp_path: Path,
                                                          shared_workdir: Path) -> None:
    result = run_cli("strategy=mirrored", "+device.logical_cpus=2", "debug=fast",
                     "mode=benchmark", "benchmark.target=runner", "benchmark.rounds=1",
                     _data_dir(shared_workdir), cwd=tmp_path)
    _assert_ok(result.stdout + result.stderr, result.returncode)
    report = _benchmark_report(tmp_path)
    assert (report["strategy"], report["num_replicas"], report["batch"]) == ("mirrored", 2, 2)
    assert report["loop_step_time_s"] > 0 and report["bare_step_time_s"] > 0


# ---- precision ------------------------------------------------------------------------------


def test_amp_on_cpu_computes_in_bfloat16(tmp_path: Path, shared_workdir: Path) -> None:
    result = run_cli("precision=amp", *TINY, "training.max_steps=2", "tracking.log_model=false",
                     _data_dir(shared_workdir), cwd=tmp_path)
    output = result.stdout + result.stderr
    _assert_ok(output, result.returncode)
    assert "precision mixed_bfloat16 (compute bfloat16, variables float32)" in output
    # What the built model really uses, not only the policy that was asked for.
    assert "model dtypes: layers compute in bfloat16, variables float32, output float32" in output
    (run,) = _all_runs(tmp_path)
    tags = run.data.tags
    assert tags["precision"] == "amp"
    assert tags["compute_dtype"] == "bfloat16" and tags["variable_dtype"] == "float32"
    assert tags["loss_scaling"] == "false"
    assert "loss_scale" not in run.data.metrics


def test_fp16_runs_a_loss_scaled_step(tmp_path: Path, shared_workdir: Path) -> None:
    result = run_cli("precision=fp16", *TINY, "training.max_steps=1", "tracking.log_model=false",
                     _data_dir(shared_workdir), cwd=tmp_path)
    output = result.stdout + result.stderr
    _assert_ok(output, result.returncode)
    assert "wrapped in a LossScaleOptimizer (dynamic loss scaling" in output
    assert "model dtypes: layers compute in float16, variables float32, output float32" in output
    assert "step 1/1" in output
    (run,) = _all_runs(tmp_path)
    assert run.data.tags["compute_dtype"] == "float16"
    assert run.data.tags["loss_scaling"] == "true"
    assert run.data.metrics["loss_scale"] == 2.0**15  # finite step: scale kept


# ---- devices --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["horovod", "mirrored"])
def test_missing_devices_fail_cleanly_under_strategies(tmp_path: Path, strategy: str) -> None:
    for device, message in (("mlu", "no MLU device is visible"), ("gpu", "no GPU is visible")):
        result = run_cli(f"strategy={strategy}", f"device={device}", *TINY, cwd=tmp_path)
        assert result.returncode != 0
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if "ERROR" in line]
        assert len(errors) == 1 and f"device={device}: {message}" in errors[0], errors
        assert "Traceback" not in result.stdout + result.stderr
    assert not _checkpoint_folders(tmp_path)
