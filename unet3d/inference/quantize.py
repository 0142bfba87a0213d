"""INT8 post-training quantization of an exported network for OpenVINO (``openvino_int8``).

``mode=export`` with ``openvino_int8`` in ``export.formats`` writes, next to the float32 IR, an
IR whose convolutions run in INT8: NNCF's post-training quantization
(``nncf.quantize(model, nncf.Dataset(windows), subset_size=n)``, the OpenVINO backend; NNCF's
default ``PERFORMANCE`` preset: symmetric INT8 weights and activations) calibrated on windows of
the training cases. It changes the arithmetic, so unlike the float32 formats it cannot equal the
Keras model within ``export.tolerance``; it is checked on windows of the held-out cases instead:
among the voxels that either model labels as tumour, the fraction where its labels equal the
Keras model's (argmax of a softmax head; each region's ``p > threshold`` of a region head) must
be at least ``export.int8.min_agreement``, else ``ExportError`` names the format and the
fraction (the agreement over all voxels is recorded too; background would hide a lost region).
``inference.engine=openvino_int8`` runs it (``auto`` never picks it: it changes the
segmentation). Its Dice cost and speed are measured
in ``benchmarks/predict_engines.py``.

Windows (``sample_windows``) are crops of the window size at seeded random positions inside
each record's stored volume (the brain box), normalised as inference normalises them
(``unet3d.data.preprocess.normalize``), zero-padded where a volume is smaller than the window:
float32 ``[1, h, w, d, C]`` (axis order batch, H, W, D, channels).

Needs the ``int8`` extra (``nncf``, with ``openvino``); imports TensorFlow only to read records.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.errors import DataError, ExportError

log = logging.getLogger(__name__)

#: The format name of the INT8 IR (``export.formats``, ``inference.engine``).
INT8_FORMAT = "openvino_int8"


@dataclass(frozen=True)
class Int8Settings:
    """``export.int8``: how the INT8 IR is calibrated and checked.

    Attributes:
        calibration_windows: training windows NNCF collects its statistics on (>= 1).
        check_windows: held-out windows the agreement is measured on (>= 1).
        min_agreement: the smallest fraction (0..1) of the voxels either model labels as
            tumour on the check windows whose label the INT8 model must share with the Keras
            model's.
        seed: the windows' positions and the cases they come from.
    """

    calibration_windows: int
    check_windows: int
    min_agreement: float
    seed: int

    @classmethod
    def from_config(cls, section: Any) -> Int8Settings:
        """From ``export.int8`` (keys checked by the config's ``SETTINGS``)."""
        return cls(int(section.calibration_windows), int(section.check_windows),
                   float(section.min_agreement), int(section.seed))


def sample_windows(files: Sequence[str | Path], window: Sequence[int], count: int,
                   seed: int) -> list[np.ndarray]:
    """``count`` normalised windows from the records ``files`` (cases taken in turn, shuffled).

    Args:
        files: TFRecord files of preprocessed cases (``unet3d.data.tfrecord``).
        window: the window sides (H, W, D) in voxels.
        count: how many windows.
        seed: positions and case order.

    Returns:
        ``count`` float32 arrays ``[1, h, w, d, C]``.

    Raises:
        DataError: no files, or a record cannot be read (naming it).
    """
    from unet3d.data.preprocess import normalize
    from unet3d.data.tfrecord import read_record

    if not files:
        raise DataError("export.int8: no preprocessed case to take windows from (the fold's "
                        "case list is empty)")
    generator = np.random.default_rng(seed)
    order = [files[index] for index in generator.permutation(len(files))]
    sides = [int(side) for side in window]
    windows: list[np.ndarray] = []
    reused = count > len(order)  # keep the volumes only when a case gives several windows
    records: dict[int, np.ndarray] = {}
    while len(windows) < count:
        index = len(windows) % len(order)
        image = records.get(index)
        if image is None:
            record = read_record(order[index])
            image = normalize(record["image"], record["mean"], record["std"])
            if reused:
                records[index] = image
        crop = np.zeros((*sides, image.shape[-1]), dtype=np.float32)
        starts = [int(generator.integers(0, max(size - side, 0) + 1))
                  for size, side in zip(image.shape[:3], sides, strict=True)]
        part = image[tuple(slice(start, start + side)
                           for start, side in zip(starts, sides, strict=True))]
        crop[tuple(slice(0, size) for size in part.shape[:3])] = part
        windows.append(crop[None])
    return windows


def labels_of(probabilities: np.ndarray, head: str, threshold: float) -> np.ndarray:
    """The labels a head's probabilities ``[n, h, w, d, K]`` give: argmax over K (softmax)
    or ``p > threshold`` per region (``regions``: ``[n, h, w, d, K]`` booleans)."""
    if head == "regions":
        return probabilities > threshold
    return np.argmax(probabilities, axis=-1)


def label_agreement(expected: Sequence[np.ndarray], found: Sequence[np.ndarray], head: str,
                    threshold: float, foreground: bool = False) -> float:
    """The fraction of voxels (and regions) where ``found``'s labels equal ``expected``'s.

    With ``foreground``, only the voxels that either labels as tumour count (softmax: a class
    other than 0; regions: each region where either is positive), so that background, which
    is most of a window, cannot hide a lost region. 1.0 when no voxel counts.
    """
    same = total = 0
    for first, second in zip(expected, found, strict=True):
        labels, other = labels_of(first, head, threshold), labels_of(second, head, threshold)
        equal = labels == other
        if foreground:
            counted = (labels | other) if head == "regions" else (labels != 0) | (other != 0)
            equal = equal[counted]
        same += int(np.count_nonzero(equal))
        total += int(equal.size)
    return same / total if total else 1.0


def quantize_ir(float_ir: Path, target: Path, calibration: Sequence[np.ndarray]) -> Path:
    """NNCF INT8 quantization of the float32 IR ``float_ir``, saved as ``target`` (+ .bin).

    Args:
        float_ir: the float32 IR ``.xml`` (input float32 ``[n, h, w, d, C]``, spatial open).
        target: the INT8 IR's ``.xml`` path.
        calibration: windows float32 ``[1, h, w, d, C]`` (``sample_windows``).

    Raises:
        ConfigError: NNCF or OpenVINO is not installed (naming the ``int8`` extra).
        ExportError: NNCF fails (one line).
    """
    from unet3d.inference.exporters import require_converter

    require_converter(INT8_FORMAT)
    import nncf
    import openvino as ov

    try:
        model = ov.Core().read_model(str(float_ir))
        quantized = nncf.quantize(model, nncf.Dataset(list(calibration)),
                                  subset_size=len(calibration))
        target.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(quantized, str(target), compress_to_fp16=False)
    except Exception as error:  # OpenVINO and NNCF raise many kinds
        raise ExportError(f"export {INT8_FORMAT}: NNCF could not quantize {float_ir.name}: "
                          f"{_first_line(error)}") from None
    return target


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def export_int8(model: Any, folder: Path, float_ir: Path | None, calibration: Sequence[np.ndarray],
                check: Sequence[np.ndarray], head: str, threshold: float,
                min_agreement: float) -> tuple[Path, dict[str, float]]:
    """Write ``model``'s INT8 IR under ``folder`` and check it against ``model``.

    Args:
        model: the float32 Keras model.
        folder: the member folder (the IR goes to ``openvino_int8/model.xml``).
        float_ir: the member's float32 IR when written already (else one is written to a
            temporary folder).
        calibration: training windows (``sample_windows``).
        check: held-out windows.
        head: ``softmax`` or ``regions``.
        threshold: the region head's threshold.
        min_agreement: see ``Int8Settings``.

    Returns:
        (the ``.xml`` path, ``{"agreement", "foreground_agreement", "max_dp", "mean_dp",
        "calibration_windows", "check_windows"}``).

    Raises:
        ExportError: NNCF fails, or the foreground agreement is under ``min_agreement``.
    """
    from unet3d.inference.export_folder import FORMAT_PATHS
    from unet3d.inference.exporters import engine_for, export_twin, write_format

    scratch = None
    try:
        if float_ir is None:
            scratch = Path(tempfile.mkdtemp(prefix="unet3d-int8-"))
            float_ir = write_format(export_twin(model), scratch, "openvino")
        path = quantize_ir(float_ir, folder / FORMAT_PATHS[INT8_FORMAT], calibration)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    expected = [np.asarray(model(window, training=False), dtype=np.float32) for window in check]
    try:
        engine = engine_for(path, INT8_FORMAT)
        found = [engine(window) for window in check]
    except Exception as error:  # an IR OpenVINO cannot compile or run
        raise ExportError(f"export {INT8_FORMAT}: {path.name} does not run "
                          f"({_first_line(error)})") from None
    agreement = label_agreement(expected, found, head, threshold)
    tumour = label_agreement(expected, found, head, threshold, foreground=True)
    differences = [np.abs(first - second) for first, second in zip(expected, found, strict=True)]
    stats = {"agreement": agreement, "foreground_agreement": tumour,
             "max_dp": float(max(float(np.max(item)) for item in differences)),
             "mean_dp": float(np.mean([float(np.mean(item)) for item in differences])),
             "calibration_windows": float(len(calibration)), "check_windows": float(len(check))}
    if tumour < min_agreement:
        raise ExportError(f"export {INT8_FORMAT}: labels agree with the Keras model on "
                          f"{tumour:.4f} of the tumour voxels of {len(check)} held-out "
                          f"window(s), under export.int8.min_agreement={min_agreement:g} "
                          f"({model.name})")
    log.info("export %s: labels agree with the Keras model on %.4f of the tumour voxels "
             "(%.4f of all) of %d held-out window(s) (max |dp| %.3f; calibrated on %d training "
             "window(s))", INT8_FORMAT, tumour, agreement, len(check), stats["max_dp"],
             len(calibration))
    return path, stats
