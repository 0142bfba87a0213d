"""Seeded label volumes for comparing unet3d's lesion-wise metrics with the official scripts.

NumPy only, so that ``make_lesionwise_fixture.py`` can run it in a throwaway environment that
holds the scripts' own pins. ``random_case`` builds BraTS 2023+ labels (1 NETC, 2 SNFH, 3 ET,
4 RC with ``with_rc``): a few tumours (edema around a core of ET with necrosis inside, a
resection cavity beside some), tiny islands under the volume thresholds and specks; the
prediction is the reference shifted, grown or shrunk per label, with tumours dropped,
false-positive blobs and islands added. ``hand_built_cases`` are the issue's cases
(``test_lesionwise.py`` checks them against answers worked out from the definition).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SHAPE = (36, 32, 24)


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    # No zip(strict=...): this file also runs on the scripts' Python 3.9.
    return sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1.0


def random_case(seed: int, with_rc: bool, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, ref)`` uint8 volumes of ``shape`` for one seed."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        centre = rng.uniform(4, np.array(shape) - 4)
        radius = rng.uniform(2.5, 7.0, 3)
        ref[_ellipsoid(shape, centre, radius)] = 2
        ref[_ellipsoid(shape, centre + rng.normal(0, 0.7, 3), radius * 0.6)] = 3
        ref[_ellipsoid(shape, centre + rng.normal(0, 0.5, 3), radius * 0.3)] = 1
        if with_rc and rng.random() < 0.6:
            side = centre + radius * rng.choice([-1, 1], 3) * rng.uniform(0.6, 1.1, 3)
            ref[_ellipsoid(shape, side, rng.uniform(1.5, 3.5, 3))] = 4
    for _ in range(int(rng.integers(0, 5))):  # islands, some under the thresholds
        centre = rng.integers(1, np.array(shape) - 2)
        size = rng.integers(1, 4, 3)
        ref[tuple(slice(centre[a], centre[a] + size[a]) for a in range(3))] = rng.choice(
            [1, 2, 3, 4] if with_rc else [1, 2, 3])
    pred = np.roll(ref, tuple(rng.integers(-1, 2, 3)), axis=(0, 1, 2))
    for value in (1, 2, 3, 4):
        mask = pred == value
        step = rng.integers(-1, 2)
        if step > 0:
            grown = ndimage.binary_dilation(mask) & (pred == 0)
            pred[grown] = value
        elif step < 0:
            pred[mask & ~ndimage.binary_erosion(mask)] = 0
    labels, count = ndimage.label(pred > 0)
    for drop in rng.choice(np.arange(1, count + 1), size=min(count, int(rng.integers(0, 2))),
                           replace=False):
        pred[labels == drop] = 0
    for _ in range(int(rng.integers(0, 4))):  # false positives
        centre = rng.uniform(2, np.array(shape) - 2)
        pred[_ellipsoid(shape, centre, rng.uniform(0.8, 3.0, 3))] = rng.choice(
            [1, 2, 3, 4] if with_rc else [1, 2, 3])
    specks = rng.random(shape) < 0.0002
    pred[specks] = rng.choice([1, 2, 3, 4] if with_rc else [1, 2, 3], size=int(specks.sum()))
    return pred, ref


def _box(volume: np.ndarray, low, high, value: int) -> None:
    volume[tuple(slice(low[a], high[a]) for a in range(3))] = value


def hand_built_cases() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """The issue's cases as ``name -> (pred, ref, spacing)``, BraTS 2023 labels (ET = 3).

    - ``two_lesions_one_missed``: two 4x4x4 ET cubes far apart; only the first is predicted,
      exactly.
    - ``false_positive_far``: one ET cube predicted exactly plus a 3x3x3 ET cube far away.
    - ``merged_by_dilation``: two 4x4x4 ET cubes 4 voxels apart (dilations by 3 touch: one
      lesion); only the first predicted, exactly.
    - ``tiny_under_threshold``: a 4x4x4 ET cube predicted exactly and a 3x3x3 one (27 voxels
      <= 50 mm^3) missed.
    - ``both_empty``: nothing anywhere.
    - ``anisotropic``: at 1 x 1 x 3 mm, a 4x4x4 ET cube predicted one slice too long on the
      last axis, and a missed 3x3x3 cube far away (27 voxels but 81 mm^3 > 50: kept).
    """
    shape = SHAPE
    cases = {}
    pred, ref = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    _box(ref, (4, 4, 4), (8, 8, 8), 3)
    _box(ref, (24, 20, 14), (28, 24, 18), 3)
    _box(pred, (4, 4, 4), (8, 8, 8), 3)
    cases["two_lesions_one_missed"] = (pred, ref, (1.0, 1.0, 1.0))
    pred, ref = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    _box(ref, (4, 4, 4), (8, 8, 8), 3)
    _box(pred, (4, 4, 4), (8, 8, 8), 3)
    _box(pred, (28, 24, 16), (31, 27, 19), 3)
    cases["false_positive_far"] = (pred, ref, (1.0, 1.0, 1.0))
    pred, ref = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    _box(ref, (4, 4, 4), (8, 8, 8), 3)
    _box(ref, (12, 4, 4), (16, 8, 8), 3)
    _box(pred, (4, 4, 4), (8, 8, 8), 3)
    cases["merged_by_dilation"] = (pred, ref, (1.0, 1.0, 1.0))
    pred, ref = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    _box(ref, (4, 4, 4), (8, 8, 8), 3)
    _box(ref, (24, 20, 14), (27, 23, 17), 3)
    _box(pred, (4, 4, 4), (8, 8, 8), 3)
    cases["tiny_under_threshold"] = (pred, ref, (1.0, 1.0, 1.0))
    cases["both_empty"] = (np.zeros(shape, np.uint8), np.zeros(shape, np.uint8),
                           (1.0, 1.0, 1.0))
    pred, ref = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    _box(ref, (4, 4, 4), (8, 8, 8), 3)
    _box(ref, (24, 20, 14), (27, 23, 17), 3)
    _box(pred, (4, 4, 4), (8, 8, 9), 3)
    cases["anisotropic"] = (pred, ref, (1.0, 1.0, 3.0))
    return cases


def hand_built_2024_cases() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """A BraTS 2024 case for the cross-tissue joining (labels 1 NETC, 3 ET).

    ``join_lowest_label``: along the first axis, NETC n1 (x 2-5), an ET bar e1 (x 6-21) touching
    n1 and NETC n2 (x 22-33), and ET e2 (x 30-33) above n2. NETC lesions are 16 voxels apart
    (no dilation merge at 5), ET lesions 8 (none at 3). ET joins through NETC: e1 touches n1
    and n2 and joins the lowest, n1; e2 touches n2 only: two ET lesions. NETC joins through
    ET: n1 and n2 both touch e1 (the lowest ET): one NETC lesion. The prediction is e1 alone.
    """
    pred, ref = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    _box(ref, (2, 10, 10), (6, 14, 14), 1)
    _box(ref, (6, 10, 10), (22, 14, 14), 3)
    _box(ref, (22, 10, 10), (34, 14, 14), 1)
    _box(ref, (30, 14, 10), (34, 18, 14), 3)
    _box(pred, (6, 10, 10), (22, 14, 14), 3)
    return {"join_lowest_label": (pred, ref, (1.0, 1.0, 1.0))}


def wide_case(seed: int, with_rc: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two ``random_case`` tumours in opposite corners of a (100, 96, 60) volume and specks:
    scored as separate clusters by unet3d, over the whole volume by the scripts."""
    shape = (100, 96, 60)
    pred, ref = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for corner, offset in ((0, (0, 0, 0)), (1, (64, 64, 36))):
        part_pred, part_ref = random_case(seed * 2 + corner, with_rc)
        box = tuple(slice(offset[a], offset[a] + SHAPE[a]) for a in range(3))
        pred[box], ref[box] = part_pred, part_ref
    rng = np.random.default_rng(seed)
    specks = rng.random(shape) < 0.00001
    pred[specks] = rng.choice([1, 2, 3, 4] if with_rc else [1, 2, 3], size=int(specks.sum()))
    return pred, ref
