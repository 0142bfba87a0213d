"""``mode=benchmark``: every target runs through the real runner and reports sane numbers.

No timing thresholds: only that the report exists, is consistent and is complete.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from unet3d.errors import ConfigError
from unet3d.modes.benchmark.measure import (
    latency_statistics,
    overhead_summary,
    runner_loop_steps,
    timed_result,
)
from unet3d.modes.benchmark.predict_target import volume_shape
from unet3d.modes.benchmark.report import flat_metrics, format_table, write_report

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


# ---------------------------------------------------------------------------------------------
# Pure helpers (no TensorFlow)
# ---------------------------------------------------------------------------------------------


def test_latency_statistics_orders_percentiles_and_counts() -> None:
    statistics = latency_statistics([0.5, 0.1, 0.2, 0.4, 0.3])
    assert statistics["count"] == 5
    assert statistics["mean"] == pytest.approx(300.0)
    assert statistics["p50"] == pytest.approx(300.0)
    assert statistics["min"] <= statistics["p50"] <= statistics["p90"] <= statistics["p95"] \
        <= statistics["p99"] <= statistics["max"]
    assert statistics["total_s"] == pytest.approx(1.5)
    with pytest.raises(ValueError):
        latency_statistics([])


def test_table_has_the_seeds_columns() -> None:
    latency = latency_statistics([1.0, 2.0])
    table = format_table("train", "1 x CPU", 2, 1.33, latency)
    header, rule, row = table.splitlines()
    assert "throughput_train [vol/s]" in header and "latency_train_mean [ms]" in header
    for percentile in (90, 95, 99):
        assert f"latency_train_{percentile} [ms]" in header
    assert header.count("|") == rule.count("|") == row.count("|")
    assert "| 1 x CPU | 2 | 1.33 | 1500.0 |" in row


def test_flat_metrics_skip_non_numbers_and_name_the_target() -> None:
    result = {"throughput": 2.0, "latency_ms": latency_statistics([0.5, 1.0]),
              "peak_rss_mb": 100.0, "extra": {"achieved_gflops": 3.0, "tta": False,
                                              "window_size": [1, 2, 3], "nan": float("nan")}}
    metrics = flat_metrics("train", result)
    assert metrics["throughput_train"] == 2.0
    assert metrics["achieved_gflops_train"] == 3.0
    assert metrics["benchmark_steps_train"] == 2.0
    assert "tta_train" not in metrics and "window_size_train" not in metrics
    assert all(math.isfinite(value) for value in metrics.values())


def test_json_is_written_atomically(tmp_path: Path) -> None:
    payload = {"a": 1, "b": [1.5], "c": np.float32(0.5), "d": np.arange(3), "e": np.int64(7),
               "f": (np.float64(2.0), Path("x"))}
    path = write_report(tmp_path / "sub" / "benchmark.json", payload)
    assert json.loads(path.read_text()) == {"a": 1, "b": [1.5], "c": 0.5, "d": [0, 1, 2],
                                            "e": 7, "f": [2.0, "x"]}
    assert [item.name for item in path.parent.iterdir()] == ["benchmark.json"]


def test_a_timed_result_has_every_targets_layout() -> None:
    result = timed_result([0.5, 1.5], 4, 2, (8, 8, 4), 10, {"x": 1.0}, devices="2 x CPU")
    assert result["throughput"] == pytest.approx(4.0)  # 4 volumes per mean 1 s step
    assert result["latency_ms"]["count"] == 2 and result["step_seconds"] == [0.5, 1.5]
    assert (result["batch"], result["per_replica_batch"], result["input_shape"],
            result["parameters"], result["extra"], result["devices"]) == (
        4, 2, [8, 8, 4], 10, {"x": 1.0}, "2 x CPU")


def test_runner_rounds_cover_the_steps_after_one_untimed_window() -> None:
    assert runner_loop_steps(10, 30) == 40
    assert runner_loop_steps(10, 31) == 50
    assert runner_loop_steps(50, 20) == 100
    assert runner_loop_steps(1, 1) == 2
    with pytest.raises(ValueError, match="must be > 0"):
        runner_loop_steps(0, 5)


def test_overhead_is_the_median_of_the_paired_rounds() -> None:
    # Round 2 ran on a slower machine for both: pairing cancels it, medians alone do not.
    summary = overhead_summary([1.0, 2.0, 1.0], [1.02, 2.02, 1.1])
    assert summary["overhead_fraction_per_round"] == pytest.approx([0.02, 0.01, 0.1])
    assert summary["overhead_fraction"] == pytest.approx(0.02)
    assert summary["bare_step_time_s"] == 1.0 and summary["loop_step_time_s"] == 1.1
    assert summary["overhead_fraction_of_medians"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="one bare and one loop"):
        overhead_summary([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="one bare and one loop"):
        overhead_summary([], [])


def test_bad_volume_shape_names_the_key() -> None:
    section = OmegaConf.create({"volume_shape": [240, 240]})
    with pytest.raises(ConfigError, match="benchmark.volume_shape"):
        volume_shape(section)
    assert volume_shape(OmegaConf.create({"volume_shape": [40, 40, 32]})) == (40, 40, 32)
    assert volume_shape(OmegaConf.create({"volume_shape": None})) == (240, 240, 155)


# ---------------------------------------------------------------------------------------------
# Through the runner
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder (MLflow store, synthetic debug data) shared by the runs of this module."""
    return tmp_path_factory.mktemp("benchmark")


def _run(workdir: Path, name: str, *overrides: str) -> tuple[Path, str]:
    run_dir = workdir / "runs" / name
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.run(
        [sys.executable, "-m", "unet3d.run", "mode=benchmark", "debug=fast",
         "benchmark.warmup_steps=1", f"benchmark.steps={STEPS}", *overrides,
         f"hydra.run.dir={run_dir}"],
        cwd=workdir, capture_output=True, text=True, timeout=600, env=environment,
    )
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-4000:]
    return run_dir, output


CASES = {
    "train_synthetic": ("train", ["benchmark.target=train", "benchmark.synthetic_input=true"]),
    "train_pipeline": ("train", ["benchmark.target=train", "benchmark.synthetic_input=false"]),
    "train_amp": ("train", ["benchmark.target=train", "benchmark.synthetic_input=true",
                            "precision=amp"]),
    "predict_synthetic": ("predict", ["benchmark.target=predict",
                                      "benchmark.synthetic_input=true",
                                      "benchmark.volume_shape=[40,40,24]"]),
    "predict_held_out": ("predict", ["benchmark.target=predict",
                                     "benchmark.synthetic_input=false"]),
    "pipeline": ("pipeline", ["benchmark.target=pipeline"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_benchmark_mode_reports_sane_numbers(workdir: Path, name: str) -> None:
    target, overrides = CASES[name]
    run_dir, output = _run(workdir, name, *overrides)
    report = json.loads((run_dir / "benchmark.json").read_text())
    assert report["target"] == target
    assert report["steps"] == STEPS and report["warmup_steps"] == 1
    assert report["synthetic_input"] is ("benchmark.synthetic_input=true" in overrides)
    throughput = report["throughput"]
    assert math.isfinite(throughput) and throughput > 0
    latency = report["latency_ms"]
    assert latency["count"] == STEPS == len(report["step_seconds"])
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"]
    assert latency["mean"] > 0 and math.isfinite(latency["mean"])
    assert report["batch"] >= 1 and report["num_replicas"] == 1
    assert throughput == pytest.approx(report["batch"] * 1000.0 / latency["mean"])
    assert report["peak_rss_mb"] > 0
    # The seed-shaped table is printed.
    assert f"throughput_{target} [vol/s]" in output and f"latency_{target}_99 [ms]" in output
    # amp on a CPU is mixed_bfloat16; the default (precision=auto) is what its log line says it
    # chose on this host (float32, or mixed_bfloat16 where bf16 convolutions are faster).
    if "precision=amp" in overrides:
        policy = "mixed_bfloat16"
    else:
        chosen = re.search(r"precision auto: (\w+) on ", output)
        assert chosen, output[-3000:]
        policy = chosen.group(1)
    dtypes = {"mixed_bfloat16": "bfloat16", "float32": "float32"}
    assert (report["precision"], report["compute_dtype"]) == (policy, dtypes[policy])
    if target == "train":
        assert report["achieved_gflops"] > 0 and report["forward_gflop_per_volume"] > 0
        assert report["step_time_s"] == pytest.approx(latency["mean"] / 1000.0)
    if name == "train_pipeline":
        # What the step waited for its batch, and what data.cache=auto chose (issue 32).
        assert 0 <= report["input_wait_s_per_step"] < report["step_time_s"]
        assert report["cache"] is True and report["data"]["cache"] == "auto"  # tiny cases fit
    if target == "predict":
        window = report["window_latency_ms"]
        assert window["count"] == len(report["window_batch_seconds"])
        assert window["count"] == STEPS * report["window_batches_per_case"]
        assert 0 < window["p50"] <= window["p90"] <= window["p95"] <= window["p99"]
        assert report["seconds_per_case"] > 0
        if "volume_shape=[40,40,24]" in " ".join(overrides):
            assert report["input_shape"] == [40, 40, 24]

    # The job's results.json and the MLflow run carry the same numbers.
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "FINISHED"
    assert results["metrics"][f"throughput_{target}"] == pytest.approx(throughput)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(results["mlflow_run_id"])
    assert run.data.tags["benchmark.target"] == target
    assert run.data.metrics[f"throughput_{target}"] == pytest.approx(throughput)
    assert run.data.metrics[f"latency_{target}_p99"] == pytest.approx(latency["p99"])


@pytest.mark.slow
def test_runner_target_times_the_training_loop_against_the_bare_step(workdir: Path) -> None:
    run_dir, output = _run(workdir, "runner", "benchmark.target=runner", "benchmark.rounds=2",
                           "training.log_every=2", "training.checkpoint_every=2")
    report = json.loads((run_dir / "benchmark.json").read_text())
    assert report["target"] == "runner" and report["rounds"] == 2
    # Per round: one untimed window of 2 steps, then whole windows covering STEPS = 3 steps.
    assert report["loop_steps_per_round"] == 6
    assert report["latency_ms"]["count"] == 2 * 2 == len(report["step_seconds"])
    assert len(report["overhead_fraction_per_round"]) == 2
    for bare, loop, overhead in zip(report["bare_step_time_per_round_s"],
                                    report["loop_step_time_per_round_s"],
                                    report["overhead_fraction_per_round"], strict=True):
        assert bare > 0 and loop > 0 and overhead == pytest.approx(loop / bare - 1.0)
    assert report["overhead_fraction"] == pytest.approx(
        sorted(report["overhead_fraction_per_round"])[0] / 2
        + sorted(report["overhead_fraction_per_round"])[1] / 2)
    assert "training loop" in output and "overhead" in output
    # The loop really ran: MLflow got its per-round curves, and its checkpoints were removed.
    results = json.loads((run_dir / "results.json").read_text())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(results["mlflow_run_id"])
    assert "runner_round0_loss" in run.data.metrics and "runner_round1_loss" in run.data.metrics
    assert run.data.metrics["overhead_fraction_runner"] == pytest.approx(
        report["overhead_fraction"])
    assert not (run_dir / "runner_rounds").exists()
