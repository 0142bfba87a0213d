"""Checkpoints: model, optimizer and step under ``<run dir>/checkpoints``.

Resume order (documented in README): build the model and optimizer inside the strategy scope,
build the optimizer's variables, restore the newest checkpoint (weights, optimizer moments,
step), broadcast from rank 0 under Horovod, then continue the loop at ``step + 1``.

The newest checkpoint is the newest *complete* one (`latest_checkpoint`): all its files in
place and its index readable, whether or not the ``checkpoint`` index file lists it, so that a
job killed during a save resumes from what it had saved (see
:mod:`unet3d.runs.checkpoint_files` for what a killed save leaves). Once a job holds the
folder, `Checkpointer.tidy` removes that debris and lists the saved checkpoints in the index.
A save that fails because the disk is full or the folder is read-only is a `StorageError`
naming the checkpoint; the checkpoints saved before stay intact.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from unet3d.errors import CheckpointError
from unet3d.runs.checkpoint_files import CHECKPOINT_FOLDER, checkpoint_debris, saved_checkpoints
from unet3d.runs.files import (
    fault_active,
    fault_point,
    storage_error,
    write_text_atomic,
)

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FOLDER", "Checkpointer", "build_optimizer_variables", "latest_checkpoint",
           "resolve_checkpoint", "restore_weights"]


def _first_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def readable(prefix: str | Path, warn: bool = True) -> bool:
    """True when TensorFlow reads the index of checkpoint ``prefix`` (a complete save)."""
    try:
        tf.train.load_checkpoint(str(prefix))
    except (tf.errors.OpError, ValueError) as error:
        if warn:
            log.warning("checkpoint %s: unreadable (%s); skipped (a save was interrupted)", prefix,
                        _first_line(error))
        return False
    return True


def latest_checkpoint(folder: str | Path) -> str | None:
    """Prefix of the newest complete checkpoint in ``folder`` (highest step), or None.

    Complete: its ``.index`` and every data shard exist (`saved_checkpoints`) and TensorFlow
    reads the index; the ``checkpoint`` index file is not needed. A folder without numbered
    checkpoints (``<name>-<step>``) falls back to ``tf.train.latest_checkpoint``.
    """
    saved = saved_checkpoints(folder)
    for prefix in reversed(saved):
        if readable(prefix):
            return str(prefix)
    if saved:
        return None
    return tf.train.latest_checkpoint(str(folder))


def write_checkpoint_index(folder: Path, names: list[str]) -> Path:
    """Write ``<folder>/checkpoint`` (a ``CheckpointState`` text proto) listing ``names``.

    As ``tf.train.CheckpointManager`` writes it: each checkpoint with its save time (the mtime
    of its index) and a ``last_preserved_timestamp`` before them all, so that a manager opened
    on the folder rotates them (``max_to_keep``).

    Args:
        folder: the checkpoints folder.
        names: checkpoint prefixes relative to ``folder`` (``ckpt-6``), oldest first; the last
            is the newest (``model_checkpoint_path``).
    """
    def quoted(name: str) -> str:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

    folder = Path(folder)
    times = [(folder / f"{name}.index").stat().st_mtime for name in names]
    lines = [f"model_checkpoint_path: {quoted(names[-1])}"]
    lines += [f"all_model_checkpoint_paths: {quoted(name)}" for name in names]
    lines += [f"all_model_checkpoint_timestamps: {time!r}" for time in times]
    lines.append(f"last_preserved_timestamp: {min(times) - 1.0!r}")
    return write_text_atomic(folder / "checkpoint", "\n".join(lines) + "\n")


def _save_error(error: BaseException, prefix: Path) -> Exception:
    """A save's error as a `StorageError` (full disk, read-only) or a `CheckpointError`."""
    full = storage_error(error, prefix)
    if full is not None:
        return full
    return CheckpointError(f"checkpoint {prefix}: cannot write ({_first_line(error)})")


def build_optimizer_variables(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    """Create the optimizer's slot variables now, so a restore fills them in place."""
    optimizer.build(model.trainable_variables)


class Checkpointer:
    """Saves and restores (model, optimizer, step); only the chief keeps files.

    Under MultiWorkerMirroredStrategy every worker must take part in a save; the workers
    other than the chief write to a scratch folder that is deleted afterwards.
    """

    def __init__(self, directory: Path, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer | None, step: tf.Variable,
                 keep: int = 3, is_chief: bool = True, must_participate: bool = False,
                 worker_index: int = 0) -> None:
        self.directory = Path(directory)
        self.keep = int(keep)
        self.step = step
        self.is_chief = is_chief
        self.must_participate = must_participate
        objects = {"model": model, "step": step}
        if optimizer is not None:
            objects["optimizer"] = optimizer
        self.checkpoint = tf.train.Checkpoint(**objects)
        target = self.directory
        if not is_chief:
            target = self.directory.parent / f".{CHECKPOINT_FOLDER}-worker{worker_index}"
        self._scratch = None if is_chief else target
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(target), max_to_keep=keep)

    def save(self) -> str | None:
        """Write a checkpoint at the current step; return its prefix on the chief.

        Raises:
            StorageError: the disk is full or the folder is read-only (the checkpoint named;
                the earlier checkpoints are intact).
            CheckpointError: another failure of the write.
        """
        if not self.is_chief and not self.must_participate:
            return None
        number = int(self.step.numpy())
        prefix = Path(self.manager.directory) / f"ckpt-{number}"
        options = None
        try:
            if fault_active():  # the test hook's write points (unet3d.runs.files.fault_point)
                fault_point(Path(f"{prefix}_temp"))
                options = tf.train.CheckpointOptions(
                    experimental_write_callbacks=[lambda path: fault_point(Path(path))])
            path = self.manager.save(checkpoint_number=number, options=options)
        except (OSError, tf.errors.OpError) as error:
            raise _save_error(error, prefix) from error
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            return None
        log.info("saved checkpoint %s", path)
        return path

    def latest(self) -> str | None:
        """Prefix of the newest complete checkpoint in this run's folder, if any."""
        return latest_checkpoint(self.directory)

    def tidy(self) -> None:
        """Clear what killed saves left and make the ``checkpoint`` index list every save.

        Call it once the job holds the run folder (after a resume is accepted): it removes
        `checkpoint_debris` (``ckpt-N_temp/`` folders, data files without an index,
        TensorFlow's temporary files) and, when the index file misses a complete checkpoint
        (killed after the save, before the index), rewrites it listing all of them, so that
        ``keep`` rotation and ``tf.train.latest_checkpoint`` see them. Chief only.
        """
        if not self.is_chief:
            return
        debris = checkpoint_debris(self.directory)
        for path in debris:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if debris:
            log.info("removed what interrupted saves left in %s: %s", self.directory,
                     ", ".join(path.name for path in debris))
        saved = [prefix.name for prefix in saved_checkpoints(self.directory)
                 if readable(prefix, warn=False)]
        if not saved:
            return
        state = tf.train.get_checkpoint_state(str(self.directory))
        listed = ([Path(path).name for path in state.all_model_checkpoint_paths]
                  if state is not None else [])
        latest = Path(state.model_checkpoint_path).name if state is not None else None
        if listed == saved and latest == saved[-1]:
            return
        write_checkpoint_index(self.directory, saved)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory),
                                                  max_to_keep=self.keep)
        log.info("checkpoint index of %s now lists %s", self.directory, ", ".join(saved))

    def restore(self, prefix: str, expect_partial: bool = False) -> None:
        """Restore from a checkpoint prefix; CheckpointError names the file on failure."""
        try:
            status = self.checkpoint.restore(prefix)
            status.assert_existing_objects_matched()
            if expect_partial:
                status.expect_partial()
        except (tf.errors.OpError, AssertionError, ValueError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"checkpoint {prefix}: cannot restore ({message})") from None
        log.info("restored %s at step %d", prefix, int(self.step.numpy()))


def resolve_checkpoint(path: str | Path) -> str:
    """Turn a checkpoint prefix, a ``checkpoints/`` folder or a run dir into a prefix."""
    candidate = Path(str(path)).expanduser()
    for folder in (candidate, candidate / CHECKPOINT_FOLDER):
        if folder.is_dir():
            latest = latest_checkpoint(folder)
            if latest:
                return latest
    if Path(f"{candidate}.index").exists():
        return str(candidate)
    raise CheckpointError(
        f"checkpoint {candidate}: no TensorFlow checkpoint found (expected a checkpoint "
        f"prefix such as ckpt-600, a {CHECKPOINT_FOLDER}/ folder or a run directory)"
    )


def restore_weights(model: keras.Model, path: str | Path) -> str:
    """Load only the model weights of a training checkpoint (for evaluate and predict)."""
    prefix = resolve_checkpoint(path)
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    Checkpointer(Path(prefix).parent, model, None, step).restore(prefix, expect_partial=True)
    return prefix
