"""Is the input pipeline ever the bottleneck? Pipeline-only volumes/s vs training volumes/s.

For each setting, three ``mode=benchmark`` runs of the runner:

- ``benchmark.target=pipeline``: batches from the training ``tf.data`` pipeline (random crop,
  flips, brightness, z-score; augmentation as configured), no model;
- ``benchmark.target=train benchmark.synthetic_input=true``: the model's training throughput;
- ``benchmark.target=train benchmark.synthetic_input=false``: the model fed by the pipeline.

Target (issue 6): pipeline-only >= 5 x the model's training throughput. Settings:

- ``default``: the default CPU job (synthetic data, 64^3 crops, batch 2, small model);
- ``reference``: the reference training shape (128^3 crops, batch 2, the reference widths) on
  BraTS-sized synthetic volumes (240 x 240 x 155, ``--reference-cases`` cases).

``--augmentation`` picks the ``augmentation`` option (conf/augmentation/): ``reference`` (the
default job's flips and brightness) or ``nnunet`` (nnU-Net's rotation, scaling, noise, blur,
brightness, contrast, low resolution, gamma and mirroring; only the pipeline runs change).

    python -m benchmarks.pipeline --out benchmarks/results/pipeline.json
    python -m benchmarks.pipeline --augmentation nnunet --settings default \
        --out benchmarks/results/pipeline_nnunet.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks._common import (
    DEFAULT_WORKDIR,
    RESULTS_DIR,
    runner_benchmark,
    summary,
    write_result,
)

AUGMENTATIONS = sorted(path.stem for path in (Path(__file__).resolve().parents[1] / "conf"
                                              / "augmentation").glob("*.yaml"))
SETTINGS: dict[str, list[str]] = {
    "default": [],
    "reference": [
        "model=unet3d", "data.crop_size=[128,128,128]", "data.batch_size=2",
        "data.synthetic.shape=[240,240,155]",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--pipeline-steps", type=int, default=60)
    parser.add_argument("--pipeline-warmup", type=int, default=20,
                        help="untimed batches (at least one pass to fill the cache)")
    parser.add_argument("--model-steps", type=int, nargs=2, default=[5, 2], metavar=("DEFAULT",
                        "REFERENCE"), help="timed train steps per setting")
    parser.add_argument("--model-warmup", type=int, default=2)
    parser.add_argument("--reference-cases", type=int, default=10,
                        help="synthetic 240x240x155 cases of the reference setting")
    parser.add_argument("--skip-real", action="store_true",
                        help="skip the model-with-pipeline runs")
    parser.add_argument("--augmentation", default="reference", choices=AUGMENTATIONS,
                        help="the augmentation option of the pipeline (conf/augmentation/)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra runner overrides")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "pipeline.json")
    arguments = parser.parse_args()

    results: dict[str, Any] = {}
    for name in arguments.settings:
        overrides = [*SETTINGS[name], f"augmentation={arguments.augmentation}",
                     *arguments.overrides]
        if name == "reference":
            overrides.append(f"data.synthetic.num_cases={arguments.reference_cases}")
        model_steps = arguments.model_steps[0 if name == "default" else 1]
        pipeline = summary(runner_benchmark(
            [*overrides, "benchmark.target=pipeline",
             f"benchmark.steps={arguments.pipeline_steps}",
             f"benchmark.warmup_steps={arguments.pipeline_warmup}"],
            arguments.workdir, f"pipeline-{name}"))
        model_runs = [("model_synthetic", "true")] + ([] if arguments.skip_real
                                                       else [("model_real", "false")])
        record: dict[str, Any] = {"overrides": overrides, "pipeline": pipeline}
        for key, synthetic in model_runs:
            record[key] = summary(runner_benchmark(
                [*overrides, "benchmark.target=train", f"benchmark.synthetic_input={synthetic}",
                 f"benchmark.steps={model_steps}",
                 f"benchmark.warmup_steps={arguments.model_warmup}"],
                arguments.workdir, f"pipeline-{name}-{key}"))
        ratio = pipeline["throughput"] / record["model_synthetic"]["throughput"]
        record["ratio_pipeline_to_model"] = ratio
        record["meets_target"] = ratio >= 5.0
        results[name] = record
        line = (f"{name} (augmentation={arguments.augmentation}): pipeline "
                f"{pipeline['throughput']:.2f} vol/s, model "
                f"{record['model_synthetic']['throughput']:.3f} vol/s -> {ratio:.1f}x "
                f"(target >= 5x)")
        if "model_real" in record:
            line += f"; model with pipeline {record['model_real']['throughput']:.3f} vol/s"
        print(line, flush=True)
    write_result(arguments.out, {"benchmark": "pipeline", "target_ratio": 5.0,
                                 "augmentation": arguments.augmentation, "settings": results})


if __name__ == "__main__":
    main()
