"""Practical compute peak of this machine through TensorFlow: N^3 matmul GFLOP/s.

float32 and bfloat16 (AVX-512 BF16 CPUs run it through oneDNN), median of ``--repeats``
timed products after one warm-up; 2 N^3 FLOPs per product. The train-step benchmarks report
their achieved GFLOP/s as a fraction of these numbers.

    python -m benchmarks.cpu_peak --size 4096 --out benchmarks/results/cpu_peak.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks._common import RESULTS_DIR, write_result


def matmul_gflops(size: int, dtype: str, repeats: int) -> dict[str, float]:
    """GFLOP/s of ``size``^3 matmuls in ``dtype`` (median and best of ``repeats``)."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal([size, size], seed=[1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([size, size], seed=[3, 4]), dtype)

    @tf.function
    def product(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], tf.float32))

    product(a, b).numpy()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        product(a, b).numpy()
        times.append(time.perf_counter() - started)
    flops = 2.0 * size**3
    return {
        "median_s": statistics.median(times),
        "gflops": flops / statistics.median(times) / 1e9,
        "best_gflops": flops / min(times) / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--intra", type=int, default=0, help="intra-op threads (0: default)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu_peak.json")
    arguments = parser.parse_args()
    import tensorflow as tf

    if arguments.intra > 0:
        tf.config.threading.set_intra_op_parallelism_threads(arguments.intra)
    results = {}
    for dtype in ("float32", "bfloat16"):
        results[dtype] = matmul_gflops(arguments.size, dtype, arguments.repeats)
        print(f"{arguments.size}^3 matmul {dtype}: {results[dtype]['gflops']:.1f} GFLOP/s "
              f"(best {results[dtype]['best_gflops']:.1f})", flush=True)
    write_result(arguments.out, {
        "benchmark": "cpu_peak",
        "size": arguments.size,
        "repeats": arguments.repeats,
        "tensorflow": tf.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "float32_gflops": results["float32"]["gflops"],
        "bfloat16_gflops": results["bfloat16"]["gflops"],
        "float32_best_gflops": results["float32"]["best_gflops"],
        "bfloat16_best_gflops": results["bfloat16"]["best_gflops"],
        "details": results,
    })


if __name__ == "__main__":
    main()
