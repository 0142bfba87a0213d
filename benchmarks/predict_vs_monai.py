"""Whole-volume predict: our ``mode=predict`` command (fp32 and precision=auto) vs MONAI's.

One 240 x 240 x 155 raw case (BraTS 2019 names, a synthetic brain of a real brain's size,
154 x 175 x 141 voxels, off-centre; ``_predict_inputs.write_cases``) is segmented, in one
interleaved sequence of ``--rounds`` rounds whose order rotates, by:

- ``fp32``: the whole command ``python -m unet3d.run mode=predict model=unet3d precision=fp32
  predict.input_dir=... inference.window_size=[128,128,128] inference.overlap=0.5
  inference.tta=false`` (reference widths, a checkpoint of random weights, the default brain-box
  crop with its 16-voxel margin, window batch ``--window-batch``, MLflow tracking on);
- ``auto``: the same with ``precision=auto`` (bfloat16 only where this host runs it faster;
  the probe is cached by an untimed warm-up run first);
- ``monai``: ``_monai_predict.py`` under ``--torch-python`` (a separate venv with torch and
  monai: see that file): MONAI's ``sliding_window_inference`` (roi 128^3, overlap 0.5,
  gaussian, ``sw_batch_size`` = our window batch) with ``DynUNet`` at the same widths (32, 64,
  128, 256, 320, 320; instance norm, LeakyReLU 0.01; random weights), fp32, 2 torch threads, on
  the whole grid (18 windows: MONAI's tutorial does no brain-box crop).

Each variant is one process timed from start to exit (imports, model build, reading, the
sliding window, writing). Ratios are taken per round and reported as medians. The result
(``benchmarks/results/predict_vs_monai.json``) names the host CPU and its bf16 flags.

    python -m benchmarks.predict_vs_monai --torch-python /work/torchvenv/bin/python --rounds 3
    # smoke (seconds): a tiny grid and model
    python -m benchmarks.predict_vs_monai --torch-python /work/torchvenv/bin/python --rounds 1 \\
        --model small --volume 96 96 64 --generate 96 96 80 --shift 0 0 0 --window 64
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    DEFAULT_WORKDIR,
    MODEL_OVERRIDES,
    MODELS,
    RESULTS_DIR,
    run_dir_name,
    subprocess_env,
    write_result,
)

VARIANTS = ("fp32", "auto", "monai")
MONAI_SCRIPT = Path(__file__).resolve().parent / "_monai_predict.py"


def prepare(arguments: argparse.Namespace) -> dict[str, Any]:
    """The raw case and the checkpoint (in a child: TensorFlow stays out of this process)."""
    code = (
        "import json; from pathlib import Path; "
        "from benchmarks._predict_inputs import write_cases, write_checkpoint; "
        f"cases = write_cases(Path({str(arguments.workdir / 'cases')!r}), 1, "
        f"{tuple(arguments.volume)!r}, {tuple(arguments.generate)!r}, "
        f"{tuple(arguments.shift)!r}, {arguments.seed}); "
        f"prefix = write_checkpoint(Path({str(arguments.workdir / ('ckpt_' + arguments.model))!r}),"
        f" {MODELS[arguments.model]!r}); "
        "print(json.dumps({'cases': cases, 'checkpoint': prefix}))"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=subprocess_env(), timeout=3600)
    if process.returncode != 0:
        raise RuntimeError(f"preparing the inputs failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def our_command(arguments: argparse.Namespace, precision: str, case_dir: Path,
                checkpoint: str, label: str) -> tuple[list[str], Path]:
    """The ``mode=predict`` command line and its run folder."""
    run_dir = arguments.workdir / "runs" / run_dir_name(label)
    window = arguments.window
    command = [sys.executable, "-m", "unet3d.run", "mode=predict",
               *MODEL_OVERRIDES[arguments.model], f"precision={precision}",
               f"predict.input_dir={case_dir}", f"predict.output_dir={run_dir / 'out'}",
               f"predict.checkpoint={Path(checkpoint).parent}",
               f"inference.window_size=[{window},{window},{window}]",
               f"inference.overlap={arguments.overlap}", "inference.tta=false",
               f"inference.batch_size={arguments.window_batch}",
               f"paths.data_dir={arguments.workdir / 'data'}", f"hydra.run.dir={run_dir}"]
    return command, run_dir


def monai_command(arguments: argparse.Namespace, case_dir: Path, label: str) -> list[str]:
    """The ``_monai_predict.py`` command line."""
    out = arguments.workdir / "runs" / run_dir_name(label) / "segmentation.nii.gz"
    filters = [min(MODELS[arguments.model]["base_filters"] * 2 ** level,
                   MODELS[arguments.model]["max_filters"])
               for level in range(MODELS[arguments.model]["num_levels"])]
    return [str(arguments.torch_python), str(MONAI_SCRIPT), "--case-dir", str(case_dir),
            "--out", str(out), "--filters", *map(str, filters), "--roi", str(arguments.window),
            "--overlap", str(arguments.overlap), "--sw-batch", str(arguments.window_batch),
            "--threads", str(arguments.torch_threads)]


def timed(command: list[str], cwd: Path, timeout: float) -> tuple[float, str]:
    """Run ``command``; return its wall seconds and output (RuntimeError when it fails)."""
    started = time.perf_counter()
    process = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                             env=subprocess_env())
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({process.returncode}):\n"
                           f"{(process.stdout + process.stderr)[-3000:]}")
    return seconds, process.stdout + process.stderr


def our_details(run_dir: Path) -> dict[str, Any]:
    """What the run log says: the precision choice and the in-loop seconds."""
    text = (run_dir / "run.log").read_text(encoding="utf-8", errors="replace")
    details: dict[str, Any] = {}
    choice = re.search(r"precision auto: (\S+) on (.*)", text)
    if choice:
        details["auto_line"] = choice.group(0).strip()
        details["auto_policy"] = choice.group(1)
    loop = re.search(r"wrote \d+ of \d+ segmentation\(s\) to .* in ([0-9.]+) s", text)
    if loop:
        details["loop_s"] = float(loop.group(1))
    policy = re.search(r"precision (\S+) \(compute (\S+), variables", text)
    if policy:
        details["policy"] = policy.group(1)
    return details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", type=Path, required=True,
                        help="python of a venv with torch and monai (see _monai_predict.py)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", choices=sorted(MODELS), default="reference")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--window-batch", type=int, default=2,
                        help="our inference.batch_size = MONAI's sw_batch_size")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--volume", type=int, nargs=3, default=[240, 240, 155])
    parser.add_argument("--generate", type=int, nargs=3, default=[240, 240, 190])
    parser.add_argument("--shift", type=int, nargs=3, default=[24, -20, 4])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR / "predict_vs_monai")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "predict_vs_monai.json")
    arguments = parser.parse_args()
    arguments.workdir = arguments.workdir.resolve()
    arguments.workdir.mkdir(parents=True, exist_ok=True)

    from omegaconf import OmegaConf

    from unet3d.data.crop import CropBox
    from unet3d.inference.sliding_window import window_counts

    margin = int(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "inference"
                                / "default.yaml").crop_margin)

    inputs = prepare(arguments)
    (case,) = inputs["cases"]
    case_dir = arguments.workdir / "cases"
    box = CropBox(tuple(case["box_start"]),
                  tuple(s + n for s, n in zip(case["box_start"], case["box_shape"], strict=True)),
                  tuple(case["shape"])).expanded(margin)
    windows = {"ours": list(window_counts(box.shape, arguments.window, arguments.overlap)),
               "monai": list(window_counts(case["shape"], arguments.window, arguments.overlap))}
    print(f"case {case['case_id']} {case['shape']}, brain box {case['box_shape']}, windows ours "
          f"{windows['ours']} (box + {margin}-voxel margin), MONAI {windows['monai']}",
          flush=True)

    # Untimed warm-up: the MLflow store, the probe cache of precision=auto, the page cache.
    for precision in ("fp32", "auto"):
        if precision in arguments.variants:
            command, _ = our_command(arguments, precision, case_dir, inputs["checkpoint"],
                                     f"warmup-{precision}")
            timed(command, arguments.workdir, arguments.timeout)
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
                command, run_dir = our_command(arguments, name, case_dir, inputs["checkpoint"],
                                               label)
                value, _ = timed(command, arguments.workdir, arguments.timeout)
                details[name].append(our_details(run_dir))
            seconds[name].append(value)
            print(f"round {round_index + 1}: {name:5s} {value:7.1f} s  {details[name][-1]}",
                  flush=True)
    pairs = [(a, b) for a, b in (("fp32", "monai"), ("auto", "monai"), ("auto", "fp32"))
             if a in seconds and b in seconds]
    ratios = {f"{a}/{b}": [x / y for x, y in zip(seconds[a], seconds[b], strict=True)]
              for a, b in pairs}
    medians = {key: statistics.median(values) for key, values in ratios.items()}
    print(f"median ratios: {json.dumps(medians)}", flush=True)
    write_result(arguments.out, {
        "benchmark": "predict_vs_monai", "model": arguments.model,
        "widths": MODELS[arguments.model], "window": arguments.window,
        "overlap": arguments.overlap, "window_batch": arguments.window_batch,
        "torch_threads": arguments.torch_threads, "case": case, "windows": windows,
        "method": "whole commands as processes, one interleaved sequence, order rotating per "
                  "round, ratio per round, median over rounds; untimed warm-up of our two "
                  "variants first (MLflow store, probe cache)",
        "seconds": seconds, "median_seconds": {key: statistics.median(values)
                                               for key, values in seconds.items()},
        "ratio_per_round": ratios, "median_ratio": medians, "details": details,
    })


if __name__ == "__main__":
    main()
