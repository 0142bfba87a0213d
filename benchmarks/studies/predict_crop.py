"""Whole-volume prediction with the brain crop and mixed precision: time and agreement.

Two parts, each one command (run each under ``flock /tmp/unet3d-cpu.lock``):

``time``: one 240 x 240 x 155 synthetic BraTS case (``unet3d.data.synthetic.case``, the brain
shifted off-centre, preprocessed and normalised exactly as the records are) at the reference
widths (``model=unet3d``, random weights: timing does not depend on them), 128^3 windows,
overlap 0.5, through ``EnsemblePredictor`` (the code path of ``mode=predict``) with the rest
of conf/inference/default.yaml (blend, TTA, the brain box's ``crop_margin``; results written
before the margin was read from there, without ``crop_margin`` in their JSON, used none):
``today`` (fp32, ``crop_to_brain=false``), ``crop_fp32`` and ``crop_amp`` (mixed_bfloat16,
the same weights), interleaved in rounds whose order rotates; ratios are per round, reported
as medians. Also: forward-pass seconds (the rest is host work), achieved GFLOP/s against the
4096^3 matmul peak of ``benchmarks/results/cpu_peak.json`` and the process's peak RSS.

``agree``: a trained checkpoint (``--checkpoint``, e.g. the default small model trained
briefly) segments held-out synthetic cases (indices after the training set's, never seen in
training) and the same 240 x 240 x 155 case, each four ways (fp32 / amp x crop off / on);
Dice per BraTS region (WT, TC, ET) of each segmentation with today's fp32 one, and each
one's Dice with the reference labels.

    python -m benchmarks.studies.predict_crop time --rounds 3 \
        --out benchmarks/results/predict_crop.json
    python -m benchmarks.studies.predict_crop agree --checkpoint RUN/checkpoints \
        --out benchmarks/results/predict_crop_agreement.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import MODELS, RESULTS_DIR, config_group, read_result, write_result
from benchmarks._predict_inputs import cut_and_shift
from unet3d.config.settings import input_divisor

#: BraTS regions as sets of training classes (label 4 = class 3).
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
VARIANTS = ("today", "crop_fp32", "crop_amp")
#: conf/inference/default.yaml: the sliding window of a job (blend, TTA, brain-box margin, and
#: the defaults of --overlap and --window-batch).
INFERENCE = config_group("inference/default")


def realistic_case(shape: tuple[int, int, int], shift: tuple[int, int, int], seed: int,
                   index: int, generate: tuple[int, int, int] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A normalised synthetic case (H, W, D, 4) float32 and its classes (H, W, D) uint8.

    The case is generated on the grid ``generate`` (default ``shape``; the synthetic brain's
    size is a fraction of the grid, so a deeper grid gives a deeper brain) and cut to
    ``shape`` around the brain; the brain is then moved by ``shift`` voxels (clipped so that
    it stays inside the grid).
    """
    from unet3d.data.preprocess import foreground_stats, normalize, scale_to_uint8
    from unet3d.data.synthetic.case import generate_case

    case = generate_case(seed, index, generate or shape, (1.0, 1.0, 1.0))
    if (generate is not None and tuple(generate) != tuple(shape)) or any(shift):
        case = cut_and_shift(case, shape, shift)
    image, label = case.image, case.label
    uint8 = np.empty(image.shape, dtype=np.uint8)
    means, stds = np.zeros(4, np.float32), np.ones(4, np.float32)
    for channel in range(4):
        uint8[..., channel] = scale_to_uint8(image[..., channel])
        means[channel], stds[channel] = foreground_stats(uint8[..., channel])
    classes = np.where(label == 4, 3, label).astype(np.uint8)
    return normalize(uint8, means, stds), classes


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; both empty = 1 (BraTS)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def region_dice(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice per BraTS region of two class maps."""
    return {name: dice(np.isin(prediction, classes), np.isin(reference, classes))
            for name, classes in REGIONS.items()}


def build(widths: dict[str, Any], policy: str, weights: list | None) -> Any:
    """The U-Net built under ``policy`` (the global Keras policy), optionally with weights."""
    import keras

    from unet3d.model.unet3d import build_unet3d

    keras.mixed_precision.set_global_policy(policy)
    model = build_unet3d(**widths)
    if weights is not None:
        model.set_weights(weights)
    keras.mixed_precision.set_global_policy("float32")
    return model


def predictors(model_fp32: Any, model_amp: Any, window: int, overlap: float,
               batch: int, divisor: int) -> dict[str, Any]:
    """The four ``EnsemblePredictor`` variants keyed ``<fp32|amp>_<crop|full>`` (``divisor``:
    the network's input divisor, ``unet3d.config.settings.input_divisor``)."""
    from unet3d.inference.ensemble import EnsemblePredictor

    made = {}
    for precision, model in (("fp32", model_fp32), ("amp", model_amp)):
        for crop in (False, True):
            made[f"{precision}_{'crop' if crop else 'full'}"] = EnsemblePredictor(
                model, window_size=(window,) * 3, num_classes=4, overlap=overlap,
                blend=INFERENCE["blend"], batch_size=batch, tta=INFERENCE["tta"],
                jit_compile=False, crop_to_brain=crop, background_class=0,
                crop_margin=INFERENCE["crop_margin"], single_window=INFERENCE["single_window"],
                input_divisor=divisor)
    return made


def command_time(arguments: argparse.Namespace) -> None:
    import tensorflow as tf

    from unet3d.data.crop import nonzero_box
    from unet3d.model.unet3d import count_forward_flops

    tf.keras.utils.set_random_seed(0)
    widths = dict(MODELS[arguments.model])
    image, _ = realistic_case(tuple(arguments.volume), tuple(arguments.shift), arguments.seed, 0,
                              tuple(arguments.generate))
    box = nonzero_box(image)
    print(f"case {list(image.shape)}, brain box {list(box.start)}:{list(box.stop)} "
          f"= {list(box.shape)}", flush=True)
    model_fp32 = build(widths, "float32", None)
    model_amp = build(widths, "mixed_bfloat16", model_fp32.get_weights())
    made = predictors(model_fp32, model_amp, arguments.window, arguments.overlap,
                      arguments.window_batch, input_divisor(widths))
    chosen = {"today": made["fp32_full"], "crop_fp32": made["fp32_crop"],
              "crop_amp": made["amp_crop"]}
    forward: dict[str, list[float]] = {name: [] for name in chosen}
    windows: dict[str, int] = {}
    for name, predictor in chosen.items():
        original = predictor.predict_windows

        def timed(batch: np.ndarray, original: Any = original, name: str = name) -> np.ndarray:
            started = time.perf_counter()
            output = original(batch)
            forward[name][-1] += time.perf_counter() - started
            windows[name] = windows.get(name, 0) + len(batch)
            return output

        predictor.predict_windows = timed
        warm = np.zeros((arguments.window_batch, *(arguments.window,) * 3, 4), np.float32)
        original(warm)  # trace and warm up outside the timing
    seconds: dict[str, list[float]] = {name: [] for name in chosen}
    order = list(chosen)
    for round_index in range(arguments.rounds):
        rotated = order[round_index % len(order):] + order[:round_index % len(order)]
        for name in rotated:
            forward[name].append(0.0)
            windows[name] = 0
            started = time.perf_counter()
            probabilities = chosen[name].probabilities(image)
            np.argmax(probabilities, axis=-1)
            seconds[name].append(time.perf_counter() - started)
            del probabilities
            print(f"round {round_index + 1}: {name:10s} {seconds[name][-1]:7.1f} s "
                  f"({windows[name]} windows, forward {forward[name][-1]:.1f} s)", flush=True)
    peak = _peak()
    flops = count_forward_flops(widths, (arguments.window,) * 3)
    rows = {}
    for name in chosen:
        achieved = windows[name] * flops / statistics.median(forward[name]) / 1e9
        rows[name] = {
            "seconds": seconds[name], "median_s": statistics.median(seconds[name]),
            "forward_seconds": forward[name], "windows": windows[name],
            "host_seconds_median": statistics.median(
                [total - fwd for total, fwd in zip(seconds[name], forward[name], strict=True)]),
            "achieved_gflops": achieved,
            "share_of_matmul_peak": achieved / peak[
                "bfloat16_gflops" if name.endswith("amp") else "float32_gflops"],
        }
    ratios = {name: statistics.median(
        [value / today for value, today in zip(seconds[name], seconds["today"], strict=True)])
        for name in chosen if name != "today"}
    ratio_rounds = {name: [value / today for value, today in
                           zip(seconds[name], seconds["today"], strict=True)]
                    for name in chosen if name != "today"}
    print(f"median ratios to today: {json.dumps(ratios)}", flush=True)
    write_result(arguments.out, {
        "benchmark": "predict_crop", "model": arguments.model, "weights": "random (seed 0)",
        "window": arguments.window, "overlap": arguments.overlap,
        "crop_margin": INFERENCE["crop_margin"],
        "window_batch": arguments.window_batch, "volume": arguments.volume,
        "brain_box": box.to_record(), "brain_box_shape": list(box.shape),
        "rounds": arguments.rounds, "method": "one process, variants interleaved per round "
        "(order rotates), ratio per round to the same round's today, median over rounds",
        "results": rows, "median_ratio_to_today": ratios, "ratio_per_round": ratio_rounds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "matmul_peak": peak,
    })


def _peak() -> dict[str, float]:
    data = read_result(RESULTS_DIR / "cpu_peak.json")  # this host's record
    if data:
        return {key: float(data[key]) for key in ("float32_gflops", "bfloat16_gflops")}
    return {"float32_gflops": 222.0, "bfloat16_gflops": 409.0}  # REFERENCE.md


def command_agree(arguments: argparse.Namespace) -> None:
    import tensorflow as tf

    from unet3d.data.crop import nonzero_box
    from unet3d.training.checkpoint import restore_weights

    tf.keras.utils.set_random_seed(0)
    widths = dict(MODELS[arguments.model])
    model_fp32 = build(widths, "float32", None)
    prefix = restore_weights(model_fp32, arguments.checkpoint)
    model_amp = build(widths, "mixed_bfloat16", model_fp32.get_weights())
    made = predictors(model_fp32, model_amp, arguments.window, arguments.overlap,
                      arguments.window_batch, input_divisor(widths))
    cases = [(f"held-out {index}", tuple(arguments.case_shape), (0, 0, 0), index)
             for index in range(arguments.first_case, arguments.first_case + arguments.cases)]
    if arguments.big_case:
        cases.append(("240x240x155 off-centre", tuple(arguments.volume),
                      tuple(arguments.shift), 0))
    generate = tuple(arguments.generate)
    rows = []
    for name, shape, shift, index in cases:
        seed = arguments.seed if name.startswith("held-out") else arguments.big_seed
        image, truth = realistic_case(shape, shift, seed, index,
                                      None if name.startswith("held-out") else generate)
        segmentations = {}
        for variant, predictor in made.items():
            started = time.perf_counter()
            segmentations[variant] = np.argmax(predictor.probabilities(image), axis=-1)
            print(f"{name}: {variant} {time.perf_counter() - started:.1f} s", flush=True)
        today = segmentations["fp32_full"]
        inside = np.zeros(today.shape, dtype=bool)
        inside[nonzero_box(image).slices] = True
        row = {"case": name, "shape": list(shape), "seed": seed, "index": index,
               "agreement_with_today": {variant: region_dice(seg, today)
                                        for variant, seg in segmentations.items()
                                        if variant != "fp32_full"},
               "dice_with_truth": {variant: region_dice(seg, truth)
                                   for variant, seg in segmentations.items()},
               "agreement_with_today_inside_box": {
                   variant: region_dice(seg[inside], today[inside])
                   for variant, seg in segmentations.items() if variant != "fp32_full"},
               "today_tumour_voxels_outside_box": int((today[~inside] > 0).sum()),
               "today_tumour_voxels": int((today > 0).sum()),
               "voxels_differing_from_today_inside_box": {
                   variant: int((seg[inside] != today[inside]).sum())
                   for variant, seg in segmentations.items() if variant != "fp32_full"},
               "voxels_differing_from_today_outside_box": {
                   variant: int((seg[~inside] != today[~inside]).sum())
                   for variant, seg in segmentations.items() if variant != "fp32_full"}}
        rows.append(row)
        print(json.dumps({key: row[key] for key in row if key.startswith(("agreement",
              "today_", "voxels"))}), flush=True)
    summary = {}
    for variant in ("fp32_crop", "amp_full", "amp_crop"):
        held = [row for row in rows if row["case"].startswith("held-out")]
        summary[variant] = {
            region: {
                "min_agreement_held_out": min(r["agreement_with_today"][variant][region]
                                              for r in held),
                "min_agreement_inside_box_held_out": min(
                    r["agreement_with_today_inside_box"][variant][region] for r in held),
                "mean_agreement_held_out": float(np.mean(
                    [r["agreement_with_today"][variant][region] for r in held])),
                "mean_dice_change_vs_truth_held_out": float(np.mean(
                    [r["dice_with_truth"][variant][region]
                     - r["dice_with_truth"]["fp32_full"][region] for r in held])),
            } for region in REGIONS}
    print(json.dumps(summary, indent=1), flush=True)
    write_result(arguments.out, {
        "benchmark": "predict_crop_agreement", "checkpoint": prefix, "model": arguments.model,
        "window": arguments.window, "overlap": arguments.overlap,
        "crop_margin": INFERENCE["crop_margin"], "cases": rows,
        "summary": summary,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("time", help="interleaved timing at the reference widths")
    agree = commands.add_parser("agree", help="segmentation agreement with a trained model")
    for sub in (timing, agree):
        sub.add_argument("--window-batch", type=int, default=INFERENCE["batch_size"],
                         help="windows per forward pass")
        sub.add_argument("--overlap", type=float, default=INFERENCE["overlap"])
        sub.add_argument("--volume", type=int, nargs=3, default=[240, 240, 155])
        sub.add_argument("--shift", type=int, nargs=3, default=[24, -20, 4],
                         help="voxels the brain moves off the centre")
        sub.add_argument("--generate", type=int, nargs=3, default=[240, 240, 190],
                         help="grid the 240x240x155 case is generated on, then cut to --volume "
                              "around its brain (a realistic ~140 voxel deep brain)")
    timing.add_argument("--window", type=int, default=128)
    timing.add_argument("--model", choices=sorted(MODELS), default="reference")
    timing.add_argument("--rounds", type=int, default=3)
    timing.add_argument("--seed", type=int, default=7, help="synthetic case seed")
    timing.add_argument("--out", type=Path, default=RESULTS_DIR / "predict_crop.json")
    agree.add_argument("--checkpoint", required=True, help="checkpoint prefix or folder")
    agree.add_argument("--model", choices=sorted(MODELS), default="small")
    agree.add_argument("--window", type=int, default=64)
    agree.add_argument("--case-shape", type=int, nargs=3, default=[96, 96, 64])
    agree.add_argument("--seed", type=int, default=2019, help="the training data set's seed")
    agree.add_argument("--first-case", type=int, default=40,
                       help="first held-out index (the training set has indices below it)")
    agree.add_argument("--cases", type=int, default=8)
    agree.add_argument("--big-case", action=argparse.BooleanOptionalAction, default=True)
    agree.add_argument("--big-seed", type=int, default=7)
    agree.add_argument("--out", type=Path, default=RESULTS_DIR / "predict_crop_agreement.json")
    arguments = parser.parse_args()
    if arguments.command == "time":
        command_time(arguments)
    else:
        command_agree(arguments)


if __name__ == "__main__":
    main()
