"""What the re-check of a cached bf16 probe result costs, next to the full probe.

``precision=auto`` re-checks a cached result that says bfloat16 is faster with one warm-up and
one timed pair of the probe convolution (``unet3d.runtime.cpu_probe.quick_probe``) before it is
used; the full probe (``probe_conv3d``: two warm-up and up to five timed pairs) runs only on a
cache miss or when the check disagrees. Both are timed here, interleaved in one process (after
one untimed call of each, so TensorFlow's start-up is not counted), as wall seconds per call,
with the bf16 / fp32 ratio each measured.

    python -m benchmarks.studies.precision_recheck --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks._common import RESULTS_DIR, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--out", default=str(RESULTS_DIR / "precision_recheck.json"))
    arguments = parser.parse_args()

    from unet3d.runtime.cpu_probe import probe_conv3d, quick_probe, read_cpu_info

    calls = {"full_probe": probe_conv3d, "recheck": quick_probe}
    for call in calls.values():  # untimed: TensorFlow's start-up and oneDNN's primitives
        call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    speedups: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(arguments.rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            result = call()
            seconds[name].append(time.perf_counter() - started)
            speedups[name].append(result.speedup)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    cpu = read_cpu_info()
    payload: dict[str, Any] = {
        "benchmark": "precision_recheck",
        "method": "probe_conv3d() vs quick_probe(), interleaved, one process, after one "
                  "untimed call of each; wall seconds per call and the bf16 speed-up each "
                  "measured (fp32 ms / bf16 ms)",
        "rounds": arguments.rounds,
        "cpu_identity": cpu.identity_text(),
        "seconds": seconds,
        "median_seconds": medians,
        "recheck_over_full_probe": medians["recheck"] / medians["full_probe"],
        "bf16_speedup": speedups,
    }
    write_result(arguments.out, payload)
    print(f"{cpu.describe()} ({cpu.identity_text()}): full probe {medians['full_probe']:.3f} s, "
          f"re-check {medians['recheck']:.3f} s "
          f"({payload['recheck_over_full_probe']:.2f}x)")


if __name__ == "__main__":
    main()
