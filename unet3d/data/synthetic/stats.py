"""How hard a synthetic data set is, measured on its cases (not on a model's Dice).

``difficulty_statistics`` summarises generated cases by what makes BraTS hard: cases without
enhancing tumour (ET), how much the tumour's intensities overlap those of the tissue around it,
and how small the tumour core (TC) and ET are within the whole tumour (WT). The promises in
``conf/data/synthetic_hard.yaml`` are stated in these terms, and a test checks them.

Overlap is the overlapping coefficient of two intensity histograms, ``sum(min(p, q))`` over 64
common bins spanning the 0.5th-99.5th percentile of both (Inman & Bradley, Commun. Stat. 1989):
1 = the same distribution, 0 = separable by a threshold.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from unet3d.data.synthetic.fields import EDEMA, ENHANCING, GREY, NECROSIS, NON_ENHANCING, WHITE

#: Channel index of each modality in ``SyntheticCase.image`` (t1, t1ce, t2, flair).
T1CE, FLAIR = 1, 3
#: BraTS 2019 label of ET in ``SyntheticCase.label``.
ET_LABEL = 4


def overlap_coefficient(first: np.ndarray, second: np.ndarray, bins: int = 64) -> float:
    """Overlapping coefficient of two samples' histograms (0..1; NaN when one is empty).

    Args:
        first, second: 1-D arrays of intensities (any dtype).
        bins: common histogram bins over the 0.5th-99.5th percentile of both samples.
    """
    if first.size == 0 or second.size == 0:
        return float("nan")
    both = np.concatenate([first, second]).astype(np.float64)
    low, high = np.percentile(both, [0.5, 99.5])
    if high <= low:
        return 1.0
    p, _ = np.histogram(first, bins, (low, high))
    q, _ = np.histogram(second, bins, (low, high))
    return float(np.minimum(p / max(p.sum(), 1), q / max(q.sum(), 1)).sum())


def case_statistics(case: Any) -> dict[str, float]:
    """One case's difficulty.

    Args:
        case: a ``unet3d.data.synthetic.case.SyntheticCase`` (``image`` int16 (H, W, D, 4),
            ``label`` uint8 (H, W, D) BraTS 2019 labels, ``tissue`` uint8 (H, W, D) codes).

    Returns:
        ``has_et`` (0/1); ``flair_edema_vs_brain``: FLAIR overlap of edema and normal grey and
        white matter (WT's boundary); ``t1ce_core_vs_edema``: T1ce overlap of the core
        (necrosis, enhancing rim or non-enhancing core) and edema (TC's boundary);
        ``tc_to_wt`` and ``et_to_wt``: voxel ratios (NaN without a tumour / ET).
    """
    image, label, tissue = case.image, case.label, case.tissue
    brain = np.isin(tissue, (GREY, WHITE))
    edema = tissue == EDEMA
    core = np.isin(tissue, (NECROSIS, ENHANCING, NON_ENHANCING))
    whole = float((label > 0).sum())
    et = float((label == ET_LABEL).sum())
    return {
        "has_et": float(et > 0),
        "flair_edema_vs_brain": overlap_coefficient(image[..., FLAIR][edema],
                                                    image[..., FLAIR][brain]),
        "t1ce_core_vs_edema": overlap_coefficient(image[..., T1CE][core],
                                                  image[..., T1CE][edema]),
        "tc_to_wt": float(np.isin(label, (1, ET_LABEL)).sum()) / whole if whole else np.nan,
        "et_to_wt": et / whole if whole and et else float("nan"),
    }


def difficulty_statistics(cases: Iterable[Any]) -> dict[str, float]:
    """The data set's difficulty over ``cases``.

    Returns:
        ``cases``; ``no_et_share``: share of cases without ET (each scores ET Dice 0 for a
        single false-positive voxel under the BraTS convention); the means over cases of
        ``flair_edema_vs_brain`` and ``t1ce_core_vs_edema``, and the medians of ``tc_to_wt``
        and ``et_to_wt`` (``case_statistics``).
    """
    rows = [case_statistics(case) for case in cases]
    if not rows:
        raise ValueError("difficulty_statistics: no cases")

    def column(key: str) -> np.ndarray:
        return np.array([row[key] for row in rows], dtype=np.float64)

    return {
        "cases": float(len(rows)),
        "no_et_share": float(1.0 - column("has_et").mean()),
        "flair_edema_vs_brain": float(np.nanmean(column("flair_edema_vs_brain"))),
        "t1ce_core_vs_edema": float(np.nanmean(column("t1ce_core_vs_edema"))),
        "tc_to_wt": float(np.nanmedian(column("tc_to_wt"))),
        "et_to_wt": float(np.nanmedian(column("et_to_wt"))),
    }
