"""INT8 export (``openvino_int8``, NNCF) on a tiny U-Net: calibrated on the job's training
windows, checked by label agreement on held-out windows, run by ``inference.engine=openvino_int8``;
never chosen by ``auto``; its failures are one line and leave nothing behind."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.inference.test_engines import Tracker, predicted
from tests.inference.test_predict import compose_config, save_model
from unet3d.data.synthetic.generate import generate_dataset
from unet3d.errors import CheckpointError, ConfigError, DataError, ExportError
from unet3d.inference.engine_setup import ModelSource, build_members
from unet3d.inference.engines import engine_installed
from unet3d.inference.export_folder import EXPORT_FILE, read_export
from unet3d.inference.exporters import require_converter
from unet3d.inference.quantize import label_agreement, labels_of, sample_windows
from unet3d.modes.export import export

needs_int8 = pytest.mark.skipif(
    not engine_installed("openvino") or __import__("importlib.util").util.find_spec("nncf") is None,
    reason="needs openvino and nncf (pip install -e '.[int8]'; the test extra has them)")


def _export_config(root: Path, output: Path, *extra: str):
    return compose_config("debug=fast", "mode=export", f"export.checkpoint={root / 'run'}",
                          f"export.output_dir={output}", f"paths.data_dir={root / 'data'}",
                          "export.formats=[openvino,openvino_int8]", *extra)


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """A tiny U-Net's run folder, two raw cases and its export with the INT8 IR."""
    root = tmp_path_factory.mktemp("int8")
    save_model(root / "run", compose_config("debug=fast"), seed=3, fold=0)
    generate_dataset(root / "cases", 2, (40, 36, 28), (1.0, 1.0, 1.0), seed=11)
    tracker = Tracker()
    # Random weights: near-tied probabilities flip labels under INT8, so the bar is low here.
    metrics = export(_export_config(root, root / "export", "export.int8.min_agreement=0.5"),
                     tracker, root / "job")
    return SimpleNamespace(root=root, folder=root / "export", metrics=metrics)


@needs_int8
def test_the_int8_ir_is_calibrated_checked_recorded_and_predicts(int8_export):
    record = json.loads((int8_export.folder / EXPORT_FILE).read_text())
    (member,) = record["members"]
    assert member["files"]["openvino_int8"] == "member-0/openvino_int8/model.xml"
    assert {"openvino_int8", "openvino_int8_bin", "openvino", "openvino_bin"} <= set(
        member["sha256"])
    stats = member["int8"]
    assert stats["calibration_windows"] == 16 and stats["check_windows"] == 4
    assert 0.5 <= stats["foreground_agreement"] <= 1.0 and stats["max_dp"] > 0  # (bar 0.5)
    assert 0 <= stats["agreement"] <= 1.0
    assert (stats["data"], stats["fold"]) == ("synthetic", 0)
    assert member["max_difference"]["openvino_int8"] == stats["max_dp"]
    assert member["max_difference"]["openvino"] <= 1e-4  # the float32 IR's own check
    assert record["check"]["int8"]["min_agreement"] == 0.5
    assert int8_export.metrics["int8_agreement"] == stats["foreground_agreement"]
    # The IR holds INT8 arithmetic (NNCF's FakeQuantize operations), unlike the float32 IR.
    xml = (int8_export.folder / member["files"]["openvino_int8"]).read_text()
    assert "FakeQuantize" in xml
    assert "FakeQuantize" not in (int8_export.folder / member["files"]["openvino"]).read_text()

    folder = read_export(int8_export.folder)
    assert folder.engine_format("openvino_int8") == "openvino_int8"
    found = predicted(int8_export.root, int8_export.folder, "openvino_int8")
    exact = predicted(int8_export.root, int8_export.folder, "openvino")
    assert sorted(found) == sorted(exact) and len(found) == 2
    for name, labels in found.items():
        assert labels.shape == exact[name].shape
        # Agreement per voxel in the same range the export measured on held-out windows.
        assert float(np.mean(labels == exact[name])) >= 0.5


@needs_int8
def test_an_export_of_the_int8_ir_alone_predicts(int8_export, tmp_path):
    folder = tmp_path / "only"
    export(compose_config("debug=fast", "mode=export",
                          f"export.checkpoint={int8_export.root / 'run'}",
                          f"export.output_dir={folder}",
                          f"paths.data_dir={int8_export.root / 'data'}",
                          "export.formats=[openvino_int8]", "export.int8.min_agreement=0.5"),
           None, tmp_path / "job")
    (member,) = json.loads((folder / EXPORT_FILE).read_text())["members"]
    assert sorted(member["files"]) == ["openvino_int8"]  # the float IR was a temporary step
    assert sorted(path.name for path in (folder / "member-0").iterdir()) == ["openvino_int8"]
    assert not list(Path(__import__("tempfile").gettempdir()).glob("unet3d-int8-*"))
    found = predicted(int8_export.root, folder, "openvino_int8")
    assert len(found) == 2


@needs_int8
def test_auto_never_picks_the_int8_ir_and_checkpoints_cannot_run_it(int8_export):
    source = ModelSource(export=read_export(int8_export.folder))
    assert "openvino_int8" not in source.candidates() and "openvino" in source.candidates()
    checkpoints = ModelSource(prefixes=[str(int8_export.root / "run")],
                              model_cfg=compose_config("debug=fast").model)
    assert "openvino_int8" not in checkpoints.candidates()
    with pytest.raises(ConfigError) as raised:
        build_members({"engine": "openvino_int8"}, checkpoints, runtime=None,
                      window=(32, 32, 32))
    message = str(raised.value)
    assert message.startswith("inference.engine=openvino_int8: runs the INT8 model of an export")
    assert "export.formats=[openvino,openvino_int8]" in message and "\n" not in message


@needs_int8
def test_a_damaged_int8_ir_is_one_line(int8_export, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(int8_export.folder, copy)
    weights = copy / "member-0" / "openvino_int8" / "model.bin"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"openvino_int8/model.bin differs from the SHA-256"):
        read_export(copy).member_paths("openvino_int8")
    # The float32 formats stay usable.
    assert len(read_export(copy).member_paths("openvino")) == 1


@needs_int8
def test_an_int8_ir_under_the_agreement_fails_and_writes_nothing(int8_export, tmp_path):
    output = tmp_path / "strict"
    record = json.loads((int8_export.folder / EXPORT_FILE).read_text())
    measured = record["members"][0]["int8"]["foreground_agreement"]
    if measured >= 0.9999:
        pytest.skip("this INT8 model agrees on every voxel: no bar above it to fail")
    bar = round(measured + 1e-4, 4)  # same seed, same windows: just above what it reaches
    with pytest.raises(ExportError) as raised:
        export(_export_config(int8_export.root, output, f"export.int8.min_agreement={bar}"),
               None, tmp_path / "job")
    message = str(raised.value)
    assert message.startswith("export openvino_int8: labels agree with the Keras model on 0.")
    assert "of the tumour voxels of 4 held-out window(s)" in message
    assert f"under export.int8.min_agreement={bar:g} (unet3d)" in message
    assert "\n" not in message
    assert not output.exists() and not list(tmp_path.glob(".strict.partial-*"))


@pytest.mark.skipif(not engine_installed("openvino"), reason="needs openvino (checked first)")
def test_a_missing_nncf_names_the_int8_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # an import of nncf fails
    with pytest.raises(ConfigError) as raised:
        require_converter("openvino_int8")
    assert str(raised.value) == ('export.formats: writing openvino_int8 needs nncf, which is '
                                 'not installed; pip install -e ".[int8]"')


def test_int8_settings_are_checked_by_the_config():
    from unet3d.config import validate

    for key, value, expected in (
            ("calibration_windows", 0, "calibration_windows: must be >= 1, got 0"),
            ("min_agreement", 1.5, "export.int8.min_agreement")):
        cfg = compose_config("debug=fast", "mode=export", "export.checkpoint=/tmp",
                             f"export.int8.{key}={value}")
        with pytest.raises(ConfigError) as raised:
            validate(cfg)
        assert expected in str(raised.value)


def _record_file(tmp_path: Path, shape: tuple[int, int, int], value: int) -> Path:
    from unet3d.data.tfrecord import record_path, write_record

    image = np.full((*shape, 4), value, dtype=np.uint8)
    path = record_path(tmp_path, f"case{value}")
    write_record(path, {"case_id": f"case{value}", "image": image,
                        "label": np.zeros(shape, np.uint8), "mean": np.zeros(4, np.float32),
                        "std": np.ones(4, np.float32), "spacing": np.ones(3, np.float32),
                        "affine": np.eye(4, dtype=np.float32)})
    return path


def test_windows_are_normalised_crops_padded_with_zeros(tmp_path):
    small = _record_file(tmp_path, (10, 12, 6), 3)   # smaller than the window on every axis
    large = _record_file(tmp_path, (20, 20, 20), 5)
    windows = sample_windows([small, large], (16, 16, 8), 4, seed=1)
    assert len(windows) == 4
    assert all(window.shape == (1, 16, 16, 8, 4) and window.dtype == np.float32
               for window in windows)
    values = sorted({float(window.max()) for window in windows})
    assert values == pytest.approx([3.0, 5.0], rel=1e-6)  # (x - 0) / (1 + 1e-8)
    padded = next(window for window in windows if window.max() == pytest.approx(3.0))
    assert np.count_nonzero(padded[..., 0]) == 10 * 12 * 6  # the case, then zeros
    again = sample_windows([small, large], (16, 16, 8), 4, seed=1)
    assert all(np.array_equal(first, second) for first, second in zip(windows, again,
                                                                       strict=True))
    with pytest.raises(DataError, match="export.int8: no preprocessed case"):
        sample_windows([], (16, 16, 8), 1, seed=0)


def test_label_agreement_per_head():
    first = np.zeros((1, 2, 1, 1, 3), np.float32)
    first[0, 0, 0, 0] = [0.1, 0.8, 0.1]
    first[0, 1, 0, 0] = [0.6, 0.3, 0.1]
    second = first.copy()
    second[0, 1, 0, 0] = [0.3, 0.6, 0.1]  # the second voxel's argmax moves
    assert labels_of(first, "softmax", 0.5).tolist() == [[[[1]], [[0]]]]
    assert label_agreement([first], [second], "softmax", 0.5) == 0.5
    # Region head: each region's p > threshold counts (6 region-voxels, 2 flip).
    assert label_agreement([first], [second], "regions", 0.5) == pytest.approx(4 / 6)
    assert label_agreement([first], [first], "regions", 0.5) == 1.0
    # Tumour voxels only: softmax classes != 0 in either (both voxels here), regions positive in
    # either (voxel 1 region 1, voxel 2 regions 0 and 1: 3, of which 2 flip).
    assert label_agreement([first], [second], "softmax", 0.5, foreground=True) == 0.5
    assert label_agreement([first], [second], "regions", 0.5,
                           foreground=True) == pytest.approx(1 / 3)
    background = np.zeros((1, 2, 1, 1, 3), np.float32)
    background[..., 0] = 1.0
    assert label_agreement([background], [background], "softmax", 0.5, foreground=True) == 1.0
