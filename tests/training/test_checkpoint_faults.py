"""Checkpoints after interrupted saves and full disks: the newest complete checkpoint, the
debris a kill leaves, the ``checkpoint`` index repaired, and resumes of dead-end folders."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import tensorflow as tf

from tests.training.test_checkpoint import save_at, tiny_model
from tests.training.test_loop import (
    Recorder,
    checkpoints,
    context,  # noqa: F401 - the fixture
    run_training,
)
from tests.training.test_loop import tiny_model as tiny_conv_model
from unet3d.errors import CheckpointError, StorageError
from unet3d.inference.checkpoints import checkpoint_of
from unet3d.runs import files
from unet3d.runs.files import FAULT_VARIABLE
from unet3d.training.checkpoint import (
    Checkpointer,
    _save_error,
    latest_checkpoint,
    resolve_checkpoint,
)


@pytest.fixture(autouse=True)
def _no_fault_hook(monkeypatch):
    monkeypatch.delenv(FAULT_VARIABLE, raising=False)
    files._fault_counts.clear()


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _copy_checkpoint(folder: Path, source: int, target: int) -> None:
    """A complete checkpoint ``target`` that the index does not list (killed before it)."""
    for path in folder.glob(f"ckpt-{source}.*"):
        shutil.copy(path, folder / path.name.replace(f"ckpt-{source}", f"ckpt-{target}"))


def test_the_newest_complete_checkpoint_is_found_without_the_index(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    model = tiny_model()
    save_at(folder, model, 2)
    save_at(folder, model, 4)
    _copy_checkpoint(folder, 4, 6)  # saved, but killed before the index was rewritten
    index = (folder / "ckpt-4.index").read_bytes()
    (folder / "ckpt-8.index").write_bytes(index[: len(index) // 2])  # killed writing it
    shutil.copy(folder / "ckpt-4.data-00000-of-00001", folder / "ckpt-8.data-00000-of-00001")
    (folder / "ckpt-10_temp").mkdir()  # killed before the merge
    assert tf.train.latest_checkpoint(str(folder)).endswith("ckpt-4")
    assert latest_checkpoint(folder) == str(folder / "ckpt-6")
    assert resolve_checkpoint(tmp_path) == str(folder / "ckpt-6")
    # evaluate and predict take the same checkpoint as resume
    assert checkpoint_of(tmp_path) == str(folder / "ckpt-6")
    (folder / "checkpoint").unlink()  # the very first save killed before its index
    assert latest_checkpoint(folder) == str(folder / "ckpt-6")


def test_tidy_removes_the_debris_and_lists_every_saved_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    model = tiny_model()
    save_at(folder, model, 2)
    _copy_checkpoint(folder, 2, 4)
    (folder / "checkpoint").unlink()
    (folder / "ckpt-6_temp").mkdir()
    (folder / "ckpt-6_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (folder / "ckpt-6.data-00000-of-00001").write_bytes(b"renamed before the index")
    (folder / "checkpoint.tmp5f3e").write_text("half an index")
    step = tf.Variable(4, dtype=tf.int64)
    checkpointer = Checkpointer(folder, model, None, step, keep=2)
    checkpointer.tidy()
    assert _names(folder) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
                              "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    assert tf.train.latest_checkpoint(str(folder)) == str(folder / "ckpt-4")
    # The manager now knows both: keep=2 rotates ckpt-2 out at the next save.
    step.assign(6)
    checkpointer.save()
    state = tf.train.get_checkpoint_state(str(folder))
    assert [Path(path).name for path in state.all_model_checkpoint_paths] == ["ckpt-4", "ckpt-6"]
    assert not (folder / "ckpt-2.index").exists()


def test_a_full_disk_during_a_save_names_the_checkpoint_and_keeps_the_earlier_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "checkpoints"
    model = tiny_model()
    step = tf.Variable(2, dtype=tf.int64)
    checkpointer = Checkpointer(folder, model, None, step)
    checkpointer.save()
    before = {name: (folder / name).read_bytes() for name in _names(folder)}
    monkeypatch.setenv(FAULT_VARIABLE, "enospc:ckpt-*_temp")
    step.assign(4)
    with pytest.raises(StorageError) as error:
        checkpointer.save()
    message = str(error.value)
    assert message.startswith(f"{folder / 'ckpt-4'}: cannot write (no space left on device)")
    assert {name: (folder / name).read_bytes() for name in _names(folder)} == before
    assert latest_checkpoint(folder) == str(folder / "ckpt-2")


def test_tensorflow_write_errors_become_one_line_naming_the_checkpoint(tmp_path: Path) -> None:
    prefix = tmp_path / "ckpt-8"
    full = _save_error(tf.errors.ResourceExhaustedError(
        None, None, "ckpt-8_temp/part-00000: No space left on device\nmore"), prefix)
    assert isinstance(full, StorageError) and full.errno == errno.ENOSPC
    assert str(full).startswith(f"{prefix}: cannot write (no space left on device)")
    other = _save_error(tf.errors.UnknownError(None, None, "disk on fire\ndetails"), prefix)
    assert isinstance(other, CheckpointError)
    assert str(other) == f"checkpoint {prefix}: cannot write (disk on fire)"


def test_resume_of_a_folder_whose_job_stopped_before_its_first_checkpoint_starts_at_0(
        context, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "ckpt-2_temp").mkdir(parents=True)  # a kill during the 1st save
    (run_dir / "mlflow_run_id").write_text("earlier0run\n")
    recorder = Recorder()
    started: list[int] = []
    with context.scope():
        model = tiny_conv_model(seed=3)
    with caplog.at_level("WARNING", logger="unet3d.training.loop"):
        result = run_training(context, model, run_dir, steps=4, recorder=recorder,
                              resume=True, on_restored=started.append)
    assert started == [0] and result.first_step == 0 and recorder.first_steps == [0]
    assert any("training starts at step 0" in record.getMessage() for record in caplog.records)
    assert checkpoints(run_dir) == ["ckpt-2", "ckpt-4"]
    assert not (run_dir / "checkpoints" / "ckpt-2_temp").exists()


def test_resume_takes_the_checkpoint_a_kill_left_out_of_the_index(
        context, tmp_path: Path) -> None:  # noqa: F811
    run_dir = tmp_path / "run"
    with context.scope():
        model = tiny_conv_model(seed=4)
    run_training(context, model, run_dir, steps=4, recorder=Recorder())
    folder = run_dir / "checkpoints"
    (folder / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n'
                                       'all_model_checkpoint_paths: "ckpt-2"\n')
    recorder = Recorder()
    with context.scope():
        again = tiny_conv_model(seed=5)
    result = run_training(context, again, run_dir, steps=6, recorder=recorder, resume=True)
    assert result.first_step == 4 and recorder.first_steps == [4]
    state = tf.train.get_checkpoint_state(str(folder))
    assert [Path(path).name for path in state.all_model_checkpoint_paths][-2:] == [
        "ckpt-4", "ckpt-6"]
