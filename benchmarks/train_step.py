"""Bare compiled train step on in-memory tensors: seconds per step and achieved GFLOP/s.

The network is ``unet3d.model.unet3d.build_unet3d``, the loss the project's ``dice+ce``, the
optimizer Adam, all inside one ``tf.function`` (no strategy, no input pipeline, no runner):
the floor that the runner's training step is compared with. Achieved GFLOP/s = 3 x the
analytic forward FLOPs (``count_forward_flops``) x volumes/s, next to the matmul peak of
``cpu_peak.py`` (read from ``--peak-json`` when it exists).

Each configuration runs in its own child process (thread pools can only be set before
TensorFlow starts; peak memory is per configuration). Default: 64^3, batch 1, both models,
fp32 and bf16, XLA off (a few minutes on 2 cores). The README set adds 128^3 and XLA:

    python -m benchmarks.train_step --shapes 64 128 --xla off on

Also measures, with ``--sync-every``, what waiting for the loss after every step costs
(the training loop calls ``float(loss)`` each step). ``--op-profile`` adds where a step's time
goes (``tf.profiler``: op time per op type, layer and layer kind, in each row's
``op_profile``), e.g. before and after a change to the model:

    python -m benchmarks.train_step --models reference --shapes 128 --op-profile

``--onednn 0 1 --rounds 3`` times each configuration with TensorFlow's oneDNN kernels off and
on, interleaved, and reports the median per-round ratio (what ``import unet3d`` buys on a CPU
where TensorFlow leaves oneDNN off):

    python -m benchmarks.train_step --models small --precisions fp32 --batch 2 --onednn 0 1 \
        --rounds 3 --out benchmarks/results/train_step_onednn.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    MODELS,
    PRECISION_POLICIES,
    RESULTS_DIR,
    host_cpu,
    host_key,
    host_label,
    host_records,
    subprocess_env,
    write_result,
)
from benchmarks._profile import shares_line


def build_train_step(model_name: str, side: int, batch: int, precision: str, xla: bool,
                     norm: str = "instance") -> dict[str, Any]:
    """The model, its compiled train step (dice+ce, Adam) and in-memory inputs.

    Returns ``{"model", "spec", "step", "images", "labels"}``; ``step(images, labels)``
    returns the loss. The global Keras policy is set to ``precision``'s.
    """
    import keras
    import tensorflow as tf

    from unet3d.model.unet3d import build_unet3d
    from unet3d.training.losses import segmentation_loss

    keras.mixed_precision.set_global_policy(PRECISION_POLICIES[precision])
    spec = {**MODELS[model_name], "norm": norm}
    model = build_unet3d(**spec)
    optimizer = keras.optimizers.Adam(learning_rate=2e-4)
    optimizer.build(model.trainable_variables)
    images = tf.random.stateless_normal([batch, side, side, side, 4], seed=[1, 2])
    labels = tf.random.stateless_uniform([batch, side, side, side], seed=[3, 4], minval=0,
                                         maxval=4, dtype=tf.int32)

    @tf.function(jit_compile=xla)
    def train_step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            per_sample, _ = segmentation_loss(y, probabilities, 4, "dice+ce")
            loss = tf.reduce_mean(per_sample)
        variables = model.trainable_variables
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return loss

    return {"model": model, "spec": spec, "step": train_step, "images": images,
            "labels": labels}


def measure(model_name: str, side: int, batch: int, precision: str, xla: bool,
            warmup: int, steps: int, sync_every: int, intra: int, inter: int,
            norm: str = "instance", op_profile: bool = False) -> dict[str, Any]:
    """Time one configuration in this process (call before TensorFlow has started).

    With ``op_profile`` one more step runs under ``tf.profiler`` after the timed ones: its op
    time per op type, layer and layer kind (``_profile.profile_call``) is the row's
    ``op_profile``.
    """
    import numpy as np
    import tensorflow as tf

    if intra > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter > 0:
        tf.config.threading.set_inter_op_parallelism_threads(inter)

    from unet3d.model.unet3d import count_forward_flops

    built = build_train_step(model_name, side, batch, precision, xla, norm)
    model, spec, train_step = built["model"], built["spec"], built["step"]
    images, labels = built["images"], built["labels"]

    started = time.perf_counter()
    float(train_step(images, labels))
    first_step = time.perf_counter() - started
    for _ in range(max(warmup - 1, 0)):
        float(train_step(images, labels))
    times = []
    pending = 0
    cpu_started = time.process_time()
    block_started = time.perf_counter()
    for index in range(steps):
        loss = train_step(images, labels)
        pending += 1
        if (index + 1) % sync_every == 0 or index == steps - 1:
            float(loss)
            now = time.perf_counter()
            times.extend([(now - block_started) / pending] * pending)
            block_started, pending = now, 0
    cpu_per_step = (time.process_time() - cpu_started) / steps
    seconds = np.asarray(times)
    step_time = float(np.median(seconds))
    forward = count_forward_flops(spec, side)
    gflops = 3.0 * forward * batch / step_time / 1e9
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    profile = None
    if op_profile:
        from benchmarks._profile import profile_call

        profile = profile_call(lambda: float(train_step(images, labels)),
                               [layer.name for layer in model.layers])
    return {
        "model": model_name, "norm": norm, "side": side, "batch": batch,
        "precision": precision,
        "xla": xla, "sync_every": sync_every,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "parameters": int(model.count_params()),
        "first_step_s": first_step,
        "step_time_median_s": step_time,
        "step_time_mean_s": float(seconds.mean()),
        "step_time_min_s": float(seconds.min()),
        "step_times_s": [float(value) for value in seconds],
        "cpu_seconds_per_step": cpu_per_step,
        "volumes_per_second": batch / step_time,
        "forward_gflop_per_volume": forward / 1e9,
        "achieved_gflops": gflops,
        "peak_rss_mb": peak_kib / 1024.0,
        **({"op_profile": profile} if profile is not None else {}),
    }


def _child(arguments: argparse.Namespace, config: dict[str, Any],
           onednn: str | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.train_step", "--child", json.dumps(config)]
    env = {} if onednn is None else {"TF_ENABLE_ONEDNN_OPTS": onednn}
    process = subprocess.run(command, capture_output=True, text=True,
                             env=subprocess_env(env), timeout=arguments.timeout)
    if process.returncode != 0:
        return {**config, "onednn": onednn, "error": (process.stdout + process.stderr)[-2000:]}
    return {**json.loads(process.stdout.strip().splitlines()[-1]), "onednn": onednn}


def onednn_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration, the step time with oneDNN off over on, round by round (rows of one
    interleaved sequence), and their median."""
    import statistics

    pairs: dict[tuple, dict[int, dict[str, float]]] = {}
    for row in rows:
        if "error" in row or row.get("onednn") not in ("0", "1"):
            continue
        key = tuple(row[name] for name in ("model", "norm", "side", "batch", "precision", "xla",
                                           "sync_every", "intra_op_threads",
                                           "inter_op_threads"))
        pairs.setdefault(key, {}).setdefault(row["round"], {})[row["onednn"]] = \
            row["step_time_median_s"]
    summary = []
    for key, rounds in pairs.items():
        ratios = [times["0"] / times["1"] for times in rounds.values() if len(times) == 2]
        if ratios:
            summary.append({"model": key[0], "side": key[2], "batch": key[3],
                            "precision": key[4], "off_over_on_per_round": ratios,
                            "off_over_on_median": statistics.median(ratios)})
    return summary


def same_host_peak(peak: dict[str, Any] | None, path: Path) -> dict[str, Any] | None:
    """``peak`` when ``cpu_peak.py`` measured it on this host's CPU, else None (with a line).

    Hosts of one kind share lscpu's model name (``AMD EPYC``) but not their speed: the peak
    is compared by family, model and flags (``environment.cpu``); a file without them is
    from before hosts were recorded and is not used.
    """
    if not peak:
        return None
    recorded = (peak.get("environment") or {}).get("cpu")
    current = host_cpu()
    keys = ("model_name", "family", "model", "flags")
    if recorded and all(recorded.get(key) == current.get(key) for key in keys):
        return peak
    print(f"{path}: measured on another host ({(peak.get('environment') or {}).get('host')}"
          f"), not this {host_label(current)}: no share of peak (run cpu_peak.py here first)",
          flush=True)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=int, nargs="+", default=[64], help="cube sides")
    parser.add_argument("--models", nargs="+", default=["reference", "small"],
                        choices=sorted(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=sorted(PRECISION_POLICIES))
    parser.add_argument("--xla", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--norms", nargs="+", default=["instance"],
                        choices=["instance", "group", "batch", "none"],
                        help="normalisation layers (instance = the model's; none = its cost)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (incl. tracing)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--sync-every", type=int, nargs="+", default=[1],
                        help="wait for the loss every N steps (1 = like the training loop)")
    parser.add_argument("--threads", nargs="+", default=["0:0"],
                        help="intra:inter thread pool sizes to try (0 = TensorFlow's default)")
    parser.add_argument("--onednn", choices=["0", "1"], nargs="+", default=None,
                        help="set TF_ENABLE_ONEDNN_OPTS in the children (several: each, "
                             "interleaved; unset: unet3d's default, on for x86-64)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the whole sequence (interleaved rounds; ratios of "
                             "oneDNN off/on per round)")
    parser.add_argument("--op-profile", action="store_true",
                        help="also profile one step (tf.profiler): time shares per op type, "
                             "layer and layer kind in each row's op_profile")
    parser.add_argument("--peak-json", type=Path, default=RESULTS_DIR / "cpu_peak.json")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train_step.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.child:
        config = json.loads(arguments.child)
        print(json.dumps(measure(**config)))
        return

    peaks = host_records(arguments.peak_json)  # this host's, else any: same_host_peak says so
    peak = same_host_peak(peaks.get(host_key()) or next(iter(peaks.values()), None),
                          arguments.peak_json)
    peaks = {"fp32": peak.get("float32_gflops"), "bf16": peak.get("bfloat16_gflops")} \
        if peak else {}
    rows = []
    for round_index, (model_name, norm, side, precision, xla, sync_every, threads, onednn) in \
            itertools.product(range(arguments.rounds), itertools.product(
                arguments.models, arguments.norms, arguments.shapes, arguments.precisions,
                arguments.xla, arguments.sync_every, arguments.threads,
                arguments.onednn or [None])):
        intra, inter = (int(part) for part in threads.split(":"))
        config = {"model_name": model_name, "side": side, "batch": arguments.batch,
                  "precision": precision, "xla": xla == "on", "warmup": arguments.warmup,
                  "steps": arguments.steps, "sync_every": sync_every, "intra": intra,
                  "inter": inter, "norm": norm, "op_profile": arguments.op_profile}
        row = {**_child(arguments, config, onednn), "round": round_index}
        if "error" not in row and peaks.get(precision):
            row["peak_gflops"] = peaks[precision]
            row["fraction_of_peak"] = row["achieved_gflops"] / peaks[precision]
        rows.append(row)
        if "error" in row:
            print(f"{model_name} {side}^3 {precision} xla={xla}: FAILED {row['error'][-300:]}")
            continue
        share = f" ({100 * row['fraction_of_peak']:.0f}% of peak)" if "fraction_of_peak" in row \
            else ""
        print(f"round {round_index} oneDNN {onednn or 'default'}: "
              f"{model_name:9s} {norm:8s} {side:3d}^3 b{arguments.batch} {precision} xla={xla:3s} "
              f"sync/{sync_every} threads {threads}: {row['step_time_median_s']:.3f} s/step, "
              f"{row['achieved_gflops']:.1f} GFLOP/s{share}, CPU "
              f"{row['cpu_seconds_per_step']:.2f} s/step, first step "
              f"{row['first_step_s']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MiB", flush=True)
        if "op_profile" in row:
            print("    op time shares: " + shares_line(row["op_profile"]), flush=True)
    ratios = onednn_ratios(rows)
    for item in ratios:
        print(f"oneDNN off / on, {item['model']} {item['side']}^3 b{item['batch']} "
              f"{item['precision']}: median {item['off_over_on_median']:.2f}x over "
              f"{len(item['off_over_on_per_round'])} round(s)", flush=True)
    write_result(arguments.out, {
        "benchmark": "train_step",
        "description": "bare tf.function train step (model, dice+ce, Adam) on in-memory tensors",
        "peak": peak,
        "results": rows,
        **({"onednn_off_over_on": ratios} if ratios else {}),
        "environment": {"TF_ENABLE_ONEDNN_OPTS": arguments.onednn
                        or os.environ.get("TF_ENABLE_ONEDNN_OPTS")},
    })


if __name__ == "__main__":
    main()
