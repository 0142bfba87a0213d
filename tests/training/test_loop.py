"""The training loop on a tiny Keras model and in-memory data: the step, the log window,
the step count under Horovod, checkpoints at the cadence and resuming from them."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet3d.errors import CheckpointError
from unet3d.runtime.devices import DeviceInfo
from unet3d.runtime.distribute import create_context
from unet3d.training.checkpoint import CHECKPOINT_FOLDER
from unet3d.training.loop import (
    LogWindow,
    clock,
    make_train_step,
    progress_line,
    total_steps,
    train,
)

CPU = DeviceInfo("CPU", ["/device:CPU:0"])
SIDE, CHANNELS, CLASSES, BATCH = 4, 2, 3, 2


@pytest.fixture(scope="module")
def context():
    return create_context({"name": "auto"}, CPU)


def tiny_model(seed: int) -> keras.Model:
    """(None, 4, 4, 4, 2) -> softmax (None, 4, 4, 4, 3): one 1x1x1 convolution."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, SIDE, CHANNELS))
    outputs = keras.layers.Conv3D(CLASSES, 1, activation="softmax")(inputs)
    return keras.Model(inputs, outputs)


def cross_entropy(labels, probabilities):
    """Per-sample mean voxel cross-entropy [B], with the parts the loop logs."""
    picked = tf.gather(probabilities, tf.cast(labels, tf.int32), batch_dims=4)
    per_sample = tf.reduce_mean(-tf.math.log(tf.clip_by_value(picked, 1e-7, 1.0)),
                                axis=[1, 2, 3])
    return per_sample, {"dice_loss": tf.zeros_like(per_sample), "ce_loss": per_sample}


def batch(seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A learnable batch: the label is the argmax of the first channel's bins."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((BATCH, SIDE, SIDE, SIDE, CHANNELS)).astype(np.float32)
    labels = np.digitize(images[..., 0], [-0.5, 0.5]).astype(np.int32)
    return tf.constant(images), tf.constant(labels)


class Recorder:
    """A tracker that keeps what the loop logs, and the input_fn calls."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.first_steps: list[int] = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))

    def input_fn(self, first_step: int):
        self.first_steps.append(first_step)
        images, labels = batch(100 + first_step)
        return lambda input_context=None: tf.data.Dataset.from_tensors((images, labels)).repeat()


def run_training(context, model, output_dir: Path, steps: int, recorder: Recorder,
                 resume: bool = False, on_restored=None, loss_fn=cross_entropy, keep=10):
    with context.scope():
        optimizer = keras.optimizers.Adam(0.05)
    return train(context, model, optimizer, loss_fn=loss_fn, input_fn=recorder.input_fn,
                 steps=steps, batch_size=BATCH, output_dir=output_dir, tracker=recorder,
                 log_every=2, checkpoint_every=2, keep_checkpoints=keep, resume=resume,
                 on_restored=on_restored)


def checkpoints(output_dir: Path) -> list[str]:
    folder = output_dir / CHECKPOINT_FOLDER
    return sorted(path.stem for path in folder.glob("ckpt-*.index")) if folder.is_dir() else []


def test_total_steps_divides_by_the_processes_only_under_horovod():
    assert total_steps(600, 4, divide_by_world_size=True) == 150
    assert total_steps(600, 4, divide_by_world_size=False) == 600
    assert total_steps(601, 2, divide_by_world_size=True) == 300
    assert total_steps(3, 8, divide_by_world_size=True) == 1  # never 0
    assert total_steps(10, 0, divide_by_world_size=True) == 10


def test_train_step_returns_the_global_means_and_lowers_the_loss(context):
    with context.scope():
        model = tiny_model(seed=1)
        optimizer = keras.optimizers.Adam(0.05)
    step = make_train_step(context, model, optimizer, cross_entropy, global_batch=BATCH)
    images, labels = batch(0)
    expected = float(tf.reduce_mean(cross_entropy(labels, model(images))[0]))
    loss, parts = step(images, labels)
    assert list(parts) == ["dice_loss", "ce_loss"]  # the loss's own order
    assert all(value.dtype == tf.float32 and value.shape == ()
               for value in [loss, *parts.values()])
    loss = float(loss)
    assert loss == pytest.approx(expected, rel=1e-5)  # before the update
    assert float(parts["dice_loss"]) == 0.0 and float(parts["ce_loss"]) == pytest.approx(loss)
    losses = [float(step(images, labels)[0]) for _ in range(30)]
    assert losses[-1] < 0.7 * loss
    assert int(optimizer.iterations.numpy()) == 31


def test_log_window_reports_means_speed_and_eta():
    ticks = iter([10.0, 16.0, 20.0])
    window = LogWindow(clock_fn=lambda: next(ticks))
    for loss, dice, ce in [(1.0, 0.4, 0.6), (2.0, 0.8, 1.2), (3.0, 1.2, 1.8)]:
        window.add(loss, {"dice_loss": dice, "ce_loss": ce})
    assert window.last_loss == 3.0
    metrics = window.flush(volumes_per_step=4)
    assert metrics == pytest.approx({"loss": 2.0, "dice_loss": 0.8, "ce_loss": 1.2,
                                     "step_time": 2.0, "volumes_per_second": 2.0})
    window.add(1.0)
    assert window.flush(volumes_per_step=4) == pytest.approx(
        {"loss": 1.0, "step_time": 4.0, "volumes_per_second": 1.0})  # 16 -> 20
    line = progress_line(4, 10, {**metrics, "learning_rate": 1e-3}, elapsed=3725.0)
    assert line == ("step 4/10  loss 2.0000 (dice 0.8000, ce 1.2000)  lr 1.00e-03  2.00 vol/s  "
                    "2.000 s/step  elapsed 1:02:05  ETA 0:00:12")
    bare = {"loss": 0.5, "learning_rate": 0.1, "volumes_per_second": 1.0, "step_time": 1.0,
            "loss_scale": 128.0, "weighted_ce": 0.25}
    assert progress_line(1, 2, bare, 0.0).startswith("step 1/2  loss 0.5000 (weighted_ce "
                                                     "0.2500)  lr 1.00e-01  ")
    del bare["weighted_ce"]
    assert progress_line(1, 2, bare, 0.0).startswith("step 1/2  loss 0.5000  lr 1.00e-01")
    assert clock(-5) == "0:00:00" and clock(59.9) == "0:00:59"


def test_train_checkpoints_at_the_cadence_and_resumes_from_the_newest(context, tmp_path):
    recorder = Recorder()
    events: list[str] = []
    with context.scope():
        model = tiny_model(seed=2)
    result = run_training(context, model, tmp_path, steps=5, recorder=recorder,
                          on_restored=lambda _: events.append(f"restored {len(recorder.logged)}"))
    assert events == ["restored 0"]  # before the first step
    assert (result.first_step, result.last_step) == (0, 5)
    assert Path(result.checkpoint).name == "ckpt-5"
    assert checkpoints(tmp_path) == ["ckpt-2", "ckpt-4", "ckpt-5"]
    assert [step for step, _ in recorder.logged] == [2, 4, 5]
    assert [step for step, _ in result.history["loss"]] == [2, 4, 5]
    assert {"loss", "dice_loss", "ce_loss", "learning_rate", "step_time",
            "volumes_per_second"} <= set(recorder.logged[0][1])
    assert recorder.first_steps == [0]
    assert np.isfinite(result.volumes_per_second) and result.volumes_per_second > 0
    trained = [weight.copy() for weight in model.get_weights()]

    # A fresh model and optimizer resume from ckpt-5: restored weights before the first step.
    resumed = Recorder()
    with context.scope():
        other = tiny_model(seed=3)
    assert not np.allclose(other.get_weights()[0], trained[0])
    seen: list[list[np.ndarray]] = []
    result = run_training(context, other, tmp_path, steps=8, recorder=resumed, resume=True,
                          on_restored=lambda _: seen.append(other.get_weights()), keep=3)
    assert len(seen) == 1
    for restored, saved in zip(seen[0], trained, strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert (result.first_step, result.last_step) == (5, 8)
    assert resumed.first_steps == [5]  # the input restarts seeded with the step
    assert [step for step, _ in resumed.logged] == [6, 8]
    assert checkpoints(tmp_path) == ["ckpt-5", "ckpt-6", "ckpt-8"]  # keep_checkpoints=3

    # At or past the last step there is nothing to train, and nothing is written.
    again = Recorder()
    with context.scope():
        third = tiny_model(seed=4)
    result = run_training(context, third, tmp_path, steps=8, recorder=again, resume=True)
    assert (result.first_step, result.last_step) == (8, 8)
    assert Path(result.checkpoint).name == "ckpt-8"
    assert again.logged == [] and again.first_steps == []
    assert checkpoints(tmp_path) == ["ckpt-5", "ckpt-6", "ckpt-8"]


def test_resume_without_a_checkpoint_fails_before_anything_happens(context, tmp_path):
    called: list[bool] = []
    recorder = Recorder()
    with context.scope():
        model = tiny_model(seed=5)
    with pytest.raises(CheckpointError, match="resume: no checkpoint in"):
        run_training(context, model, tmp_path / "run", steps=4, recorder=recorder,
                     resume=True, on_restored=lambda _: called.append(True))
    assert called == [] and recorder.first_steps == []
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_before_any_checkpoint(context, tmp_path):
    def exploding(labels, probabilities):
        per_sample, parts = cross_entropy(labels, probabilities)
        return per_sample * float("nan"), parts

    with context.scope():
        model = tiny_model(seed=6)
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        run_training(context, model, tmp_path, steps=4, recorder=Recorder(), loss_fn=exploding)
    assert checkpoints(tmp_path) == []


def test_a_loss_with_parts_of_its_own_is_logged_by_their_names(context, tmp_path):
    def weighted(labels, probabilities):
        per_sample, _ = cross_entropy(labels, probabilities)
        return 2.0 * per_sample, {"weighted_ce": 2.0 * per_sample}

    recorder = Recorder()
    with context.scope():
        model = tiny_model(seed=7)
    result = run_training(context, model, tmp_path, steps=2, recorder=recorder,
                          loss_fn=weighted)
    (step, metrics), = recorder.logged
    assert step == 2 and metrics["weighted_ce"] == pytest.approx(metrics["loss"])
    assert "dice_loss" not in metrics and "weighted_ce" in result.history


def test_a_loss_part_named_like_a_loop_metric_is_refused(context, tmp_path):
    def clashing(labels, probabilities):
        per_sample, _ = cross_entropy(labels, probabilities)
        return per_sample, {"learning_rate": per_sample}

    with context.scope():
        model = tiny_model(seed=8)
    with pytest.raises(ValueError, match=r"part\(s\) \['learning_rate'\]"):
        run_training(context, model, tmp_path, steps=2, recorder=Recorder(), loss_fn=clashing)
