"""Inputs of the whole-volume predict benchmarks: raw cases on disk and a checkpoint to load.

Not a test module and not part of ``unet3d``: ``benchmarks.predict_vs_monai`` and
``benchmarks.studies.predict_crop`` import it as ``benchmarks._predict_inputs``.

- ``write_cases``: BraTS-2019-named raw case folders (``<id>/<id>_{t1,t1ce,t2,flair}.nii.gz``,
  no label) of a 240 x 240 x 155 grid whose synthetic brain is about as large as a real one
  (generated on a deeper grid, cut to the output grid around the brain, moved off-centre),
  written with the project's synthetic writer.
- ``write_checkpoint``: a run folder with a checkpoint of the U-Net at given widths (random
  weights, seeded: timing does not depend on them) and a ``.hydra/config.yaml`` recording its
  ``model`` group, as ``mode=predict``'s ``predict.checkpoint`` reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def cut_and_shift(case: Any, shape: Sequence[int], shift: Sequence[int]) -> Any:
    """The case cut to ``shape`` around its brain, then moved by ``shift`` voxels (clipped)."""
    from unet3d.data.synthetic.case import make_affine

    image, arrays = case.image, {"label": case.label, "tissue": case.tissue}
    mask = np.any(image != 0, axis=-1)
    window = []
    for axis, side in enumerate(shape):
        present = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        centre = (int(present[0]) + int(present[-1]) + 1) // 2
        start = int(np.clip(centre - side // 2, 0, image.shape[axis] - side))
        window.append(slice(start, start + side))
    image = image[tuple(window)]
    arrays = {key: value[tuple(window)] for key, value in arrays.items()}
    mask = np.any(image != 0, axis=-1)
    moved = []
    for axis, step in enumerate(shift):
        present = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        moved.append(int(np.clip(step, -int(present[0]), shape[axis] - 1 - int(present[-1]))))
    image = np.ascontiguousarray(np.roll(image, moved, axis=(0, 1, 2)))
    arrays = {key: np.ascontiguousarray(np.roll(value, moved, axis=(0, 1, 2)))
              for key, value in arrays.items()}
    return dataclasses.replace(case, image=image, affine=make_affine(shape, (1.0, 1.0, 1.0)),
                               **arrays)


def write_cases(folder: Path, count: int = 1, shape: Sequence[int] = (240, 240, 155),
                generate: Sequence[int] = (240, 240, 190), shift: Sequence[int] = (24, -20, 4),
                seed: int = 7) -> list[dict[str, Any]]:
    """Write ``count`` raw cases into ``folder`` (kept when already there); describe them.

    Returns:
        Per case: ``case_id``, ``shape`` and the non-zero (brain) box ``box_start`` /
        ``box_shape`` (voxels).
    """
    from unet3d.data.crop import nonzero_box
    from unet3d.data.synthetic.case import generate_case
    from unet3d.data.synthetic.layouts import write_case

    folder = Path(folder)
    described = []
    for index in range(count):
        case = generate_case(seed, index, tuple(generate), (1.0, 1.0, 1.0))
        if tuple(generate) != tuple(shape) or any(shift):
            case = cut_and_shift(case, tuple(shape), tuple(shift))
        if not (folder / case.case_id).is_dir():
            write_case("flat", case, folder)  # with its label: removed, nothing is scored
            (folder / case.case_id / f"{case.case_id}_seg.nii.gz").unlink(missing_ok=True)
        box = nonzero_box(case.image)
        described.append({"case_id": case.case_id, "shape": list(case.image.shape[:3]),
                          "box_start": list(box.start), "box_shape": list(box.shape)})
    return described


def write_checkpoint(run_dir: Path, widths: dict[str, Any], seed: int = 0) -> str:
    """A checkpoint of the U-Net with ``widths`` (random weights, float32) in ``run_dir``.

    Returns the checkpoint prefix. ``run_dir/.hydra/config.yaml`` records ``fold: 0`` and the
    ``model`` group (``_target_`` and ``widths``), so predict rebuilds this network.
    """
    import keras
    import tensorflow as tf
    from omegaconf import OmegaConf

    from unet3d.config import UNET3D_TARGET
    from unet3d.model.build import build_model_from_config
    from unet3d.training.checkpoint import CHECKPOINT_FOLDER, Checkpointer

    run_dir = Path(run_dir)
    existing = sorted((run_dir / CHECKPOINT_FOLDER).glob("ckpt-*.index"))
    if existing:
        return str(existing[-1].with_suffix(""))
    model_cfg = {"_target_": UNET3D_TARGET, "name": "unet3d", "in_channels": 4,
                 "num_classes": 4, **widths}
    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy("float32")
    model = build_model_from_config(model_cfg)
    step = tf.Variable(1, dtype=tf.int64, trainable=False)
    prefix = Checkpointer(run_dir / CHECKPOINT_FOLDER, model, None, step).save()
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"fold": 0, "model": model_cfg}),
                   run_dir / ".hydra" / "config.yaml")
    return str(prefix)
