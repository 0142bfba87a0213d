"""A trained model registered with an alias and served by ``mlflow models serve``: the served
segmentation equals ``mode=predict``'s file voxel by voxel; a malformed request gets an HTTP
error naming the problem (every bad volume of mode=predict: one line per case naming the column,
no server path, no traceback), a volume over the limit a 413, a request while the server is
busy a 503, and the server keeps serving. One server answers them all."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import ROOT, run_cli
from tests.ports import free_port

pytestmark = pytest.mark.slow

MODEL_NAME = "unet3d-e2e"


def _post(port: int, payload: dict, timeout: float = 300) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _wait_until_up(port: int, server: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer /ping in {timeout} s:\n{log.read_text()}")


def _nifti(data: bytes):
    import nibabel as nib

    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return nib.Nifti1Image.from_bytes(raw)


def _nifti_bytes(array: np.ndarray, compress: bool = True) -> bytes:
    import nibabel as nib

    raw = nib.Nifti1Image(np.asarray(array), np.eye(4)).to_bytes()
    return gzip.compress(raw, mtime=0) if compress else raw


def _bad_rows(row: dict, case_dir: Path, case_id: str) -> dict[str, tuple[dict, str]]:
    """Rows whose volumes pass the codec and fail in mode=predict, each with the line the
    client must get for it (the column in place of the server's path)."""
    import nibabel as nib

    t1 = np.asarray(nib.load(case_dir / f"{case_id}_t1.nii.gz").dataobj, dtype=np.float32)
    shape = t1.shape
    encoded = {
        "shape": ("t2", _nifti_bytes(t1[:, :, :-2]),
                  f"column 't2': shape {(*shape[:2], shape[2] - 2)} differs from {shape} "
                  "of column 't1'"),
        "four_d": ("t1", _nifti_bytes(np.stack([t1, t1], axis=-1)),
                   f"column 't1': expected a 3D volume, got shape {(*shape, 2)}"),
        "two_d": ("t1", _nifti_bytes(t1[:, :, 0]),
                  f"column 't1': expected a 3D volume, got shape {shape[:2]}"),
        "truncated": ("flair", (case_dir / f"{case_id}_flair.nii.gz").read_bytes()[:-400],
                      "column 'flair': truncated file (Compressed file ended before the "
                      "end-of-stream marker was reached)"),
        "header_only": ("t1ce", gzip.compress(_nifti_bytes(t1, compress=False)[:352], mtime=0),
                        f"column 't1ce': truncated file (its header declares {t1.size * 4} "
                        "bytes of voxels, the file holds 0)"),
        "nan": ("t1", _nifti_bytes(np.full(shape, np.nan, np.float32)),
                f"column 't1': {t1.size} NaN or infinite voxel(s)"),
        "empty": ("t1", _nifti_bytes(np.zeros((48, 48, 0), np.float32)),
                  "column 't1': empty volume: shape (48, 48, 0) holds no voxel"),
    }
    return {name: ({**row, "case_id": name, column: base64.b64encode(data).decode()},
                   f"case {name}: {line}") for name, (column, data, line) in encoded.items()}


def test_served_model_matches_mode_predict(tmp_path: Path) -> None:
    import nibabel as nib
    from omegaconf import OmegaConf

    from unet3d.serving.registration import publish_model
    from unet3d.tracking.tracker import Tracker

    train_dir = tmp_path / "train"
    trained = run_cli("debug=fast", "num_folds=2", f"hydra.run.dir={train_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    case_files = sorted(tmp_path.glob("data/**/*_t1.nii.gz"))
    assert case_files, "the synthetic data set has no raw case"
    case_dir = case_files[0].parent
    case_id = case_files[0].name[: -len("_t1.nii.gz")]
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    (input_dir / case_id).symlink_to(case_dir, target_is_directory=True)

    predicted = run_cli("debug=fast", "num_folds=2", "mode=predict",
                        f"predict.input_dir={input_dir}", f"predict.checkpoint={train_dir}",
                        f"hydra.run.dir={tmp_path / 'predict'}", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    expected = nib.load(tmp_path / "predict" / "predictions" / f"{case_id}.nii.gz")

    # Register the trained job (its pyfunc) as a new version with alias `champion`.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = OmegaConf.load(train_dir / ".hydra" / "config.yaml")
    tracking = {"enabled": True, "uri": uri, "experiment_name": "unet3d-synthetic",
                "register_model": MODEL_NAME, "model_alias": "champion"}
    tracker = Tracker(tracking, tmp_path)
    assert tracker.start(None, train_dir) is not None and tracker.resumed
    version = publish_model(tracker, cfg, str(train_dir), {"eval/Dice_WT": 0.5})
    tracker.end()
    assert version is not None and tracker.tracking_errors == 0
    assert str(version.source).startswith("models:/")

    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": str(ROOT),
           # a debug case: 40x40x32 = 51200 voxels (the 4D one of _bad_rows 102400); one at a time
           "UNET3D_SERVE_MAX_VOXELS": "105000", "UNET3D_SERVE_MAX_CONCURRENT": "1",
           "UNET3D_SERVE_RETRY_AFTER_S": "5"}
    mlflow_cli = [sys.executable, "-m", "mlflow"]
    with log.open("wb") as output:
        server = subprocess.Popen(
            [*mlflow_cli, "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
             "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1", "--workers", "1"],
            cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_until_up(port, server, log)
        row = {"case_id": case_id}
        for modality in ("t1", "t1ce", "t2", "flair"):
            row[modality] = base64.b64encode(
                (case_dir / f"{case_id}_{modality}.nii.gz").read_bytes()).decode()
        status, answer = _post(port, {"dataframe_records": [row]})
        assert status == 200, answer
        served = _nifti(base64.b64decode(answer["predictions"][0]["segmentation"]))
        assert answer["predictions"][0]["case_id"] == case_id
        assert served.shape == expected.shape
        np.testing.assert_array_equal(np.asarray(served.dataobj), np.asarray(expected.dataobj))
        np.testing.assert_allclose(served.affine, expected.affine)

        status, answer = _post(port, {"dataframe_records": [{**row, "t1": "not base64!"}]})
        assert 400 <= status < 600
        assert "column 't1': not valid base64" in json.dumps(answer)
        status, answer = _post(port, {"dataframe_records": [{"case_id": case_id}]})
        assert 400 <= status < 500  # MLflow's schema enforcement names the missing columns
        assert "missing inputs ['t1', 't1ce', 't2', 'flair']" in json.dumps(answer)

        # Every volume mode=predict refuses, in one request (one model build): HTTP 400 with
        # one line naming each case, its column and the reason mode=predict logs.
        bad = _bad_rows(row, case_dir, case_id)
        status, answer = _post(port, {"dataframe_records": [entry for entry, _ in bad.values()]})
        assert status == 400, answer
        message = answer["message"]
        assert "\n" not in message and "/tmp" not in message and "unet3d-serve" not in message
        assert "Traceback" not in json.dumps(answer) and "stack_trace" not in answer
        for name, (_, line) in bad.items():
            assert line in message, (name, message)
        status, answer = _post(port, {"dataframe_records": [{**row, "case_id": "a" * 300}]})
        assert status == 400 and answer["message"] == (
            f"row 0: case_id of 300 characters ({'a' * 20}...): at most 128"), answer
        # A volume over serve.max_voxels (UNET3D_SERVE_MAX_VOXELS) is refused from its header.
        big = base64.b64encode(_nifti_bytes(np.zeros((48, 48, 48), np.float32))).decode()
        status, answer = _post(port, {"dataframe_records": [{**row, "t2": big}]})
        assert status == 413 and answer["message"] == (
            f"case {case_id} (row 0): column 't2': volume of 110592 voxels (48x48x48) exceeds "
            "the limit of 105000 voxels per volume (serve.max_voxels)"), answer

        # One prediction at a time (UNET3D_SERVE_MAX_CONCURRENT=1): a request while another
        # runs is a 503 with retry_after_s at once; the one running is answered.
        answers: list[tuple[int, dict]] = []

        def predict_once() -> None:
            answers.append(_post(port, {"dataframe_records": [row]}))

        running = threading.Thread(target=predict_once)
        running.start()
        while running.is_alive() and not any(status == 503 for status, _ in answers):
            predict_once()
        running.join(timeout=300)
        busy = [answer for status, answer in answers if status == 503]
        assert busy and busy[0] == {
            "error_code": "TEMPORARILY_UNAVAILABLE", "retry_after_s": 5,
            "message": "busy: 1 prediction(s) running (serve.max_concurrent); retry after 5 s"
        }, answers
        assert {status for status, _ in answers} == {200, 503}, answers

        status, again = _post(port, {"dataframe_records": [row]})
        assert status == 200
        second = _nifti(base64.b64decode(again["predictions"][0]["segmentation"]))
        np.testing.assert_array_equal(np.asarray(second.dataobj), np.asarray(expected.dataobj))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=20)

