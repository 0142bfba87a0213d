"""Checkpoints: model, optimizer and step under ``<run dir>/checkpoints``.

Resume order (documented in README): build the model and optimizer inside the strategy scope,
build the optimizer's variables, restore the newest checkpoint (weights, optimizer moments,
step), broadcast from rank 0 under Horovod, then continue the loop at ``step + 1``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from unet3d.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "checkpoints"


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
        """Write a checkpoint at the current step; return its prefix on the chief."""
        if not self.is_chief and not self.must_participate:
            return None
        path = self.manager.save(checkpoint_number=int(self.step.numpy()))
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            return None
        log.info("saved checkpoint %s", path)
        return path

    def latest(self) -> str | None:
        """Prefix of the newest checkpoint in this run's folder, if any."""
        return tf.train.latest_checkpoint(str(self.directory))

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
            latest = tf.train.latest_checkpoint(str(folder))
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
