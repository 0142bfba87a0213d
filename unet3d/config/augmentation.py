"""The keys of ``data.augmentation`` (``conf/augmentation/``) and their checks.

``AUGMENTATION_SETTINGS`` joins ``unet3d.config.SETTINGS`` (checked by ``validate``);
``check_augmentation`` runs the same checks on a plain mapping (callers of
``unet3d.data.pipeline.train_dataset`` that do not come through ``validate``). The values and
their sources: ``conf/augmentation/nnunet.yaml``; the transforms: ``unet3d/data/augment/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from unet3d.config.settings import Interval, Number, Setting, SubsetOf, Text, get
from unet3d.errors import ConfigError

#: Spatial axes a crop may be mirrored along (0, 1, 2 = H, W, D).
MIRROR_AXES = (0, 1, 2)
#: Transforms of ``data.augmentation``, in the order they are applied (see conf/augmentation/).
AUGMENTATION_TRANSFORMS = ("mirror", "intensity_scale", "rotation", "scaling", "elastic", "noise",
                           "blur", "brightness", "contrast", "low_resolution", "inverted_gamma",
                           "gamma")
PREFIX = "data.augmentation"

_PROBABILITY = Number(0, 1, low_inclusive=True, high_inclusive=True)
_FACTOR = Interval(minimum=0.0, open_minimum=True)

_KEYS: dict[str, Setting] = {
    "name": Text(),
    "mirror.probability": _PROBABILITY,
    "mirror.axes": SubsetOf(MIRROR_AXES),
    "intensity_scale.range": _FACTOR,
    "rotation.angle": Interval(minimum=-180.0, maximum=180.0),
    "scaling.range": _FACTOR,
    "elastic.alpha": Interval(minimum=0.0),
    "elastic.sigma": _FACTOR,
    "noise.std": Interval(minimum=0.0),
    "blur.sigma": _FACTOR,
    "blur.channel_probability": _PROBABILITY,
    "brightness.range": _FACTOR,
    "contrast.range": _FACTOR,
    "low_resolution.zoom": Interval(minimum=0.0, maximum=1.0, open_minimum=True),
    "low_resolution.channel_probability": _PROBABILITY,
    "inverted_gamma.range": _FACTOR,
    "gamma.range": _FACTOR,
}
for _name in AUGMENTATION_TRANSFORMS[1:]:
    _KEYS[f"{_name}.probability"] = _PROBABILITY
_ORDER = ("name", *AUGMENTATION_TRANSFORMS)

#: Every key of ``data.augmentation`` with its check (dotted keys from the config's root), in
#: the order of the transforms.
AUGMENTATION_SETTINGS: dict[str, Setting] = {
    f"{PREFIX}.{key}": _KEYS[key]
    for key in sorted(_KEYS, key=lambda key: (_ORDER.index(key.split(".")[0]), key))}


def check_unknown_keys(augmentation: Mapping[str, Any] | None) -> None:
    """Refuse a transform or key that ``data.augmentation`` does not have (a typo in a YAML).

    Raises:
        ConfigError: ``data.augmentation.<key>: unknown ...`` naming the known ones.
    """
    if not isinstance(augmentation, Mapping):
        raise ConfigError(f"{PREFIX}: must be a mapping of transforms (conf/augmentation/), got "
                          f"{augmentation!r}")
    known = {key.split(".")[0] for key in _KEYS}
    for name, section in augmentation.items():
        if name not in known:
            raise ConfigError(f"{PREFIX}.{name}: unknown transform; known: "
                              f"{', '.join(sorted(known - {'name'}))}")
        if name == "name":
            continue
        if not isinstance(section, Mapping):
            raise ConfigError(f"{PREFIX}.{name}: must be a mapping (probability, ...), got "
                              f"{section!r}")
        for key in section:
            if f"{name}.{key}" not in _KEYS:
                allowed = sorted(k.split(".", 1)[1] for k in _KEYS if k.startswith(f"{name}."))
                raise ConfigError(f"{PREFIX}.{name}.{key}: unknown key; {name} has "
                                  f"{', '.join(allowed)}")


def check_augmentation(augmentation: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``data.augmentation`` mapping; return it as plain containers.

    Args:
        augmentation: the section (a DictConfig or a dict), e.g. of a composed config.

    Raises:
        ConfigError: one line starting with the dotted key, e.g.
            ``data.augmentation.rotation.probability: must be in [0, 1], got 1.5``.
    """
    plain = (OmegaConf.to_container(augmentation, resolve=True)
             if OmegaConf.is_config(augmentation) else augmentation)
    check_unknown_keys(plain)
    cfg = OmegaConf.create({"data": {"augmentation": plain}})
    for key, setting in AUGMENTATION_SETTINGS.items():
        if get(cfg, key) is None:
            raise ConfigError(f"{key}: missing (conf/augmentation/nnunet.yaml lists every key)")
        setting.check(cfg, key)
    return get(cfg, PREFIX)
