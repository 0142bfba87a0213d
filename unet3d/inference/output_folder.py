"""Which prediction an output folder holds (``predict_settings.json``), so that a rerun of the
same ``mode=predict`` continues it and another prediction never mixes its files into it.

``mode=predict`` records its settings in the output folder before it writes the first case:
the checkpoints (resolved prefixes), the label convention written, the post-processing rules,
the inference settings (sliding window, TTA, brain box) and the compute precision, and whether
probabilities are saved (nnU-Net writes its ``predict_from_raw_data_args.json`` there alike).
With ``predict.overwrite=false``:

- a folder without the record (new, or written by something else) gets it; existing case files
  are refused case by case (``OutputExistsError``), as before;
- a folder whose record equals this prediction's is continued: a case whose files are all in
  place was written completely by the earlier run (the writers are atomic) and is kept as it is;
  the others (the one a kill interrupted, those never reached) are written;
- a folder whose record differs is refused before any case is read: one line naming the folder
  and what differs.

``predict.overwrite=true`` rewrites the record and every case.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unet3d.errors import DataError
from unet3d.runs.files import write_json_atomic

log = logging.getLogger(__name__)

#: The record of the prediction an output folder holds.
SETTINGS_FILE = "predict_settings.json"
#: Version of the record's layout (a different version is another prediction).
SETTINGS_FORMAT = 1


def prediction_settings(checkpoints: Sequence[str], convention: Any, postprocessing: Any,
                        inference: Mapping[str, Any], precision: str,
                        save_probabilities: bool) -> dict[str, Any]:
    """The record of one prediction: what decides the content of its files.

    Args:
        checkpoints: the resolved checkpoint prefixes (one per ensemble member).
        convention: the ``LabelConvention`` written (its ``name`` and label ``values``).
        postprocessing: the rules applied (``PostprocessingRules``) or None.
        inference: the ``inference`` group (window size, overlap, blend, TTA, brain box).
        precision: the Keras policy the models compute in (e.g. ``mixed_bfloat16``).
        save_probabilities: whether ``<case>_probabilities.nii.gz`` files are written.

    Returns:
        A JSON-ready dict (``format``, ``checkpoints``, ``labels``, ``postprocessing``,
        ``inference``, ``precision``, ``save_probabilities``).
    """
    return json.loads(json.dumps({
        "format": SETTINGS_FORMAT,
        "checkpoints": [str(prefix) for prefix in checkpoints],
        "labels": {"convention": getattr(convention, "name", None),
                   "values": [int(value) for value in getattr(convention, "values", ())]},
        "postprocessing": None if postprocessing is None else str(postprocessing),
        "inference": dict(inference),
        "precision": str(precision),
        "save_probabilities": bool(save_probabilities),
    }, default=str))


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable ({error}); delete it to predict into this folder "
                        "anew, or choose another predict.output_dir") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: not a JSON object; delete it or choose another "
                        "predict.output_dir")
    return record


def claim_output_folder(folder: str | Path, settings: Mapping[str, Any],
                        overwrite: bool) -> bool:
    """Record ``settings`` in ``folder`` unless it holds this prediction already.

    Args:
        folder: the output folder (existing).
        settings: this prediction's record (``prediction_settings``).
        overwrite: ``predict.overwrite`` (the record is rewritten whatever it held).

    Returns:
        True when the folder holds this same prediction (a rerun: keep its complete cases),
        else False (the record was written now).

    Raises:
        DataError: the folder holds another prediction's record and ``overwrite`` is false,
            or its record is unreadable (one line naming the file).
    """
    path = Path(folder) / SETTINGS_FILE
    recorded = _read(path) if not overwrite else None
    if recorded is not None:
        if recorded == dict(settings):
            return True
        differing = sorted(key for key in set(recorded) | set(settings)
                           if recorded.get(key) != settings.get(key))
        raise DataError(
            f"predict.output_dir: {folder} holds the outputs of another prediction (its "
            f"{SETTINGS_FILE} differs in {', '.join(differing)}); choose another "
            "predict.output_dir, or set predict.overwrite=true to replace them")
    write_json_atomic(path, dict(settings), sort_keys=True)
    return False


def split_written(pending: Sequence[Any], outputs: Any) -> tuple[list[Any], list[str]]:
    """Split the cases into those still to write and those whose files are all in place.

    Args:
        pending: the cases (each with ``case_id``).
        outputs: ``NiftiOutputs`` (its ``paths`` and ``save_probabilities``).

    Returns:
        ``(to_write, kept_case_ids)`` in input order.
    """
    to_write, kept = [], []
    for case in pending:
        try:
            segmentation, probabilities = outputs.paths(case.case_id)
        except DataError:  # an unsafe id: the per-case loop reports it
            to_write.append(case)
            continue
        files = [segmentation] + ([probabilities] if outputs.save_probabilities else [])
        if all(path.is_file() for path in files):
            kept.append(case.case_id)
        else:
            to_write.append(case)
    return to_write, kept
