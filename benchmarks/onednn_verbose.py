"""Does the reference model run on oneDNN's fast kernels? ``ONEDNN_VERBOSE=1``, summarised.

For each precision (fp32, bf16) and workload (``train``: one compiled train step with dice+ce
and Adam, as ``train_step.py``; ``predict``: one window batch through ``mode=predict``'s
predict function, ``make_keras_predict_fn``) a child process builds the reference U-Net
(``model=unet3d`` widths), warms up (tracing, oneDNN primitive creation), then runs one step
with ``ONEDNN_VERBOSE=1``; the primitives it executed are summarised (``_profile.onednn_summary``):

- the convolution kernels per data type: on an AMX host bf16 should run on
  ``brg_conv_fwd:avx512_core_amx`` (and its backward variants), on an AVX-512 BF16 host on
  ``brg_conv_fwd:avx512_core_bf16``; ``avx512_core`` / ``gemm`` / ``ref`` kernels mean a slow
  path;
- reorders: ``weights`` (TensorFlow's DHWIO filters into oneDNN's blocked layout, per call),
  ``fp32->bf16`` / ``bf16->fp32`` (should be none between layers: casts happen in TensorFlow
  ops, not in oneDNN) and ``layout`` (activation layout changes between layers: should be none,
  TensorFlow keeps NDHWC);
- oneDNN time per primitive kind.

    python -m benchmarks.onednn_verbose --side 32          # smoke (seconds per child)
    python -m benchmarks.onednn_verbose --side 128 --out benchmarks/results/onednn_verbose.json

Every child also reports the host CPU (model, bf16 flags) so the result says which kernels this
host can use. TensorFlow ops outside oneDNN (casts, normalisation statistics, LeakyReLU) do not
appear here: ``train_step.py --op-profile`` and ``inference.py --op-profile`` time them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import MODELS, PRECISION_POLICIES, RESULTS_DIR, subprocess_env, write_result
from benchmarks._profile import onednn_summary

BEGIN = "=====unet3d-onednn-verbose-begin====="
END = "=====unet3d-onednn-verbose-end====="


def child(workload: str, precision: str, side: int, batch: int, model: str) -> None:
    """Warm up, then run one step between the markers (stdout), with verbose output on."""
    import keras
    import numpy as np

    if workload == "train":
        from train_step import build_train_step

        built = build_train_step(model, side, batch, precision, xla=False)

        def step() -> None:
            float(built["step"](built["images"], built["labels"]))
    else:
        from unet3d.inference.sliding_window import make_keras_predict_fn
        from unet3d.model.unet3d import build_unet3d

        keras.mixed_precision.set_global_policy(PRECISION_POLICIES[precision])
        network = build_unet3d(**MODELS[model])
        predict_fn = make_keras_predict_fn(network, window_size=(side,) * 3)
        windows = np.random.default_rng(0).normal(size=(batch, side, side, side, 4))
        windows = windows.astype(np.float32)

        def step() -> None:
            predict_fn(windows)
    step()
    step()
    sys.stdout.flush()
    print(BEGIN, flush=True)
    step()
    sys.stdout.flush()
    print(END, flush=True)


def measured_lines(output: str) -> list[str]:
    """The verbose lines between the markers."""
    lines = output.splitlines()
    try:
        start, stop = lines.index(BEGIN), lines.index(END)
    except ValueError:
        return []
    return lines[start + 1:stop]


def run_child(workload: str, precision: str, arguments: argparse.Namespace) -> dict[str, Any]:
    config = {"workload": workload, "precision": precision, "side": arguments.side,
              "batch": arguments.batch, "model": arguments.model}
    env = subprocess_env({"ONEDNN_VERBOSE": "1"})
    if arguments.threads:
        env["OMP_NUM_THREADS"] = str(arguments.threads)
    process = subprocess.run([sys.executable, "-m", "benchmarks.onednn_verbose", "--child",
                              json.dumps(config)], capture_output=True, text=True, env=env,
                             timeout=arguments.timeout)
    if process.returncode != 0:
        return {**config, "error": (process.stdout + process.stderr)[-3000:]}
    lines = measured_lines(process.stdout)
    return {**config, "primitives_executed": sum(",exec," in line for line in lines),
            **onednn_summary(lines)}


def verdict(row: dict[str, Any], amx_host: bool) -> str:
    """One line: the kernels, whether AMX ran, the reorders between layers."""
    if "error" in row:
        return f"{row['workload']} {row['precision']}: FAILED"
    kernels = "; ".join(f"{dtype}: {', '.join(impls)}"
                        for dtype, impls in row["conv_impls_by_dtype"].items())
    weights = row["reorders"].get("weights", {"count": 0, "ms": 0.0})
    share = weights["ms"] / row["total_ms"] if row["total_ms"] else 0.0
    amx = "yes" if row["amx"] else ("NO (host has AMX)" if amx_host else "no (no AMX here)")
    return (f"{row['workload']:7s} {row['precision']}: conv kernels {kernels}; AMX {amx}; "
            f"fp32<->bf16 reorders {row['dtype_reorders']}, layout reorders "
            f"{row['layout_reorders']}, weight reorders {weights['count']} "
            f"({weights['ms']:.1f} ms, {100 * share:.1f}% of oneDNN time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=32, help="cube side of crop and window")
    parser.add_argument("--batch", type=int, default=1, help="volumes / windows per step")
    parser.add_argument("--model", choices=sorted(MODELS), default="reference")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=sorted(PRECISION_POLICIES))
    parser.add_argument("--workloads", nargs="+", default=["train", "predict"],
                        choices=["train", "predict"])
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: unset)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "onednn_verbose.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(**json.loads(arguments.child))
        return

    from unet3d.runtime.cpu_probe import read_cpu_info

    cpu = read_cpu_info()
    rows = []
    for workload in arguments.workloads:
        for precision in arguments.precisions:
            row = run_child(workload, precision, arguments)
            rows.append(row)
            print(verdict(row, cpu.has_amx_bf16), flush=True)
            if "error" in row:
                print(row["error"][-1500:], file=sys.stderr)
    write_result(arguments.out, {
        "benchmark": "onednn_verbose", "model": arguments.model, "side": arguments.side,
        "batch": arguments.batch, "cpu": cpu.model, "cpu_bf16_flags": list(cpu.bf16_flags),
        "method": "ONEDNN_VERBOSE=1 in a child per workload and precision; the primitives of "
                  "one step after two warm-up steps", "results": rows,
        "environment": {"ONEDNN_VERBOSE": "1 (children)", "OMP_NUM_THREADS":
                        str(arguments.threads) if arguments.threads else os.environ.get(
                            "OMP_NUM_THREADS")},
    })


if __name__ == "__main__":
    main()
