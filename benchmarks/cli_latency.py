"""How fast the command line answers: ``--help``, ``--cfg job`` and shell-completion queries.

Each answer is a fresh ``python -m unet3d.run`` process (completion: the query the installed
bash completion sends, ``COMP_LINE=... unet3d -sc query=bash``); wall seconds and the CPU
seconds of the child. With ``--before DIR`` (a checkout of another version, e.g. the main
branch) the same commands run from there too, interleaved in rounds whose order alternates,
and the JSON holds the per-command medians of both and their ratio.

    python -m benchmarks.cli_latency --rounds 5 --before /path/to/main/checkout \
        --out benchmarks/results/cli_latency.json
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, ROOT, host_cpu, write_result

#: name -> (arguments of python -m unet3d.run, COMP_LINE or None).
COMMANDS: dict[str, tuple[list[str], str | None]] = {
    "help": (["--help"], None),
    "cfg_job": (["--cfg", "job", "precision=amp"], None),
    "complete_empty_word": (["-sc", "query=bash"], "unet3d "),
    "complete_group": (["-sc", "query=bash"], "unet3d prec"),
    "complete_key": (["-sc", "query=bash"], "unet3d training.max"),
}


def answer(checkout: Path, arguments: list[str], line: str | None, cwd: Path) -> dict[str, float]:
    """Wall and child CPU seconds of one answer of the checkout's ``unet3d.run``."""
    environment = {**os.environ, "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if line is not None:
        environment.update(COMP_LINE=line, COMP_POINT=str(len(line)))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "unet3d.run", *arguments], cwd=cwd, env=environment,
                   capture_output=True, text=True, check=True, timeout=120)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def _commit(checkout: Path) -> str:
    """The checkout's git commit (short), or "?"."""
    found = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True)
    return found.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="a checkout of another version to compare")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cli_latency.json")
    arguments = parser.parse_args()
    checkouts = {"this": ROOT, **({"before": arguments.before.resolve()}
                                  if arguments.before else {})}
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {label: [] for label in checkouts} for name in COMMANDS}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        for round_number in range(arguments.rounds):
            order = list(checkouts.items())
            if round_number % 2:
                order.reverse()
            for name, (command, line) in COMMANDS.items():
                for label, checkout in order:
                    samples[name][label].append(answer(checkout, command, line, Path(folder)))
    results: dict[str, Any] = {}
    for name, by_label in samples.items():
        medians = {label: {key: statistics.median(sample[key] for sample in runs)
                           for key in ("wall_s", "cpu_s")} for label, runs in by_label.items()}
        entry: dict[str, Any] = {"median": medians, "samples": by_label}
        if "before" in medians:
            entry["before_over_this_wall"] = medians["before"]["wall_s"] / medians["this"]["wall_s"]
        results[name] = entry
        print(f"{name:20s} " + "  ".join(
            f"{label}: {value['wall_s']:.2f} s wall, {value['cpu_s']:.2f} s CPU"
            for label, value in medians.items()), flush=True)
    write_result(arguments.out, {
        "benchmark": "cli_latency", "rounds": arguments.rounds, "host": host_cpu(),
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "checkouts": {label: f"{path} at {_commit(path)}" for label, path in checkouts.items()},
        "method": "fresh process per answer; checkouts interleaved per command, the order "
                  "alternating between rounds; medians over the rounds",
        "results": results,
    })


if __name__ == "__main__":
    main()
