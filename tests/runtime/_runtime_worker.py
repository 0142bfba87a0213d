"""Helper run in subprocesses by tests/runtime (TensorFlow device setup is once per process).

Usage:
    python _runtime_worker.py devices <auto|cpu|gpu|mlu>         -> JSON on stdout
    python _runtime_worker.py mirrored <out.json>                   2 logical CPUs vs one device
    python _runtime_worker.py nonfinite <out.json>                  LSO skip agreed by replicas
    python _runtime_worker.py multi_worker <out_dir>                TF_CONFIG set by the caller
    python _runtime_worker.py horovod <out_dir>                     under horovodrun -np 2

Training modes train a tiny Conv3D model with one custom loop written against
DistributedContext and, alongside, a plain single-device reference on the same global batches
starting from the same (broadcast) initial weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GLOBAL_BATCH = 2
STEPS = 3
SHAPE = (4, 4, 4, 2)
NUM_CLASSES = 3
LEARNING_RATE = 0.5


def _data(steps: int):
    import numpy as np

    rng = np.random.default_rng(1234)
    images = rng.normal(size=(steps * GLOBAL_BATCH, *SHAPE)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=(steps * GLOBAL_BATCH, *SHAPE[:3])).astype("int32")
    return images, labels


def _build_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    hidden = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv3D(NUM_CLASSES, 1, activation="softmax", dtype="float32")(hidden)
    return keras.Model(inputs, outputs)


def _per_sample_loss(labels, probabilities):
    import keras
    import tensorflow as tf

    voxel = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
    return tf.reduce_mean(voxel, axis=[1, 2, 3])


def _make_train_step(context, model, optimizer, global_batch):
    import tensorflow as tf

    def step(images, labels):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            loss = tf.reduce_sum(_per_sample_loss(labels, probabilities)) / global_batch
            scaled = optimizer.scale_loss(loss)
        grads = context.gradients(tape, scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def train_step(images, labels):
        return context.reduce_sum(context.run(step, (images, labels)))

    return train_step


def _reference(initial_weights, images, labels, steps):
    """Plain single-device training on the full global batches."""
    import keras
    import tensorflow as tf

    model = _build_model(0)
    model.set_weights(initial_weights)
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    losses = []

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(_per_sample_loss(y, model(x, training=True))) / GLOBAL_BATCH
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    for index in range(steps):
        batch = slice(index * GLOBAL_BATCH, (index + 1) * GLOBAL_BATCH)
        losses.append(float(train_step(images[batch], labels[batch])))
    return model.get_weights(), losses


def _train_with_context(context, seed: int, steps: int):
    """Train via the context; return (initial weights, final weights, losses, reference)."""
    import keras
    import tensorflow as tf

    images, labels = _data(steps)
    with context.scope():
        model = _build_model(seed)
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
        optimizer.build(model.trainable_variables)
    context.broadcast_variables(model.variables + optimizer.variables)
    initial = model.get_weights()

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(GLOBAL_BATCH)
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return dataset.batch(per_replica)

    dataset = context.distribute_dataset(dataset_fn)
    train_step = _make_train_step(context, model, optimizer, context.global_batch_size(1))
    losses = []
    iterator = iter(dataset)
    for _ in range(steps):
        images_batch, labels_batch = next(iterator)
        losses.append(float(train_step(images_batch, labels_batch)))
    context.barrier()
    reference_weights, reference_losses = _reference(initial, images, labels, steps)
    return initial, model.get_weights(), losses, reference_weights, reference_losses


def _save(path: Path, context, initial, final, losses, reference, reference_losses) -> None:
    import numpy as np

    arrays = {f"final_{i}": w for i, w in enumerate(final)}
    arrays.update({f"initial_{i}": w for i, w in enumerate(initial)})
    arrays.update({f"reference_{i}": w for i, w in enumerate(reference)})
    np.savez(path.with_suffix(".npz"), **arrays)
    summary = {
        "rank": context.rank,
        "world_size": context.world_size,
        "num_replicas": context.num_replicas,
        "is_chief": context.is_chief,
        "uses_horovod": context.uses_horovod,
        "shard_spec": list(context.shard_spec()),
        "losses": losses,
        "reference_losses": reference_losses,
        "num_weights": len(final),
    }
    path.with_suffix(".json").write_text(json.dumps(summary))


def mode_devices(requested: str) -> int:
    from unet3d.errors import Unet3dError
    from unet3d.runtime.devices import configure_devices

    cfg = {
        "type": requested,
        "memory_growth": True,
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "mlu_thread_mode": "mlu_private",
        "mlu_thread_count": 8,
    }
    try:
        info = configure_devices(cfg)
    except Unet3dError as error:
        print(
            json.dumps(
                {
                    "error": type(error).__name__,
                    "message": str(error),
                    "mlu_env": [
                        os.environ.get("TF_MLU_THREAD_MODE"),
                        os.environ.get("TF_MLU_THREAD_COUNT"),
                    ],
                }
            )
        )
        return 0
    import tensorflow as tf

    print(
        json.dumps(
            {
                "type": info.type,
                "names": info.names,
                "count": info.count,
                "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            }
        )
    )
    return 0


def mode_mirrored(out: Path) -> int:
    from unet3d.runtime.devices import configure_devices, split_logical_cpus
    from unet3d.runtime.distribute import create_context

    split_logical_cpus(2)
    info = configure_devices({"type": "cpu"})
    assert info.names == ["/device:CPU:0", "/device:CPU:1"], info
    context = create_context({"name": "mirrored"}, info)
    initial, final, losses, reference, reference_losses = _train_with_context(context, 0, 1)
    _save(out, context, initial, final, losses, reference, reference_losses)
    return 0


def mode_nonfinite(out: Path) -> int:
    """Replica 1 sees a NaN input: a LossScaleOptimizer must skip the step on both replicas."""
    import keras
    import numpy as np
    import tensorflow as tf

    from unet3d.runtime.devices import configure_devices, split_logical_cpus
    from unet3d.runtime.distribute import create_context

    split_logical_cpus(2)
    context = create_context({"name": "mirrored"}, configure_devices({"type": "cpu"}))
    images, labels = _data(1)
    images[1] = np.nan
    with context.scope():
        model = _build_model(0)
        optimizer = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD(LEARNING_RATE))
        optimizer.build(model.trainable_variables)
    initial = [w.copy() for w in model.get_weights()]

    def dataset_fn(input_context):
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        return dataset.batch(input_context.get_per_replica_batch_size(GLOBAL_BATCH))

    dataset = context.distribute_dataset(dataset_fn)
    train_step = _make_train_step(context, model, optimizer, GLOBAL_BATCH)
    images_batch, labels_batch = next(iter(dataset))
    train_step(images_batch, labels_batch)
    per_replica = [
        [np.asarray(v) for v in context.local_results(variable.value)]
        for variable in model.trainable_variables
    ]
    out.write_text(
        json.dumps(
            {
                "unchanged": all(
                    np.array_equal(a, b) for a, b in zip(initial, model.get_weights(), strict=True)
                ),
                "replicas_equal": all(
                    np.array_equal(values[0], values[1]) for values in per_replica
                ),
                "scale": float(optimizer.dynamic_scale.numpy()),
                "initial_scale": float(optimizer.initial_scale),
            }
        )
    )
    return 0


def mode_multi_worker(out_dir: Path) -> int:
    from unet3d.runtime.devices import configure_devices
    from unet3d.runtime.distribute import create_context, multi_worker_env

    env = multi_worker_env("tf_config")
    info = configure_devices({"type": "cpu"}, env.local_rank, env.local_size)
    context = create_context(
        {"name": "multi_worker", "cluster_resolver": "tf_config", "communication": "ring"}, info
    )
    result = _train_with_context(context, seed=100 + context.rank, steps=STEPS)
    _save(out_dir / f"rank{context.rank}", context, *result)
    return 0


def mode_horovod(out_dir: Path) -> int:
    from unet3d.runtime.devices import configure_devices
    from unet3d.runtime.distribute import create_context, horovod_env

    env = horovod_env()
    info = configure_devices({"type": "cpu"}, env.local_rank, env.local_size)
    context = create_context({"name": "horovod"}, info)
    assert context.rank == env.rank and context.world_size == env.world_size, (context, env)
    result = _train_with_context(context, seed=100 + context.rank, steps=STEPS)
    _save(out_dir / f"rank{context.rank}", context, *result)
    return 0


def main(argv: list[str]) -> int:
    mode, argument = argv[1], argv[2]
    if mode == "devices":
        return mode_devices(argument)
    handlers = {
        "mirrored": mode_mirrored,
        "nonfinite": mode_nonfinite,
        "multi_worker": mode_multi_worker,
        "horovod": mode_horovod,
    }
    return handlers[mode](Path(argument))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
