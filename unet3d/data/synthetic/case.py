"""One synthetic BraTS-like case: a tissue map, a tumour and four MR modalities in memory.

Each case is generated from ``numpy.random.default_rng([seed, index])`` alone, so a case does not
depend on how many cases are generated. The images are built from a tissue map (CSF, grey
matter, white matter, ventricles) and a tumour (edema, necrotic core, enhancing rim) with
modality-specific intensities, partial-volume smoothing, a smooth multiplicative bias field and
Gaussian noise; the background is 0 as in skull-stripped BraTS data. How hard the cases are
(``SyntheticOptions``, ``data.synthetic.*``): the defaults give the cases of ``data=synthetic``;
the extra lesions, blur and noise of harder settings (:mod:`unet3d.data.synthetic.lesions`) draw
from a second random stream, ``default_rng([seed, index, 1])``, so the first stream, and so the
default cases, never change. Writing cases as a data set: :mod:`unet3d.data.synthetic.generate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unet3d.config.synthetic_options import SyntheticOptions
from unet3d.data.synthetic import lesions
from unet3d.data.synthetic.fields import (
    BACKGROUND,
    CSF,
    EDEMA,
    ENHANCING,
    GREY,
    NECROSIS,
    NON_ENHANCING,
    TISSUE_CODES,
    WHITE,
    centred,
    smooth_field,
)

__all__ = ["LGG_FRACTION", "TISSUE_CODES", "SyntheticCase", "case_grade", "case_id_for",
           "generate_case", "make_affine"]

#: Fraction of LGG-like cases (no enhancing tumour) of the default settings.
LGG_FRACTION = SyntheticOptions.lgg_fraction

#: BraTS 2019 label of each tissue code; the resection cavity gets 5, a value of the generator's
#: own that each layout maps (``unet3d.data.synthetic.layouts``: RC 4 in brats2024_post, else
#: background).
_CODE_TO_LABEL = np.array([0, 0, 0, 0, 2, 1, 4, 1, 5], dtype=np.uint8)
#: A resection cavity's intensity relative to CSF's per modality (fluid: T1 dark, T2 bright).
_CAVITY_VS_CSF = np.array([0.95, 0.95, 1.0, 1.15], dtype=np.float32)
#: Mean intensity of each tissue code per modality (t1, t1ce, t2, flair), scanner-like units.
_INTENSITIES = np.array(
    [
        [0, 0, 0, 0],  # background
        [350, 330, 1800, 200],  # CSF: dark on T1/FLAIR, bright on T2
        [650, 640, 950, 760],  # grey matter
        [900, 880, 700, 600],  # white matter
        [600, 590, 1500, 1300],  # edema: bright on T2 and FLAIR
        [300, 270, 1600, 700],  # necrotic core: dark on T1ce
        [700, 1600, 1100, 1000],  # enhancing rim: bright on T1ce
        [480, 460, 1400, 1050],  # non-enhancing core (LGG-like)
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SyntheticCase:
    """Arrays of one generated case."""

    case_id: str
    grade: str
    image: np.ndarray  # int16 (H, W, D, 4) in MODALITIES order
    label: np.ndarray  # uint8 (H, W, D) BraTS 2019 labels (5: resection cavity)
    affine: np.ndarray  # float64 (4, 4)
    tissue: np.ndarray  # uint8 (H, W, D) tissue codes (see TISSUE_CODES)


def case_id_for(index: int) -> str:
    """Return the id of the ``index``-th (0-based) synthetic case, e.g. ``BraTS19_SYN_0001``."""
    return f"BraTS19_SYN_{index + 1:04d}"


def make_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Return a BraTS-like affine (x and y flipped, RAS world) centred on the volume."""
    rotation_zoom = np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2])])
    centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = rotation_zoom
    affine[:3, 3] = -rotation_zoom @ centre
    return affine


def _case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def case_grade(seed: int, index: int, lgg_fraction: float = LGG_FRACTION) -> str:
    """Return "HGG" or "LGG" for a case (the first draw of the case's random stream).

    Args:
        lgg_fraction: share of LGG cases (``data.synthetic.lgg_fraction``).
    """
    return "LGG" if _case_rng(seed, index).random() < lgg_fraction else "HGG"


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    matrix, upper = np.linalg.qr(rng.standard_normal((3, 3)))
    return matrix * np.sign(np.diag(upper))


def _smooth3(volume: np.ndarray) -> np.ndarray:
    """Partial-volume blur: a [1, 2, 1] / 4 filter along each spatial axis."""
    from scipy.ndimage import correlate1d

    weights = np.array([0.25, 0.5, 0.25], dtype=np.float32)
    out = volume
    for axis in range(3):
        out = correlate1d(out, weights, axis=axis, mode="nearest")
    return out


def generate_case(
    seed: int,
    index: int,
    shape: Sequence[int],
    spacing: Sequence[float],
    options: SyntheticOptions | None = None,
    case_id: str | None = None,
) -> SyntheticCase:
    """Generate the arrays of case ``index``.

    Args:
        seed: the data set's seed; the case draws from ``default_rng([seed, index])`` (and,
            for the extras of harder ``options``, ``default_rng([seed, index, 1])``).
        index: the case's 0-based index.
        shape: (H, W, D) voxels.
        spacing: (3,) voxel sizes in mm.
        options: appearance and difficulty; None: ``SyntheticOptions()`` (today's cases).
        case_id: the id to give the case; None: ``case_id_for(index)``.

    Returns:
        The case; deterministic in ``(seed, index, shape, spacing, options)``.
    """
    options = options or SyntheticOptions()
    shape = tuple(int(s) for s in shape)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    rng = _case_rng(seed, index)
    extra = np.random.default_rng([int(seed), int(index), 1]) if options.extras else None
    grade = "LGG" if rng.random() < options.lgg_fraction else "HGG"
    fov = np.asarray(shape) * spacing_arr

    # --- brain: a perturbed ellipsoid with cortex, sulcal CSF and ventricles -----------------
    semi_axes = fov * rng.uniform([0.28, 0.33, 0.36], [0.33, 0.38, 0.42])
    brain_centre = fov * rng.uniform(-0.02, 0.02, size=3)
    axes = [
        ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s - c).astype(np.float32)
        for n, s, c in zip(shape, spacing_arr, brain_centre, strict=True)
    ]
    grid = np.ix_(*axes)
    radius = np.sqrt(
        (grid[0] / semi_axes[0]) ** 2
        + (grid[1] / semi_axes[1]) ** 2
        + (grid[2] / semi_axes[2]) ** 2,
        dtype=np.float32,
    )
    radius *= 1.0 + 0.04 * smooth_field(rng, shape, (5, 5, 4))
    sulci = smooth_field(rng, shape, [max(2, n // 6) for n in shape])
    brain = radius <= 1.0
    tissue = np.full(shape, WHITE, dtype=np.uint8)
    tissue[radius > 0.80 + 0.05 * sulci] = GREY
    tissue[radius > 0.945 + 0.03 * sulci] = CSF
    for side in (-1.0, 1.0):
        offset = semi_axes * np.array([0.13 * side, -0.05, 0.08]) + rng.normal(0, 0.01, 3) * fov
        radii = semi_axes * rng.uniform([0.07, 0.30, 0.14], [0.10, 0.38, 0.20])
        ventricle = (
            ((grid[0] - offset[0]) / radii[0]) ** 2
            + ((grid[1] - offset[1]) / radii[1]) ** 2
            + ((grid[2] - offset[2]) / radii[2]) ** 2
        ) <= 1.0
        tissue[ventricle] = CSF

    # --- tumour: irregular edema around a core (necrosis + enhancing rim, or non-enhancing) ----
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    centre_mm = brain_centre + direction * rng.uniform(0.0, 0.55) * semi_axes
    centre_vox = np.round(centre_mm / spacing_arr + (np.asarray(shape) - 1) / 2.0).astype(int)
    centre_vox = np.clip(centre_vox, 0, np.asarray(shape) - 1)
    centre_mm = (centre_vox - (np.asarray(shape) - 1) / 2.0) * spacing_arr  # on a voxel centre
    voxel = float(spacing_arr.max())
    edema_radii = semi_axes.mean() * rng.uniform(0.25, 0.50) * rng.uniform(0.75, 1.25, 3)
    if grade == "HGG":
        core_radii = edema_radii * rng.uniform(0.45, 0.70)
    else:
        core_radii = edema_radii * rng.uniform(0.50, 0.80)
    if options.core_scale != 1.0:
        core_radii = core_radii * options.core_scale
    core_radii = np.maximum(core_radii, 3.5 * voxel)
    edema_radii = np.maximum(edema_radii, core_radii * 1.35)
    necrosis_fraction = float(rng.uniform(0.35, 0.65))
    necrosis_fraction = float(
        np.clip(
            necrosis_fraction, 1.2 * voxel / core_radii.min(), 1.0 - 1.5 * voxel / core_radii.min()
        )
    )
    rotation = _random_rotation(rng)
    core_shift = rng.normal(0.0, 0.15, 3) * core_radii

    reach = np.ceil(2.2 * edema_radii.max() / spacing_arr).astype(int)
    low = np.maximum(centre_vox - reach, 0)
    high = np.minimum(centre_vox + reach + 1, shape)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    box_shape = tuple(int(hi - lo) for lo, hi in zip(low, high, strict=True))
    box_axes = [
        ((np.arange(lo, hi, dtype=np.float64) - (n - 1) / 2.0) * s).astype(np.float32)
        for lo, hi, n, s in zip(low, high, shape, spacing_arr, strict=True)
    ]
    relative = np.stack(np.meshgrid(*box_axes, indexing="ij"), axis=-1) - centre_mm.astype(
        np.float32
    )
    rotated = relative @ rotation.astype(np.float32)
    edema_distance = np.sqrt(((rotated / edema_radii.astype(np.float32)) ** 2).sum(axis=-1))
    core_distance = np.sqrt(
        (((rotated - core_shift.astype(np.float32)) / core_radii.astype(np.float32)) ** 2).sum(
            axis=-1
        )
    )
    edema_distance *= np.exp(
        0.30 * centred(smooth_field(rng, box_shape, (6, 6, 6)))
        + 0.12 * centred(smooth_field(rng, box_shape, (12, 12, 12)))
    )
    core_distance *= np.exp(0.15 * centred(smooth_field(rng, box_shape, (5, 5, 5))))
    necrosis_distance = core_distance * np.exp(
        0.15 * centred(smooth_field(rng, box_shape, (4, 4, 4)))
    )
    box_tissue = tissue[box]
    inside = brain[box]
    # Edema spreads along white matter more than into grey matter and CSF.
    spread = np.where(box_tissue == WHITE, 1.15, np.where(box_tissue == GREY, 0.85, 0.6))
    margin = max(float(rng.uniform(0.15, 0.4)), 1.5 * voxel / float(core_radii.min()))
    edema = (edema_distance <= spread) | (core_distance <= 1.0 + margin)
    box_tissue[inside & edema] = EDEMA
    if grade == "HGG":
        box_tissue[inside & (core_distance <= 1.0)] = ENHANCING
        necrosis = inside & (necrosis_distance <= necrosis_fraction)
        necrosis[tuple(centre_vox - low)] = True
        box_tissue[necrosis] = NECROSIS
    else:
        box_tissue[inside & (core_distance <= 1.0)] = NON_ENHANCING
    if extra is not None:
        lesions.add_satellites(extra, options, tissue, brain, radius, spacing_arr, grade,
                               float(semi_axes.mean()))
        lesions.add_rim_gaps(extra, options, tissue)
        if grade == "HGG":
            lesions.add_enhancing_islands(extra, options, tissue, spacing_arr)
        lesions.add_resection_cavity(extra, options, tissue, brain, spacing_arr, centre_vox,
                                     core_radii)
    tissue[~brain] = BACKGROUND
    # The tumour centre is a brain voxel, so every case has a tumour.
    tissue[tuple(centre_vox)] = NECROSIS if grade == "HGG" else NON_ENHANCING
    brain[tuple(centre_vox)] = True
    label = _CODE_TO_LABEL[tissue]

    # --- intensities ---------------------------------------------------------------------------
    scale = rng.uniform(*options.intensity_scale, size=4).astype(np.float32)
    spread = options.tissue_jitter
    jitter = rng.uniform(1.0 - spread, 1.0 + spread, size=_INTENSITIES.shape).astype(np.float32)
    table = lesions.pull_tumour_intensities(_INTENSITIES * jitter * scale,
                                            options.tumour_contrast, options.core_contrast)
    table = np.vstack([table, table[CSF] * _CAVITY_VS_CSF])  # RESECTION: no new draw
    texture = 1.0 + 0.04 * smooth_field(rng, shape, [max(2, n // 8) for n in shape])
    degradation = lesions.draw_degradation(extra, options, shape)
    image = np.empty(shape + (4,), dtype=np.int16)
    for channel in range(4):
        values = degradation.tumour_texture(table[tissue, channel] * texture, tissue, channel)
        clean = degradation.degrade(_smooth3(values))
        bias = np.exp(options.bias * smooth_field(rng, shape, (3, 3, 3)))
        sigma = degradation.noise * table[WHITE, channel]
        noisy = clean * bias + rng.standard_normal(shape, dtype=np.float32) * sigma
        noisy = np.where(brain, np.clip(np.rint(noisy), 1, 32767), 0)
        image[..., channel] = noisy
    return SyntheticCase(
        case_id=case_id or case_id_for(index),
        grade=grade,
        image=image,
        label=label,
        affine=make_affine(shape, spacing_arr),
        tissue=tissue,
    )
