"""Whole-volume predict per engine and per speed lever, against MONAI, with each lever's Dice cost.

One table (``benchmarks/results/predict_engines.json``, the host CPU named) of two parts:

``speed`` (``--rounds`` interleaved rounds, order rotating, each variant one process timed from
start to exit): the case and reference-width checkpoint of ``predict_vs_monai.py`` (one
240 x 240 x 155 raw case with a brain of a real brain's size; random weights), exported once
with ``mode=export`` (timed apart: a one-off step), then ``python -m unet3d.run mode=predict``
with ``precision=fp32``, 128^3 windows, overlap 0.5, window batch 2 and the default brain-box
crop, in:

- ``tensorflow``: the checkpoint in TensorFlow (today's default);
- ``openvino`` / ``onnxruntime``: the export in that engine (segmentation kept: engine swap);
- ``openvino_batch1``: window batch 1 instead of 2 (window batching);
- ``openvino_overlap025``: overlap 0.25 (changes the segmentation);
- ``openvino_fast``: ``inference=fast`` with OpenVINO: one window over the brain box, no margin
  (changes the segmentation);
- ``openvino_int8`` / ``openvino_int8_fast``: the export's INT8 IR (NNCF, calibrated on the
  export job's training windows; ``export.int8.min_agreement=0`` for these random weights, whose
  near-tied probabilities make label agreement meaningless), default settings / ``inference=fast``
  (changes the segmentation: its Dice cost is measured in ``quality`` on a trained model);
- ``monai``: ``_monai_predict.py`` (DynUNet at the same widths, full-grid sliding window,
  ``--torch-python``: a venv with torch and monai).

Reading and writing overlap the model in every unet3d variant (``unet3d.inference.background``);
with one case only the first read and the last write are outside the sliding window
(``loop_s`` in the details is the sliding window's share).

``quality`` (``--quality-run``: a run folder trained with ``data=synthetic_hard``, e.g. the
quality table's recipe: ``model=unet3d_small data.crop_size=[64,64,64] training.max_steps=600
fold=0 num_folds=3``): ``mode=evaluate`` of its held-out fold for each lever, the mean Dice per
region, its change against the default (TensorFlow, fp32) and, per region, the Dice between each
variant's segmentation and the default's (the engine swap must keep it >= 0.995).

    python -m benchmarks.predict_engines --torch-python /tmp/torchvenv/bin/python --rounds 2 \\
        --quality-run /tmp/i29work/train
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import (
    DEFAULT_WORKDIR,
    MODEL_OVERRIDES,
    RESULTS_DIR,
    read_result,
    write_result,
)
from benchmarks.predict_vs_monai import monai_command, our_command, our_details, prepare, timed

#: Speed variants: name -> (source: checkpoint | export, extra overrides).
SPEED_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "tensorflow": ("checkpoint", ["inference.engine=tensorflow"]),
    "openvino": ("export", ["inference.engine=openvino"]),
    "onnxruntime": ("export", ["inference.engine=onnxruntime"]),
    "openvino_batch1": ("export", ["inference.engine=openvino", "inference.batch_size=1"]),
    "openvino_overlap025": ("export", ["inference.engine=openvino", "inference.overlap=0.25"]),
    "openvino_fast": ("export", ["inference=fast", "inference.engine=openvino"]),
    "openvino_int8": ("export", ["inference.engine=openvino_int8"]),
    "openvino_int8_fast": ("export", ["inference=fast", "inference.engine=openvino_int8"]),
}
#: Quality variants: name -> overrides of mode=evaluate (the first is the default).
QUALITY_VARIANTS: dict[str, list[str]] = {
    "default_tensorflow": ["inference.engine=tensorflow"],
    "openvino": ["inference.engine=openvino"],
    "onnxruntime": ["inference.engine=onnxruntime"],
    "overlap025": ["inference.engine=openvino", "inference.overlap=0.25"],
    "single_window": ["inference.engine=openvino", "inference.single_window=true"],
    "fast": ["inference=fast", "inference.engine=openvino"],
    "openvino_int8": ["inference.engine=openvino_int8"],
    "fast_int8": ["inference=fast", "inference.engine=openvino_int8"],
}
#: The formats of the exports (the INT8 IR needs the ``int8`` extra).
EXPORT_FORMATS = "[onnx,openvino,openvino_int8]"


def _has_formats(folder: Path) -> bool:
    """Whether ``folder`` is an export with every format of ``EXPORT_FORMATS``."""
    record = folder / "unet3d_export.json"
    if not record.is_file():
        return False
    files = json.loads(record.read_text())["members"][0]["files"]
    return all(fmt in files for fmt in EXPORT_FORMATS.strip("[]").split(","))


REGIONS = ("WT", "TC", "ET")


def export_reference(arguments: argparse.Namespace, checkpoint: str) -> tuple[Path, float]:
    """``mode=export`` of the reference checkpoint (``EXPORT_FORMATS``), timed once."""
    run_dir = arguments.workdir / "runs" / "export-int8"  # (runs/export: without the INT8 IR)
    folder = run_dir / "export"
    if _has_formats(folder):
        return folder, float("nan")
    command = [sys.executable, "-m", "unet3d.run", "mode=export",
               *MODEL_OVERRIDES[arguments.model], "precision=fp32",
               f"export.checkpoint={Path(checkpoint).parent}", f"export.formats={EXPORT_FORMATS}",
               "export.overwrite=true", "export.int8.min_agreement=0",
               # OpenVINO's fp32 output on this random-weight network at 128^3 differs from
               # Keras by up to ~2e-4 (ONNX Runtime: ~5e-6): above the default 1e-4.
               f"export.tolerance={arguments.export_tolerance}",
               f"inference.window_size=[{arguments.window},{arguments.window},{arguments.window}]",
               f"paths.data_dir={arguments.workdir / 'data'}", f"hydra.run.dir={run_dir}"]
    seconds, _ = timed(command, arguments.workdir, arguments.timeout)
    print(f"export: {seconds:.1f} s -> {folder}", flush=True)
    return folder, seconds


def speed(arguments: argparse.Namespace) -> dict[str, Any]:
    """The interleaved whole-command timings (see the module doc)."""
    inputs = prepare(arguments)
    (case,) = inputs["cases"]
    case_dir = arguments.workdir / "cases"
    export_dir, export_s = export_reference(arguments, inputs["checkpoint"])

    def command(name: str, label: str) -> tuple[list[str], Path]:
        source, extra = SPEED_VARIANTS[name]
        line, run_dir = our_command(arguments, "fp32", case_dir, inputs["checkpoint"], label)
        if source == "export":
            line = [item for item in line if not item.startswith("predict.checkpoint=")]
            line.append(f"predict.checkpoint={export_dir}")
        return [*line, *extra, f"inference.engine_cache={arguments.workdir / 'probe.json'}"
                ], run_dir

    names = [name for name in arguments.variants if name != "monai"]
    # Untimed warm-up (MLflow store, page cache, the engine probe cache): one run per source.
    for name in {SPEED_VARIANTS[name][0]: name for name in reversed(names)}.values():
        timed(command(name, f"warmup-{name}")[0], arguments.workdir, arguments.timeout)
    seconds: dict[str, list[float]] = {name: [] for name in arguments.variants}
    details: dict[str, list[dict[str, Any]]] = {name: [] for name in arguments.variants}
    order = list(arguments.variants)
    for round_index in range(arguments.rounds):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            label = f"round{round_index + 1}-{name}"
            if name == "monai":
                value, output = timed(monai_command(arguments, case_dir / case["case_id"], label),
                                      arguments.workdir, arguments.timeout)
                details[name].append(json.loads(output.strip().splitlines()[-1]))
            else:
                line, run_dir = command(name, label)
                value, _ = timed(line, arguments.workdir, arguments.timeout)
                details[name].append(our_details(run_dir))
            seconds[name].append(value)
            print(f"round {round_index + 1}: {name:20s} {value:7.1f} s", flush=True)
    ratios = {}
    if "monai" in seconds:
        ratios = {f"{name}/monai": statistics.median(
            [ours / theirs for ours, theirs in zip(seconds[name], seconds["monai"], strict=True)])
            for name in names}
    if "tensorflow" in seconds:
        ratios.update({f"{name}/tensorflow": statistics.median(
            [ours / base for ours, base in zip(seconds[name], seconds["tensorflow"], strict=True)])
            for name in names if name != "tensorflow"})
    return {"model": arguments.model, "window": arguments.window, "overlap": arguments.overlap,
            "window_batch": arguments.window_batch, "torch_threads": arguments.torch_threads,
            "precision": "fp32", "case": case, "export_s": export_s,
            "export_tolerance": arguments.export_tolerance,
            "variants": {name: SPEED_VARIANTS.get(name, ("monai", []))[1]
                         for name in arguments.variants},
            "seconds": seconds, "median_seconds": {name: statistics.median(values)
                                                   for name, values in seconds.items()},
            "median_ratio": ratios, "details": details,
            "method": "whole commands as processes, one interleaved sequence, order rotating "
                      "per round, ratio per round, median over rounds; one untimed warm-up run "
                      "per source (checkpoint, export) first"}


def quality(arguments: argparse.Namespace, previous: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """mode=evaluate of ``--quality-run``'s held-out fold per lever (see the module doc);
    variants outside ``--quality-variants`` that ``previous`` measured are read back from
    their run folders."""
    import numpy as np

    from unet3d.evaluation.metrics import dice

    run = arguments.quality_run.resolve()
    common = ["mode=evaluate", "data=synthetic_hard", "model=unet3d_small",
              "data.crop_size=[64,64,64]", "fold=0", "num_folds=3", "precision=fp32",
              f"checkpoint={run}", f"paths.data_dir={arguments.quality_data}",
              "tracking.enabled=false"]
    export_dir = arguments.workdir / "quality" / "export"
    if not _has_formats(export_dir):
        timed([sys.executable, "-m", "unet3d.run", *common[1:], "mode=export",
               f"export.checkpoint={run}", f"export.formats={EXPORT_FORMATS}",
               "export.overwrite=true",
               f"export.output_dir={export_dir}",
               f"hydra.run.dir={arguments.workdir / 'quality' / 'export-int8-job'}"],
              arguments.workdir, arguments.timeout)
    results: dict[str, Any] = {}
    segmentations: dict[str, dict[str, Any]] = {}
    earlier = ((previous or {}).get("variants") or {})
    for name, extra in QUALITY_VARIANTS.items():
        run_dir = arguments.workdir / "quality" / name
        if name in arguments.quality_variants or name not in earlier \
                or not (run_dir / "results.json").is_file():
            source = [] if name == "default_tensorflow" else [f"checkpoint={export_dir}"]
            shutil.rmtree(run_dir, ignore_errors=True)  # this benchmark's own earlier folder
            seconds, _ = timed([sys.executable, "-m", "unet3d.run", *common, *source, *extra,
                                f"inference.engine_cache={arguments.workdir / 'probe.json'}",
                                f"hydra.run.dir={run_dir}"], arguments.workdir,
                               arguments.timeout)
        else:  # measured by an earlier run of this benchmark: its folder is read back
            seconds = float(earlier[name]["seconds"])
        metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
        segmentations[name] = {path.stem: np.load(path)["prediction"]
                               for path in sorted((run_dir / "oof").glob("*.npz"))}
        results[name] = {"overrides": extra, "seconds": seconds,
                         "dice": {region: metrics[f"Dice_{region}"] for region in REGIONS}}
        print(f"quality {name:20s} {results[name]['dice']}  {seconds:.0f} s", flush=True)
    base = results["default_tensorflow"]["dice"]
    regions = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    for name, entry in results.items():
        entry["dice_change"] = {region: entry["dice"][region] - base[region] for region in REGIONS}
        agreement = {region: [] for region in REGIONS}
        for case_id, labels in segmentations[name].items():
            reference = segmentations["default_tensorflow"][case_id]
            for region, values in regions.items():
                agreement[region].append(dice(np.isin(labels, values),
                                              np.isin(reference, values)))
        entry["agreement_with_default"] = {region: float(np.mean(values))
                                           for region, values in agreement.items()}
        entry["cases"] = len(segmentations[name])
    return {"run": str(run), "data": "synthetic_hard", "fold": 0, "num_folds": 3,
            "model": "unet3d_small", "window": [64, 64, 64], "variants": results}


def table(payload: dict[str, Any]) -> str:
    """The Markdown table of both parts (what the docs show)."""
    lines = ["| variant | whole predict s (median) | / MONAI | / tensorflow | in-loop s |",
             "|---|---|---|---|---|"]
    speed_part = payload.get("speed") or {}
    ratios = speed_part.get("median_ratio", {})
    for name, value in speed_part.get("median_seconds", {}).items():
        loops = [entry.get("loop_s") for entry in speed_part.get("details", {}).get(name, [])
                 if isinstance(entry, dict) and entry.get("loop_s") is not None]
        loop = f"{statistics.median(loops):.1f}" if loops else "-"
        monai = ratios.get(f"{name}/monai")
        base = ratios.get(f"{name}/tensorflow")
        lines.append(f"| {name} | {value:.1f} | {'-' if monai is None else f'{monai:.2f}'} | "
                     f"{'-' if base is None else f'{base:.2f}'} | {loop} |")
    quality_part = (payload.get("quality") or {}).get("variants", {})
    if quality_part:
        lines += ["", "| variant | Dice WT / TC / ET | change vs default | agreement with "
                  "default (Dice) | evaluate s |", "|---|---|---|---|---|"]
        for name, entry in quality_part.items():
            dice = " / ".join(f"{entry['dice'][region]:.4f}" for region in REGIONS)
            change = " / ".join(f"{entry['dice_change'][region]:+.4f}" for region in REGIONS)
            agree = " / ".join(f"{entry['agreement_with_default'][region]:.4f}"
                               for region in REGIONS)
            lines.append(f"| {name} | {dice} | {change} | {agree} | {entry['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="reference")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--window-batch", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--volume", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--generate", type=int, nargs=3, default=[240, 240, 190])
    parser.add_argument("--shift", type=int, nargs=3, default=[24, -20, 4])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--variants", nargs="+", default=[*SPEED_VARIANTS, "monai"])
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--export-tolerance", type=float, default=1e-3,
                        help="export.tolerance of the reference export (random weights)")
    parser.add_argument("--quality-run", type=Path, help="a synthetic_hard run folder")
    parser.add_argument("--quality-data", type=Path, help="its paths.data_dir")
    parser.add_argument("--quality-variants", nargs="+", default=list(QUALITY_VARIANTS),
                        help="the quality variants to (re)measure; the others are read back "
                             "from an earlier run's folders when there")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "predict_engines")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "predict_engines.json")
    arguments = parser.parse_args()
    arguments.workdir = arguments.workdir.resolve()
    arguments.workdir.mkdir(parents=True, exist_ok=True)
    if not arguments.skip_speed and "monai" in arguments.variants \
            and arguments.torch_python is None:
        parser.error("--torch-python is needed for the monai variant")
    payload = read_result(arguments.out) or {"benchmark": "predict_engines"}
    payload.pop("environment", None)
    if not arguments.skip_speed:
        payload["speed"] = speed(arguments)
        payload["table_markdown"] = table(payload)
        write_result(arguments.out, payload)  # kept if the quality part fails
    if arguments.quality_run is not None:
        payload["quality"] = quality(arguments, payload.get("quality"))
    payload["table_markdown"] = table(payload)
    print(payload["table_markdown"], flush=True)
    write_result(arguments.out, payload)


if __name__ == "__main__":
    main()
