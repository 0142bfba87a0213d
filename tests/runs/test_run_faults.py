"""Run folders after faults: dead-end folders taken over, busy folders refused, the stop hint,
what killed checkpoint saves leave, full disks, the test hook and the shared locks."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unet3d.errors import RunFolderError, StorageError
from unet3d.runs.checkpoint_files import checkpoint_debris, saved_checkpoints
from unet3d.runs.files import (
    FAULT_MARKER_VARIABLE,
    FAULT_VARIABLE,
    exclusive_lock,
    fault_point,
    storage_error,
    write_json_atomic,
)
from unet3d.runs.folder import (
    EARLIER_RUN_IDS_FILE,
    RunFolder,
    earlier_job_without_work,
    stop_hint,
    used_markers,
)
from unet3d.runs.results import collect_job_results

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_fault_hook(monkeypatch):
    monkeypatch.delenv(FAULT_VARIABLE, raising=False)
    monkeypatch.delenv(FAULT_MARKER_VARIABLE, raising=False)


#: A stand-in for a complete index file: a table footer ends with the table magic number.
INDEX = b"index".ljust(48, b"\0") + (0xDB4775248B80FB57).to_bytes(8, "little")


def _checkpoint(folder: Path, step: int, shards: int = 1, index: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if index:
        (folder / f"ckpt-{step}.index").write_bytes(INDEX)
    for shard in range(shards):
        (folder / f"ckpt-{step}.data-{shard:05d}-of-{shards:05d}").write_bytes(b"data")


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# ------------------------------------------------------------------ checkpoint files


def test_saved_checkpoints_need_the_index_and_every_data_shard(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    _checkpoint(folder, 2)
    _checkpoint(folder, 10, shards=2)
    _checkpoint(folder, 4, index=False)  # killed after the data rename, before the index
    (folder / "ckpt-6.index").write_bytes(INDEX)  # data shard missing
    (folder / "ckpt-8.index").write_bytes(INDEX)
    (folder / "ckpt-8.data-00000-of-00002").write_bytes(b"data")  # one of two shards
    _checkpoint(folder, 14)
    (folder / "ckpt-14.index").write_bytes(INDEX[:-3])  # killed while writing the index
    (folder / "ckpt-12_temp").mkdir()
    (folder / "ckpt-12_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (folder / "checkpoint.tmp0123abcd").write_text("partial")
    assert [path.name for path in saved_checkpoints(folder)] == ["ckpt-2", "ckpt-10"]
    assert [path.name for path in checkpoint_debris(folder)] == [
        "checkpoint.tmp0123abcd", "ckpt-12_temp", "ckpt-14.data-00000-of-00001", "ckpt-14.index",
        "ckpt-4.data-00000-of-00001"]
    assert saved_checkpoints(tmp_path / "missing") == []


# ------------------------------------------------------------------ which folders hold work


def test_a_folder_whose_job_stopped_before_its_first_checkpoint_holds_no_work(
        tmp_path: Path) -> None:
    (tmp_path / "mlflow_run_id").write_text("abc123\n")
    (tmp_path / "run_identity.json").write_text("{}")
    (tmp_path / "results.json").write_text(json.dumps({"status": "FAILED"}))
    (tmp_path / "checkpoints" / "ckpt-2_temp").mkdir(parents=True)
    _checkpoint(tmp_path / "checkpoints", 2, index=False)
    assert used_markers(tmp_path) == []
    assert earlier_job_without_work(tmp_path)
    assert not earlier_job_without_work(tmp_path / "new")


@pytest.mark.parametrize(("files", "markers"), [
    ({"results.json": json.dumps({"status": "FINISHED"})}, ["results.json"]),
    ({"results.json": "{not json"}, ["results.json"]),
    ({"mlflow_run_id": "abc\n", "checkpoints/ckpt-3.index": INDEX.decode("latin-1"),
      "checkpoints/ckpt-3.data-00000-of-00001": "d"}, ["checkpoints/", "mlflow_run_id"]),
], ids=["finished", "unreadable-results", "checkpoint"])
def test_work_of_an_earlier_job_marks_the_folder_used(tmp_path: Path, files: dict[str, str],
                                                      markers: list[str]) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(text.encode("latin-1"))
    assert used_markers(tmp_path) == markers
    assert not earlier_job_without_work(tmp_path)


def test_a_new_job_takes_over_a_dead_end_folder_and_starts_its_own_mlflow_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "mlflow_run_id").write_text("earlier0run\n")
    (tmp_path / EARLIER_RUN_IDS_FILE).write_text("first0run\n")
    (tmp_path / "results.json").write_text(json.dumps({"status": "FAILED", "error": "bad"}))
    (tmp_path / "run.log").write_text("the earlier job's lines\n")
    dead, alive = _dead_pid(), os.getppid()
    (tmp_path / f"results.json.tmp-{dead}").write_text("{half")
    (tmp_path / f"run_identity.json.tmp-{alive}").write_text("{a live writer's")
    folder = RunFolder(tmp_path, resume=False)
    with caplog.at_level(logging.WARNING, logger="unet3d.runs.folder"):
        folder.claim()
    assert folder.takes_over
    (line,) = [record.getMessage() for record in caplog.records]
    assert str(tmp_path) in line and "earlier0run" in line and "before its first checkpoint" in line
    folder.commit(OmegaConf.create({"fold": 0}), None, [])
    folder.close()
    assert not (tmp_path / "mlflow_run_id").exists() and not (tmp_path / "results.json").exists()
    assert (tmp_path / EARLIER_RUN_IDS_FILE).read_text() == "first0run\nearlier0run\n"
    assert not (tmp_path / f"results.json.tmp-{dead}").exists()
    assert (tmp_path / f"run_identity.json.tmp-{alive}").exists()
    assert (tmp_path / "run.log").read_text().startswith("the earlier job's lines\n")


def test_a_resume_of_a_dead_end_folder_keeps_its_mlflow_run(tmp_path: Path) -> None:
    (tmp_path / "mlflow_run_id").write_text("earlier0run\n")
    folder = RunFolder(tmp_path, resume=True)
    folder.claim()
    folder.commit(OmegaConf.create({"fold": 0}), None, ["resume=true"])
    folder.close()
    assert not folder.takes_over
    assert (tmp_path / "mlflow_run_id").read_text() == "earlier0run\n"


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding ``flock`` on ``path`` until its stdin closes."""
    code = ("import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_folder_in_which_another_job_runs_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "mlflow_run_id").write_text("running0run\n")  # a job before its first checkpoint
    before = _snapshot(tmp_path)
    other = _hold_lock(tmp_path)
    try:
        for resume in (False, True):
            with pytest.raises(RunFolderError) as error:
                RunFolder(tmp_path, resume=resume).claim()
            message = str(error.value)
            assert message.startswith(f"{tmp_path}: another job is running in this folder")
            assert "\n" not in message
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    assert _snapshot(tmp_path) == before
    folder = RunFolder(tmp_path, resume=False)
    folder.claim()  # free again
    folder.close()


def test_the_stop_hint_suggests_resume_only_when_a_checkpoint_exists(tmp_path: Path) -> None:
    assert "resume=true" not in stop_hint(tmp_path, training=True)
    assert "no checkpoint was written yet" in stop_hint(tmp_path, training=True)
    _checkpoint(tmp_path / "checkpoints", 4, index=False)  # an interrupted save does not count
    assert "resume=true" not in stop_hint(tmp_path, training=True)
    _checkpoint(tmp_path / "checkpoints", 6)
    (tmp_path / "checkpoints" / "ckpt-6.index").write_bytes(INDEX[:20])  # nor a truncated index
    assert "resume=true" not in stop_hint(tmp_path, training=True)
    _checkpoint(tmp_path / "checkpoints", 2)
    hint = stop_hint(tmp_path, training=True)
    assert f"resume=true with hydra.run.dir={tmp_path}" in hint and "ckpt-2" in hint
    assert "resume=true" not in stop_hint(tmp_path, training=False)


# ------------------------------------------------------------------ full disks


@pytest.mark.parametrize(("action", "number", "reason"), [
    ("enospc", errno.ENOSPC, "no space left on device"),
    ("erofs", errno.EROFS, "read-only file system"),
])
def test_a_full_or_read_only_disk_is_one_line_naming_the_file_and_the_old_file_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str, number: int,
        reason: str) -> None:
    target = tmp_path / "results.json"
    write_json_atomic(target, {"status": "FINISHED"})
    monkeypatch.setenv(FAULT_VARIABLE, f"{action}:results.json")
    with pytest.raises(StorageError) as error:
        write_json_atomic(target, {"status": "FAILED"})
    message = str(error.value)
    assert message.startswith(f"{target}: cannot write ({reason})"), message
    assert "\n" not in message and error.value.errno == number
    assert isinstance(error.value, OSError)
    assert json.loads(target.read_text()) == {"status": "FINISHED"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.json"]


def test_storage_error_maps_only_the_errors_of_a_full_or_read_only_disk(tmp_path: Path) -> None:
    path = tmp_path / "case.nii.gz"
    read_only = storage_error(OSError(errno.EROFS, "Read-only file system", "x.tmp-1"), path)
    assert str(read_only).startswith(f"{path}: cannot write (read-only file system)")
    assert read_only.filename == str(path)
    assert storage_error(OSError(errno.ENOENT, "No such file"), path) is None
    assert storage_error(ValueError("no"), path) is None
    assert storage_error(read_only, tmp_path / "other") is read_only


def test_storage_error_reads_tensorflows_file_system_errors(tmp_path: Path) -> None:
    import tensorflow as tf

    path = tmp_path / "case.tfrecord"
    full = tf.errors.ResourceExhaustedError(None, None, f"{path}.tmp-1; No space left on device")
    error = storage_error(full, path)
    assert str(error).startswith(f"{path}: cannot write (no space left on device)")
    assert error.errno == errno.ENOSPC and error.filename == str(path)
    other = tf.errors.NotFoundError(None, None, f"{path}.tmp-1; No such file or directory")
    assert storage_error(other, path) is None


# ------------------------------------------------------------------ the test hook


def test_the_hook_acts_on_the_nth_matching_write_only(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv(FAULT_VARIABLE, "enospc:*.tfrecord:2")
    fault_point(tmp_path / "a.tfrecord")  # first match: nothing
    fault_point(tmp_path / "results.json")  # no match
    with pytest.raises(OSError) as error:
        fault_point(tmp_path / "b.tfrecord")
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(tmp_path / "b.tfrecord")
    fault_point(tmp_path / "c.tfrecord")  # third: nothing
    monkeypatch.delenv(FAULT_VARIABLE)
    fault_point(tmp_path / "b.tfrecord")


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text().strip()


@pytest.mark.slow
def test_a_job_killed_while_writing_results_json_leaves_no_results_json(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- fold=0\n")  # a sweep job's folder
    (job / ".hydra" / "config.yaml").write_text("fold: 0\nnum_folds: 5\nseed: 42\n")
    marker = tmp_path / "paused"
    code = ("import sys\n"
            "from unet3d.runs.results import write_job_result\n"
            "write_job_result(sys.argv[1], 'FINISHED', 0, ['fold=0'], {'Dice_WT': 0.9})\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), FAULT_VARIABLE: "pause:results.json",
           FAULT_MARKER_VARIABLE: str(marker)}
    process = subprocess.Popen([sys.executable, "-c", code, str(job)], env=env)
    assert _wait_for(marker, process) == str(job / "results.json")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (job / "results.json").exists()
    (temporary,) = job.glob("results.json.tmp-*")
    assert json.loads(temporary.read_text())["status"] == "FINISHED"  # written, not in place
    (record,) = collect_job_results(tmp_path)
    assert record["status"] == "FAILED" and "no results.json" in record["error"]
    assert record["fold"] == 0
    # The next job in the folder removes the dead writer's temporary file.
    folder = RunFolder(job, resume=False)
    folder.claim()
    folder.commit(OmegaConf.create({"fold": 0}), None, [])
    folder.close()
    assert not list(job.glob("*.tmp-*"))


# ------------------------------------------------------------------ locks


def test_exclusive_lock_waits_for_another_process_and_is_reentrant(tmp_path: Path) -> None:
    lock = tmp_path / "cache" / ".prepare.lock"
    lock.parent.mkdir()
    lock.touch()
    other = _hold_lock(lock)
    try:
        with pytest.raises(BlockingIOError):
            with exclusive_lock(lock, wait=False):
                pass
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    with exclusive_lock(lock, wait=False):
        with exclusive_lock(lock, wait=False):  # the same process: re-entrant
            pass
        other = subprocess.run(
            [sys.executable, "-c", "import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n"
             "    sys.exit(3)\n", str(lock)], timeout=30)
        assert other.returncode == 3  # still held by this process
    assert lock.is_file()
