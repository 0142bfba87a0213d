"""Memory of the served model under a decompression-bomb request (issue 30, item 2).

Serves a registered unet3d model with ``mlflow models serve`` (one worker, default
``serve.*`` limits) from one or more code checkouts in turn, sends one request whose four
volumes are gzip'd constant 448x448x320 float32 arrays (about 0.3 MB each on the wire, 257 MB
each once decompressed), and records the status, the wall time and the server process'
resident memory before the request and its peak after it (``VmRSS`` / ``VmHWM``)::

    python -m benchmarks.serve_memory --store /tmp/w/mlflow.db --model models:/e2e@champion \\
        --code /path/to/an/older/checkout --code . --out benchmarks/results/serve_memory.json

Compare the checkouts within one run of the script (same host, same load).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, ROOT, write_result

SHAPE = (448, 448, 320)


def constant_volume_gzip(shape: tuple[int, ...]) -> bytes:
    """A .nii.gz of float32 zeros, compressed piece by piece."""
    import zlib

    import nibabel as nib
    import numpy as np

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    parts = [compressor.compress(header.binaryblock + b"\0" * 4)]
    remaining, piece = int(np.prod(shape)) * 4, b"\0" * (1 << 20)
    while remaining > 0:
        parts.append(compressor.compress(piece[: min(remaining, len(piece))]))
        remaining -= len(piece)
    parts.append(compressor.flush())
    return b"".join(parts)


def _memory(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "peak_kb": int(fields["VmHWM"].split()[0])}


def _server_pid(parent: int) -> int:
    """The uvicorn process ``mlflow models serve`` started (it answers the requests)."""
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    pids = [int(pid) for pid in children.stdout.split()]
    return pids[0] if pids else parent


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group and wait until every process of it is gone (uvicorn
    outlives the ``mlflow`` command by a moment), SIGKILL after 60 s."""
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)
    deadline = time.monotonic() + 60
    while True:
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
        time.sleep(0.5)


def measure(code: Path, store: Path, model: str, body: bytes, port: int) -> dict[str, Any]:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("UNET3D_SERVE_", "MLFLOW_"))}
    environment.update({"PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2",
                        "MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1", "-t", "600"],
        cwd=store.parent, env=environment, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"serve_memory: the server of {code} did not start") from None
                time.sleep(0.5)
        pid = _server_pid(server.pid)
        before = _memory(pid)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=900) as response:
                status, answer = response.status, response.read()[:300].decode()
        except urllib.error.HTTPError as error:
            status, answer = error.code, error.read()[:300].decode()
        seconds = time.perf_counter() - started
        after = _memory(pid)
    finally:
        _stop_group(server)
    return {"code": str(code), "status": status, "answer": answer, "seconds": round(seconds, 2),
            "rss_before_mb": round(before["rss_kb"] / 1024, 1),
            "peak_after_mb": round(after["peak_kb"] / 1024, 1),
            "peak_growth_mb": round((after["peak_kb"] - before["rss_kb"]) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="mlflow.db with the model")
    parser.add_argument("--model", default="models:/e2e@champion")
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="a checkout to serve from (repeat; default: this one)")
    parser.add_argument("--port", type=int, default=5241)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serve_memory.json")
    args = parser.parse_args()
    volume = base64.b64encode(constant_volume_gzip(SHAPE)).decode()
    row = {"case_id": "bomb", **{column: volume for column in ("t1", "t1ce", "t2", "flair")}}
    body = json.dumps({"dataframe_records": [row]}).encode()
    runs = [measure(code.resolve(), args.store.resolve(), args.model, body, args.port + index)
            for index, code in enumerate(args.code or [ROOT])]
    for run in runs:
        print(json.dumps(run))
    write_result(args.out, {"benchmark": "serve_memory", "request_mb": round(len(body) / 1e6, 2),
                            "volume_shape": list(SHAPE), "runs": runs})


if __name__ == "__main__":
    main()
