"""GPU throughput of the unet3d model where no TensorFlow GPU build can be installed.

The lent GPU machines of our workplace have JAX (CUDA 13) but no TensorFlow, and TensorFlow's
CUDA wheels are far larger than what can be carried there. The model code is plain Keras 3,
so this script runs the *same* ``build_unet3d`` network with ``KERAS_BACKEND=jax``: a jitted
train step (forward, dice+ce loss, gradients, Adam) at the reference shape (128^3 crops,
batch 2) in float32, mixed_float16 and mixed_bfloat16, and batch-1 inference at 224x224x160.
It measures the network on the GPU, not our TensorFlow runner.

Usage: KERAS_BACKEND=jax python -m benchmarks.studies.gpu_keras_jax (writes this GPU's record
of benchmarks/results/gpu_keras_jax.json)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
from omegaconf import OmegaConf

from benchmarks._common import RESULTS_DIR, write_result
from unet3d.model.unet3d import build_unet3d, count_forward_flops

#: The reference network: the arguments of conf/model/unet3d.yaml.
REFERENCE = {key: value for key, value in OmegaConf.to_container(OmegaConf.load(
    Path(__file__).resolve().parents[2] / "conf" / "model" / "unet3d.yaml")).items()
    if key != "_target_"}


def dice_ce_loss(labels: jax.Array, probabilities: jax.Array) -> jax.Array:
    """Mean over the batch of (1 - foreground soft Dice) + voxel cross-entropy."""
    probabilities = probabilities.astype(jnp.float32)
    one_hot = jax.nn.one_hot(labels, 4, dtype=jnp.float32)
    axes = (1, 2, 3)
    intersection = jnp.sum(one_hot * probabilities, axis=axes)
    denominator = jnp.sum(one_hot, axis=axes) + jnp.sum(probabilities, axis=axes) + 1e-5
    dice = 2.0 * intersection / denominator
    dice_loss = jnp.mean(1.0 - dice[:, 1:], axis=-1)
    cross_entropy = -jnp.mean(
        jnp.sum(one_hot * jnp.log(jnp.clip(probabilities, 1e-7, 1.0)), axis=-1), axis=axes
    )
    return jnp.mean(dice_loss + cross_entropy)


def time_calls(function, count: int) -> list[float]:
    """Wall time of ``count`` calls, each waited for on the device."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        jax.block_until_ready(function())
        times.append(time.perf_counter() - started)
    return times


def summarise(times: list[float], volumes: int) -> dict[str, float]:
    """Throughput and latency percentiles in the seed's shape."""
    array = np.asarray(times)
    return {
        "volumes_per_second": float(np.mean(volumes / array)),
        "latency_mean_ms": float(array.mean() * 1e3),
        "latency_p50_ms": float(np.percentile(array, 50) * 1e3),
        "latency_p90_ms": float(np.percentile(array, 90) * 1e3),
        "latency_p95_ms": float(np.percentile(array, 95) * 1e3),
        "latency_p99_ms": float(np.percentile(array, 99) * 1e3),
    }


def train_benchmark(policy: str, batch: int, side: int, warmup: int, steps: int) -> dict:
    """Throughput of jitted train steps under a Keras dtype policy."""
    keras.mixed_precision.set_global_policy(policy)
    model = build_unet3d(**REFERENCE)
    optimizer = keras.optimizers.Adam(2e-4)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch, side, side, side, 4)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 4, size=(batch, side, side, side)).astype(np.int32))

    def loss_fn(trainable, non_trainable, x, y):
        probabilities, non_trainable = model.stateless_call(trainable, non_trainable, x,
                                                            training=True)
        return dice_ce_loss(y, probabilities), non_trainable

    gradient_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @jax.jit
    def train_step(state, x, y):
        trainable, non_trainable, optimizer_variables = state
        (loss, non_trainable), gradients = gradient_fn(trainable, non_trainable, x, y)
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, gradients, trainable
        )
        return loss, (trainable, non_trainable, optimizer_variables)

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    holder = {"state": state}

    def one_step():
        loss, holder["state"] = train_step(holder["state"], images, labels)
        return loss

    compile_started = time.perf_counter()
    first_loss = float(one_step())
    compile_seconds = time.perf_counter() - compile_started
    time_calls(one_step, warmup)
    times = time_calls(one_step, steps)
    result = summarise(times, batch)
    flops = 3 * count_forward_flops(REFERENCE, side) * batch
    result.update({
        "policy": policy, "batch": batch, "crop": side, "first_loss": first_loss,
        "compile_seconds": compile_seconds,
        "achieved_tflops": flops / float(np.mean(times)) / 1e12,
        "compute_dtype": str(model.layers[1].compute_dtype),
        "output_dtype": str(model.output.dtype),
    })
    return result


def inference_benchmark(policy: str, shape: tuple[int, int, int], warmup: int,
                        steps: int) -> dict:
    """Batch-1 forward passes at the reference inference shape."""
    keras.mixed_precision.set_global_policy(policy)
    model = build_unet3d(**REFERENCE)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    image = jnp.asarray(np.random.default_rng(1).normal(size=(1, *shape, 4)).astype(np.float32))

    @jax.jit
    def forward(x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    jax.block_until_ready(forward(image))
    time_calls(lambda: forward(image), warmup)
    result = summarise(time_calls(lambda: forward(image), steps), 1)
    result.update({"policy": policy, "shape": list(shape)})
    return result


def main() -> None:
    """Run every benchmark and write one JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS_DIR / "gpu_keras_jax.json"))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--predict-shape", default="224,224,160")
    arguments = parser.parse_args()
    report = {"devices": [str(device) for device in jax.devices()], "jax": jax.__version__,
              "keras": keras.__version__, "train": [], "predict": []}
    print(json.dumps(report), flush=True)
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        entry = train_benchmark(policy, arguments.batch, arguments.crop, arguments.warmup,
                                arguments.steps)
        report["train"].append(entry)
        print(json.dumps(entry), flush=True)
    shape = tuple(int(side) for side in arguments.predict_shape.split(","))
    for policy in ("float32", "mixed_float16"):
        entry = inference_benchmark(policy, shape, arguments.warmup, arguments.steps)
        report["predict"].append(entry)
        print(json.dumps(entry), flush=True)
    # The host record names the GPU (``host_key`` keys the file by it, not by the CPU).
    gpu = jax.devices()[0].device_kind
    write_result(arguments.out, {"benchmark": "gpu_keras_jax", **report,
                                 "environment": {"gpu": gpu}})


if __name__ == "__main__":
    main()
