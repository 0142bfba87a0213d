"""Checkpointer, resolve_checkpoint and restore_weights on tmp_path with tiny Keras models."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet3d.errors import CheckpointError
from unet3d.training.checkpoint import (
    CHECKPOINT_FOLDER,
    Checkpointer,
    build_optimizer_variables,
    resolve_checkpoint,
    restore_weights,
)


def tiny_model(units: int = 3, seed: int = 0) -> keras.Model:
    """Dense (None, 4) -> (None, units), weights drawn from `seed`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(units)(inputs))


def trained(model: keras.Model) -> keras.optimizers.Optimizer:
    """An Adam optimizer with built slots and one applied step (non-zero moments)."""
    optimizer = keras.optimizers.Adam(1e-2)
    build_optimizer_variables(model, optimizer)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(tf.ones((2, 4))) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return optimizer


def weights(variables) -> list[np.ndarray]:
    return [np.array(variable.numpy() if hasattr(variable, "numpy") else variable)
            for variable in variables]


def save_at(directory: Path, model: keras.Model, step: int, **kwargs) -> str | None:
    counter = tf.Variable(step, dtype=tf.int64, trainable=False)
    return Checkpointer(directory, model, None, counter, **kwargs).save()


def test_save_latest_and_restore_model_optimizer_and_step(tmp_path: Path) -> None:
    model = tiny_model(seed=1)
    optimizer = trained(model)
    step = tf.Variable(5, dtype=tf.int64, trainable=False)
    folder = tmp_path / CHECKPOINT_FOLDER
    saver = Checkpointer(folder, model, optimizer, step)
    prefix = saver.save()
    assert prefix is not None and Path(prefix).name == "ckpt-5"
    assert saver.latest() == prefix

    other = tiny_model(seed=2)
    other_optimizer = keras.optimizers.Adam(1e-2)
    build_optimizer_variables(other, other_optimizer)
    other_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    assert not np.allclose(weights(other.weights)[0], weights(model.weights)[0])
    Checkpointer(folder, other, other_optimizer, other_step).restore(prefix)

    assert int(other_step.numpy()) == 5
    for restored, saved in zip(weights(other.weights), weights(model.weights), strict=True):
        np.testing.assert_array_equal(restored, saved)
    for restored, saved in zip(weights(other_optimizer.variables),
                               weights(optimizer.variables), strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert int(other_optimizer.iterations.numpy()) == 1


def test_keep_rotates_old_checkpoints(tmp_path: Path) -> None:
    model = tiny_model()
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    saver = Checkpointer(tmp_path / CHECKPOINT_FOLDER, model, None, step, keep=2)
    for number in (1, 2, 3):
        step.assign(number)
        saver.save()
    kept = sorted(path.name for path in (tmp_path / CHECKPOINT_FOLDER).glob("ckpt-*.index"))
    assert kept == ["ckpt-2.index", "ckpt-3.index"]
    assert Path(saver.latest()).name == "ckpt-3"


def test_non_chief_saves_only_when_it_must_and_keeps_no_files(tmp_path: Path) -> None:
    model = tiny_model()
    folder = tmp_path / CHECKPOINT_FOLDER
    assert save_at(folder, model, 1, is_chief=False) is None
    assert save_at(folder, model, 1, is_chief=False, must_participate=True,
                   worker_index=1) is None
    assert not folder.exists()
    assert not (tmp_path / f".{CHECKPOINT_FOLDER}-worker1").exists()


def test_resolve_checkpoint_from_prefix_folder_and_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = tiny_model()
    older = save_at(run / CHECKPOINT_FOLDER, model, 3)
    newest = save_at(run / CHECKPOINT_FOLDER, model, 6)
    assert resolve_checkpoint(run) == newest
    assert resolve_checkpoint(run / CHECKPOINT_FOLDER) == newest
    assert resolve_checkpoint(older) == older
    assert resolve_checkpoint(str(run)) == newest


def test_resolve_checkpoint_without_one_names_the_path_and_what_was_expected(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError) as error:
        resolve_checkpoint(empty)
    message = str(error.value)
    assert message.startswith(f"checkpoint {empty}: no TensorFlow checkpoint found")
    assert "ckpt-600" in message and f"{CHECKPOINT_FOLDER}/" in message
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint found"):
        resolve_checkpoint(tmp_path / "missing" / "ckpt-1")


def test_restore_weights_loads_only_the_model(tmp_path: Path) -> None:
    model = tiny_model(seed=3)
    optimizer = trained(model)
    step = tf.Variable(7, dtype=tf.int64, trainable=False)
    prefix = Checkpointer(tmp_path / CHECKPOINT_FOLDER, model, optimizer, step).save()

    fresh = tiny_model(seed=4)
    assert restore_weights(fresh, tmp_path) == prefix
    for restored, saved in zip(weights(fresh.weights), weights(model.weights), strict=True):
        np.testing.assert_array_equal(restored, saved)


def test_a_mismatching_model_is_a_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    prefix = save_at(tmp_path / CHECKPOINT_FOLDER, tiny_model(units=3), 2)
    with pytest.raises(CheckpointError) as error:
        restore_weights(tiny_model(units=5), prefix)
    message = str(error.value)
    assert message.startswith(f"checkpoint {prefix}: cannot restore (")
    assert "\n" not in message
