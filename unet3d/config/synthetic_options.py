"""How hard the synthetic cases are: the generator's appearance settings (``data.synthetic.*``).

The defaults reproduce the cases of ``data=synthetic`` bit for bit (and leave its cache key
unchanged); ``conf/data/synthetic_hard.yaml`` sets them towards the difficulty of real BraTS
data. Each key is a number or a ``[low, high]`` range drawn per case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from unet3d.errors import ConfigError


@dataclass(frozen=True)
class SyntheticOptions:
    """Appearance and difficulty of the generated cases (``data.synthetic.<field>``).

    Attributes:
        lgg_fraction: share of LGG-like cases, which have no enhancing tumour (ET) (0..1).
        intensity_scale: [low, high] per-case, per-modality global intensity factor
            (inter-case contrast variation).
        tissue_jitter: per-case relative jitter of each tissue's mean intensity per modality
            (uniform in 1 +- jitter; 0..0.9).
        tumour_contrast: 1 keeps the tumour tissues' intensities; c < 1 moves them towards
            normal brain (``ref + c * (tumour - ref)``, ref the mean of grey and white matter):
            overlapping tissue and tumour intensities (0..1).
        core_contrast: None: the tumour core follows ``tumour_contrast``; k: the core
            tissues' contrast to the edema, kept apart from the edema's to the brain
            (``unet3d.data.synthetic.lesions.pull_tumour_intensities``; 0..1).
        tumour_texture: amplitude of a smooth multiplicative field inside the tumour
            (heterogeneous tumours; 0: none).
        noise: [low, high] Gaussian noise sigma as a fraction of white-matter intensity, per
            case.
        bias: amplitude of the log of the smooth multiplicative bias field.
        blur: [low, high] extra Gaussian blur sigma (voxels), per case (resolution variation).
        slice_thickness: [low, high] integers: each case's images average this many adjacent
            slices along the last axis (thick-slice acquisitions; 1: none).
        satellites: [low, high] integers: extra tumour foci per case (multi-focal tumours).
        enhancing_islands: [low, high] integers: small enhancing islands in the edema of
            cases with ET.
        rim_gaps: share of the enhancing rim turned into necrotic core in patches
            (incomplete enhancement; 0..0.9).
        core_scale: factor on the tumour core's semi-axes (necrosis + enhancing rim, or the
            non-enhancing core) relative to the edema's draw; 1 keeps data=synthetic's cores
            (about 5-20 % of the whole tumour's volume), 1.4 gives cores of about a third of
            it as in BraTS (0.5..2).
        resection_fraction: share of cases with a resection cavity beside the tumour core
            (post-treatment cases; label RC, 4, in ``layout=brats2024_post``, background in
            the other layouts; 0..1).
    """

    lgg_fraction: float = 0.25
    intensity_scale: tuple[float, float] = (0.8, 1.25)
    tissue_jitter: float = 0.05
    tumour_contrast: float = 1.0
    core_contrast: float | None = None
    tumour_texture: float = 0.0
    noise: tuple[float, float] = (0.025, 0.025)
    bias: float = 0.12
    blur: tuple[float, float] = (0.0, 0.0)
    slice_thickness: tuple[int, int] = (1, 1)
    satellites: tuple[int, int] = (0, 0)
    enhancing_islands: tuple[int, int] = (0, 0)
    rim_gaps: float = 0.0
    core_scale: float = 1.0
    resection_fraction: float = 0.0

    def non_default(self) -> dict[str, Any]:
        """The settings that differ from the defaults, as JSON values (part of the cache key)."""
        default = asdict(SyntheticOptions())
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items() if value != default[key]}

    @property
    def extras(self) -> bool:
        """Whether any setting needs the case's second random stream (lesions, blur, ...)."""
        return any(key not in ("lgg_fraction", "intensity_scale", "tissue_jitter",
                               "tumour_contrast", "core_contrast", "bias", "core_scale")
                   for key in self.non_default())


#: The ``data.synthetic`` keys of ``SyntheticOptions``.
OPTION_KEYS: tuple[str, ...] = tuple(field.name for field in fields(SyntheticOptions))
#: (minimum, maximum) of each setting (a range's two ends, each).
_BOUNDS: dict[str, tuple[float, float]] = {
    "lgg_fraction": (0.0, 1.0), "intensity_scale": (0.05, 20.0), "tissue_jitter": (0.0, 0.9),
    "tumour_contrast": (0.0, 1.0), "core_contrast": (0.0, 1.0), "tumour_texture": (0.0, 0.9),
    "noise": (0.0, 1.0), "bias": (0.0, 2.0), "blur": (0.0, 10.0), "slice_thickness": (1, 8),
    "satellites": (0, 10),
    "enhancing_islands": (0, 20), "rim_gaps": (0.0, 0.9), "core_scale": (0.5, 2.0),
    "resection_fraction": (0.0, 1.0),
}
_INTEGERS = ("slice_thickness", "satellites", "enhancing_islands")


def _number(key: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"data.synthetic.{key}: must be a number, got {value!r}")
    if integer and float(value) != int(value):
        raise ConfigError(f"data.synthetic.{key}: must be whole numbers, got {value!r}")
    low, high = _BOUNDS[key]
    if not low <= value <= high:
        raise ConfigError(f"data.synthetic.{key}: must be in [{low}, {high}], got {value!r}")
    return int(value) if integer else float(value)


def options_from(settings: Mapping[str, Any] | None) -> SyntheticOptions:
    """The ``SyntheticOptions`` among a ``data.synthetic`` mapping's keys (others are ignored).

    Args:
        settings: ``data.synthetic`` (a dict or DictConfig); keys of ``OPTION_KEYS`` left out,
            or null, keep their defaults.

    Raises:
        ConfigError: one line naming ``data.synthetic.<key>``: not a number (or not a
            ``[low, high]`` pair with low <= high for a range), outside its bounds.
    """
    chosen: dict[str, Any] = {}
    default = SyntheticOptions()
    for key in OPTION_KEYS:
        value = None if settings is None else settings.get(key)
        if value is None:
            continue
        integer = key in _INTEGERS
        if isinstance(getattr(default, key), tuple):
            if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 2:
                raise ConfigError(f"data.synthetic.{key}: must be [low, high], got {value!r}")
            pair = (_number(key, value[0], integer), _number(key, value[1], integer))
            if pair[0] > pair[1]:
                raise ConfigError(f"data.synthetic.{key}: low must be <= high, got {list(pair)}")
            chosen[key] = pair
        else:
            chosen[key] = _number(key, value, integer)
    return SyntheticOptions(**chosen)
