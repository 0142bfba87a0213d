"""Building blocks of the synthetic cases: tissue codes and smooth random fields (NumPy only).

Shared by :mod:`unet3d.data.synthetic.case` (one case) and :mod:`unet3d.data.synthetic.lesions`
(the extra lesions and degradations of harder settings).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Tissue codes of the tissue map (RESECTION: the resection cavity of post-treatment cases).
BACKGROUND, CSF, GREY, WHITE, EDEMA, NECROSIS, ENHANCING, NON_ENHANCING, RESECTION = range(9)
#: Name of each tissue code of ``SyntheticCase.tissue``.
TISSUE_CODES: dict[str, int] = {
    "background": BACKGROUND,
    "csf": CSF,
    "grey_matter": GREY,
    "white_matter": WHITE,
    "edema": EDEMA,
    "necrosis": NECROSIS,
    "enhancing": ENHANCING,
    "non_enhancing": NON_ENHANCING,
    "resection_cavity": RESECTION,
}
#: Tissue codes of the tumour (edema and core).
TUMOUR_CODES: tuple[int, ...] = (EDEMA, NECROSIS, ENHANCING, NON_ENHANCING)


def rbf_basis(length: int, cells: int) -> np.ndarray:
    """Rows: Gaussian weights of ``cells`` coarse nodes at each of ``length`` positions."""
    positions = np.arange(length, dtype=np.float64)
    step = max(length - 1, 1) / max(cells - 1, 1)
    centres = np.linspace(-0.5 * step, length - 1 + 0.5 * step, cells)
    weights = np.exp(-0.5 * ((positions[:, None] - centres[None, :]) / step) ** 2)
    weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))
    return weights.astype(np.float32)


def smooth_field(
    rng: np.random.Generator, shape: Sequence[int], cells: Sequence[int]
) -> np.ndarray:
    """A smooth random field of unit variance: tensor-product interpolation of a coarse grid.

    Args:
        rng: the random stream (draws ``prod(cells)`` standard normals).
        shape: (H, W, D) of the field.
        cells: coarse nodes per axis (clipped to [2, size]).

    Returns:
        float32 (H, W, D).
    """
    cells = [int(max(2, min(c, n))) for c, n in zip(cells, shape, strict=True)]
    coarse = rng.standard_normal(cells, dtype=np.float32)
    bases = [rbf_basis(n, c) for n, c in zip(shape, cells, strict=True)]
    # Contract the small axes first; the last contraction produces the full-size array.
    partial = np.einsum("kc,abc->abk", bases[2], coarse)
    partial = np.einsum("jb,abk->ajk", bases[1], partial)
    return np.einsum("ia,ajk->ijk", bases[0], partial)


def centred(field: np.ndarray) -> np.ndarray:
    """``field`` minus its mean."""
    return field - field.mean()
