"""What ``mode=train`` builds from the config; ``mode=benchmark`` builds the same.

The model (seeded, inside the strategy scope), the optimizer (schedule over the steps this
process trains, wrapped for loss scaling), the loss, the training input and the compiled train
step (``unet3d.training.loop.make_train_step``) come from here, so that the benchmark's
``train`` and ``runner`` targets time exactly what training runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from unet3d.modes.job import Runtime

log = logging.getLogger(__name__)


def divides_steps(strategy: Any) -> bool:
    """True when each process trains ``max_steps / world_size`` steps (Horovod's convention).

    Args:
        strategy: the ``strategy`` config section (``name``, ``divide_steps_by_world_size``).
    """
    return strategy.name == "horovod" and bool(strategy.get("divide_steps_by_world_size", True))


def training_steps(cfg: DictConfig, world_size: int) -> int:
    """The step this process trains to: ``training.max_steps``, divided under Horovod."""
    from unet3d.training.loop import total_steps

    return total_steps(int(cfg.training.max_steps), world_size, divides_steps(cfg.strategy))


def build_model(cfg: DictConfig, runtime: Runtime) -> Any:
    """The ``model`` group's network, seeded and built inside the strategy scope.

    The weights are seeded with ``seed + rank``; rank 0's are broadcast (or mirrored).
    """
    import keras

    from unet3d.model.build import build_model_from_config

    keras.utils.set_random_seed(int(cfg.seed) + int(runtime.context.rank))
    with runtime.context.scope():
        model = build_model_from_config(cfg.model)
    log.info("model %s: %s parameters", cfg.model.name, f"{model.count_params():,}")
    # The dtypes the built model really uses (not only the policy that was asked for).
    compute = sorted({layer.compute_dtype for layer in model.layers if layer.weights})
    variables = sorted({str(variable.dtype) for variable in model.weights})
    log.info("model dtypes: layers compute in %s, variables %s, output %s (policy %s)",
             "/".join(compute), "/".join(variables),
             model.outputs[0].dtype if getattr(model, "outputs", None) else "float32",
             runtime.precision.policy_name)
    return model


def build_optimizer(cfg: DictConfig, runtime: Runtime) -> Any:
    """The optimizer, its ``lr_schedule`` group's schedule over this process's steps.

    Built inside the strategy scope and wrapped by the precision (a ``LossScaleOptimizer``
    with dynamic loss scaling for float16).
    """
    from unet3d.runtime.precision import wrap_optimizer
    from unet3d.training.optimizer import build_optimizer as optimizer_from_config

    context = runtime.context
    with context.scope():
        optimizer = wrap_optimizer(
            optimizer_from_config(cfg.lr_schedule, training_steps(cfg, context.world_size)),
            runtime.precision,
        )
    if runtime.precision.loss_scale:
        log.info("optimizer Adam wrapped in a LossScaleOptimizer (dynamic loss scaling, initial "
                 "scale %g)", optimizer.initial_scale)
    return optimizer


def build_loss(cfg: DictConfig, convention: Any = None) -> Callable:
    """``loss_fn(labels, probabilities) -> (per-sample loss, parts)`` of the ``loss`` group.

    Args:
        cfg: the job config (``loss``, ``model.num_classes``, ``model.head``).
        convention: the data set's ``LabelConvention`` (the region loss's regions); None =
            BraTS 2018-2021.
    """
    from unet3d.model.heads import output_channels
    from unet3d.training.losses import build_loss as loss_from_config

    return loss_from_config(cfg.loss, int(cfg.model.num_classes),
                            output_channels=output_channels(cfg.model), convention=convention)


def build_train_step(cfg: DictConfig, runtime: Runtime, model: Any, optimizer: Any) -> Callable:
    """The compiled distributed train step of the training loop, for the global batch.

    Returns:
        ``step(images, labels) -> (loss, dice_loss, ce_loss)``
        (``unet3d.training.loop.make_train_step``).
    """
    from unet3d.training.loop import make_train_step

    context = runtime.context
    global_batch = context.global_batch_size(int(cfg.data.batch_size))
    return make_train_step(context, model, optimizer, build_loss(cfg), global_batch,
                           jit_compile=bool(runtime.precision.xla))


def make_dataset_fn(data: Any, train_files: Sequence[str], seed: int,
                    local_processes: int = 1) -> Callable[[Any], Any]:
    """``dataset_fn(input_context)`` of the training input (per-replica batches, sharded).

    Args:
        data: the ``data`` config section (``crop_size``, ``batch_size``, ``augment``,
            ``augmentation``, ``foreground_probability``, ``shuffle_buffer``, ``cache``).
        train_files: the fold's training records.
        seed: the pipeline's seed (crops, augmentation, shuffling).
        local_processes: training processes on this machine (``data.cache: auto`` shares the
            memory among them; ``unet3d.data.memory``).
    """
    from unet3d.data.augment.compose import Augmentation
    from unet3d.data.pipeline import train_dataset

    section = data.get("augmentation")  # conf/augmentation/ (None: the reference recipe)
    augmentation = None if section is None else Augmentation.from_config(section)

    def dataset_fn(input_context: Any = None) -> Any:
        return train_dataset(
            list(train_files),
            crop_size=tuple(data.crop_size),
            batch_size=int(data.batch_size),
            augment=bool(data.augment),
            augmentation=augmentation,
            seed=seed,
            foreground_probability=float(data.foreground_probability),
            shuffle_buffer=int(data.shuffle_buffer),
            cache=data.cache,
            input_context=input_context,
            local_processes=local_processes,
        )

    return dataset_fn


def make_input_fn(cfg: DictConfig, train_files: Sequence[str],
                  local_processes: int = 1) -> Callable[[int], Callable]:
    """``input_fn(first_step)`` of the training loop: the input seeded ``seed + first_step``
    (``local_processes``: as ``make_dataset_fn``'s)."""
    return lambda first_step: make_dataset_fn(cfg.data, train_files, int(cfg.seed) + first_step,
                                              local_processes)
