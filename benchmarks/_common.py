"""Helpers shared by the benchmark scripts: result files, subprocess runs of the runner.

Not a test module and not part of ``unet3d``: the scripts import it as ``benchmarks._common``
(run them from the repository root as ``python -m benchmarks.<name>``). TensorFlow is never
imported here; ``unet3d`` is, first, so that every script (and its child processes) computes
with oneDNN as the runner does (``unet3d._prefer_onednn``): a script that imports TensorFlow
before ``unet3d`` would otherwise run Eigen's kernels on CPUs where TensorFlow leaves oneDNN off.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import unet3d  # noqa: F401  (before TensorFlow: see the module docstring)

ROOT = Path(__file__).resolve().parents[1]

RESULTS_DIR = ROOT / "benchmarks" / "results"
#: Working folder of runner subprocesses (MLflow store, outputs, synthetic data cache).
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "unet3d-benchmarks"

#: Runner overrides selecting the reference 3D U-Net (REFERENCE.md: 31,196,196 parameters) and
#: the small default model.
#: (data=synthetic: 64^3 crops, which the reference U-Net's divisor of 32 accepts; the default
#: data option's 56^3 crops are for the small U-Net.)
MODEL_OVERRIDES: dict[str, list[str]] = {"reference": ["model=unet3d", "data=synthetic"],
                                         "small": ["model=unet3d_small"]}


def config_group(path: str) -> dict[str, Any]:
    """A config group option of conf/ as Hydra composes it (``"model/unet3d"``), plain values.

    Benchmarks take their settings from here, the one home of every default, so that they
    measure what a job runs.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        composed = compose(path)
    group = OmegaConf.to_container(composed[path.split("/", 1)[0]], resolve=True)
    return group  # type: ignore[return-value]


def _unet_arguments(option: str) -> dict[str, Any]:
    """``build_unet3d``'s arguments: the keys of ``conf/model/<option>.yaml``."""
    group = config_group(f"model/{option}")
    return {key: value for key, value in group.items() if key != "_target_"}


#: ``build_unet3d`` arguments of each model above.
MODELS: dict[str, dict[str, Any]] = {"reference": _unet_arguments("unet3d"),
                                     "small": _unet_arguments("unet3d_small")}
PRECISION_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}


#: CPU flags that decide which oneDNN kernels run (bf16: AVX-512 BF16 or AMX).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def host_cpu() -> dict[str, Any]:
    """The host's CPU: ``lscpu``'s model name, family and model numbers, and its bf16 flags.

    ``model_name`` comes from ``lscpu`` (else ``/proc/cpuinfo``); ``flags`` says for each of
    ``CPU_FLAGS`` whether the CPU has it; ``bf16`` is ``amx`` (AMX-BF16), ``avx512_bf16`` or
    ``none``: what precision=auto's probe can use.
    """
    fields: dict[str, str] = {}
    try:
        listed = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                                env={**os.environ, "LC_ALL": "C"})
        for line in listed.stdout.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = set(fields.get("Flags", "").split()) or _cpuinfo_flags()
    has = {flag: flag in flags for flag in CPU_FLAGS}
    bf16 = ("amx" if has["amx_bf16"] and has["amx_tile"]
            else "avx512_bf16" if has["avx512_bf16"] else "none")
    return {
        "model_name": fields.get("Model name") or _cpu_model(),
        "vendor": fields.get("Vendor ID"),
        "family": fields.get("CPU family"),
        "model": fields.get("Model"),
        "cpus": fields.get("CPU(s)") or os.cpu_count(),
        "flags": has,
        "bf16": bf16,
    }


def host_label(cpu: dict[str, Any] | None = None) -> str:
    """``AMD EPYC (family 26, 2 CPUs, AVX-512 BF16, no AMX)``: the host of a README row."""
    cpu = cpu or host_cpu()
    kind = {"amx": "AMX-BF16", "avx512_bf16": "AVX-512 BF16, no AMX",
            "none": "no bf16 instructions"}[cpu["bf16"]]
    family = f"family {cpu['family']}, " if cpu.get("family") else ""
    return f"{cpu['model_name']} ({family}{cpu['cpus']} CPUs, {kind})"


def _cpuinfo_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def environment() -> dict[str, Any]:
    """Facts about the machine and its load, stored next to every result."""
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    cpu = host_cpu()
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu["model_name"],
        "cpu": cpu,
        "host": host_label(cpu),
        "load_average": load,
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "note": "numbers measured while other processes load the machine are pessimistic; "
                "compare load_average with cpu_count",
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def host_key(environment_record: dict[str, Any] | None = None) -> str:
    """The key of a result's host, derived from its host record (``environment``).

    ``nvidia-h200`` for a GPU record (``environment.gpu``); for a CPU, lscpu's model name,
    family, model, CPU count and bf16 kind (``environment.cpu``, see ``host_cpu``), e.g.
    ``amd-epyc-family-25-model-1-2-cpus-no-bf16``; records from before ``environment.cpu`` give
    what they have (``amd-epyc-2-cpus``). Without an argument: this host's key.
    """
    record = environment() if environment_record is None else environment_record
    if record.get("gpu"):
        parts: list[Any] = [record["gpu"]]
    else:
        cpu = record.get("cpu") or {}
        parts = [cpu.get("model_name") or record.get("cpu_model") or "unknown cpu"]
        parts += [f"{name} {cpu[name]}" for name in ("family", "model") if cpu.get(name)]
        count = cpu.get("cpus") or record.get("cpu_count")
        parts += [f"{count} cpus"] if count else []
        parts += [{"none": "no bf16"}.get(cpu["bf16"], cpu["bf16"])] if cpu.get("bf16") else []
    text = re.sub(r"\((r|tm)\)", " ", " ".join(str(part) for part in parts).lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def host_records(path: Path | str) -> dict[str, dict[str, Any]]:
    """Every host's record of the result file ``path``, by ``host_key`` ({} when absent).

    A result file is ``{"benchmark": name, "hosts": {host_key: record}}``; a file of the
    older one-record layout (the record at the top level) is read as that record alone.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    document = json.loads(path.read_text())
    if isinstance(document.get("hosts"), dict) and "environment" not in document:
        return document["hosts"]
    return {host_key(document.get("environment") or {}): document}


def read_result(path: Path | str, key: str | None = None) -> dict[str, Any] | None:
    """The record of host ``key`` (default: this host) in the result file ``path``, or None."""
    return host_records(path).get(key or host_key())


def write_result(path: Path | str, payload: dict[str, Any]) -> Path:
    """Store ``payload`` (plus ``environment``) as this host's record of ``path``; print where.

    The record replaces the one of the same host (``host_key`` of its ``environment``); the
    other hosts' records in the file are kept. Written atomically (a temporary file, then
    ``os.replace``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**payload, "environment": {**environment(), **payload.get("environment", {})}}
    key = host_key(record["environment"])
    hosts = {**host_records(path), key: record}
    document = {"benchmark": payload.get("benchmark", path.stem), "hosts": hosts}
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)
    print(f"wrote {path} (host {key})")
    return path


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of child processes: the repo importable, TensorFlow's C++ logs quiet."""
    environment_variables = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment_variables.pop("MLFLOW_TRACKING_URI", None)
    environment_variables.update(extra or {})
    return environment_variables


def run_dir_name(label: str) -> str:
    """A unique run folder name."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.getpid()}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)[:80]}"


def run_runner(overrides: Sequence[str], workdir: Path, label: str,
               timeout: float = 3600, env: dict[str, str] | None = None,
               echo: bool = True) -> tuple[subprocess.CompletedProcess, Path, float]:
    """Run ``python -m unet3d.run`` with ``overrides`` in ``workdir``.

    The synthetic data cache is ``<workdir>/data`` (shared by every run) and the run dir
    ``<workdir>/runs/<unique>``. Returns the process, the run dir and the wall seconds.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / "runs" / run_dir_name(label)
    command = [sys.executable, "-m", "unet3d.run", *overrides,
               f"paths.data_dir={workdir / 'data'}", f"hydra.run.dir={run_dir}"]
    if echo:
        print("$", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    process = subprocess.run(command, cwd=workdir, capture_output=True, text=True,
                             timeout=timeout, env=subprocess_env(env))
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        tail = (process.stdout + process.stderr)[-4000:]
        raise RuntimeError(f"runner failed ({process.returncode}): {' '.join(overrides)}\n{tail}")
    return process, run_dir, seconds


def runner_benchmark(overrides: Sequence[str], workdir: Path, label: str,
                     timeout: float = 3600) -> dict[str, Any]:
    """Run ``mode=benchmark`` with ``overrides`` and return its ``benchmark.json``."""
    _, run_dir, seconds = run_runner(["mode=benchmark", *overrides], workdir, label, timeout)
    result = json.loads((run_dir / "benchmark.json").read_text())
    result["process_wall_seconds"] = seconds
    result["overrides"] = list(overrides)
    for key in ("step_seconds", "window_batch_seconds"):
        result.pop(key, None)
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a runner benchmark.json."""
    keys = ("target", "synthetic_input", "devices", "precision", "xla", "batch", "input_shape",
            "parameters", "throughput", "latency_ms", "achieved_gflops", "step_time_s",
            "cpu_seconds_per_step",
            "seconds_per_case", "window_latency_ms", "peak_rss_mb", "process_wall_seconds",
            "overrides")
    return {key: result[key] for key in keys if key in result}


def nice_note() -> str:
    """How to read numbers measured on a shared machine."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"1-minute load average {load:.2f} on {os.cpu_count()} CPUs at the start"
