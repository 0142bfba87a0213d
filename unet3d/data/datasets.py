"""The data-set component: where the raw cases of a ``data`` group come from.

``conf/data/<name>.yaml`` names the data set with ``_target_``. The framework reads the
group's pipeline keys (``unet3d.config.DATA_PIPELINE_KEYS``: ``name``, ``preprocessed_dir``,
``crop_size``, ``batch_size``, ...) and calls the target with every other key of the group.
The contract (``docs/contracts.md``), checked by ``build_dataset`` and ``prepare_data``: the
object has ``cases_dir(data_dir: Path) -> Path``, the folder of the raw cases, made ready when
it is called (generated, downloaded, unpacked) and cached under ``data_dir``
(``paths.data_dir``) when the data set makes files. How the cases lie in that folder and what
their labels mean is the layout (``unet3d.data.layouts.resolve``): the group's layout keys
(``unet3d.data.layouts.resolve.LAYOUT_KEYS``: ``reader``, ``convention``, ``labels``, ``regions``,
``region_order``; not passed to the target either), else the data set's optional
``layout_config() -> Mapping`` of those keys, else BraTS 2019 case folders
(``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, flat or under ``HGG/`` and ``LGG/``).
Preprocessing, the fold split and the training input are the same for every data set.

Built in: ``SyntheticBraTS`` (``data=synthetic``) and ``BraTSFolder`` (``data=brats2019``,
``brats2021``, ``brats2023``, ``brats2024_post``, ``msd_brain``, ``nnunet_raw``: one folder
class, the YAML's layout keys differ).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from unet3d.config import DATA_PIPELINE_KEYS
from unet3d.config.components import check_contract, instantiate
from unet3d.data.layouts.resolve import LAYOUT_KEYS, data_config
from unet3d.errors import DataError

log = logging.getLogger(__name__)


@runtime_checkable
class DataSet(Protocol):
    """What the framework asks of a data set (see the module doc)."""

    def cases_dir(self, data_dir: Path) -> Path:
        """The folder of the raw cases in BraTS layout, ready to read (cache: ``data_dir``)."""
        ...


#: Synthetic layouts whose reader and labels come from another data set's YAML.
LAYOUT_DATA_SETS = {"flat": "brats2019"}


class SyntheticBraTS:
    """Synthetic cases in a real data set's layout, generated once and deterministically
    (``data=synthetic``).

    The cases are real NIfTI files (see ``unet3d.data.synthetic.generate``), written to
    ``raw_dir`` or to ``<data_dir>/synthetic/<hash of the settings>/raw``; an existing complete
    set is reused.
    They are read like the real data set of their layout: ``layout_config`` returns the layout
    keys of ``conf/data/<layout>.yaml`` (``flat`` -> ``brats2019``).

    Args:
        synthetic: the generator settings (``data.synthetic``): ``num_cases`` (int),
            ``shape`` (3 ints, voxels H, W, D), ``spacing`` (3 floats, mm), ``seed`` (int) and
            ``layout`` (``flat``, ``brats2019``, ... see ``unet3d.config.SYNTHETIC_LAYOUTS``),
            optional ``num_test`` (int, cases without labels in ``imagesTs/``) and the appearance
            options of ``unet3d.config.synthetic_options.OPTION_KEYS`` (null: default).
        raw_dir: where to write the cases; None derives it from the settings.
    """

    def __init__(self, synthetic: Mapping[str, Any], raw_dir: str | None) -> None:
        self.num_cases = int(synthetic["num_cases"])
        self.shape = [int(side) for side in synthetic["shape"]]
        self.spacing = [float(side) for side in synthetic["spacing"]]
        self.seed = int(synthetic["seed"])
        self.layout = str(synthetic.get("layout", "flat"))
        self.num_test = int(synthetic.get("num_test", 0) or 0)
        from unet3d.config.synthetic_options import OPTION_KEYS

        self.options = {key: synthetic[key] for key in OPTION_KEYS
                        if synthetic.get(key) is not None}
        self.raw_dir = raw_dir

    def settings(self) -> dict[str, Any]:
        """The generator settings (``data.synthetic``) as plain values."""
        return {"num_cases": self.num_cases, "shape": self.shape, "spacing": self.spacing,
                "seed": self.seed, "layout": self.layout, "num_test": self.num_test,
                **self.options}

    def layout_config(self) -> Mapping[str, Any]:
        """The layout keys (``LAYOUT_KEYS``) of ``conf/data/<layout>.yaml`` (flat: brats2019).

        Raises:
            ConfigError: ``data.synthetic.layout`` names no data set of ``conf/data/``.
        """
        return data_config(LAYOUT_DATA_SETS.get(self.layout, self.layout))

    def cases_dir(self, data_dir: Path) -> Path:
        """Generate the missing cases (or reuse them) and return their folder.

        Args:
            data_dir: the framework's data cache (``paths.data_dir``).
        """
        from omegaconf import OmegaConf

        from unet3d.data.synthetic.generate import generate_dataset, synthetic_settings_key

        if self.raw_dir is None:
            key = synthetic_settings_key(OmegaConf.create(self.settings()))
            folder = Path(data_dir) / "synthetic" / key / "raw"
        else:
            folder = Path(self.raw_dir)
        folder = folder.expanduser().resolve()
        generate_dataset(folder, num_cases=self.num_cases, shape=self.shape,
                         spacing=self.spacing, seed=self.seed, layout=self.layout,
                         num_test=self.num_test, **self.options)
        return folder


class BraTSFolder:
    """A folder of cases on disk (``data=brats2019``, ``msd_brain``, ...: ``data.raw_dir=...``);
    the group's layout keys say how to read it.

    Args:
        raw_dir: the data set's folder (for MSD and nnU-Net: the folder of ``dataset.json``,
            or, to predict, its ``imagesTs/``).
    """

    def __init__(self, raw_dir: str) -> None:
        self.raw_dir = raw_dir

    def cases_dir(self, data_dir: Path) -> Path:
        """``raw_dir``, resolved.

        Raises:
            DataError: it does not exist or is not a folder.
        """
        path = Path(str(self.raw_dir)).expanduser().resolve()
        if not path.is_dir():
            raise DataError(f"{path}: data.raw_dir does not exist or is not a folder")
        return path


def build_dataset(data_cfg: Mapping[str, Any]) -> DataSet:
    """Build the data set that the ``data`` group names with ``_target_``.

    Args:
        data_cfg: the ``data`` config group; every key but ``_target_``, the pipeline keys
            (``unet3d.config.DATA_PIPELINE_KEYS``) and the layout keys
            (``unet3d.data.layouts.resolve.LAYOUT_KEYS``) is passed to the target.

    Returns:
        The data set (it has ``cases_dir(data_dir) -> Path``).

    Raises:
        ConfigError: one line starting with ``data._target_``: the target does not import,
            its call fails, or the result has no ``cases_dir`` method.
    """
    dataset = instantiate(data_cfg, "data", exclude=(*DATA_PIPELINE_KEYS, *LAYOUT_KEYS))
    target = data_cfg.get("_target_")
    check_contract(callable(getattr(dataset, "cases_dir", None)), "data", lambda: (
        f"{target} returned a {type(dataset).__name__} without a cases_dir(data_dir) method"))
    return dataset


def cases_dir_of(dataset: DataSet, data_dir: Path, target: str) -> Path:
    """``dataset.cases_dir(data_dir)``, checked to be an existing folder.

    Raises:
        ConfigError: ``data._target_: ...`` when the data set returns no folder.
        DataError: raised by the data set (a missing or broken folder).
    """
    folder = dataset.cases_dir(Path(data_dir))
    check_contract(isinstance(folder, str | Path) and Path(folder).is_dir(), "data", lambda: (
        f"{target}.cases_dir returned {folder!r}; expected the folder of the raw cases"))
    log.debug("data set %s: cases in %s", target, folder)
    return Path(folder)
