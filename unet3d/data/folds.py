"""Reproducible K-fold split by patient, persisted as JSON and reused."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unet3d.data._files import read_json
from unet3d.errors import DataError
from unet3d.runs.files import write_json_atomic

logger = logging.getLogger(__name__)


def make_split(case_ids: Sequence[str], num_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """Split sorted case ids with a seeded permutation into ``num_folds`` chunks.

    Fold ``i`` validates on chunk ``i`` and trains on the others; both lists are sorted.
    ``num_folds`` is checked by the config (>= 2); the data set must fill every fold.

    Raises:
        DataError: repeated case ids, or fewer cases than folds (a fold without a held-out
            case).
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise DataError("case ids are not unique")
    if int(num_folds) > len(ids):
        raise DataError(f"the data set has {len(ids)} cases, fewer than num_folds={num_folds}: "
                        "every fold needs a held-out case; pass a smaller num_folds")
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    chunks = [[ids[i] for i in chunk] for chunk in np.array_split(order, int(num_folds))]
    folds = []
    for index, chunk in enumerate(chunks):
        train = [case for other, rest in enumerate(chunks) if other != index for case in rest]
        folds.append({"train": sorted(train), "val": sorted(chunk)})
    return folds


def load_or_create_split(
    path: str | Path, case_ids: Sequence[str], num_folds: int, seed: int
) -> list[dict[str, list[str]]]:
    """Return the folds stored in ``path``, creating the file when it does not exist.

    The JSON holds ``num_folds``, ``seed``, the sorted ``case_ids`` and the ``folds``
    (``[{"train": [...], "val": [...]}, ...]``). Raises DataError naming the file when it
    exists but was made for other cases, another number of folds or another seed.
    """
    path = Path(path)
    ids = sorted(case_ids)
    if path.exists():
        stored = read_json(path)
        if not isinstance(stored, dict) or not isinstance(stored.get("folds"), list):
            raise DataError(f"{path}: split file is not valid JSON; delete it to recreate it")
        differences = []
        if stored.get("case_ids") != ids:
            stored_ids = set(stored.get("case_ids") or [])
            missing = sorted(set(ids) - stored_ids)
            extra = sorted(stored_ids - set(ids))
            differences.append(
                f"other cases ({len(missing)} new, e.g. {missing[:3]}; {len(extra)} gone, "
                f"e.g. {extra[:3]})"
            )
        if stored.get("num_folds") != int(num_folds):
            differences.append(f"num_folds {stored.get('num_folds')} instead of {num_folds}")
        if stored.get("seed") != int(seed):
            differences.append(f"seed {stored.get('seed')} instead of {seed}")
        if differences:
            raise DataError(
                f"{path}: existing split names {'; '.join(differences)}; delete it or set "
                "another data.preprocessed_dir"
            )
        folds = stored["folds"]
        _check_folds(path, folds, ids, int(num_folds))
        logger.info("Reusing the %d-fold split in %s", num_folds, path)
        return folds
    folds = make_split(ids, num_folds, seed)
    write_json_atomic(
        path, {"num_folds": int(num_folds), "seed": int(seed), "case_ids": ids, "folds": folds},
        sort_keys=True,
    )
    logger.info("Wrote a %d-fold split of %d cases to %s", num_folds, len(ids), path)
    return folds


def _check_folds(path: Path, folds: list, ids: list[str], num_folds: int) -> None:
    if len(folds) != num_folds:
        raise DataError(f"{path}: holds {len(folds)} folds instead of {num_folds}; delete it")
    for index, fold in enumerate(folds):
        if (
            not isinstance(fold, dict)
            or sorted(fold.get("train", []) + fold.get("val", [])) != ids
            or not fold.get("val")
        ):
            raise DataError(f"{path}: fold {index} does not cover the cases exactly; delete it")
