"""A data set's layout: its reader and its label convention, resolved once its folder is ready.

``resolve_layout(data_cfg, dataset, folder)`` reads the layout keys (``LAYOUT_KEYS``) of the
``data`` group: ``reader`` (a ``_target_`` in ``unet3d.data.readers``), ``convention`` (the
convention's name), ``labels`` (value -> name), ``regions`` (name -> values) and
``region_order``. A group without ``reader`` takes them from its data set's
``layout_config()`` when it has one (``SyntheticBraTS``: ``conf/data/<layout>.yaml``), else
the BraTS 2019 case folders (the layout that every data set produced before conventions).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet3d.config import CONFIG_DIR
from unet3d.data.layouts.case_folders import CaseFolders
from unet3d.data.layouts.cases import CaseFiles, LoadedCase, load_case
from unet3d.data.layouts.convention import BRATS2019, LabelConvention
from unet3d.errors import ConfigError

logger = logging.getLogger(__name__)

#: Keys of the ``data`` group that describe the layout (not arguments of the data set).
LAYOUT_KEYS = ("reader", "convention", "labels", "regions", "region_order")


@dataclass
class DataLayout:
    """A reader and the convention of the folder it reads."""

    reader: Any
    convention: LabelConvention

    def find_cases(self, folder: str | Path, *, require_label: bool = True,
                   allow_missing: bool = False) -> list[CaseFiles]:
        """The reader's cases of ``folder`` (see ``Reader.find_cases``)."""
        return self.reader.find_cases(Path(folder), require_label=require_label,
                                      allow_missing=allow_missing)

    def load_case(self, case: CaseFiles, *, strict_label: bool = True) -> LoadedCase:
        """``cases.load_case`` with this layout's convention."""
        return load_case(case, strict_label=strict_label, convention=self.convention)


def default_layout() -> DataLayout:
    """BraTS 2019 case folders with the BraTS 2019 labels."""
    return DataLayout(CaseFolders(), BRATS2019)


def data_config(name: str) -> Mapping[str, Any]:
    """The layout keys of ``conf/data/<name>.yaml`` (plain values).

    Raises:
        ConfigError: no such file.
    """
    from omegaconf import OmegaConf

    path = CONFIG_DIR / "data" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"data.synthetic.layout: no data set {name!r} ({path} is missing)")
    loaded = OmegaConf.load(path)
    return {key: OmegaConf.to_container(loaded[key]) if OmegaConf.is_config(loaded[key])
            else loaded[key] for key in LAYOUT_KEYS if key in loaded}


def build_reader(node: Mapping[str, Any]) -> Any:
    """The reader that ``data.reader`` names with ``_target_``.

    Raises:
        ConfigError: ``data.reader._target_: ...`` the target does not import or build, or
            lacks ``find_cases`` / ``convention``.
    """
    from unet3d.config.components import check_contract, instantiate

    reader = instantiate(node, "data.reader")
    check_contract(all(callable(getattr(reader, m, None)) for m in ("find_cases", "convention")),
                   "data.reader", lambda: f"{type(reader).__name__} lacks find_cases(folder, ...)"
                   " or convention(folder, labels, regions, ...)")
    return reader


def layout_settings(data_cfg: Mapping[str, Any], dataset: Any) -> Mapping[str, Any] | None:
    """The layout keys in force: the ``data`` group's, else ``dataset.layout_config()``."""
    if data_cfg.get("reader") is not None:
        return {key: data_cfg.get(key) for key in LAYOUT_KEYS}
    provider = getattr(dataset, "layout_config", None)
    return provider() if callable(provider) else None


def resolve_layout(data_cfg: Mapping[str, Any], dataset: Any, folder: Path) -> DataLayout:
    """The reader and label convention of the data set whose cases are in ``folder``.

    Args:
        data_cfg: the ``data`` group (its layout keys, ``LAYOUT_KEYS``).
        dataset: the built data set (asked for ``layout_config()`` when the group has no
            ``reader``).
        folder: ``dataset.cases_dir(...)``, ready (metadata such as dataset.json is read).

    Raises:
        ConfigError: a bad ``data.reader`` / ``data.labels`` / ``data.regions``.
        DataError: the folder's metadata is missing, unreadable or disagrees with the YAML.
    """
    settings = layout_settings(data_cfg, dataset)
    if settings is None:
        return default_layout()

    def plain(value: Any) -> Any:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    reader = build_reader(plain(settings["reader"]))
    convention = reader.convention(Path(folder), plain(settings.get("labels")),
                                   plain(settings.get("regions")),
                                   region_order=plain(settings.get("region_order")),
                                   name=settings.get("convention"))
    logger.info("Data layout: %s, labels %s (%s)", type(reader).__name__,
                dict(convention.labels), convention.name)
    return DataLayout(reader, convention)
