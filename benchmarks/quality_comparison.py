"""Segmentation quality side by side (issue 14): baseline vs region head vs region head + deep
supervision, each with and without the post-processing chosen on the folds.

Runs one K-fold ``--multirun`` sweep (``mode=train_and_evaluate``) per training
configuration on the same data set, folds and training budget, then ``mode=postprocess`` on
each sweep, and reports mean and std over the folds of Dice and HD95 (mm) per region, from the
out-of-fold predictions every fold job writes (``<job>/oof/<case>.npz``): without
post-processing, and with the rules chosen on that sweep's folds (chosen and scored on the
same out-of-fold cases, as nnU-Net does: slightly optimistic).

    python benchmarks/quality_comparison.py --out /tmp/quality-cmp            # run + table
    python benchmarks/quality_comparison.py --out /tmp/quality-cmp --dry-run  # commands only
    python benchmarks/quality_comparison.py --out /tmp/quality-cmp --collect  # table only

Defaults: ``data=synthetic_hard``, 3 folds, ``model=unet3d_small`` (4 levels, 8-64 filters),
``training.max_steps=600`` with crops of 64^3; everything lands under ``--out`` (sweeps,
MLflow store ``mlflow.db``, ``comparison.md`` and ``comparison.json``). Prefix the command with
``flock /tmp/unet3d-cpu.lock`` on a shared machine. Needs the wiring of issue 14 (``model.head``,
``loss=regions``, ``training.deep_supervision``, ``mode=postprocess``, out-of-fold writing).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Training configurations: name -> runner overrides.
CONFIGURATIONS: dict[str, list[str]] = {
    "baseline": [],
    "regions": ["model.head=regions", "loss=regions"],
    "regions+ds": ["model.head=regions", "loss=regions", "training.deep_supervision=true"],
}
METRICS = ("Dice", "HD95")


def sweep_command(name: str, args: argparse.Namespace) -> list[str]:
    """The ``--multirun`` command of one configuration."""
    folds = ",".join(str(fold) for fold in range(args.folds))
    return [sys.executable, "-m", "unet3d.run", "--multirun", f"fold={folds}",
            f"num_folds={args.folds}", f"data={args.data}", f"model={args.model}",
            f"training.max_steps={args.steps}", f"data.crop_size=[{args.crop},{args.crop},"
            f"{args.crop}]", f"seed={args.seed}", "mode=train_and_evaluate",
            f"hydra.sweep.dir={args.out / name}", f"tracking.uri=sqlite:///{args.out}/mlflow.db",
            *([f"paths.data_dir={args.data_dir}"] if args.data_dir else []),
            *CONFIGURATIONS[name], *args.extra]


def postprocess_command(name: str, args: argparse.Namespace) -> list[str]:
    """The ``mode=postprocess`` command of one configuration's sweep."""
    return [sys.executable, "-m", "unet3d.run", "mode=postprocess",
            f"checkpoint={args.out / name}", f"tracking.uri=sqlite:///{args.out}/mlflow.db",
            f"hydra.run.dir={args.out / (name + '_postprocess')}"]


def fold_scores(sweep_dir: Path, postprocessed: bool) -> dict[int, dict[str, float]]:
    """Per fold, the mean over its held-out cases of ``Dice_<region>`` and ``HD95_<region>``."""
    import numpy as np

    from unet3d.evaluation.metrics import case_metrics
    from unet3d.evaluation.postprocess import (
        PostprocessingRules,
        apply_postprocessing,
        load_postprocessing,
    )
    from unet3d.modes.postprocess import sweep_oof_cases

    cases, convention = sweep_oof_cases(sweep_dir)
    rules = (load_postprocessing(sweep_dir) if postprocessed else None) or PostprocessingRules()
    per_fold: dict[int, list[dict[str, float]]] = {}
    for case in cases:
        labels = apply_postprocessing(case.prediction, rules, convention, case.spacing)
        metrics = case_metrics(labels, case.reference, case.spacing, convention=convention)
        per_fold.setdefault(-1 if case.fold is None else case.fold, []).append(metrics)
    keys = [f"{metric}_{region}" for metric in METRICS for region in convention.regions]
    return {fold: {key: float(np.mean([row[key] for row in rows])) for key in keys}
            for fold, rows in sorted(per_fold.items())}


def summarize(folds: dict[int, dict[str, float]]) -> dict[str, tuple[float, float]]:
    """``key -> (mean, std)`` over the folds (population std; 0 for one fold)."""
    import numpy as np

    keys = next(iter(folds.values())).keys() if folds else []
    return {key: (float(np.mean([row[key] for row in folds.values()])),
                  float(np.std([row[key] for row in folds.values()]))) for key in keys}


def table(rows: dict[str, dict[str, tuple[float, float]]]) -> str:
    """Markdown: one row per configuration, ``mean ± std`` per region and metric."""
    keys = list(next(iter(rows.values())))
    lines = ["| configuration | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, values in rows.items():
        cells = [f"{values[key][0]:.3f} ± {values[key][1]:.3f}" if not math.isnan(values[key][0])
                 else "n/a" for key in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Score every finished sweep under ``--out``; write ``comparison.md`` / ``.json``."""
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    folds: dict[str, Any] = {}
    for name in CONFIGURATIONS:
        sweep = args.out / name
        if not sweep.is_dir():
            continue
        for postprocessed in (False, True):
            label = f"{name}+postprocessing" if postprocessed else name
            if postprocessed and not (sweep / "postprocessing.json").is_file():
                continue
            per_fold = fold_scores(sweep, postprocessed)
            folds[label] = per_fold
            rows[label] = summarize(per_fold)
    if not rows:
        raise SystemExit(f"no finished sweep under {args.out}")
    text = table(rows)
    (args.out / "comparison.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "comparison.json").write_text(json.dumps(
        {"settings": {key: str(value) for key, value in vars(args).items()},
         "summary": {label: {key: list(value) for key, value in values.items()}
                     for label, values in rows.items()},
         "folds": folds}, indent=2) + "\n", encoding="utf-8")
    print(text)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the sweeps and post-processing (unless ``--collect``), then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of everything written")
    parser.add_argument("--data", default="synthetic_hard")
    parser.add_argument("--data-dir", default=None, help="paths.data_dir (data cache)")
    parser.add_argument("--model", default="unet3d_small")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", nargs="*", choices=list(CONFIGURATIONS), default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--collect", action="store_true", help="only score finished sweeps")
    parser.add_argument("extra", nargs="*", help="more runner overrides for every sweep")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if not args.collect:
        for name in args.only or list(CONFIGURATIONS):
            for command in (sweep_command(name, args), postprocess_command(name, args)):
                print(" ".join(command), flush=True)
                if not args.dry_run:
                    args.out.mkdir(parents=True, exist_ok=True)
                    subprocess.run(command, cwd=ROOT, check=True)
        if args.dry_run:
            return 0
    collect(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
