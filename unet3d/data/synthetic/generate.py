"""Synthetic brain-tumour data sets: generated cases written as NIfTI in a public data set's layout.

Each case is generated from ``numpy.random.default_rng([seed, index])`` alone, so a case does not
depend on how many cases are generated. The images are built from a tissue map (CSF, grey
matter, white matter, ventricles) and a tumour (edema, necrotic core, enhancing rim) with
modality-specific intensities, partial-volume smoothing, a smooth multiplicative bias field and
Gaussian noise; the background is 0 as in skull-stripped BraTS data (one case:
:mod:`unet3d.data.synthetic.case`; harder settings: :mod:`unet3d.config.synthetic_options`). The
same cases are written in any of the layouts and label conventions of
:mod:`unet3d.data.synthetic.layouts` (``flat``, ``brats2019``, ``brats2023``, ``msd_brain``,
``nnunet_raw``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet3d.config.synthetic_options import OPTION_KEYS, SyntheticOptions, options_from
from unet3d.data._files import Progress, read_json, short_hash
from unet3d.data.parallel import process_map, worker_count
from unet3d.data.synthetic.case import case_grade, generate_case
from unet3d.data.synthetic.layouts import (
    LAYOUTS,
    TEST_FOLDER_LAYOUTS,
    case_files,
    case_id_for,
    case_record,
    dataset_json,
    write_case,
)
from unet3d.errors import ConfigError, DataError
from unet3d.runs.files import remove_stale_temporaries, write_json_atomic

logger = logging.getLogger(__name__)

#: Bumped whenever the generated content changes (part of the manifest and of the cache key).
GENERATOR_VERSION = 1
MANIFEST_NAME = "synthetic_manifest.json"
DATASET_JSON_NAME = "dataset.json"


def _settings(shape: Sequence[int], spacing: Sequence[float], seed: int, layout: str,
              options: SyntheticOptions | None = None, num_test: int = 0,
              num_cases: int | None = None) -> dict:
    """The settings the manifest records (the default keys exactly as before layouts/options).

    Harder ``options`` add ``options`` (their non-default values); a test folder adds
    ``num_test`` and ``num_cases`` (test ids follow the training ids).
    """
    settings: dict[str, Any] = {
        "generator_version": GENERATOR_VERSION,
        "shape": [int(s) for s in shape],
        "spacing": [float(s) for s in spacing],
        "seed": int(seed),
        "layout": layout,
    }
    chosen = (options or SyntheticOptions()).non_default()
    if chosen:
        settings["options"] = chosen
    if num_test:
        settings["num_test"] = int(num_test)
        settings["num_cases"] = int(num_cases or 0)
    return settings


def _validate(num_cases: int, shape: Sequence[int], spacing: Sequence[float], layout: str,
              num_test: int) -> None:
    if int(num_cases) < 1:
        raise ConfigError(f"data.synthetic.num_cases: must be >= 1, got {num_cases}")
    if len(shape) != 3 or any(int(s) < 8 for s in shape):
        raise ConfigError(f"data.synthetic.shape: must be 3 sizes >= 8, got {list(shape)}")
    if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
        raise ConfigError(f"data.synthetic.spacing: must be 3 values > 0, got {list(spacing)}")
    if layout not in LAYOUTS:
        raise ConfigError(f"data.synthetic.layout: must be one of {list(LAYOUTS)}, got {layout!r}")
    if isinstance(num_test, bool) or not isinstance(num_test, int) or num_test < 0:
        raise ConfigError(f"data.synthetic.num_test: must be an integer >= 0, got {num_test!r}")
    if num_test and layout not in TEST_FOLDER_LAYOUTS:
        raise ConfigError(f"data.synthetic.num_test: only the layouts {list(TEST_FOLDER_LAYOUTS)} "
                          f"have a test folder (imagesTs/), got {num_test} with layout {layout!r}")


def _options(options: dict[str, Any]) -> SyntheticOptions:
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(f"data.synthetic.{unknown[0]}: unknown generator setting (known: "
                          f"num_cases, shape, spacing, seed, layout, num_test, "
                          f"{', '.join(OPTION_KEYS)})")
    return options_from(options)


def _read_manifest(out_dir: Path, settings: dict) -> dict:
    """The folder's manifest; DataError when it records other settings or the folder is foreign."""
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists():
        manifest = read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("settings") != settings:
            raise DataError(
                f"{manifest_path}: the synthetic data there was generated with other settings "
                f"({manifest.get('settings') if isinstance(manifest, dict) else 'unreadable'}, "
                f"wanted {settings}); delete {out_dir} or choose another folder"
            )
        return manifest
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir}: folder is not empty and has no {MANIFEST_NAME}; refusing to write "
            "synthetic data into it (choose an empty folder)"
        )
    return {"settings": settings, "num_cases": 0, "cases": {}}


def generate_dataset(
    out_dir: str | Path,
    num_cases: int,
    shape: Sequence[int],
    spacing: Sequence[float],
    seed: int,
    layout: str = "flat",
    num_test: int = 0,
    workers: int = 1,
    **options: Any,
) -> list[str]:
    """Write ``num_cases`` synthetic cases under ``out_dir`` in ``layout``; return their ids.

    Args:
        out_dir: the data-set folder (created; must be empty or hold this generator's data).
        num_cases: training cases (with labels).
        shape: (H, W, D) voxels of every case.
        spacing: (3,) voxel sizes in mm.
        seed: case ``i`` draws from ``default_rng([seed, i])`` (the same arrays in every layout).
        layout: one of ``LAYOUTS`` (``unet3d.data.synthetic.layouts``): ``flat``
            (``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 0/1/2/4), ``brats2019``
            (the same under ``HGG/`` or ``LGG/``), ``brats2023``, ``msd_brain``, ``nnunet_raw``.
        num_test: cases without labels in ``imagesTs/`` (``msd_brain``, ``nnunet_raw`` only);
            their ids follow the training ids.
        workers: processes that generate and write cases at once (1: in this process; 0: one
            per CPU this process may use). The files do not depend on it.
        **options: the appearance settings of ``SyntheticOptions`` (``data.synthetic.*``;
            defaults: today's cases).

    Idempotent and resumable: ``synthetic_manifest.json`` records the settings; every file is
    written atomically and cases whose files exist are not rewritten; ``dataset.json``
    (``msd_brain``, ``nnunet_raw``) is written last.

    Raises:
        ConfigError: a bad setting (one line naming ``data.synthetic.<key>``).
        DataError: ``out_dir`` holds data made with other settings, or data that this
            generator did not write.
    """
    out_dir = Path(out_dir)
    shape = [int(s) for s in shape]
    spacing = [float(s) for s in spacing]
    _validate(num_cases, shape, spacing, layout, num_test)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers: must be an integer >= 0, got {workers!r}")
    chosen = _options(options)
    settings = _settings(shape, spacing, seed, layout, chosen, num_test, num_cases)
    manifest_path = out_dir / MANIFEST_NAME
    manifest = _read_manifest(out_dir, settings)
    remove_stale_temporaries(out_dir)

    total = max(int(manifest.get("num_cases", 0)), num_cases)
    grades = {i: case_grade(seed, i, chosen.lgg_fraction) for i in range(total + num_test)}
    ids = {i: case_id_for(layout, i) for i in range(total + num_test)}
    train = list(range(num_cases))
    test = list(range(num_cases, num_cases + num_test))
    pending = [(i, i in test) for i in train + test
               if not all((out_dir / path).is_file()
                          for path in case_files(layout, ids[i], grades[i], i in test))]
    updated = {
        "settings": settings,
        "num_cases": total,
        "cases": {**manifest.get("cases", {}),
                  **{ids[i]: case_record(layout, ids[i], grades[i]) for i in train}},
    }
    if num_test:
        updated["test_cases"] = {ids[i]: case_record(layout, ids[i], grades[i], True)
                                 for i in test}
    if updated != manifest or not manifest_path.exists():
        write_json_atomic(manifest_path, updated, sort_keys=True)
    if pending:
        _write_cases(out_dir, pending, shape, spacing, seed, layout, chosen, ids, workers)
    else:
        logger.info("Synthetic data set in %s is complete (%d cases)", out_dir, num_cases)
    description = dataset_json(layout, [ids[i] for i in range(total)], [ids[i] for i in test])
    if description is not None and read_json(out_dir / DATASET_JSON_NAME) != description:
        write_json_atomic(out_dir / DATASET_JSON_NAME, description)
    return [ids[i] for i in train]


def _write_one(out_dir: Path, index: int, test: bool, shape: list[int], spacing: list[float],
               seed: int, layout: str, options: SyntheticOptions, case_id: str) -> None:
    """Generate case ``index`` and write its files (also the body of a worker process)."""
    case = generate_case(seed, index, shape, spacing, options, case_id=case_id)
    write_case(layout, case, out_dir, test=test)


def _write_cases(out_dir: Path, pending: list[tuple[int, bool]], shape: list[int],
                 spacing: list[float], seed: int, layout: str, options: SyntheticOptions,
                 ids: dict[int, str], workers: int = 1) -> None:
    workers = worker_count(workers, len(pending))
    logger.info(
        "Generating %d synthetic case(s) of shape %s (spacing %s, seed %d, layout %s) in %s "
        "with %d process(es)", len(pending), shape, spacing, seed, layout, out_dir, workers,
    )
    start = time.perf_counter()
    progress = Progress(len(pending), "Generating synthetic cases", logger)
    arguments = [(out_dir, index, test, shape, spacing, seed, layout, options, ids[index])
                 for index, test in pending]
    try:
        for _ in process_map(_write_one, arguments, workers):
            progress.update()
    finally:
        progress.close()
    elapsed = time.perf_counter() - start
    logger.info("Generated %d case(s) in %.1f s (%.2f s per case)", len(pending), elapsed,
                elapsed / len(pending))


def synthetic_settings_key(synthetic_cfg: Any) -> str:
    """Short hash of the generator settings (including the number of cases).

    Args:
        synthetic_cfg: ``data.synthetic`` (a DictConfig or dict): ``num_cases``, ``shape``,
            ``spacing``, ``seed``, optional ``layout`` (default ``flat``), ``num_test`` (0) and
            the ``SyntheticOptions`` keys. The default settings keep the key they had before
            layouts and options existed; every layout and option gives another key.

    Raises:
        ConfigError: a bad ``SyntheticOptions`` value.
    """
    num_cases = int(synthetic_cfg["num_cases"])
    payload = _settings(
        list(synthetic_cfg["shape"]),
        list(synthetic_cfg["spacing"]),
        int(synthetic_cfg["seed"]),
        str(synthetic_cfg.get("layout", "flat")),
        options_from(synthetic_cfg),
        int(synthetic_cfg.get("num_test", 0) or 0),
        num_cases,
    )
    payload["num_cases"] = num_cases
    return short_hash(payload)
