"""Helpers of ``benchmarks/scale.py``: subsets of a generated set, child processes with their
peak memory, the results file. Not a test module and not part of the package."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks._common import environment as host_environment
from benchmarks._common import read_result, subprocess_env, write_result

#: The five files of a complete case of the brats2021 layout.
SUFFIXES = ("t1", "t1ce", "t2", "flair", "seg")


def complete_cases(raw: Path) -> list[str]:
    """Ids of the cases of ``raw`` whose five files all exist (a generator may be running)."""
    ids = []
    for folder in sorted(Path(raw).glob("BraTS2021_*")):
        if all((folder / f"{folder.name}_{suffix}.nii.gz").is_file() for suffix in SUFFIXES):
            ids.append(folder.name)
    return ids


def subset(raw: Path, ids: list[str], folder: Path) -> Path:
    """``folder`` holding links to the case folders ``ids`` of ``raw`` (made once)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = set(ids)
    for existing in folder.iterdir():
        if existing.name not in wanted:
            existing.unlink()
    for case_id in ids:
        link = folder / case_id
        if not link.exists():
            link.symlink_to(Path(raw).resolve() / case_id, target_is_directory=True)
    return folder


def run_child(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
              ) -> dict[str, Any]:
    """Run ``command``; return its exit code, wall seconds and peak RSS (MB, ``wait4``: the
    largest of the process and the children it waited for). Output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                                   env=subprocess_env(env))
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"exit {code}: {' '.join(command)}\n{log.read_text()[-3000:]}")
    return {"exit_code": code, "wall_s": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def update_results(path: Path, section: str, payload: Any) -> None:
    """Set ``section`` of the results file ``path`` (the other sections are kept)."""
    current = read_result(path) or {}
    current.pop("environment", None)
    current["benchmark"] = "scale"
    current[section] = payload
    environment = current.setdefault("environments", {})
    environment[section] = host_environment()
    write_result(path, current)


def linear_fit(counts: list[int], seconds: list[float]) -> dict[str, float]:
    """Least-squares ``seconds = intercept + slope * cases``."""
    import numpy as np

    slope, intercept = np.polyfit(np.asarray(counts, float), np.asarray(seconds, float), 1)
    return {"slope_s_per_case": float(slope), "intercept_s": float(intercept)}
