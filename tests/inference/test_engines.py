"""mode=export and the inference engines on a tiny U-Net: every format round-trips, every
installed engine segments like TensorFlow, and bad exports or missing engines are one line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from tests.inference.test_predict import FakeTracker, compose_config, make_runtime, save_model
from unet3d.data.layouts.convention import BRATS2019
from unet3d.data.synthetic.generate import generate_dataset
from unet3d.errors import CheckpointError, ConfigError, ExportError
from unet3d.evaluation.metrics import dice
from unet3d.inference import engines
from unet3d.inference.engine_choice import HostCpu, choose_engine, probe_window
from unet3d.inference.engines import engine_installed
from unet3d.inference.export_folder import EXPORT_FILE, read_export
from unet3d.modes.export import export
from unet3d.modes.predict import predict

SHAPE = (40, 36, 28)
ENGINES = [name for name in ("openvino", "onnxruntime") if engine_installed(name)]
needs_engines = pytest.mark.skipif(
    len(ENGINES) < 2, reason="needs openvino and onnxruntime (pip install -e '.[openvino,"
                             "onnxruntime,onnx]'; CI installs them with the test extra)")


class Tracker(FakeTracker):
    def __init__(self):
        super().__init__()
        self.params, self.artifact_dirs = {}, []

    def log_params(self, params):
        super().log_params(params)
        self.params.update(params)

    def log_artifacts(self, directory, artifact_path=None):
        self.artifact_dirs.append((Path(directory), artifact_path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two tiny raw cases, a run folder of a tiny U-Net and its export (every format)."""
    root = tmp_path_factory.mktemp("engines")
    generate_dataset(root / "cases", 2, SHAPE, (1.0, 1.0, 1.0), seed=11)
    cfg = compose_config("debug=fast")
    run = root / "run"
    save_model(run, cfg, seed=3, fold=0)
    tracker = Tracker()
    metrics = export(compose_config("debug=fast", "mode=export", f"export.checkpoint={run}",
                                    f"export.output_dir={root / 'export'}"), tracker,
                     root / "job")
    return SimpleNamespace(root=root, run=run, folder=root / "export", metrics=metrics,
                           tracker=tracker)


def predicted(root: Path, checkpoint: Path, engine: str, *extra: str) -> dict[str, np.ndarray]:
    out = root / f"out-{engine}-{checkpoint.name}-{len(extra)}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = compose_config("debug=fast", "mode=predict", f"predict.input_dir={root / 'cases'}",
                         f"predict.output_dir={out}", f"predict.checkpoint={checkpoint}",
                         f"inference.engine={engine}",
                         f"inference.engine_cache={root / 'probe.json'}", *extra)
    tracker = Tracker()
    predict(cfg, make_runtime(), tracker, root / f"job-{engine}")
    chosen = tracker.params["inference.engine_choice"]
    assert chosen == engine if engine != "auto" else chosen in ("tensorflow", *ENGINES)
    return {path.name: np.asarray(nib.load(path).dataobj) for path in out.glob("*.nii.gz")}


def region_dice(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    return {region: dice(np.isin(first, values), np.isin(second, values))
            for region, values in BRATS2019.regions.items()}


@needs_engines
def test_export_writes_every_format_checked_and_described(exported):
    record = json.loads((exported.folder / EXPORT_FILE).read_text())
    assert record["input"]["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert record["input"]["channels"] == 4 and record["input"]["divisor"] == 4
    assert record["output"] == {"dtype": "float32", "layout": "NHWDK", "channels": 4,
                                "head": "softmax", "activation": "softmax",
                                "region_threshold": 0.5}
    assert record["labels"]["name"] == "brats2019" and record["postprocessing"] is None
    assert record["inference"]["window_size"] == [32, 32, 32]
    assert "engine" not in record["inference"]
    (member,) = record["members"]
    assert sorted(member["files"]) == ["onnx", "openvino", "saved_model"]
    assert all(0 <= value <= 1e-4 for value in member["max_difference"].values())
    assert exported.metrics["members"] == 1.0
    assert (exported.folder, "export") in exported.tracker.artifact_dirs
    assert not list(exported.folder.parent.glob(".export.partial-*"))
    # Round trip: each file in its engine equals the Keras model restored from the checkpoint.
    import keras

    from unet3d.inference.exporters import engine_for
    from unet3d.model.build import build_model_from_config
    from unet3d.training.checkpoint import restore_weights

    model = build_model_from_config(compose_config("debug=fast").model)
    restore_weights(model, member["checkpoint"])
    window = np.random.default_rng(5).standard_normal((2, 16, 24, 32, 4)).astype(np.float32)
    expected = np.asarray(model(window, training=False))
    folder = read_export(exported.folder)
    for fmt in folder.formats:
        (path,) = folder.member_paths(fmt)
        output = engine_for(path, fmt)(window)
        assert output.shape == expected.shape
        assert np.max(np.abs(output - expected)) <= 1e-4, fmt
    assert keras.mixed_precision.global_policy().name == "float32"


@needs_engines
def test_every_engine_segments_like_tensorflow(exported):
    reference = predicted(exported.root, exported.run, "tensorflow")
    assert len(reference) == 2
    runs = [(engine, exported.folder) for engine in ("tensorflow", *ENGINES)]
    runs += [(engine, exported.run) for engine in ENGINES]  # converted at start
    runs += [("auto", exported.folder)]
    for engine, checkpoint in runs:
        found = predicted(exported.root, checkpoint, engine)
        assert sorted(found) == sorted(reference)
        for name, labels in found.items():
            scores = region_dice(labels, reference[name])
            assert min(scores.values()) >= 0.999, (engine, checkpoint.name, name, scores)
    cache = json.loads((exported.root / "probe.json").read_text())
    (entry,) = cache["hosts"].values()
    assert sorted(entry["times_ms"]) == sorted(["tensorflow", *ENGINES])


@needs_engines
def test_one_window_over_the_box_and_its_preset(exported):
    found = predicted(exported.root, exported.folder, "openvino", "inference=fast",
                      "inference.engine=openvino")
    assert len(found) == 2
    assert all(set(np.unique(labels)) <= {0, 1, 2, 4} for labels in found.values())


def test_single_window_covers_the_volume_rounded_to_the_divisor():
    from unet3d.inference.ensemble import EnsemblePredictor

    calls = []

    class Engine:
        engine = "fake"
        num_classes = 2

        def __call__(self, batch):
            calls.append(batch.shape)
            return np.concatenate([1 - batch[..., :1] * 0, batch[..., :1] * 0], axis=-1)

    predictor = EnsemblePredictor([Engine()], window_size=(8, 8, 8), num_classes=2,
                                  overlap=0.5, blend="gaussian", batch_size=1, tta=False,
                                  jit_compile=False, crop_to_brain=True, background_class=0,
                                  crop_margin=0, single_window=True, input_divisor=8)
    image = np.zeros((30, 20, 12, 1), dtype=np.float32)
    image[3:20, 2:11, 1:10] = 1.0
    probabilities = predictor.probabilities(image)
    assert calls == [(1, 24, 16, 16, 1)]  # the 17 x 9 x 9 box rounded up to multiples of 8
    assert probabilities.shape == (30, 20, 12, 2)
    assert "one window over the volume" in predictor.describe()


def test_a_damaged_export_folder_is_one_line(exported, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exported.folder, copy)
    onnx = copy / "member-0" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"member-0/model.onnx differs from the SHA-256"):
        read_export(copy).member_paths("onnx")
    (copy / "member-0" / "openvino" / "model.bin").unlink()
    with pytest.raises(CheckpointError, match=r"model.bin is missing"):
        read_export(copy).member_paths("openvino")
    record = json.loads((copy / EXPORT_FILE).read_text())
    (copy / EXPORT_FILE).write_text(json.dumps({**record, "format": 99}))
    with pytest.raises(CheckpointError, match="has format 99, this unet3d reads format 1"):
        read_export(copy)
    (copy / EXPORT_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{EXPORT_FILE} is unreadable"):
        read_export(copy)
    del record["members"]
    (copy / EXPORT_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="is incomplete"):
        read_export(copy)


def test_a_missing_engine_names_its_extra(monkeypatch, exported):
    monkeypatch.setattr(engines, "engine_installed", lambda name: name == "tensorflow")
    for name, extra in (("openvino", "openvino"), ("onnxruntime", "onnxruntime")):
        with pytest.raises(ConfigError) as raised:
            engines.require_engine(name)
        message = str(raised.value)
        assert message.startswith(f"inference.engine={name}:") and "\n" not in message
        assert f'pip install -e ".[{extra}]"' in message
    with pytest.raises(ConfigError, match=r'^inference.engine=openvino_int8: openvino \(which runs '
                                          r'openvino_int8\) is not installed here; install it with '
                                          r'pip install -e "\.\[openvino\]"'):
        engines.require_engine("openvino_int8")


@needs_engines
def test_an_export_above_the_tolerance_fails_naming_format_and_difference(exported, tmp_path):
    cfg = compose_config("debug=fast", "mode=export", f"export.checkpoint={exported.run}",
                         f"export.output_dir={tmp_path / 'strict'}", "export.formats=[onnx]",
                         "export.tolerance=0")
    with pytest.raises(ExportError, match=r"^export onnx: max \|dp\| [0-9.e-]+ > tolerance 0 "):
        export(cfg, None, tmp_path / "job")
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict.partial-*"))
    # An existing folder is not replaced without export.overwrite=true.
    with pytest.raises(ConfigError, match=r"^export.output_dir: .* exists"):
        export(compose_config("debug=fast", "mode=export", f"export.checkpoint={exported.run}",
                              f"export.output_dir={exported.folder}"), None, tmp_path / "job2")


def test_auto_probes_once_per_host_and_never_trusts_another_hosts_entry(tmp_path, caplog):
    cpu = HostCpu("GenuineIntel", "6", "207", "2", "Xeon", ("avx2", "avx512f"))
    other = HostCpu("AuthenticAMD", "25", "1", "1", "EPYC", ("avx2",))
    probed = []

    def timer(engine, batch):
        probed.append(engine)
        return {"tensorflow": 30.0, "openvino": 10.0, "onnxruntime": 20.0}[engine]

    def choose(host, **extra):
        return choose_engine("auto", ["tensorflow", "openvino", "onnxruntime"], lambda name: name,
                             window=(16, 16, 16), channels=4, network="net",
                             versions={"tensorflow": "2.18", "openvino": "2026.4",
                                       "onnxruntime": "1.31"},
                             threads=2, cache=tmp_path / "probe.json", cpu=host, timer=timer,
                             **extra)

    with caplog.at_level(logging.INFO):
        first = choose(cpu)
    assert first.engine == "openvino" and not first.cached and len(probed) == 3
    assert "openvino 10 ms" in first.line() and "model 207" in first.line()
    assert first.params()["inference.engine_probe_ms.onnxruntime"] == "20.0"
    again = choose(cpu)
    assert again.engine == "openvino" and again.cached and len(probed) == 3
    choose(other)  # another CPU: probed, its own entry
    assert len(probed) == 6
    hosts = json.loads((tmp_path / "probe.json").read_text())["hosts"]
    assert len(hosts) == 2
    choose(cpu, reprobe=True)
    assert len(probed) == 9
    fixed = choose_engine("onnxruntime", ["tensorflow", "onnxruntime"], lambda name: name,
                          window=(16,) * 3, channels=4, network="n", versions={}, threads=1,
                          cache=None, timer=timer)
    assert fixed.engine == "onnxruntime" and len(probed) == 9
    assert probe_window((128, 128, 128), 32) == (64, 64, 64)
    assert probe_window((32, 32, 24), 16) == (16, 16, 16)


def test_auto_on_a_checkpoint_leaves_out_the_slow_onnx_conversion(monkeypatch, exported):
    from unet3d.inference import engine_setup
    from unet3d.inference.engine_setup import ModelSource

    monkeypatch.setattr(engine_setup, "engine_installed", lambda name: True)
    assert ModelSource(prefixes=["ckpt"]).candidates() == ["tensorflow", "openvino"]
    export = read_export(exported.folder)
    assert ModelSource(export=export).candidates() == ["tensorflow", "openvino", "onnxruntime"]
    monkeypatch.setattr(engine_setup, "engine_installed", lambda name: name != "tensorflow")
    assert ModelSource(export=export).candidates() == ["openvino", "onnxruntime"]
