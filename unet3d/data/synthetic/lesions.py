"""The harder parts of synthetic cases: extra lesions, heterogeneous tumours and degraded images.

Used by :func:`unet3d.data.synthetic.case.generate_case` when ``SyntheticOptions`` ask for them
(``conf/data/synthetic_hard.yaml``). Every draw comes from the case's second random stream
(``default_rng([seed, index, 1])``), so the default cases do not change. What each models, after
the difficulties of real BraTS data that its papers describe (Menze et al., IEEE TMI 2015;
Bakas et al., arXiv:1811.02629): multi-focal tumours (satellite foci), small enhancing islands
in the edema, incomplete enhancing rims, heterogeneous tumour signal, thick slices and blur
(inter-site resolution), noise levels that vary between cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unet3d.config.synthetic_options import SyntheticOptions
from unet3d.data.synthetic.fields import (
    CSF,
    EDEMA,
    ENHANCING,
    GREY,
    NECROSIS,
    NON_ENHANCING,
    RESECTION,
    TUMOUR_CODES,
    WHITE,
    centred,
    smooth_field,
)

_NORMAL = (CSF, GREY, WHITE)


def _count(rng: np.random.Generator, bounds: Sequence[int]) -> int:
    return int(rng.integers(int(bounds[0]), int(bounds[1]) + 1))


def _ellipsoid_distance(rng: np.random.Generator, shape: Sequence[int], spacing: np.ndarray,
                        centre: np.ndarray, radii_mm: np.ndarray, roughness: float
                        ) -> tuple[tuple[slice, ...], np.ndarray]:
    """Normalised distance (<= 1: inside) to an irregular ellipsoid, in its bounding box."""
    reach = np.ceil(1.6 * radii_mm / spacing).astype(int) + 1
    low = np.maximum(centre - reach, 0)
    high = np.minimum(centre + reach + 1, np.asarray(shape))
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
    axes = [((np.arange(lo, hi) - c) * s / r).astype(np.float32)
            for lo, hi, c, s, r in zip(low, high, centre, spacing, radii_mm, strict=True)]
    grid = np.ix_(*axes)
    distance = np.sqrt(grid[0] ** 2 + grid[1] ** 2 + grid[2] ** 2)
    box_shape = tuple(int(hi - lo) for lo, hi in zip(low, high, strict=True))
    distance = distance * np.exp(roughness * centred(smooth_field(rng, box_shape, (4, 4, 4))))
    return box, distance


def add_satellites(rng: np.random.Generator, options: SyntheticOptions, tissue: np.ndarray,
                   brain: np.ndarray, radius: np.ndarray, spacing: np.ndarray, grade: str,
                   size_mm: float) -> int:
    """Add extra tumour foci (edema, with a core in most) to ``tissue`` in place.

    Args:
        tissue: uint8 (H, W, D) tissue codes, modified in place.
        brain: bool (H, W, D) brain mask.
        radius: float32 (H, W, D) normalised brain radius (< 1 inside the brain).
        spacing: (3,) voxel sizes in mm.
        grade: "HGG" (cores enhance around necrosis) or "LGG" (non-enhancing cores).
        size_mm: mean semi-axis of the brain (mm); foci are 6-18 % of it.

    Returns:
        The number of foci added.
    """
    count = _count(rng, options.satellites)
    candidates = np.flatnonzero((radius < 0.8) & brain & np.isin(tissue, _NORMAL))
    if not count or not candidates.size:
        return 0
    voxel = float(spacing.max())
    for _ in range(count):
        centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)],
                                           tissue.shape))
        radii = np.maximum(size_mm * rng.uniform(0.06, 0.18) * rng.uniform(0.75, 1.25, 3),
                           2.0 * voxel)
        box, distance = _ellipsoid_distance(rng, tissue.shape, spacing, centre, radii, 0.3)
        region, inside = tissue[box], brain[box]
        region[inside & (distance <= 1.0) & np.isin(region, _NORMAL)] = EDEMA
        core_size = float(rng.uniform(0.35, 0.7)) if rng.random() < 0.7 else 0.0
        core = inside & (distance <= core_size)
        if grade == "HGG":
            region[core] = ENHANCING
            region[core & (distance <= 0.5 * core_size)] = NECROSIS
        else:
            region[core] = NON_ENHANCING
    return count


def add_rim_gaps(rng: np.random.Generator, options: SyntheticOptions,
                 tissue: np.ndarray) -> None:
    """Turn patches of the enhancing rim into necrotic core (incomplete enhancement), in place.

    A per-case share uniform in [rim_gaps / 2, rim_gaps] of the enhancing voxels, chosen where a
    smooth random field is lowest.
    """
    enhancing = tissue == ENHANCING
    if options.rim_gaps <= 0 or not enhancing.any():
        return
    share = float(rng.uniform(0.5, 1.0)) * options.rim_gaps
    field = smooth_field(rng, tissue.shape, [max(2, n // 6) for n in tissue.shape])
    threshold = np.quantile(field[enhancing], share)
    tissue[enhancing & (field < threshold)] = NECROSIS


def add_enhancing_islands(rng: np.random.Generator, options: SyntheticOptions,
                          tissue: np.ndarray, spacing: np.ndarray) -> int:
    """Put small enhancing balls (radius 1-2.2 voxels) into the edema, in place.

    Returns:
        The number of islands added.
    """
    count = _count(rng, options.enhancing_islands)
    candidates = np.flatnonzero(tissue == EDEMA)
    if not count or not candidates.size:
        return 0
    voxel = float(spacing.min())
    for _ in range(count):
        centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)],
                                           tissue.shape))
        radii = np.full(3, voxel * float(rng.uniform(1.0, 2.2)))
        box, distance = _ellipsoid_distance(rng, tissue.shape, spacing, centre, radii, 0.1)
        region = tissue[box]
        region[(distance <= 1.0) & (region == EDEMA)] = ENHANCING
    return count


@dataclass(frozen=True)
class Degradation:
    """One case's draws of the image degradations (see ``draw_degradation``).

    Attributes:
        noise: Gaussian noise sigma as a fraction of white-matter intensity.
        blur: Gaussian blur sigma (voxels; 0: none).
        slice_thickness: slices averaged along the last axis (1: none).
        texture: float32 (H, W, D, 4) multiplicative tumour texture per channel, or None.
    """

    noise: float
    blur: float
    slice_thickness: int
    texture: np.ndarray | None

    def tumour_texture(self, values: np.ndarray, tissue: np.ndarray, channel: int) -> np.ndarray:
        """``values`` (float32 (H, W, D)) with the tumour's heterogeneous signal of ``channel``."""
        if self.texture is None:
            return values
        return np.where(np.isin(tissue, TUMOUR_CODES), values * self.texture[..., channel],
                        values)

    def degrade(self, clean: np.ndarray) -> np.ndarray:
        """Blur and thick slices applied to a noise-free image (float32 (H, W, D))."""
        from scipy.ndimage import gaussian_filter, uniform_filter1d

        out = clean
        if self.blur > 0:
            out = gaussian_filter(out, self.blur, mode="nearest")
        if self.slice_thickness > 1:
            out = uniform_filter1d(out, self.slice_thickness, axis=2, mode="nearest")
        return out


def draw_degradation(rng: np.random.Generator | None, options: SyntheticOptions,
                     shape: Sequence[int]) -> Degradation:
    """Draw a case's noise level, blur, slice thickness and tumour texture.

    Without a second stream (``rng`` None: default-like settings) the fixed values of
    ``options`` are used and nothing is drawn.
    """
    if rng is None:
        return Degradation(float(options.noise[0]), 0.0, 1, None)
    noise = float(rng.uniform(*options.noise))
    blur = float(rng.uniform(*options.blur))
    thickness = _count(rng, options.slice_thickness)
    texture = None
    if options.tumour_texture > 0:
        cells = [max(2, n // 5) for n in shape]
        texture = np.stack([1.0 + options.tumour_texture * np.tanh(smooth_field(rng, shape, cells))
                            for _ in range(4)], axis=-1).astype(np.float32)
    return Degradation(noise, blur, thickness, texture)


def pull_tumour_intensities(table: np.ndarray, contrast: float,
                            core_contrast: float | None = None) -> np.ndarray:
    """Move the tumour tissues' mean intensities towards normal brain.

    Args:
        table: float32 (8, 4) mean intensity per tissue code and modality.
        contrast: 1 keeps them; c moves each to ``ref + c * (value - ref)`` with ref the mean
            of grey and white matter of that modality.
        core_contrast: None: the core tissues (necrosis, enhancing rim, non-enhancing core)
            follow ``contrast`` like the edema; k: they sit at ``edema' + k * (value - edema)``
            around the moved edema ``edema'`` (so k = contrast is the same as None), which
            sets the core's contrast to the edema (TC's boundary) apart from the edema's
            contrast to the brain (WT's boundary).

    Returns:
        A new float32 (8, 4) table.
    """
    if contrast == 1.0 and core_contrast is None:
        return table
    out = table.copy()
    reference = 0.5 * (table[GREY] + table[WHITE])
    for code in TUMOUR_CODES:
        out[code] = reference + np.float32(contrast) * (table[code] - reference)
    if core_contrast is not None:
        for code in (NECROSIS, ENHANCING, NON_ENHANCING):
            out[code] = out[EDEMA] + np.float32(core_contrast) * (table[code] - table[EDEMA])
    return out


def add_resection_cavity(rng: np.random.Generator, options: SyntheticOptions,
                         tissue: np.ndarray, brain: np.ndarray, spacing: np.ndarray,
                         centre: np.ndarray, core_radii: np.ndarray) -> bool:
    """With probability ``options.resection_fraction``, carve a resection cavity in place.

    The cavity is an ellipsoid of 0.5-0.9 times the core's semi-axes centred on the core's
    edge in a random direction: it replaces tumour and brain tissue inside the brain with the
    fluid-filled ``RESECTION`` code (post-treatment BraTS 2024 cases: label RC).

    Args:
        tissue: uint8 (H, W, D) tissue codes, modified in place.
        brain: bool (H, W, D) brain mask.
        spacing: (3,) voxel sizes in mm.
        centre: (3,) the tumour centre voxel.
        core_radii: (3,) the core's semi-axes in mm.

    Returns:
        Whether a cavity was carved.
    """
    if options.resection_fraction <= 0 or rng.random() >= options.resection_fraction:
        return False
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    middle = np.asarray(centre) + direction * core_radii / spacing
    radii = core_radii * rng.uniform(0.5, 0.9, 3)
    box, distance = _ellipsoid_distance(rng, tissue.shape, spacing,
                                        np.round(middle).astype(int), radii, 0.15)
    region = tissue[box]
    region[brain[box] & (distance <= 1.0)] = RESECTION
    return True
