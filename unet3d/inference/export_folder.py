"""The export folder of ``mode=export``: its files, its ``unet3d_export.json``, reading it back.

Layout (``<folder>``)::

    unet3d_export.json           what inference needs (below), written last
    member-0/model.onnx          member 0 as ONNX (float32 [n, h, w, d, C] -> [n, h, w, d, K])
    member-0/openvino/model.xml  member 0 as OpenVINO IR (+ model.bin)
    member-0/saved_model/        member 0 as a TF SavedModel (endpoint ``serve``)
    member-0/openvino_int8/...   member 0 as an INT8 OpenVINO IR (``unet3d.inference.quantize``)
    member-1/...                 one folder per ensemble member (the mean of their outputs)

``unet3d_export.json`` records: the input (float32, axis order N, H, W, D, C; the modality order
of the channels; the input divisor every window side must be a multiple of), the output (K
channels, the head: ``softmax`` over classes or ``regions``: one sigmoid per region; the
threshold of region heads), the normalisation (per channel z-score over the non-zero voxels,
``unet3d.data.preprocess.normalize``), the label convention the network learnt (labels,
regions, region order), the sliding-window settings the model was exported with, the
ensemble members (their recorded model settings, checkpoints, per-format largest difference to
the Keras model at export time, SHA-256 of each file) and the post-processing rules of the
sweep (``mode=postprocess``), if any.

Nothing here imports TensorFlow or an engine: the served model of an export reads the folder
with this module alone. ``read_export`` checks the record and, for the formats an engine
needs, that every file is present and unchanged (SHA-256): a damaged folder is one
``CheckpointError`` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet3d.errors import CheckpointError

#: The record of an export folder.
EXPORT_FILE = "unet3d_export.json"
#: Version of the record's layout (a reader refuses other versions).
EXPORT_FORMAT = 1
#: Each format's path inside a member folder.
FORMAT_PATHS = {"onnx": "model.onnx", "openvino": "openvino/model.xml",
                "saved_model": "saved_model", "openvino_int8": "openvino_int8/model.xml"}
#: The formats that are OpenVINO IR (an ``.xml`` with its ``.bin``; ``sha256`` holds both, the
#: ``.bin`` under ``<format>_bin``).
IR_FORMATS = ("openvino", "openvino_int8")
#: The formats each engine can run, preferred first (OpenVINO also reads ONNX).
ENGINE_FORMATS = {"openvino": ("openvino", "onnx"), "onnxruntime": ("onnx",),
                  "tensorflow": ("saved_model",), "openvino_int8": ("openvino_int8",)}


def is_export_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``unet3d_export.json``."""
    return (Path(str(path)).expanduser() / EXPORT_FILE).is_file()


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(item for item in path.rglob("*") if item.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def format_files(path: Path, fmt: str) -> list[Path]:
    """The files a format's entry stands for (the IR's ``.bin`` with its ``.xml``)."""
    if fmt in IR_FORMATS:
        return [path, path.with_suffix(".bin")]
    return [path]


@dataclass(frozen=True)
class ExportMember:
    """One network of an export.

    Attributes:
        name: ``member-<i>``.
        files: format -> path relative to the export folder.
        digests: format -> SHA-256 (``file_digest``).
        model: the model settings it was built from (``_target_`` and arguments).
        checkpoint: the checkpoint prefix it was exported from.
        max_difference: format -> the largest |probability difference| to the Keras model
            measured at export time.
    """

    name: str
    files: Mapping[str, str]
    digests: Mapping[str, str]
    model: Mapping[str, Any]
    checkpoint: str
    max_difference: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The member's entry of ``unet3d_export.json``."""
        return {"name": self.name, "files": dict(self.files), "sha256": dict(self.digests),
                "model": dict(self.model), "checkpoint": self.checkpoint,
                "max_difference": dict(self.max_difference)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportMember:
        """Read an entry (KeyError / TypeError when malformed)."""
        return cls(str(data["name"]), dict(data["files"]), dict(data["sha256"]),
                   dict(data.get("model") or {}), str(data.get("checkpoint", "")),
                   {str(key): float(value)
                    for key, value in dict(data.get("max_difference") or {}).items()})


@dataclass(frozen=True)
class ExportFolder:
    """An export folder read back (``read_export``).

    Attributes:
        path: the folder.
        record: the parsed ``unet3d_export.json``.
        members: its networks, in order.
    """

    path: Path
    record: Mapping[str, Any]
    members: tuple[ExportMember, ...]

    @property
    def convention(self) -> Any:
        """The ``LabelConvention`` the members learnt."""
        from unet3d.data.layouts.convention import LabelConvention

        return LabelConvention.from_dict(self.record["labels"])

    @property
    def head(self) -> str:
        """``softmax`` or ``regions``."""
        return str(self.record["output"]["head"])

    @property
    def num_classes(self) -> int:
        """Output channels ``K``."""
        return int(self.record["output"]["channels"])

    @property
    def input_divisor(self) -> int:
        """Every window side must be a multiple of this."""
        return int(self.record["input"]["divisor"])

    @property
    def formats(self) -> list[str]:
        """The formats every member has."""
        shared = set(FORMAT_PATHS)
        for member in self.members:
            shared &= set(member.files)
        return [fmt for fmt in FORMAT_PATHS if fmt in shared]

    def postprocessing(self) -> Any:
        """The sweep's ``PostprocessingRules`` recorded at export time, or None."""
        rules = self.record.get("postprocessing")
        if not rules:
            return None
        from unet3d.evaluation.postprocess import PostprocessingRules

        return PostprocessingRules.from_dict(rules)

    def engine_format(self, engine: str) -> str | None:
        """The format ``engine`` would load from this folder (None: none it can run)."""
        return next((fmt for fmt in ENGINE_FORMATS[engine] if fmt in self.formats), None)

    def member_paths(self, fmt: str) -> list[Path]:
        """Each member's file (folder) of ``fmt``, checked present and unchanged.

        Raises:
            CheckpointError: a file is missing or its SHA-256 differs from the record.
        """
        paths = []
        for member in self.members:
            path = self.path / member.files[fmt]
            for file in format_files(path, fmt):
                if not file.exists():
                    relative = file.relative_to(self.path)
                    raise CheckpointError(f"export folder {self.path}: {relative} is missing "
                                          f"({EXPORT_FILE} lists it)")
            if file_digest(path) != member.digests.get(fmt):
                raise CheckpointError(f"export folder {self.path}: {member.files[fmt]} differs "
                                      f"from the SHA-256 in {EXPORT_FILE} (damaged or replaced; "
                                      "export again)")
            if fmt in IR_FORMATS and file_digest(path.with_suffix(".bin")) != \
                    member.digests.get(f"{fmt}_bin"):
                raise CheckpointError(f"export folder {self.path}: "
                                      f"{Path(member.files[fmt]).with_suffix('.bin')} differs "
                                      f"from the SHA-256 in {EXPORT_FILE} (damaged or replaced; "
                                      "export again)")
            paths.append(path)
        return paths


def read_export(path: str | Path) -> ExportFolder:
    """Read and check an export folder's record (files are checked by ``member_paths``).

    Raises:
        CheckpointError: no or unreadable ``unet3d_export.json``, another format version, no
            member, or a member without files (one line naming the folder).
    """
    folder = Path(str(path)).expanduser()
    record_path = folder / EXPORT_FILE
    if not record_path.is_file():
        raise CheckpointError(f"{folder}: not an export folder (no {EXPORT_FILE}; write one "
                              "with mode=export)")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"export folder {folder}: {EXPORT_FILE} is unreadable "
                              f"({error})") from None
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise CheckpointError(f"export folder {folder}: {EXPORT_FILE} has format {found!r}, "
                              f"this unet3d reads format {EXPORT_FORMAT}")
    try:
        members = tuple(ExportMember.from_dict(entry) for entry in record["members"])
        for key in ("labels", "output", "input"):
            record[key]  # noqa: B018 - presence check
        int(record["input"]["divisor"]), int(record["output"]["channels"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"export folder {folder}: {EXPORT_FILE} is incomplete "
                              f"({type(error).__name__}: {error})") from None
    if not members or any(not member.files for member in members):
        raise CheckpointError(f"export folder {folder}: {EXPORT_FILE} lists no member files")
    return ExportFolder(folder, record, members)


def export_in(spec: Any) -> ExportFolder | None:
    """The export folder a checkpoint spec names (one path holding ``unet3d_export.json``).

    Returns None for anything else (checkpoints, run dirs, sweeps, MLflow references, lists).

    Raises:
        CheckpointError: the folder's record is unreadable (``read_export``).
    """
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        items = list(spec)
        if len(items) != 1:
            return None
        spec = items[0]
    if not isinstance(spec, str | Path) or not str(spec) or "://" in str(spec) \
            or str(spec).startswith(("runs:/", "models:/")):
        return None
    return read_export(spec) if is_export_folder(spec) else None


def normalisation_record() -> dict[str, Any]:
    """How the input channels are normalised (``unet3d.data.preprocess.normalize``)."""
    return {"steps": ["per channel: clip at 0.85 x max, rescale to 0..255, truncate to uint8 "
                      "(unet3d.data.preprocess.scale_to_uint8)",
                      "per channel: mean_c and std_c over the voxels > 0 of the uint8 data",
                      "(x - mean_c) / (std_c + 1e-8) where x > 0, else 0 "
                      "(unet3d.data.preprocess.normalize)"],
            "code": "unet3d.data.preprocess.preprocess_case, unet3d.data.preprocess.normalize"}


def member_names(count: int) -> Iterable[str]:
    """``member-0``, ``member-1``, ..."""
    return (f"member-{index}" for index in range(count))
