"""The layout readers: how a data set's cases lie on disk (one small class per layout).

A data set's YAML (``conf/data/<name>.yaml``) names its reader with ``reader._target_``:

- ``CaseFolders``: ``<case>/<case><sep><suffix>.nii[.gz]`` (BraTS 2018-2021 with ``_``,
  BraTS 2023+ with ``-``), flat or under grade folders (``unet3d.data.layouts.case_folders``);
- ``MSDFolder``: a Medical Segmentation Decathlon task (``unet3d.data.layouts.dataset_json``);
- ``NNUNetRawFolder``: an nnU-Net v2 raw data set (``unet3d.data.layouts.dataset_json``).

A reader of your own meets the ``Reader`` protocol below (see ``docs/contracts.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from unet3d.data.layouts.case_folders import NAMINGS, CaseFolders
from unet3d.data.layouts.cases import CaseFiles
from unet3d.data.layouts.convention import LabelConvention
from unet3d.data.layouts.dataset_json import MSDFolder, NNUNetRawFolder

__all__ = ["NAMINGS", "CaseFolders", "MSDFolder", "NNUNetRawFolder", "Reader"]


@runtime_checkable
class Reader(Protocol):
    """What the framework asks of a layout reader."""

    def find_cases(self, folder: str | Path, *, require_label: bool = True,
                   allow_missing: bool = False) -> list[CaseFiles]:
        """The cases under ``folder`` sorted by id (DataError naming case and file)."""
        ...

    def convention(self, folder: Path, labels: Mapping[Any, Any] | None,
                   regions: Mapping[str, Sequence[Any]] | None,
                   region_order: Sequence[str] | None = None,
                   name: str | None = None) -> LabelConvention:
        """The label convention of the data set in ``folder`` (the YAML's declaration,
        checked against or completed by the folder's metadata)."""
        ...
