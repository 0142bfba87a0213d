"""Where README's first command spends its time: the default job, phase by phase.

Runs ``python -m unet3d.run`` (plus ``--overrides``) in a fresh root folder, as a fresh clone
would (no data cache, no MLflow store), for each ``--recipe`` in turn, ``--rounds`` times
interleaved, and reads the phases from the job's ``run.log``: start-up (imports, devices,
MLflow store and run), synthetic data generation, preprocessing, record validation, training
steps, held-out evaluation, the end. Also the wall time of the process, its peak RSS and the
held-out Dice. Recipes: ``default`` (today's defaults) and ``synthetic_600steps`` (the
longer recipe before issue 32, ``experiment=synthetic_600steps``).

    python -m benchmarks.default_job --out benchmarks/results/default_job.json

The ratio between the recipes' times on this host, times a figure measured on another host for
one of them, estimates the other there (the README's Zen 3 estimate).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, subprocess_env, write_result

RECIPES = {"default": [], "synthetic_600steps": ["experiment=synthetic_600steps"]}
#: Log line -> the event it marks (first match wins; ``last`` events keep the last match).
EVENTS = {
    "devices": r"\[unet3d\.runtime\.devices\].* devices: ",
    "mlflow_run": r"MLflow: run \w+ \(",
    "generation_start": r"Generating \d+ synthetic case",
    "generation_end": r"Generated \d+ case\(s\)",
    "preprocess_start": r"Preprocessing \d+ of \d+ case",
    "preprocess_end": r"Preprocessed \d+ case\(s\)",
    "validated": r"Validated \d+ TFRecord",
    "training_start": r"training steps 1\.\.",
    "training_end": r"step (\d+)/\1 ",
    "evaluation_end": r"held-out evaluation over",
    "end": r"MLflow: run \w+ ended",
}
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]")


def events(run_log: Path) -> dict[str, float]:
    """Epoch seconds of each ``EVENTS`` entry found in ``run_log``."""
    found: dict[str, float] = {}
    for line in run_log.read_text().splitlines():
        stamp = STAMP.match(line)
        if not stamp:
            continue
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for name, pattern in EVENTS.items():
            if name not in found and re.search(pattern, line):
                found[name] = when
    return found


def phases(found: dict[str, float], started: float, ended: float) -> dict[str, float]:
    """Seconds of each phase (start-up to the first log line included)."""
    def span(first: str, last: str) -> float | None:
        return found[last] - found[first] if first in found and last in found else None

    return {
        "imports_and_devices_s": found.get("devices", started) - started,
        "startup_to_first_step_s": found.get("training_start", started) - started,
        "mlflow_start_s": span("devices", "mlflow_run"),
        "generation_s": span("generation_start", "generation_end"),
        "preprocessing_s": span("preprocess_start", "preprocess_end"),
        "training_s": span("training_start", "training_end"),
        "evaluation_s": span("training_end", "evaluation_end"),
        "after_evaluation_s": ended - found.get("evaluation_end", ended),
        "total_s": ended - started,
    }


def run_once(recipe: str, overrides: list[str], workdir: Path) -> dict[str, Any]:
    """One job in a fresh root folder; its phases, peak RSS and held-out Dice."""
    root = Path(tempfile.mkdtemp(prefix=f"default-job-{recipe}-", dir=workdir))
    command = [sys.executable, "-m", "unet3d.run", *RECIPES[recipe], *overrides]
    print("$", " ".join(command[1:]), f"(in {root})", flush=True)
    started = time.time()
    with open(root / "console.log", "w") as console:
        process = subprocess.Popen(command, cwd=root, stdout=console, stderr=subprocess.STDOUT,
                                   env=subprocess_env({"UNET3D_ROOT": str(root)}))
        _, status, usage = os.wait4(process.pid, 0)
    ended = time.time()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{recipe} failed:\n{(root / 'console.log').read_text()[-3000:]}")
    (run_dir,) = [path.parent for path in root.glob("outputs/*/*/run.log")]
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    row = {"recipe": recipe, "overrides": overrides,
           **phases(events(run_dir / "run.log"), started, ended),
           "peak_rss_mb": usage.ru_maxrss / 1024,
           "dice": {key[5:]: metrics[key] for key in ("Dice_WT", "Dice_TC", "Dice_ET")},
           "mean_dice_labels": metrics.get("MeanDice"),
           "load_average_after": list(os.getloadavg())}
    print(json.dumps(row), flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "default_job.json")
    args = parser.parse_args()
    rows = [run_once(recipe, args.overrides, args.workdir)
            for _ in range(args.rounds) for recipe in args.recipes]
    summary = {}
    for recipe in args.recipes:
        totals = sorted(row["total_s"] for row in rows if row["recipe"] == recipe)
        summary[recipe] = {"median_total_s": totals[len(totals) // 2]}
    if {"default", "synthetic_600steps"} <= set(summary):
        summary["default_over_600steps"] = (summary["default"]["median_total_s"]
                                            / summary["synthetic_600steps"]["median_total_s"])
    write_result(args.out, {"benchmark": "default_job", "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
