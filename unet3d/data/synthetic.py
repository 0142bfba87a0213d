"""Synthetic BraTS-2019-format data sets: generated cases written as NIfTI in BraTS layout.

Each case is generated from ``numpy.random.default_rng([seed, index])`` alone, so a case does not
depend on how many cases are generated. The images are built from a tissue map (CSF, grey
matter, white matter, ventricles) and a tumour (edema, necrotic core, enhancing rim) with
modality-specific intensities, partial-volume smoothing, a smooth multiplicative bias field and
Gaussian noise; the background is 0 as in skull-stripped BraTS data.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.config import SYNTHETIC_LAYOUTS as LAYOUTS
from unet3d.data._files import Progress, read_json, remove_stale_tmp_files, short_hash
from unet3d.data.labels import MODALITIES
from unet3d.data.synthetic_case import (
    SyntheticCase,
    case_grade,
    case_id_for,
    generate_case,
)
from unet3d.errors import ConfigError, DataError
from unet3d.runs.files import write_bytes_atomic, write_json_atomic

logger = logging.getLogger(__name__)

#: Bumped whenever the generated content changes (part of the manifest and of the cache key).
GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic_manifest.json"
def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _case_dir(out_dir: Path, case_id: str, grade: str, layout: str) -> Path:
    return out_dir / grade / case_id if layout == "brats2019" else out_dir / case_id


def _case_files(case_dir: Path, case_id: str) -> list[Path]:
    return [case_dir / f"{case_id}_{name}.nii.gz" for name in (*MODALITIES, "seg")]


def write_case(case: SyntheticCase, case_dir: Path) -> None:
    """Write a case's four modalities and seg as ``.nii.gz`` files, each atomically."""
    files = _case_files(case_dir, case.case_id)
    for channel, path in enumerate(files[:4]):
        write_bytes_atomic(
            path, _nifti_bytes(np.ascontiguousarray(case.image[..., channel]), case.affine)
        )
    write_bytes_atomic(files[4], _nifti_bytes(case.label, case.affine))


def _settings(shape: Sequence[int], spacing: Sequence[float], seed: int, layout: str) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "shape": [int(s) for s in shape],
        "spacing": [float(s) for s in spacing],
        "seed": int(seed),
        "layout": layout,
    }


def _validate(num_cases: int, shape: Sequence[int], spacing: Sequence[float], layout: str) -> None:
    if int(num_cases) < 1:
        raise ConfigError(f"data.synthetic.num_cases: must be >= 1, got {num_cases}")
    if len(shape) != 3 or any(int(s) < 8 for s in shape):
        raise ConfigError(f"data.synthetic.shape: must be 3 sizes >= 8, got {list(shape)}")
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ConfigError(f"data.synthetic.spacing: must be 3 values > 0, got {list(spacing)}")
    if layout not in LAYOUTS:
        raise ConfigError(f"data.synthetic.layout: must be one of {list(LAYOUTS)}, got {layout!r}")


def generate_dataset(
    out_dir: str | Path,
    num_cases: int,
    shape: Sequence[int],
    spacing: Sequence[float],
    seed: int,
    layout: str = "flat",
) -> list[str]:
    """Write ``num_cases`` synthetic BraTS cases under ``out_dir``; return their case ids.

    Layout "flat": ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``; "brats2019": the same under
    ``HGG/`` or ``LGG/``. Idempotent: ``synthetic_manifest.json`` records the settings and cases
    whose five files exist are not rewritten. Raises DataError when ``out_dir`` holds data made
    with other settings or data that this generator did not write.
    """
    out_dir = Path(out_dir)
    shape = [int(s) for s in shape]
    spacing = [float(s) for s in spacing]
    _validate(num_cases, shape, spacing, layout)
    settings = _settings(shape, spacing, seed, layout)
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("settings") != settings:
            raise DataError(
                f"{manifest_path}: the synthetic data there was generated with other settings "
                f"({manifest.get('settings') if isinstance(manifest, dict) else 'unreadable'}, "
                f"wanted {settings}); delete {out_dir} or choose another folder"
            )
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir}: folder is not empty and has no {MANIFEST_NAME}; refusing to write "
            "synthetic data into it (choose an empty folder)"
        )
    else:
        manifest = {"settings": settings, "num_cases": 0, "cases": {}}
    remove_stale_tmp_files(out_dir)

    case_ids = [case_id_for(index) for index in range(num_cases)]
    grades = [case_grade(seed, index) for index in range(num_cases)]
    pending = [
        index
        for index in range(num_cases)
        if not all(
            path.is_file()
            for path in _case_files(
                _case_dir(out_dir, case_ids[index], grades[index], layout), case_ids[index]
            )
        )
    ]
    updated = {
        "settings": settings,
        "num_cases": max(int(manifest.get("num_cases", 0)), num_cases),
        "cases": {
            **manifest.get("cases", {}),
            **{
                case_ids[i]: str(_case_dir(Path("."), case_ids[i], grades[i], layout))
                for i in range(num_cases)
            },
        },
    }
    if updated != manifest or not manifest_path.exists():
        write_json_atomic(manifest_path, updated, sort_keys=True)
    if not pending:
        logger.info("Synthetic data set in %s is complete (%d cases)", out_dir, num_cases)
        return case_ids

    logger.info(
        "Generating %d synthetic BraTS case(s) of shape %s (spacing %s, seed %d, layout %s) in %s",
        len(pending),
        shape,
        spacing,
        seed,
        layout,
        out_dir,
    )
    start = time.perf_counter()
    progress = Progress(len(pending), "Generating synthetic cases", logger)
    try:
        for index in pending:
            case = generate_case(seed, index, shape, spacing)
            write_case(case, _case_dir(out_dir, case.case_id, case.grade, layout))
            progress.update()
    finally:
        progress.close()
    logger.info(
        "Generated %d case(s) in %.1f s (%.2f s per case)",
        len(pending),
        time.perf_counter() - start,
        (time.perf_counter() - start) / len(pending),
    )
    return case_ids


def synthetic_settings_key(synthetic_cfg: Any) -> str:
    """Short hash of the generator settings (including the number of cases)."""
    payload = _settings(
        list(synthetic_cfg.shape),
        list(synthetic_cfg.spacing),
        int(synthetic_cfg.seed),
        str(synthetic_cfg.get("layout", "flat")),
    )
    payload["num_cases"] = int(synthetic_cfg.num_cases)
    return short_hash(payload)
