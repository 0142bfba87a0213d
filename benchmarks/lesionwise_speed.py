"""Time the lesion-wise metrics (``unet3d.evaluation.lesionwise``) on one 240x240x155 case.

The case is a synthetic BraTS case at the real size (``data=synthetic_hard``'s generator:
satellite foci and enhancing islands, so several lesions per region) in BraTS 2023 labels; a
resection cavity (label 4) is painted beside the tumour for the 2024 rules. The prediction is
the reference shifted by one voxel, with the smallest reference lesion dropped, three false
positive blobs near the tumour and specks. ``far`` adds a false positive in a corner of the
volume, so the box of the case's tumour is the whole volume (the slowest layout).

Usage: ``python -m benchmarks.lesionwise_speed [--repeats 5]``; writes
``benchmarks/results/lesionwise_speed.json`` with the host's CPU. Run it alone (it is timed):
``nice -n 5 flock /tmp/unet3d-heavy.lock python -m benchmarks.lesionwise_speed``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmarks._common import RESULTS_DIR, host_cpu, write_result
from unet3d.config.synthetic_options import SyntheticOptions
from unet3d.data.layouts.convention import BRATS2023, LabelConvention
from unet3d.data.synthetic.case import generate_case
from unet3d.evaluation.lesionwise import RULES, lesionwise_regions, region_values

SHAPE = (240, 240, 155)
POST = LabelConvention("brats2024_post", {0: "background", 1: "NETC", 2: "SNFH", 3: "ET",
                                          4: "RC"},
                       {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3), "NETC": (1,), "SNFH": (2,),
                        "RC": (4,)})


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, ref)`` uint8 BraTS 2023+ labels (1 NETC, 2 SNFH, 3 ET, 4 RC) of one case."""
    options = SyntheticOptions(satellites=(2, 2), enhancing_islands=(3, 3), lgg_fraction=0.0)
    case = generate_case(seed, 0, SHAPE, (1.0, 1.0, 1.0), options)
    ref = np.array([0, 1, 2, 0, 3], np.uint8)[case.label]
    rng = np.random.default_rng(seed)
    tumour = ndimage.find_objects((ref > 0).astype(np.uint8))[0]
    corner = np.array([s.stop for s in tumour])
    cavity = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    ref[sum(((g - c) / 6.0) ** 2 for g, c in zip(cavity, corner - 4, strict=True)) <= 1.0] = 4
    pred = np.roll(ref, (1, 0, -1), axis=(0, 1, 2))
    labels, count = ndimage.label(pred == 3, np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    pred[labels == int(np.argmin(sizes)) + 1] = 0
    for _ in range(3):
        centre = np.array([s.start for s in tumour]) + rng.integers(0, 20, 3)
        pred[sum(((g - c) / 3.0) ** 2 for g, c in zip(cavity, centre, strict=True)) <= 1.0] = \
            rng.integers(1, 5)
    specks = rng.random(SHAPE) < 2e-6
    pred[specks] = rng.integers(1, 5, int(specks.sum()))
    return pred, ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "lesionwise_speed.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    pred, ref = make_case(args.seed)
    far = pred.copy()
    far[-4:, -4:, -4:] = 3
    layouts = {"tumour": pred, "far": far}
    rule_sets = {"brats2023": BRATS2023, "brats2024": POST}
    times: dict[str, list[float]] = {f"{r}/{k}": [] for r in rule_sets for k in layouts}
    counts = {}
    for _ in range(args.repeats):  # interleaved: every variant once per round
        for rules_name, convention in rule_sets.items():
            rules = RULES[rules_name]
            values = region_values(rules, convention)
            for layout, prediction in layouts.items():
                start = time.perf_counter()
                result = lesionwise_regions(prediction, ref, rules, values)
                times[f"{rules_name}/{layout}"].append(time.perf_counter() - start)
                counts[f"{rules_name}/{layout}"] = {
                    region: {"tp": r.tp, "fn": r.fn, "fp": r.fp, "excluded": r.excluded}
                    for region, r in result.items()}
    rows = {name: {"median_s": statistics.median(values), "min_s": min(values),
                   "max_s": max(values), "lesions": counts[name]}
            for name, values in times.items()}
    for name, row in rows.items():
        print(f"{name:22s} median {row['median_s']:.3f} s  (min {row['min_s']:.3f}, "
              f"max {row['max_s']:.3f})")
    write_result(args.out, {
        "benchmark": "lesionwise_speed",
        "what": "seconds per case for unet3d.evaluation.lesionwise.lesionwise_regions on one "
                "240x240x155 case (every region of the rules); tumour: prediction near the "
                "tumour only; far: plus a false positive in the volume's corner",
        "shape": list(SHAPE), "repeats": args.repeats, "seed": args.seed,
        "host_cpu": host_cpu(), "results": rows,
        "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        "note": "single-threaded NumPy/SciPy; a load above 2 on this 2-core host means other "
                "jobs shared the CPU, so the times are upper bounds",
    })


if __name__ == "__main__":
    main()
