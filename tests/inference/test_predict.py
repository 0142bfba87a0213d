"""mode=predict end to end on tiny synthetic cases: outputs, bad cases, overwrite, ensembles."""

import csv
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from unet3d.data.layouts.convention import MODALITIES
from unet3d.data.synthetic.generate import generate_dataset
from unet3d.errors import DataError
from unet3d.inference.output_folder import SETTINGS_FILE
from unet3d.inference.predict import safe_output_path
from unet3d.modes.predict import METRICS_CSV, predict, selected_fold
from unet3d.run import register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"
SMALL = (32, 32, 24)  # smaller than the 32^3 window in depth: padded
BIG = (40, 36, 28)  # larger than the window in two axes: several windows


def compose_config(*overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def quoted(paths):
    return "[" + ",".join(f"'{path}'" for path in paths) + "]"


def predict_config(input_dir, output_dir, checkpoints, *extra):
    return compose_config(
        "debug=fast", "mode=predict", "inference.batch_size=4",
        f"predict.input_dir='{input_dir}'" if input_dir else "predict.input_dir=null",
        f"predict.output_dir='{output_dir}'", f"predict.checkpoint={quoted(checkpoints)}",
        *extra,
    )


class FakeTracker:
    def __init__(self):
        self.metrics, self.artifacts, self.tags = [], [], {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((Path(path), artifact_path))

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_params(self, params):
        self.tags.update({f"param:{key}": value for key, value in params.items()})


def make_runtime():
    import tensorflow as tf

    context = SimpleNamespace(scope=lambda: tf.distribute.get_strategy().scope(),
                              is_chief=True, world_size=1)
    return SimpleNamespace(context=context, precision=SimpleNamespace(xla=False), device=None)


def copy_case(source_dir: Path, target_root: Path, new_id: str, with_label=True) -> Path:
    """Copy a case folder under a new id (files renamed to ``<new_id>_<name>.nii.gz``)."""
    old_id = source_dir.name
    target = target_root / new_id
    target.mkdir(parents=True)
    for name in (*MODALITIES, "seg"):
        if name == "seg" and not with_label:
            continue
        shutil.copy(source_dir / f"{old_id}_{name}.nii.gz", target / f"{new_id}_{name}.nii.gz")
    return target


def save_model(run_dir: Path, cfg, seed: int, fold: int) -> str:
    import keras
    import tensorflow as tf

    from unet3d.model.build import build_model_from_config
    from unet3d.training.checkpoint import CHECKPOINT_FOLDER, Checkpointer

    keras.utils.set_random_seed(seed)
    model = build_model_from_config(cfg.model)
    step = tf.Variable(6, dtype=tf.int64, trainable=False)
    prefix = Checkpointer(run_dir / CHECKPOINT_FOLDER, model, None, step).save()
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(f"fold: {fold}\n")
    return prefix


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Raw synthetic cases (two sizes) and a 2-fold sweep dir of tiny models."""
    root = tmp_path_factory.mktemp("predict")
    generate_dataset(root / "gen_small", 3, SMALL, (1.0, 1.0, 1.0), seed=5)
    generate_dataset(root / "gen_big", 1, BIG, (1.0, 1.0, 1.5), seed=7)
    cfg = compose_config("debug=fast")
    sweep = root / "sweep"
    runs = [sweep / "0_fold=0", sweep / "1_fold=1"]
    for fold, run in enumerate(runs):
        save_model(run, cfg, seed=100 + fold, fold=fold)
    return SimpleNamespace(root=root, small=root / "gen_small", big=root / "gen_big",
                           sweep=sweep, runs=runs)


def case_dir(folder: Path, index: int) -> Path:
    return folder / f"BraTS19_SYN_{index:04d}"


def check_output(path: Path, reference_path: Path, shape):
    written = nib.load(path)
    reference = nib.load(reference_path)
    assert written.shape == tuple(shape)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-6)
    np.testing.assert_allclose(written.header.get_zooms(), reference.header.get_zooms())
    data = np.asanyarray(written.dataobj)
    assert data.dtype == np.uint8
    assert set(np.unique(data).tolist()) <= {0, 1, 2, 4}


def test_a_folder_with_a_broken_case_and_an_unsafe_id(workspace, tmp_path, caplog):
    inputs = tmp_path / "in"
    copy_case(case_dir(workspace.small, 1), inputs, "BraTS19_SYN_0001")
    copy_case(case_dir(workspace.small, 2), inputs, "BraTS19_SYN_0002")
    copy_case(case_dir(workspace.big, 1), inputs, "Big_0001")
    copy_case(case_dir(workspace.small, 2), inputs, "NoSeg_0002", with_label=False)
    broken = copy_case(case_dir(workspace.small, 3), inputs, "Broken_0003")
    flair = broken / "Broken_0003_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size // 2])
    copy_case(case_dir(workspace.small, 1), inputs, "bad\\case")
    missing = copy_case(case_dir(workspace.small, 3), inputs, "Missing_0003")
    (missing / "Missing_0003_t1ce.nii.gz").unlink()
    output = tmp_path / "out"
    cfg = predict_config(inputs, output, [workspace.runs[0]])
    tracker = FakeTracker()

    with caplog.at_level(logging.ERROR, logger="unet3d.inference.case_loop"):
        failed = r"3 of 7 case\(s\) failed: .*Broken_0003.*Missing_0003"
        with pytest.raises(DataError, match=failed) as raised:
            predict(cfg, make_runtime(), tracker, tmp_path / "run")
    assert "bad\\case" in str(raised.value)

    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 3
    assert any("Missing_0003" in line and "Missing_0003_t1ce.nii.gz" in line for line in errors)
    assert any("Broken_0003" in line and "Broken_0003_flair.nii.gz" in line for line in errors)
    assert any("unsafe case id" in line and "path separator" in line for line in errors)

    expected = {"BraTS19_SYN_0001": SMALL, "BraTS19_SYN_0002": SMALL, "Big_0001": BIG,
                "NoSeg_0002": SMALL}
    assert sorted(path.name for path in output.iterdir()) == sorted(
        [f"{case_id}.nii.gz" for case_id in expected] + [SETTINGS_FILE]
    )
    for case_id, shape in expected.items():
        check_output(output / f"{case_id}.nii.gz", inputs / case_id / f"{case_id}_t1.nii.gz", shape)
    assert not list(tmp_path.rglob("*.tmp-*"))

    with open(tmp_path / "run" / "metrics" / METRICS_CSV) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == ["Big_0001", "BraTS19_SYN_0001", "BraTS19_SYN_0002"]
    assert {"Dice_WT", "HD95_ET", "TumorCore", "MeanDice"} <= set(rows[0])
    summaries = [metrics for metrics in tracker.metrics if "Dice_WT" in metrics]
    assert len(summaries) == 1
    assert (tmp_path / "run" / "metrics" / METRICS_CSV, "metrics") in tracker.artifacts
    assert {"cases_written": 4.0, "cases_failed": 3.0, "cases_kept": 0.0} in tracker.metrics


def test_existing_outputs_are_never_overwritten_unless_asked(workspace, tmp_path):
    inputs = tmp_path / "in"
    copy_case(case_dir(workspace.small, 1), inputs, "Case_A", with_label=False)
    output = tmp_path / "out"
    runtime = make_runtime()
    cfg = predict_config(inputs, output, [workspace.runs[0]])
    assert predict(cfg, runtime, FakeTracker(), tmp_path / "run1") == {"cases_written": 1.0}
    target = output / "Case_A.nii.gz"
    before = target.read_bytes()
    settings = (output / SETTINGS_FILE).read_bytes()
    # Another model into the same folder: refused before any case, naming what differs.
    with pytest.raises(DataError, match=r"holds the outputs of another prediction .*"
                                        r"differs in checkpoints\)"):
        predict(predict_config(inputs, output, [workspace.runs[1]]), runtime, FakeTracker(),
                tmp_path / "run2")
    assert target.read_bytes() == before and (output / SETTINGS_FILE).read_bytes() == settings
    # The same prediction again, with one more case: Case_A is kept, Case_B written.
    copy_case(case_dir(workspace.small, 2), inputs, "Case_B", with_label=False)
    rerun = predict(cfg, runtime, FakeTracker(), tmp_path / "run2b")
    assert rerun == {"cases_written": 1.0}
    assert target.read_bytes() == before and (output / "Case_B.nii.gz").is_file()
    # A file that is not this prediction's (no record of it in the folder) is refused.
    (output / SETTINGS_FILE).unlink()
    (output / "Case_B.nii.gz").unlink()
    with pytest.raises(DataError, match="Case_A"):
        predict(cfg, runtime, FakeTracker(), tmp_path / "run2c")
    assert target.read_bytes() == before
    overwrite = predict_config(inputs, output, [workspace.runs[1]], "predict.overwrite=true")
    assert predict(overwrite, runtime, FakeTracker(), tmp_path / "run3") == {"cases_written": 2.0}
    assert not (tmp_path / "run3" / "metrics").exists()
    assert not list(output.glob("*.tmp-*"))


def test_an_ensemble_of_two_folds_is_the_mean_of_their_probabilities(workspace, tmp_path):
    inputs = tmp_path / "in"
    copy_case(case_dir(workspace.big, 1), inputs, "Big_0001")
    runtime = make_runtime()

    def probabilities(name, checkpoints, *extra):
        cfg = predict_config(inputs, tmp_path / name, checkpoints,
                             "predict.save_probabilities=true", *extra)
        predict(cfg, runtime, FakeTracker(), tmp_path / f"run_{name}")
        image = nib.load(tmp_path / name / "Big_0001_probabilities.nii.gz")
        assert image.shape == (*BIG, 4) and image.get_data_dtype() == np.float32
        return np.asanyarray(image.dataobj)

    first = probabilities("a", [workspace.runs[0]])
    second = probabilities("b", [workspace.runs[1]])
    ensemble = probabilities("ab", [workspace.runs[0], workspace.runs[1]])
    assert not np.allclose(first, second)
    np.testing.assert_allclose(ensemble, (first + second) / 2, rtol=1e-5, atol=1e-6)
    labels = np.asanyarray(nib.load(tmp_path / "ab" / "Big_0001.nii.gz").dataobj)
    classes = ensemble.argmax(axis=-1)
    np.testing.assert_array_equal(labels, np.where(classes == 3, 4, classes))
    # The sweep dir of the cross-validation is the same ensemble; predict.fold picks one fold.
    np.testing.assert_allclose(probabilities("sweep", [workspace.sweep]), ensemble, atol=1e-6)
    np.testing.assert_allclose(probabilities("fold1", [workspace.sweep], "predict.fold=1"),
                               second, atol=1e-6)


def test_the_held_out_fold_is_predicted_with_its_stored_affine(workspace, tmp_path):
    from unet3d.data.prepare import prepare_data
    from unet3d.data.synthetic.case import make_affine

    output = tmp_path / "out"
    cfg = predict_config(None, output, [workspace.sweep], f"paths.data_dir='{tmp_path / 'data'}'",
                         "fold=1")
    tracker = FakeTracker()
    summary = predict(cfg, make_runtime(), tracker, tmp_path / "run")
    assert tracker.tags["predict.ensemble_size"] == "1"  # fold 1's model only
    assert tracker.tags["predict.checkpoints"].startswith(str(workspace.runs[1]))
    held_out = [Path(path).stem for path in prepare_data(cfg).eval_files]
    assert len(held_out) == 2 and summary["cases_written"] == 2.0 and "Dice_WT" in summary
    shape = tuple(cfg.data.synthetic.shape)
    affine = make_affine(shape, cfg.data.synthetic.spacing)
    for case_id in held_out:
        written = nib.load(output / f"{case_id}.nii.gz")
        assert written.shape == shape and written.get_data_dtype() == np.uint8
        np.testing.assert_allclose(written.affine, affine, atol=1e-5)
        assert set(np.unique(np.asanyarray(written.dataobj)).tolist()) <= {0, 1, 2, 4}
    with open(tmp_path / "run" / "metrics" / METRICS_CSV) as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted(held_out)

    # The evaluate mode goes through the same per-case loop: the same metrics.
    from unet3d.inference.models import load_ensemble
    from unet3d.modes.job import Job
    from unet3d.modes.steps import PER_CASE_CSV, evaluate_model

    model = load_ensemble(cfg.model, [tracker.tags["predict.checkpoints"]])
    eval_tracker = FakeTracker()
    job = Job(cfg, make_runtime(), eval_tracker, tmp_path / "eval")
    summary = evaluate_model(job, model, prepare_data(cfg))
    with open(tmp_path / "eval" / PER_CASE_CSV) as handle:
        evaluated_rows = list(csv.DictReader(handle))
    assert sorted(row["case_id"] for row in evaluated_rows) == sorted(held_out)
    for evaluated in evaluated_rows:
        predicted = rows[evaluated["case_id"]]
        assert list(predicted) == list(evaluated)
        for key in ("Dice_WT", "Dice_TC", "Dice_ET", "MeanDice", "HD95_WT"):
            np.testing.assert_allclose(float(predicted[key]), float(evaluated[key]), rtol=1e-9)
    assert summary["Dice_WT"] == pytest.approx(np.mean([float(row["Dice_WT"])
                                                        for row in evaluated_rows]))
    assert (tmp_path / "eval" / PER_CASE_CSV, "metrics") in eval_tracker.artifacts
    assert any(path.parent.name == "figures" for path, _ in eval_tracker.artifacts)


@pytest.mark.parametrize(
    "case_id", ["", " ", ".", "..", "../escape", "a/b", "a\\b", "/abs", "C:evil", "x\x00y"]
)
def test_case_ids_that_would_escape_the_output_folder_are_rejected(tmp_path, case_id):
    with pytest.raises(DataError, match="unsafe case id"):
        safe_output_path(tmp_path, case_id, ".nii.gz")


def test_safe_case_ids_are_accepted(tmp_path):
    assert safe_output_path(tmp_path, "BraTS19_2013_0_1", ".nii.gz") == (
        tmp_path / "BraTS19_2013_0_1.nii.gz"
    )
    assert safe_output_path(tmp_path, "..dots_inside..", ".nii.gz").parent == tmp_path


def test_fold_selection():
    # A folder of new cases: every fold of a sweep (an ensemble), whatever `fold` is.
    with_input = compose_config("mode=predict", "predict.input_dir=/somewhere", "fold=2")
    assert selected_fold(with_input) is None
    held_out = compose_config("mode=predict", "fold=2")
    assert selected_fold(held_out) == 2
    chosen = compose_config("mode=predict", "predict.input_dir=/somewhere", "predict.fold=3")
    assert selected_fold(chosen) == 3


def test_a_bad_reference_label_still_gets_its_segmentation(workspace, tmp_path, caplog):
    inputs = tmp_path / "in"
    copy_case(case_dir(workspace.small, 1), inputs, "BraTS19_SYN_0001")
    copy_case(case_dir(workspace.small, 2), inputs, "BraTS19_SYN_0002")
    bad = copy_case(case_dir(workspace.small, 3), inputs, "BadSeg_0003")
    seg_path = bad / "BadSeg_0003_seg.nii.gz"
    seg = nib.load(seg_path)
    data = np.asanyarray(seg.dataobj)
    assert (data == 2).any()
    nib.save(nib.Nifti1Image(np.where(data == 2, 3, data).astype(np.uint8), seg.affine), seg_path)
    output = tmp_path / "out"
    cfg = predict_config(inputs, output, [workspace.runs[0]])
    tracker = FakeTracker()

    with caplog.at_level(logging.WARNING, logger="unet3d.inference.case_loop"):
        with pytest.raises(DataError, match="BadSeg_0003") as raised:
            predict(cfg, make_runtime(), tracker, tmp_path / "run")
    message = str(raised.value)
    assert "BraTS19_SYN_0001" not in message and "BraTS19_SYN_0002" not in message
    assert "written" in message and "failed" not in message

    for case_id in ("BraTS19_SYN_0001", "BraTS19_SYN_0002", "BadSeg_0003"):
        check_output(output / f"{case_id}.nii.gz", inputs / case_id / f"{case_id}_t1.nii.gz",
                     SMALL)
    problems = [record.getMessage() for record in caplog.records
                if record.levelno >= logging.WARNING]
    assert problems == [
        f"case BadSeg_0003: {seg_path}: label values [3] outside [0, 1, 2, 4]; "
        "segmentation written, metrics skipped"
    ]
    with open(tmp_path / "run" / "metrics" / METRICS_CSV) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == ["BraTS19_SYN_0001", "BraTS19_SYN_0002"]
    assert {"cases_written": 3.0, "cases_failed": 0.0, "cases_kept": 0.0} in tracker.metrics


# ---------------------------------------------------------------------------------------------
# The per-case loop shared by evaluate and predict, with a fake predictor
# ---------------------------------------------------------------------------------------------


class ThresholdPredictor:
    """Class 1 where the first channel is positive, else class 0 (4 classes)."""

    def probabilities(self, image):
        foreground = (image[..., 0] > 0).astype(np.float32)
        return np.stack([1 - foreground, foreground, 0 * foreground, 0 * foreground], axis=-1)


class RecordingOutputs:
    def __init__(self, refuse=()):
        self.calls, self.refuse = [], set(refuse)

    def check(self, case_id):
        self.calls.append(("check", case_id))
        if case_id in self.refuse:
            raise DataError(f"case {case_id}: output exists")

    def write_probabilities(self, case, probabilities):
        self.calls.append(("probabilities", case.case_id, probabilities.shape))

    def write_segmentation(self, case, labels):
        self.calls.append(("segmentation", case.case_id, labels.dtype.name))


def fake_cases(loads):
    from unet3d.inference.inputs import InputCase, PendingCase

    image = np.zeros((4, 4, 4, 2), np.float32)
    image[:2, ..., 0] = 1.0
    label = np.zeros((4, 4, 4), np.uint8)
    label[:2] = 1

    def load(case_id, kind):
        loads.append(case_id)
        if kind == "broken":
            raise DataError(f"case {case_id}: {case_id}_flair.nii.gz: truncated")
        return InputCase(case_id, image.copy(), label if kind == "labelled" else None,
                         (1.0, 1.0, 1.0), None,
                         label_error="seg.nii.gz: bad values" if kind == "bad_label" else None)

    kinds = {"A": "labelled", "B": "broken", "C": "bad_label", "D": "unlabelled",
             "E": "labelled"}
    return [PendingCase(case_id, f"/in/{case_id}", (lambda c=case_id, k=kind: load(c, k)))
            for case_id, kind in kinds.items()]


def test_the_case_loop_keeps_going_writes_and_scores(caplog):
    from unet3d.inference.case_loop import segment_cases

    loads, scored = [], []
    outputs = RecordingOutputs(refuse={"E"})
    with caplog.at_level(logging.INFO, logger="unet3d.inference.case_loop"):
        result = segment_cases(
            ThresholdPredictor(), fake_cases(loads), verb="predicted", outputs=outputs,
            keep_going=True,
            on_scored=lambda case, reference, prediction, metrics: scored.append(
                (case.case_id, case.image is not None, metrics["Dice_WT"])),
        )
    assert loads == ["A", "B", "C", "D"]  # E is refused before it is loaded
    assert (result.total, result.segmented) == (5, 3)
    assert [case_id for case_id, _ in result.failures] == ["B", "E"]
    assert result.failures[0][1] == "case B: B_flair.nii.gz: truncated"
    assert result.unscored == ["C"] and result.unlabelled == ["D"]
    assert [row["case_id"] for row in result.rows] == ["A"]
    assert result.rows[0]["Dice_WT"] == 1.0
    assert scored == [("A", True, 1.0)]  # the image is still there for the figures
    assert outputs.calls[:3] == [("check", "A"), ("probabilities", "A", (4, 4, 4, 4)),
                                 ("segmentation", "A", "uint8")]
    messages = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("predicted A (1/5)  Dice WT 1.000") for line in messages)
    assert any(line.startswith("predicted C (3/5)  not scored") for line in messages)
    assert "case C: seg.nii.gz: bad values; segmentation written, metrics skipped" in messages


def test_the_case_loop_of_evaluate_stops_at_the_first_bad_case():
    from unet3d.inference.case_loop import segment_cases

    loads = []
    with pytest.raises(DataError, match="case B"):
        segment_cases(ThresholdPredictor(), fake_cases(loads), verb="evaluated",
                      warn_unlabelled=True)
    assert loads == ["A", "B"]
