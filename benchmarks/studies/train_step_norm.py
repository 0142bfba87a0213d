"""Where the mixed_bfloat16 train step loses: instance norm variants, interleaved.

The reference-width U-Net's train step (``benchmarks/train_step.py``'s ``measure``: Adam,
``dice+ce``, one ``tf.function``, batch 1, in-memory tensors) with the conv unit's instance
norm swapped (monkeypatched builders, the model module itself unchanged):

- ``keras``: ``keras.layers.GroupNormalization(groups=-1)`` (today's model): under bf16 it
  reshapes into groups, upcasts the whole activation to float32, normalises in float32 and
  casts back;
- ``bf16_apply``: statistics in float32 (``moments`` of the upcast activation), then one
  per-channel multiply-add applied in the compute dtype (no float32 copy of the output);
- ``fused_f32``: norm and LeakyReLU together in float32, one cast back to the compute dtype.

Each (variant, precision) runs in its own child process; rounds are interleaved and the
amp/fp32 ratio is taken per round between the variant's bf16 and the *keras* fp32 step.

    python -m benchmarks.studies.train_step_norm --side 64 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, subprocess_env, write_result

VARIANTS = ("keras", "bf16_apply", "fused_f32")


def install_variant(variant: str) -> None:
    """Swap the U-Net's norm (and, for ``fused_f32``, its conv unit) for ``variant``."""
    import keras
    from keras import ops

    import unet3d.model.unet3d as unet

    if variant == "keras":
        return

    class InstanceNorm(keras.layers.Layer):
        """Instance norm, statistics in float32, per-channel affine (gamma, beta)."""

        def __init__(self, epsilon: float = 1e-6, activation_slope: float | None = None,
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.epsilon = epsilon
            self.activation_slope = activation_slope

        def build(self, input_shape: Any) -> None:
            channels = int(input_shape[-1])
            self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

        def call(self, inputs: Any) -> Any:
            x32 = ops.cast(inputs, "float32")
            mean, variance = ops.moments(x32, axes=[1, 2, 3], keepdims=True)
            scale = ops.rsqrt(variance + self.epsilon) * ops.cast(self.gamma, "float32")
            shift = ops.cast(self.beta, "float32") - mean * scale
            if self.activation_slope is None:  # bf16_apply
                return inputs * ops.cast(scale, inputs.dtype) + ops.cast(shift, inputs.dtype)
            y = x32 * scale + shift  # fused_f32
            y = ops.leaky_relu(y, negative_slope=self.activation_slope)
            return ops.cast(y, self.compute_dtype)

    def norm_layer(norm: str, channels: int, name: str) -> Any:
        return InstanceNorm(epsilon=unet.NORM_EPSILON, name=name)

    unet._norm_layer = norm_layer
    if variant == "fused_f32":
        def conv_unit(x: Any, filters: int, norm: str, name: str, strides: int = 1) -> Any:
            x = keras.layers.Conv3D(filters, kernel_size=3, strides=strides, padding="same",
                                    use_bias=False, name=f"{name}_conv")(x)
            return InstanceNorm(epsilon=unet.NORM_EPSILON, activation_slope=unet.LEAKY_SLOPE,
                                name=f"{name}_norm")(x)

        unet._conv_unit = conv_unit


def child(config: dict[str, Any]) -> dict[str, Any]:
    install_variant(config["variant"])
    from benchmarks.train_step import measure

    result = measure("reference", config["side"], 1, config["precision"], False,
                     config["warmup"], config["steps"], 1, 0, 0)
    return {**result, "variant": config["variant"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train_step_norm.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(child(json.loads(arguments.child))), flush=True)
        return
    configs = [("keras", "fp32")] + [(variant, "bf16") for variant in arguments.variants]
    runs: dict[str, list[float]] = {}
    for round_index in range(arguments.rounds):
        for variant, precision in configs:
            config = {"variant": variant, "precision": precision, "side": arguments.side,
                      "warmup": arguments.warmup, "steps": arguments.steps}
            process = subprocess.run(
                [sys.executable, "-m", "benchmarks.studies.train_step_norm", "--child",
                 json.dumps(config)],
                capture_output=True, text=True, env=subprocess_env())
            if process.returncode != 0:
                raise SystemExit(f"{variant} {precision} failed:\n{process.stderr[-3000:]}")
            result = json.loads(process.stdout.strip().splitlines()[-1])
            key = f"{variant}_{precision}"
            runs.setdefault(key, []).append(result["step_time_median_s"])
            print(f"round {round_index + 1}: {key:16s} {result['step_time_median_s']:.3f} s/step"
                  f" peak RSS {result['peak_rss_mb']:.0f} MiB", flush=True)
    ratios = {key: statistics.median([value / base for value, base in
                                      zip(values, runs["keras_fp32"], strict=True)])
              for key, values in runs.items() if key != "keras_fp32"}
    print(f"median ratio to keras fp32: {json.dumps(ratios)}", flush=True)
    write_result(arguments.out, {"benchmark": "train_step_norm", "side": arguments.side,
                                 "rounds": arguments.rounds, "step_seconds": runs,
                                 "median_ratio_to_keras_fp32": ratios,
                                 "method": "one child process per (variant, precision), "
                                           "rounds interleaved, ratio per round, median"})


if __name__ == "__main__":
    main()
