"""From config to ready-to-use files: the data set's raw cases, preprocessing, fold split.

Jobs started at once (two sweeps, joblib workers, the ranks of a launch) share the data cache:
making the raw cases ready (a synthetic data set is generated) runs under an exclusive lock on
``<paths.data_dir>/.prepare.lock``, preprocessing and the split under one on
``<preprocessed dir>/.prepare.lock`` (``fcntl.flock``, `unet3d.runs.files.exclusive_lock`), so
the cache is built once: the other jobs wait (an INFO line says so), then find it up to date.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet3d.data._files import short_hash
from unet3d.data.datasets import build_dataset, cases_dir_of
from unet3d.data.folds import load_or_create_split
from unet3d.data.layouts.resolve import DataLayout, resolve_layout
from unet3d.data.preprocess import preprocess_dataset
from unet3d.data.tfrecord import case_id_of, record_path
from unet3d.runs.files import exclusive_lock

logger = logging.getLogger(__name__)

#: The lock file of a data cache folder (see the module doc).
LOCK_NAME = ".prepare.lock"


@dataclass
class PreparedData:
    """Preprocessed records and the fold's train / evaluation files.

    ``layout`` is the data set's reader and label convention (``unet3d.data.layouts.resolve``): the
    records hold ``layout.convention``'s training classes.
    """

    preprocessed_dir: Path
    case_ids: list[str]
    split: list[dict[str, list[str]]]
    train_files: list[str]
    eval_files: list[str]
    raw_dir: Path | None = None
    split_file: Path | None = None
    layout: DataLayout | None = None


def resolve_raw_dir(cfg: Any) -> Path:
    """The raw NIfTI folder of the ``data`` group's data set (generated if it is synthetic).

    Args:
        cfg: the composed config (``data``, ``paths.data_dir``).

    Raises:
        ConfigError: the data set's ``_target_`` does not build or breaks its contract.
        DataError: the data set's folder is missing.
    """
    dataset = build_dataset(cfg.data)
    return cases_dir_of(dataset, Path(str(cfg.paths.data_dir)), str(cfg.data.get("_target_")))


def resolve_data(cfg: Any) -> tuple[Path, DataLayout]:
    """The raw folder of the ``data`` group's data set (made ready) and its layout.

    Raises:
        ConfigError: the data set or its reader does not build, or bad ``data.labels``.
        DataError: the data set's folder is missing, or its metadata disagrees.
    """
    dataset = build_dataset(cfg.data)
    folder = cases_dir_of(dataset, Path(str(cfg.paths.data_dir)), str(cfg.data.get("_target_")))
    return folder, resolve_layout(cfg.data, dataset, folder)


def resolve_preprocessed_dir(cfg: Any, raw_dir: Path) -> Path:
    """Return ``data.preprocessed_dir`` or ``<paths.data_dir>/preprocessed/<name>-<raw hash>``."""
    configured = cfg.data.get("preprocessed_dir")
    if configured is not None:
        return Path(str(configured)).expanduser().resolve()
    key = short_hash(str(Path(raw_dir).resolve()))
    return (
        Path(str(cfg.paths.data_dir)).expanduser().resolve()
        / "preprocessed"
        / f"{cfg.data.name}-{key}"
    )


def prepare_data(cfg: Any) -> PreparedData:
    """Make the data set's raw cases ready, preprocess them, split them, pick the fold's files.

    The split is ``<preprocessed_dir>/splits_k{num_folds}_seed{seed}.json`` (``cfg.seed``).

    Args:
        cfg: the validated composed config: ``data`` (the data set and its pipeline keys;
            ``preprocess_workers`` null or absent is 0, one process per usable CPU),
            ``paths.data_dir``, ``fold``, ``num_folds``, ``seed``.

    Raises:
        ConfigError: the data set does not build or breaks its contract.
        DataError: a missing folder, or a bad case (named with its file).
    """
    num_folds = int(cfg.num_folds)
    fold = int(cfg.fold)
    data_dir = Path(str(cfg.paths.data_dir)).expanduser()
    with exclusive_lock(data_dir / LOCK_NAME, what=f"preparing the data set in {data_dir}"):
        raw_dir, layout = resolve_data(cfg)
    preprocessed_dir = resolve_preprocessed_dir(cfg, raw_dir)
    with exclusive_lock(preprocessed_dir / LOCK_NAME,
                        what=f"preprocessing into {preprocessed_dir}"):
        files = preprocess_dataset(raw_dir, preprocessed_dir, layout,
                                   workers=int(cfg.data.get("preprocess_workers") or 0))
        case_ids = [case_id_of(path) for path in files]
        split_file = preprocessed_dir / f"splits_k{num_folds}_seed{int(cfg.seed)}.json"
        split = load_or_create_split(split_file, case_ids, num_folds, int(cfg.seed))
    train_files = [str(record_path(preprocessed_dir, case)) for case in split[fold]["train"]]
    eval_files = [str(record_path(preprocessed_dir, case)) for case in split[fold]["val"]]
    logger.info(
        "Data: %d cases in %s; fold %d/%d: %d train, %d eval",
        len(case_ids),
        preprocessed_dir,
        fold,
        num_folds,
        len(train_files),
        len(eval_files),
    )
    return PreparedData(
        preprocessed_dir=preprocessed_dir,
        case_ids=case_ids,
        split=split,
        train_files=train_files,
        eval_files=eval_files,
        raw_dir=raw_dir,
        split_file=split_file,
        layout=layout,
    )


def prepare_data_on_chief_first(cfg: Any, context: Any) -> PreparedData:
    """Prepare on the chief, then on the other ranks (which find it done), and check records.

    ``context`` is the runtime's distributed context (``is_chief`` and ``barrier``). Every rank
    then validates the records it will read, so a corrupt file fails with its name (records
    unchanged since preprocessing wrote them are not read again).
    """
    from unet3d.data.preprocess import unchanged_records
    from unet3d.data.tfrecord import validate_records

    if context.is_chief:
        prepared = prepare_data(cfg)
        context.barrier()
    else:
        context.barrier()
        prepared = prepare_data(cfg)
    validate_records(prepared.train_files + prepared.eval_files,
                     unchanged=unchanged_records(prepared.preprocessed_dir))
    return prepared
