"""BraTS 2025 lesion-wise metrics through the official ``brats-evaluation`` package (panoptica).

``evaluation.lesionwise=brats2025`` scores each case with ``brats_evaluation``'s bundled
``gli`` configuration (``configs/config_gli.yaml``: regions ET {3}, NETC {1}, SNFH {2}, RC {4},
TC {1, 3}, WT {1, 2, 3}; components by connected components, matched by maximum bipartite
matching on Dice, no dilation) via ``panoptica.Panoptica_Evaluator.evaluate`` on the arrays,
as its ``evaluate_single_exam`` does on files. Per region the metrics are the package's
challenge columns (``metrics_parser.parse_seg_results``): ``sq_dsc`` (lesion-wise Dice, the
mean over matched lesions) as ``LesionDice_<region>``, ``sq_hd95`` as ``LesionHD95_<region>``
and the instance counts ``tp``, ``fn``, ``fp``; missed and extra lesions enter the ranking
through those counts, not through the Dice. A region without instances on either side gives
nan (the package's own result; ``summarize`` leaves nan out of means). This module is only a
thin adapter: the numbers are the package's.

Install: ``pip install -e ".[brats]"``. Label values are given to the package in the BraTS
2023+ convention (1 NETC, 2 SNFH, 3 ET, 4 RC), translated by tissue from the data set's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from unet3d.errors import ConfigError

log = logging.getLogger(__name__)

#: The package's group names -> unet3d's region names, in report order.
GROUPS: dict[str, str] = {"wt": "WT", "tc": "TC", "et": "ET", "netc": "NETC", "snfh": "SNFH",
                          "rc": "RC"}
#: Tissue -> the label value the package's ``gli`` configuration reads.
PACKAGE_VALUES: dict[str, int] = {"NETC": 1, "SNFH": 2, "ET": 3, "RC": 4}
#: The package's result keys -> unet3d's metric prefixes.
RESULT_KEYS: dict[str, str] = {"sq_dsc": "LesionDice", "sq_hd95": "LesionHD95", "tp": "LesionTP",
                               "fn": "LesionFN", "fp": "LesionFP"}
#: The one-line error when the package is missing.
MISSING = ('evaluation.lesionwise: brats2025 needs the official brats-evaluation package; '
           'install the extra: pip install -e ".[brats]"')


def _quietly(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` with its console output (panoptica's banner and config listing) sent
    to the debug log instead of stdout."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = function(*args, **kwargs)
    if buffer.getvalue().strip():
        log.debug("%s", buffer.getvalue().strip())
    return result


def _load_evaluator(config: str) -> Any:
    try:
        from brats_evaluation import config_path
        from panoptica import Panoptica_Evaluator
    except ImportError:
        raise ConfigError(MISSING) from None
    return _quietly(Panoptica_Evaluator.load_from_config, str(config_path(config)))


class Brats2025Scorer:
    """Scores one case with ``brats-evaluation``: ``scorer(pred, ref, spacing) -> metrics``.

    Args:
        convention: the data set's ``LabelConvention`` (its tissues are translated to the
            package's label values; tissues it lacks are simply absent).
        config: the package's bundled configuration (``gli``; also ``ped``, ``mets``, ...).

    Raises:
        ConfigError: the package is not installed (``MISSING``).
    """

    name = "brats2025"

    def __init__(self, convention: Any, config: str = "gli") -> None:
        self.evaluator = _load_evaluator(config)
        lookup = np.zeros(256, dtype=np.uint8)
        for value, tissue in zip(convention.values, convention.tissues, strict=True):
            lookup[int(value)] = PACKAGE_VALUES.get(tissue, 0)
        self.lookup = lookup

    def keys(self) -> tuple[str, ...]:
        """The metric names of every case, in order."""
        return tuple(f"{prefix}_{region}" for prefix in RESULT_KEYS.values()
                     for region in GROUPS.values())

    def __call__(self, pred: np.ndarray, ref: np.ndarray,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
        """The package's lesion-wise metrics of one case (uint8 label volumes, one shape)."""
        results = _quietly(
            self.evaluator.evaluate,
            self.lookup[np.asarray(pred, dtype=np.uint8)],
            self.lookup[np.asarray(ref, dtype=np.uint8)],
            voxelspacing=tuple(float(side) for side in spacing), verbose=False)
        metrics: dict[str, float] = {}
        for key, prefix in RESULT_KEYS.items():
            for group, region in GROUPS.items():
                result = results.get(group)
                value = _number(result.to_dict(True).get(key)) if result is not None else math.nan
                metrics[f"{prefix}_{region}"] = value
        return metrics


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
