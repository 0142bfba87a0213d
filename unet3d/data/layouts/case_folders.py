"""Reader of BraTS case folders: ``<case>/<case><sep><suffix>.nii[.gz]``, flat or in grade folders.

BraTS 2018-2021 name files ``<case>_{t1,t1ce,t2,flair,seg}`` (separator ``_``); BraTS 2023 onward
``<case>-{t1n,t1c,t2w,t2f,seg}`` (separator ``-``). One ``CaseFolders`` reads one naming; a file
named in another known naming (``NAMINGS``) is an error naming the case, the file and the
``data=`` option that reads it, so that a folder of mixed conventions never trains silently.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unet3d.data.layouts.cases import CaseFiles
from unet3d.data.layouts.convention import MODALITIES, LabelConvention, convention_from_config
from unet3d.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: NIfTI file endings that the readers accept.
EXTENSIONS = (".nii.gz", ".nii")

#: Known case-folder namings: name -> (separator, canonical modality -> suffix, label suffix).
NAMINGS: dict[str, tuple[str, dict[str, str], str]] = {
    "brats2019": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}, "seg"),
    "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}, "seg"),
}


def check_folder(folder: Path) -> Path:
    """``folder`` expanded; DataError when it does not exist, is not a folder or is empty."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DataError(f"{folder}: data folder does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder}: is not a folder")
    if not any(folder.iterdir()):
        raise DataError(f"{folder}: data folder is empty")
    return folder


def strip_extension(name: str) -> str | None:
    """File name without ``.nii.gz`` / ``.nii``; None for another file (or a ``._`` file)."""
    if name.startswith("."):
        return None  # hidden files, e.g. macOS ``._BRATS_001.nii.gz`` in the MSD archive
    for extension in EXTENSIONS:
        if name.endswith(extension):
            return name[: -len(extension)]
    return None


class CaseFolders:
    """A folder of case folders ``<case>/<case><separator><suffix>.nii[.gz]`` (BraTS layouts).

    Args:
        separator: between the case id and the suffix (``_`` BraTS 2019, ``-`` BraTS 2023).
        files: canonical modality (t1, t1ce, t2, flair) -> file suffix.
        label: suffix of the segmentation file.
        grade_folders: folder names holding case folders (BraTS 2018-2020 ``HGG``, ``LGG``),
            compared case-insensitively; empty: none.
        naming: this naming's name, shown in messages (``brats2019``, ``brats2023``).

    Raises:
        ConfigError: ``data.reader.files`` does not map exactly the four modalities.
    """

    def __init__(self, separator: str = "_", files: Mapping[str, str] | None = None,
                 label: str = "seg", grade_folders: Sequence[str] = ("HGG", "LGG"),
                 naming: str = "brats2019") -> None:
        files = dict(NAMINGS["brats2019"][1] if files is None else files)
        if sorted(files) != sorted(MODALITIES):
            raise ConfigError(f"data.reader.files: must map exactly {list(MODALITIES)} to file "
                              f"suffixes, got {sorted(files)}")
        self.separator = str(separator)
        self.files = {name: str(files[name]) for name in MODALITIES}
        self.label = str(label)
        self.grade_folders = tuple(str(name).upper() for name in grade_folders)
        self.naming = str(naming)

    def _suffixes(self) -> list[str]:
        return [f"{self.separator}{s}" for s in (*self.files.values(), self.label)]

    def _foreign(self) -> dict[str, list[str]]:
        """Other known namings -> their suffixes (``-t1n``, ...)."""
        own = (self.separator, self.files)
        return {name: [f"{sep}{s}" for s in (*files.values(), label)]
                for name, (sep, files, label) in NAMINGS.items() if (sep, files) != own}

    def expected(self) -> str:
        """The expected file names, for messages."""
        first, *rest = self._suffixes()
        return f"<case>/<case>{first}.nii.gz, " + ", ".join(rest)

    def convention(self, folder: Path, labels: Mapping[Any, Any] | None,
                   regions: Mapping[str, Sequence[Any]] | None,
                   region_order: Sequence[str] | None = None,
                   name: str | None = None) -> LabelConvention:
        """The convention declared by the data set's YAML (case folders carry no metadata).

        Raises:
            ConfigError: ``data.labels`` or ``data.regions`` missing or malformed.
        """
        if labels is None or regions is None:
            raise ConfigError(f"data.{'labels' if labels is None else 'regions'}: required "
                              f"with the {type(self).__name__} reader (case folders carry no "
                              "label metadata)")
        return convention_from_config(name or self.naming, labels, regions, region_order)

    def _matches(self, folder: Path, suffixes: Sequence[str]) -> list[Path]:
        found = []
        for child in folder.iterdir():
            stem = strip_extension(child.name)
            if stem is not None and any(stem.endswith(suffix) for suffix in suffixes):
                found.append(child)
        return sorted(found)

    def _case_folders(self, raw_dir: Path) -> list[Path]:
        folders: list[Path] = []
        for child in sorted(c for c in raw_dir.iterdir() if c.is_dir()):
            if child.name.upper() in self.grade_folders and not self._matches(
                    child, self._suffixes()):
                folders.extend(sorted(c for c in child.iterdir() if c.is_dir()))
            else:
                folders.append(child)
        return folders

    def _volume(self, folder: Path, case_id: str, suffix: str) -> Path | None:
        """``<case><sep><suffix>.nii[.gz]`` (or the only ``*<sep><suffix>.nii[.gz]``)."""
        for extension in EXTENSIONS:
            candidate = folder / f"{case_id}{self.separator}{suffix}{extension}"
            if candidate.is_file():
                return candidate
        for extension in EXTENSIONS:
            matches = sorted(folder.glob(f"*{self.separator}{suffix}{extension}"))
            if len(matches) == 1:
                return matches[0]
        return None

    def find_cases(self, raw_dir: str | Path, *, require_label: bool = True,
                   allow_missing: bool = False) -> list[CaseFiles]:
        """List the cases under ``raw_dir`` (case folders, flat or under grade folders).

        Args:
            raw_dir: the data set's folder.
            require_label: a case without segmentation is an error (training); False: its
                ``label`` is None (a test set).
            allow_missing: a missing modality keeps its expected path, so that ``load_case``
                fails for that case alone (prediction goes on with the others).

        Returns:
            The cases sorted by id.

        Raises:
            DataError: one line naming the folder (missing, empty, no case), or the case and
                file: a missing modality or segmentation, a file of another naming (mixed
                conventions, or the wrong ``data=`` option), a case found twice.
        """
        raw_dir = check_folder(Path(raw_dir))
        own, foreign = self._suffixes(), self._foreign()
        cases: dict[str, CaseFiles] = {}
        strangers: list[tuple[str, Path, str]] = []
        ignored: list[str] = []
        for folder in self._case_folders(raw_dir):
            mine = self._matches(folder, own)
            others = [(name, path) for name, suffixes in foreign.items()
                      for path in self._matches(folder, suffixes)]
            if others and mine:
                name, path = others[0]
                raise DataError(
                    f"case {folder.name}: {path}: mixed naming conventions in one case "
                    f"({mine[0].name} is {self.naming}, {path.name} is {name})")
            if others:
                strangers.append((folder.name, others[0][1], others[0][0]))
                continue
            if not mine:
                ignored.append(folder.name)
                continue
            case = self._case(folder, require_label, allow_missing)
            if case.case_id in cases:
                raise DataError(
                    f"case {case.case_id}: found twice under {raw_dir} "
                    f"({cases[case.case_id].folder} and {folder})")
            cases[case.case_id] = case
        if strangers:
            case_id, path, name = strangers[0]
            mixed = (f"mixed naming conventions in {raw_dir} (case {next(iter(cases))} is "
                     f"{self.naming}); " if cases else "")
            raise DataError(
                f"case {case_id}: {path}: {mixed}file named as {name}, but this data set reads "
                f"{self.naming} names ({self.expected()}); use data={name} for such a folder")
        if not cases:
            grades = f" or under {'/ and '.join(self.grade_folders)}/" if self.grade_folders else ""
            hint = ("; it holds a dataset.json: use data=msd_brain or data=nnunet_raw"
                    if (raw_dir / "dataset.json").is_file() else "")
            raise DataError(f"{raw_dir}: no BraTS case found (expected {self.expected()} files, "
                            f"in case folders{grades}){hint}")
        if ignored:
            logger.warning("Ignored %d folder(s) without NIfTI volumes under %s: %s",
                           len(ignored), raw_dir,
                           ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""))
        return [cases[case_id] for case_id in sorted(cases)]

    def _case(self, folder: Path, require_label: bool, allow_missing: bool) -> CaseFiles:
        case_id = folder.name
        modalities: dict[str, Path] = {}
        for name in MODALITIES:
            suffix = self.files[name]
            path = self._volume(folder, case_id, suffix)
            expected = folder / f"{case_id}{self.separator}{suffix}.nii.gz"
            if path is None and not allow_missing:
                raise DataError(f"case {case_id}: missing file {expected}")
            modalities[name] = expected if path is None else path
        label = self._volume(folder, case_id, self.label)
        if label is None:
            others = [child.name for child in sorted(folder.iterdir())
                      if strip_extension(child.name) is not None
                      and child not in modalities.values()]
            if require_label or others:
                message = self._missing_label(folder, case_id, require_label)
                if require_label:
                    raise DataError(message)
                logger.warning("%s", message)
        return CaseFiles(case_id=case_id, modalities=modalities, label=label)

    def _missing_label(self, folder: Path, case_id: str, required: bool) -> str:
        """One line: the segmentation looked for, the files found, what to do.

        (BraTS 2020 ships case BraTS20_Training_355 with its segmentation named
        ``W39_1998.09.19_Segm.nii``.)
        """
        expected = f"{case_id}{self.separator}{self.label}.nii.gz"
        found = ", ".join(sorted(child.name for child in folder.iterdir()
                                 if not child.name.startswith("."))) or "nothing"
        fix = (f"rename the segmentation to {expected} (or .nii), or move the case out of "
               f"{folder.parent}" if required
               else "the case is read without a label (segmented, not scored)")
        return (f"case {case_id}: missing file {folder / expected} (the segmentation; also "
                f"looked for {expected[:-3]}); found {found}: {fix}")
