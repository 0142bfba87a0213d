"""Whole-volume inference: seconds per 240 x 240 x 155 case and peak memory.

Runs ``mode=benchmark benchmark.target=predict benchmark.synthetic_input=true`` at the
reference widths (``model=unet3d``), 128^3 windows with overlap 0.5 (18 windows, Gaussian
blending, no TTA) on one random BraTS-sized volume, per precision. Peak memory is the peak
resident set size of the runner process (the model, the volume, the probability accumulators
and TensorFlow's buffers).

    python -m benchmarks.inference --precisions fp32 bf16 --out benchmarks/results/inference.json

``--op-profile`` also profiles one window batch of the same model through the predict function
of ``mode=predict`` (``unet3d.inference.sliding_window.make_keras_predict_fn``), in a child
process per precision, under ``tf.profiler``: op time per op type, layer and layer kind in each
row's ``op_profile`` (where a window's time goes, e.g. before and after a model change).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import (
    DEFAULT_WORKDIR,
    MODEL_OVERRIDES,
    MODELS,
    PRECISION_POLICIES,
    RESULTS_DIR,
    runner_benchmark,
    subprocess_env,
    summary,
    write_result,
)
from benchmarks._profile import profile_call, shares_line


def window_profile(model: str, precision: str, window: int, batch: int) -> dict[str, Any]:
    """Op time shares of one window batch through mode=predict's predict function (this
    process; call before TensorFlow has started)."""
    import keras
    import numpy as np

    from unet3d.inference.sliding_window import make_keras_predict_fn
    from unet3d.model.unet3d import build_unet3d

    keras.mixed_precision.set_global_policy(PRECISION_POLICIES[precision])
    network = build_unet3d(**MODELS[model])
    predict_fn = make_keras_predict_fn(network, window_size=(window,) * 3)
    windows = np.random.default_rng(0).normal(size=(batch, window, window, window, 4))
    windows = windows.astype(np.float32)
    predict_fn(windows)  # trace, create the oneDNN primitives
    return profile_call(lambda: predict_fn(windows), [layer.name for layer in network.layers])


def _profile_child(arguments: argparse.Namespace, precision: str) -> dict[str, Any]:
    config = {"model": arguments.model, "precision": precision, "window": arguments.window,
              "batch": arguments.window_batch}
    process = subprocess.run([sys.executable, "-m", "benchmarks.inference", "--child-profile",
                              json.dumps(config)], capture_output=True, text=True,
                             env=subprocess_env(), timeout=3600)
    if process.returncode != 0:
        return {"error": (process.stdout + process.stderr)[-2000:]}
    return json.loads(process.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODEL_OVERRIDES), default="reference")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--window-batch", type=int, default=1, help="windows per forward pass")
    parser.add_argument("--volume", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--cases", type=int, default=1, help="timed cases")
    parser.add_argument("--warmup", type=int, default=1, help="untimed window batches")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra runner overrides")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--op-profile", action="store_true",
                        help="also profile one window batch per precision (op time shares)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "inference.json")
    parser.add_argument("--child-profile", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child_profile:
        print(json.dumps(window_profile(**json.loads(arguments.child_profile))))
        return

    results = []
    for precision in arguments.precisions:
        window = arguments.window
        overrides = [
            *MODEL_OVERRIDES[arguments.model], f"precision={precision}",
            "benchmark.target=predict", "benchmark.synthetic_input=true",
            f"benchmark.volume_shape=[{','.join(str(side) for side in arguments.volume)}]",
            f"benchmark.steps={arguments.cases}", f"benchmark.warmup_steps={arguments.warmup}",
            f"inference.window_size=[{window},{window},{window}]",
            f"inference.overlap={arguments.overlap}",
            f"inference.batch_size={arguments.window_batch}", "inference.tta=false",
            *arguments.overrides,
        ]
        result = runner_benchmark(overrides, arguments.workdir, f"inference-{precision}")
        row = {**summary(result), "precision_name": precision,
               "window_batches_per_case": result.get("window_batches_per_case"),
               "windows_per_second": result.get("windows_per_second")}
        if arguments.op_profile:
            row["op_profile"] = _profile_child(arguments, precision)
        results.append(row)
        window_ms = row["window_latency_ms"]["mean"]
        print(f"{arguments.model} {precision}: {row['seconds_per_case']:.1f} s per case "
              f"({row['window_batches_per_case']:.0f} window batches of {arguments.window_batch},"
              f" {window_ms / 1000:.2f} s each), peak RSS {row['peak_rss_mb']:.0f} MiB",
              flush=True)
        if "total_ms" in row.get("op_profile", {}):
            print("    op time shares: " + shares_line(row["op_profile"]), flush=True)
    write_result(arguments.out, {"benchmark": "inference", "model": arguments.model,
                                 "window": arguments.window, "overlap": arguments.overlap,
                                 "volume": arguments.volume, "results": results})


if __name__ == "__main__":
    main()
