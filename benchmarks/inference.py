"""Whole-volume inference: seconds per 240 x 240 x 155 case and peak memory.

Runs ``mode=benchmark benchmark.target=predict benchmark.synthetic_input=true`` at the
reference widths (``model=unet3d``), 128^3 windows with overlap 0.5 (18 windows, Gaussian
blending, no TTA) on one random BraTS-sized volume, per precision. Peak memory is the peak
resident set size of the runner process (the model, the volume, the probability accumulators
and TensorFlow's buffers).

    python benchmarks/inference.py --precisions fp32 bf16 --out benchmarks/results/inference.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DEFAULT_WORKDIR,
    MODEL_OVERRIDES,
    RESULTS_DIR,
    runner_benchmark,
    summary,
    write_result,
)


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
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "inference.json")
    arguments = parser.parse_args()

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
        results.append(row)
        window_ms = row["window_latency_ms"]["mean"]
        print(f"{arguments.model} {precision}: {row['seconds_per_case']:.1f} s per case "
              f"({row['window_batches_per_case']:.0f} window batches of {arguments.window_batch},"
              f" {window_ms / 1000:.2f} s each), peak RSS {row['peak_rss_mb']:.0f} MiB",
              flush=True)
    write_result(arguments.out, {"benchmark": "inference", "model": arguments.model,
                                 "window": arguments.window, "overlap": arguments.overlap,
                                 "volume": arguments.volume, "results": results})


if __name__ == "__main__":
    main()
