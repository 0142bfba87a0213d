"""Segmentation quality side by side (issue 20): what each quality feature buys.

Runs one K-fold ``--multirun`` sweep (``mode=train_and_evaluate``) per training configuration
("arm") on the same data set, folds and training budget, then ``mode=postprocess`` on each
sweep, and reports mean and std over the folds of Dice and HD95 (mm) per region, from the
out-of-fold predictions every fold job writes (``<job>/oof/<case>.npz``): without
post-processing, and with the rules chosen on that sweep's folds (chosen and scored on the
same out-of-fold cases, as nnU-Net does: slightly optimistic).

Arms: ``baseline`` (the reference recipe: softmax head, dice+ce, flips + brightness),
``augmentation`` (+ nnU-Net's augmentation), ``regions`` (region head + region loss),
``regions+ds`` (+ deep supervision), ``preset`` (``experiment=brats_winner``, run when that
preset exists; it is built from the other arms' table) and ``augmentation+regions+ds`` (all
three). Every arm trains in fp32 whatever ``precision=auto`` would choose on the host. An arm
whose composed job config equals an earlier arm's (e.g. a preset that is exactly one feature) is
not trained again: its rows are that arm's sweep (``timings.json``: ``same_as``), since the
training is deterministic on one host.

    python -m benchmarks.quality_comparison --out /tmp/quality-cmp            # run + table
    python -m benchmarks.quality_comparison --out /tmp/quality-cmp --dry-run  # commands only
    python -m benchmarks.quality_comparison --out /tmp/quality-cmp --collect  # table only

``--lesionwise auto`` (or a rule set) adds the lesion-wise Dice/HD95 columns (BraTS 2023+
data, e.g. ``--data synthetic_brats2023``) and a row with the post-processing chosen without
the small-component rule.

Defaults: ``data=synthetic_hard``, 3 folds, ``model=unet3d_small`` (4 levels, 8-64 filters),
``training.max_steps=600`` with crops of 64^3, batch 2; everything lands under ``--out``
(sweeps, MLflow store ``mlflow.db``, ``timings.json``, ``comparison.md``), and the summary
(commit, host CPU, settings, wall time per arm, per-fold scores) in ``--results``
(``benchmarks/results/quality_comparison.json``). An arm whose sweep finished is not run
again. Start it alone on the machine, e.g. ``nice -n 5 python -m benchmarks.quality_comparison
--out /tmp/quality-cmp``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import environment, write_result

ROOT = Path(__file__).resolve().parents[1]

#: The preset built from this comparison's table (the ``preset`` arm runs when it exists).
PRESET = "brats_winner"
#: Training configurations: arm name -> runner overrides.
CONFIGURATIONS: dict[str, list[str]] = {
    "baseline": [],
    "augmentation": ["augmentation=nnunet"],
    "regions": ["model.head=regions", "loss=regions"],
    "regions+ds": ["model.head=regions", "loss=regions", "training.deep_supervision=true"],
    "preset": [f"experiment={PRESET}"],
    "augmentation+regions+ds": ["augmentation=nnunet", "model.head=regions", "loss=regions",
                                "training.deep_supervision=true"],
}
METRICS = ("Dice", "HD95")
TIMINGS = "timings.json"


def arms(args: argparse.Namespace) -> list[str]:
    """The arms to run: ``--only`` or all (``preset`` only once its YAML exists)."""
    chosen = args.only or list(CONFIGURATIONS)
    preset_file = ROOT / "conf" / "experiment" / f"{PRESET}.yaml"
    return [name for name in chosen if name != "preset" or preset_file.is_file()]


def sweep_command(name: str, args: argparse.Namespace) -> list[str]:
    """The ``--multirun`` command of one configuration."""
    folds = ",".join(str(fold) for fold in range(args.folds))
    return [sys.executable, "-m", "unet3d.run", "--multirun", f"fold={folds}",
            f"num_folds={args.folds}", f"data={args.data}", f"model={args.model}",
            *CONFIGURATIONS[name],
            f"training.max_steps={args.steps}", f"data.crop_size=[{args.crop},{args.crop},"
            f"{args.crop}]", f"seed={args.seed}", "mode=train_and_evaluate",
            # fp32 on every host: precision=auto would pick bf16 where it is faster, and the
            # arms must not differ by host.
            "precision=fp32",
            f"hydra.sweep.dir={args.out / name}", f"tracking.uri=sqlite:///{args.out}/mlflow.db",
            *([f"paths.data_dir={args.data_dir}"] if args.data_dir else []), *args.extra]


def postprocess_command(name: str, args: argparse.Namespace) -> list[str]:
    """The ``mode=postprocess`` command of one configuration's sweep."""
    return [sys.executable, "-m", "unet3d.run", "mode=postprocess",
            f"checkpoint={args.out / name}", f"tracking.uri=sqlite:///{args.out}/mlflow.db",
            f"hydra.run.dir={args.out / (name + '_postprocess')}"]


def finished(sweep_dir: Path, folds: int) -> bool:
    """Whether every fold job of the sweep wrote its ``results.json``."""
    return len(list(sweep_dir.glob("*/results.json"))) >= folds


def fold_scores(sweep_dir: Path, postprocessed: bool, lesionwise: str = "off",
                rules: Any = None) -> dict[int, dict[str, float]]:
    """Per fold, the mean over its held-out cases of ``Dice_<region>`` and ``HD95_<region>``
    (and, with ``lesionwise`` rules for the sweep's data, ``LesionDice_<region>`` and
    ``LesionHD95_<region>``); ``rules`` replaces the sweep's ``postprocessing.json``."""
    import numpy as np

    from unet3d.evaluation.lesionwise import lesionwise_scorer
    from unet3d.evaluation.metrics import case_metrics
    from unet3d.evaluation.postprocess import (
        PostprocessingRules,
        apply_postprocessing,
        load_postprocessing,
    )
    from unet3d.modes.postprocess import sweep_oof_cases

    cases, convention = sweep_oof_cases(sweep_dir)
    scorer = lesionwise_scorer(lesionwise, convention)
    if rules is None:
        rules = (load_postprocessing(sweep_dir) if postprocessed else None) or \
            PostprocessingRules()
    per_fold: dict[int, list[dict[str, float]]] = {}
    for case in cases:
        labels = apply_postprocessing(case.prediction, rules, convention, case.spacing)
        metrics = case_metrics(labels, case.reference, case.spacing, convention=convention)
        if scorer is not None:
            metrics.update(scorer(labels, case.reference, case.spacing))
        per_fold.setdefault(-1 if case.fold is None else case.fold, []).append(metrics)
    names = METRICS + (("LesionDice", "LesionHD95") if scorer is not None else ())
    keys = [f"{metric}_{region}" for metric in names for region in convention.regions
            if any(f"{metric}_{region}" in row for rows in per_fold.values() for row in rows)]
    return {fold: {key: float(np.nanmean([row.get(key, math.nan) for row in rows]))
                   for key in keys}
            for fold, rows in sorted(per_fold.items())}


def rules_without_components(sweep_dir: Path, lesionwise: str) -> Any:
    """The rules ``mode=postprocess`` chooses on the sweep without the small-component rule."""
    from unet3d.evaluation.lesionwise import lesionwise_scorer
    from unet3d.evaluation.postprocess import select_postprocessing
    from unet3d.modes.postprocess import sweep_oof_cases

    cases, convention = sweep_oof_cases(sweep_dir)
    return select_postprocessing(cases, convention, component_thresholds=(),
                                 lesionwise=lesionwise_scorer(lesionwise, convention)).rules


def summarize(folds: dict[int, dict[str, float]]) -> dict[str, tuple[float, float]]:
    """``key -> (mean, std)`` over the folds (population std; 0 for one fold)."""
    import numpy as np

    keys = next(iter(folds.values())).keys() if folds else []
    return {key: (float(np.mean([row[key] for row in folds.values()])),
                  float(np.std([row[key] for row in folds.values()]))) for key in keys}


def table(rows: dict[str, dict[str, tuple[float, float]]], minutes: dict[str, float]) -> str:
    """Markdown: one row per arm, ``mean ± std`` per region and metric, wall minutes."""
    keys = list(next(iter(rows.values())))
    lines = ["| arm | " + " | ".join(keys) + " | wall min |",
             "|---|" + "---|" * (len(keys) + 1)]
    for name, values in rows.items():
        cells = [f"{values[key][0]:.3f} ± {values[key][1]:.3f}" if not math.isnan(values[key][0])
                 else "n/a" for key in keys]
        arm = name.split(" + post-processing")[0]
        wall = f"{minutes[arm]:.1f}" if arm in minutes and arm == name else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines)


def _git(*command: str) -> str:
    result = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip()


def _model_settings(model: str) -> dict[str, Any]:
    """Widths and depth of ``conf/model/<model>.yaml`` (with its defaults)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}"])
    return {key: cfg.model.get(key) for key in ("base_filters", "max_filters", "num_levels",
                                                  "norm")}


def _read_timings(out: Path) -> dict[str, Any]:
    path = out / TIMINGS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _composed(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The job config an arm's fold 0 trains with (Hydra's own keys left out)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    command = sweep_command(name, args)
    overrides = [item for item in command[command.index("--multirun") + 1:]
                 if not item.startswith(("hydra.", "fold=", "tracking."))]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["fold=0", *overrides])
    return OmegaConf.to_container(cfg, resolve=False)


def twin_of(name: str, args: argparse.Namespace) -> str | None:
    """An earlier arm whose composed job config equals ``name``'s (the same training, run
    once: training here is deterministic), else None."""
    config = _composed(name, args)
    for earlier in CONFIGURATIONS:
        if earlier == name:
            return None
        if (not args.only or earlier in args.only) and _composed(earlier, args) == config:
            return earlier
    return None


def run_arm(name: str, args: argparse.Namespace) -> None:
    """Run one arm's sweep (unless finished or a twin of an earlier arm) and its
    post-processing; record wall times."""
    sweep = args.out / name
    timings = _read_timings(args.out)
    twin = twin_of(name, args)
    if twin is not None:
        print(f"{name}: the same composed config as {twin}; its sweep is {twin}'s", flush=True)
        timings[name] = {"same_as": twin}
        if not args.dry_run:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n",
                                            encoding="utf-8")
        return
    steps = [("sweep", sweep_command(name, args)), ("postprocess", postprocess_command(name, args))]
    for step, command in steps:
        print(" ".join(command), flush=True)
        if args.dry_run:
            continue
        if step == "sweep" and finished(sweep, args.folds):
            print(f"{name}: sweep finished earlier, kept", flush=True)
            continue
        if step == "postprocess" and (sweep / "postprocessing.json").is_file():
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        subprocess.run(command, cwd=ROOT, check=True)
        timings.setdefault(name, {})[f"{step}_s"] = round(time.monotonic() - started, 1)
        timings[name]["commit"] = _git("rev-parse", "HEAD")
        (args.out / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Score every finished sweep under ``--out``; write the table and ``--results``."""
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    folds: dict[str, Any] = {}
    rules: dict[str, Any] = {}
    timings = _read_timings(args.out)
    for name in CONFIGURATIONS:
        sweep = args.out / timings.get(name, {}).get("same_as", name)
        if not sweep.is_dir() or not finished(sweep, args.folds):
            continue
        for postprocessed in (False, True):
            label = f"{name} + post-processing" if postprocessed else name
            record = sweep / "postprocessing.json"
            if postprocessed and not record.is_file():
                continue
            if postprocessed:
                rules[name] = json.loads(record.read_text(encoding="utf-8")).get("rules")
                if args.lesionwise != "off":  # the same selection without the new rule
                    without = rules_without_components(sweep, args.lesionwise)
                    label_without = f"{name} + post-processing without component removal"
                    rules[label_without] = without.to_dict()
                    per_fold = fold_scores(sweep, True, args.lesionwise, without)
                    folds[label_without] = per_fold
                    rows[label_without] = summarize(per_fold)
            per_fold = fold_scores(sweep, postprocessed, args.lesionwise)
            folds[label] = per_fold
            rows[label] = summarize(per_fold)
    if not rows:
        raise SystemExit(f"no finished sweep under {args.out}")
    minutes = {name: sum(value for key, value in entry.items() if key.endswith("_s")) / 60
               for name, entry in timings.items() if "same_as" not in entry}
    text = table(rows, minutes)
    (args.out / "comparison.md").write_text(text + "\n", encoding="utf-8")
    payload = {
        "benchmark": "quality_comparison",
        "commit": _git("rev-parse", "HEAD"),
        "settings": {"data": args.data, "folds": args.folds, "steps": args.steps,
                     "lesionwise": args.lesionwise,
                     "crop": [args.crop] * 3, "batch_size": "data default (2)",
                     "seed": args.seed, "model": args.model,
                     "model_settings": _model_settings(args.model), "extra": args.extra},
        "arms": {name: {"overrides": CONFIGURATIONS[name], **timings.get(name, {})}
                 for name in CONFIGURATIONS if name in timings},
        "postprocessing_rules": rules,
        "summary": {label: {key: list(value) for key, value in values.items()}
                    for label, values in rows.items()},
        "folds": folds,
        "table_markdown": text,
        "environment": environment(),
    }
    print(text)
    write_result(args.results, payload)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the sweeps and post-processing (unless ``--collect``), then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of everything written")
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "quality_comparison.json")
    parser.add_argument("--data", default="synthetic_hard")
    parser.add_argument("--data-dir", default=None, help="paths.data_dir (data cache)")
    parser.add_argument("--model", default="unet3d_small")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lesionwise", default="off",
                        help="evaluation.lesionwise rules for the table's lesion-wise columns "
                             "(auto: the data set's; off: none)")
    parser.add_argument("--only", nargs="*", choices=list(CONFIGURATIONS), default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--collect", action="store_true", help="only score finished sweeps")
    parser.add_argument("extra", nargs="*", help="more runner overrides for every sweep")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    if not args.collect:
        for name in arms(args):
            run_arm(name, args)
        if args.dry_run:
            return 0
    collect(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
