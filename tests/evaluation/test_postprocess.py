"""Post-processing rules and their selection on hand-made out-of-fold predictions."""

import json

import numpy as np
import pytest

from unet3d.data.layouts.convention import BRATS2019, BRATS2023, MSD_BRAIN
from unet3d.errors import ConfigError, DataError
from unet3d.evaluation.postprocess import (
    OofCase,
    PostprocessingRules,
    apply_postprocessing,
    load_postprocessing,
    read_oof_predictions,
    save_postprocessing,
    select_postprocessing,
    write_oof_prediction,
)
from unet3d.runs.identity import IDENTITY_FILE, RunIdentity

SHAPE = (16, 16, 16)


def tumour(et: bool = True) -> np.ndarray:
    """Edema 2 around a core 1 (with an enhancing 4 block of 3x3x3 = 27 voxels when ``et``)."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:10, 2:10, 2:10] = 2
    labels[4:8, 4:8, 4:8] = 1
    if et:
        labels[4:7, 4:7, 4:7] = 4
    return labels


def cases():
    # A: no ET in the reference; the prediction has a false 3-voxel ET island in the core.
    reference_a = tumour(et=False)
    prediction_a = reference_a.copy()
    prediction_a[5, 5, 5:8] = 4
    # B: a true 27-voxel ET, predicted exactly.
    reference_b = tumour(et=True)
    # C: exact prediction plus a distant false edema blob (a second WT component).
    reference_c = tumour(et=True)
    prediction_c = reference_c.copy()
    prediction_c[13:16, 13:16, 13:16] = 2
    return [OofCase("a", prediction_a, reference_a, fold=0),
            OofCase("b", reference_b.copy(), reference_b, fold=0),
            OofCase("c", prediction_c, reference_c, fold=1)]


def test_rules_on_one_case():
    prediction = cases()[2].prediction
    kept = apply_postprocessing(prediction, PostprocessingRules(True), BRATS2019)
    assert kept.dtype == np.uint8 and not kept[13:, 13:, 13:].any()
    np.testing.assert_array_equal(kept, cases()[2].reference)
    island = cases()[0].prediction
    relabelled = apply_postprocessing(island, PostprocessingRules(et_to_ncr_below=4), BRATS2019)
    np.testing.assert_array_equal(relabelled, cases()[0].reference)  # 4 -> 1 (NCR)
    untouched = apply_postprocessing(island, PostprocessingRules(et_to_ncr_below=3), BRATS2019)
    np.testing.assert_array_equal(untouched, island)  # 3 voxels is not below 3
    # mm^3: 3 voxels of 2 mm^3 = 6 mm^3
    rules = PostprocessingRules(et_to_ncr_below=5, unit="mm3")
    np.testing.assert_array_equal(
        apply_postprocessing(island, rules, BRATS2019, spacing=(2.0, 1.0, 1.0)), island)
    np.testing.assert_array_equal(
        apply_postprocessing(island, rules, BRATS2019, spacing=(1.0, 1.0, 1.0)),
        cases()[0].reference)


@pytest.mark.parametrize("convention, et, core", [(BRATS2023, 3, 1), (MSD_BRAIN, 3, 2)])
def test_et_rule_follows_the_convention(convention, et, core):
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1:3, 1:3, 1:3] = core
    labels[1, 1, 1] = et
    relabelled = apply_postprocessing(labels, PostprocessingRules(et_to_ncr_below=2), convention)
    assert relabelled[1, 1, 1] == core and (relabelled == et).sum() == 0


def test_selection_finds_both_rules_and_the_threshold():
    selection = select_postprocessing(cases(), BRATS2019, thresholds=[2, 5, 10, 50, 100],
                                      component_thresholds=())
    assert selection.rules == PostprocessingRules(True, 5.0)
    # before: ET Dice of case A is 0 (1 and 1 for B, C); WT of C is lowered by the blob
    assert selection.before.dice["ET"] == pytest.approx(2 / 3)
    assert selection.after.dice == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    assert selection.after.score == 1.0 > selection.before.score
    by_rules = {candidate.rules: candidate.score for candidate in selection.candidates}
    assert by_rules[PostprocessingRules(True, 50.0)] < 1.0  # kills case B's true ET
    assert by_rules[PostprocessingRules(True, 2.0)] < 1.0   # leaves case A's island
    metrics = selection.metrics()
    assert metrics["postprocess_et_to_ncr_below"] == 5.0
    assert metrics["postprocess_largest_wt_component"] == 1.0
    assert metrics["postprocess_after_Dice_ET"] == 1.0
    assert "| largest WT component + ET -> NCR below 5 voxels |" in selection.table()


def test_a_rule_that_does_not_help_is_not_kept():
    # a multi-focal reference, predicted exactly: the component rule would remove a true focus
    reference = tumour(et=True)
    reference[12:15, 12:15, 12:15] = 2
    exact = [OofCase("m", reference.copy(), reference), OofCase("b", tumour(), tumour())]
    selection = select_postprocessing(exact, BRATS2019, thresholds=[5, 10],
                                      component_thresholds=())
    assert selection.rules == PostprocessingRules()
    assert selection.after.score == selection.before.score == 1.0
    assert selection.metrics()["postprocess_largest_wt_component"] == 0.0
    assert "postprocess_et_to_ncr_below" not in selection.metrics()


def test_bad_input():
    with pytest.raises(DataError, match="no out-of-fold predictions"):
        select_postprocessing([], BRATS2019)
    with pytest.raises(ConfigError, match="postprocess.thresholds: must be > 0"):
        select_postprocessing(cases(), BRATS2019, thresholds=[0, 5])
    with pytest.raises(ConfigError, match="postprocess.unit"):
        PostprocessingRules(unit="ml")


def test_save_load_and_oof_files(tmp_path):
    selection = select_postprocessing(cases(), BRATS2019, thresholds=[5, 50],
                                      component_thresholds=())
    path = save_postprocessing(tmp_path, selection, BRATS2019)
    record = json.loads(path.read_text())
    assert record["rules"] == {"keep_largest_wt_component": True, "et_to_ncr_below": 5.0,
                               "unit": "voxels", "remove_components_below": {}}
    assert record["convention"]["name"] == "brats2019" and len(record["candidates"]) == 4
    assert load_postprocessing(tmp_path) == selection.rules == load_postprocessing(path)
    assert load_postprocessing(tmp_path / "missing") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "postprocessing.json").write_text("{}")
    with pytest.raises(DataError, match="not a post-processing record"):
        load_postprocessing(tmp_path / "bad")

    run_dir = tmp_path / "fold0"
    for case in cases():
        write_oof_prediction(run_dir, case.case_id, case.prediction, case.reference,
                             (1.0, 1.0, 2.0))
    read = read_oof_predictions(run_dir, fold=0)
    assert [case.case_id for case in read] == ["a", "b", "c"]
    assert read[0].spacing == (1.0, 1.0, 2.0) and read[0].fold == 0
    np.testing.assert_array_equal(read[2].prediction, cases()[2].prediction)
    with pytest.raises(ValueError, match="differ in shape"):
        write_oof_prediction(run_dir, "x", np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


class RecordingTracker:
    """The job tracker's calls the mode makes, with a real MLflow client for the parent run."""

    def __init__(self, client=None):
        self.client = client
        self.active = client is not None
        self.texts, self.artifacts, self.tags = {}, [], {}

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_text(self, text, artifact_file):
        self.texts[artifact_file] = text

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))


def make_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for fold, members in enumerate([cases()[:2], cases()[2:]]):
        job_dir = sweep / f"{fold}_fold{fold}"
        (job_dir / "checkpoints").mkdir(parents=True)
        identity = RunIdentity(fold=fold, num_folds=2, seed=0,
                               data={"name": "synthetic", "convention": BRATS2019.to_dict()})
        (job_dir / IDENTITY_FILE).write_text(json.dumps(identity.to_dict()))
        for case in members:
            write_oof_prediction(job_dir, case.case_id, case.prediction, case.reference)
    return sweep


def postprocess_job(tmp_path, sweep, tracker):
    from omegaconf import OmegaConf

    from unet3d.modes.job import Job

    cfg = OmegaConf.create({"postprocess": {"checkpoint": str(sweep), "thresholds": [2, 5, 50],
                                            "unit": "voxels", "min_improvement": 0.0},
                            "evaluation": {"lesionwise": "auto"},
                            "paths": {"root_dir": str(tmp_path)}})
    return Job(cfg=cfg, runtime=None, tracker=tracker, output_dir=tmp_path / "job")


def test_mode_writes_the_rules_and_logs_the_table_on_the_parent_run(tmp_path):
    import mlflow

    from unet3d.modes.postprocess import run

    sweep = make_sweep(tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment).info.run_id
    (sweep / "mlflow_parent_run_id").write_text(parent)
    tracker = RecordingTracker(client)
    metrics = run(postprocess_job(tmp_path, sweep, tracker))
    assert load_postprocessing(sweep) == PostprocessingRules(True, 5.0)
    assert metrics["postprocess_after_mean_Dice"] == 1.0
    assert metrics["postprocess_before_mean_Dice"] < 1.0 and metrics["postprocess_cases"] == 3
    assert "chosen" in tracker.texts["postprocessing/table.md"]
    assert tracker.tags["postprocess.rules"] == "largest WT component + ET -> NCR below 5 voxels"
    logged = client.get_run(parent)
    assert logged.data.metrics["postprocess_et_to_ncr_below"] == 5.0
    assert logged.data.tags["postprocess.rules"].startswith("largest WT component")
    names = {item.path for item in client.list_artifacts(parent, "postprocessing")}
    assert names == {"postprocessing/table.md", "postprocessing/postprocessing.json"}


def test_mode_refuses_a_sweep_without_predictions(tmp_path):
    from unet3d.modes.postprocess import run

    sweep = make_sweep(tmp_path)
    (sweep / "2_fold2" / "checkpoints").mkdir(parents=True)
    with pytest.raises(DataError, match="2_fold2: this job did not finish .no results.json"):
        run(postprocess_job(tmp_path, sweep, RecordingTracker()))
    (sweep / "2_fold2" / "results.json").write_text('{"status": "FINISHED"}')
    with pytest.raises(DataError, match="2_fold2: no out-of-fold predictions in oof/ although"):
        run(postprocess_job(tmp_path, sweep, RecordingTracker()))
    assert not (sweep / "postprocessing.json").exists()
    with pytest.raises(ConfigError, match="postprocess.checkpoint: .* holds no fold jobs"):
        run(postprocess_job(tmp_path, tmp_path / "job", RecordingTracker()) if
            (tmp_path / "job").mkdir() is None else None)


def test_a_failed_fold_is_named_with_the_way_to_finish_it(tmp_path):
    """Issue 30: not "an older version" but the fold, its status and error, and the resume."""
    from unet3d.modes.postprocess import run

    sweep = make_sweep(tmp_path)
    job_dir = sweep / "1_fold1"
    for path in (job_dir / "oof").iterdir():
        path.unlink()
    (job_dir / "results.json").write_text(json.dumps(
        {"status": "FAILED", "fold": 1, "error": "FloatingPointError: loss is nan\nmore"}))
    with pytest.raises(DataError) as raised:
        run(postprocess_job(tmp_path, sweep, RecordingTracker()))
    message = str(raised.value)
    assert message.startswith(f"{job_dir}: fold 1 FAILED (FloatingPointError: loss is nan)")
    assert f"resume=true hydra.sweep.dir={sweep}" in message and "older" not in message
    assert not (sweep / "postprocessing.json").exists()


def test_a_sweep_over_some_folds_warns_that_it_is_a_partial_cv(tmp_path, caplog):
    from unet3d.modes.postprocess import run

    sweep = make_sweep(tmp_path)  # folds 0 and 1 of 2
    with caplog.at_level("WARNING", logger="unet3d.modes.postprocess"):
        run(postprocess_job(tmp_path, sweep, RecordingTracker()))
    assert "partial" not in caplog.text
    for job_dir in sweep.glob("*_fold*"):  # the same two folds, now of a 5-fold split
        identity = json.loads((job_dir / IDENTITY_FILE).read_text())
        (job_dir / IDENTITY_FILE).write_text(json.dumps({**identity, "num_folds": 5}))
    with caplog.at_level("WARNING", logger="unet3d.modes.postprocess"):
        run(postprocess_job(tmp_path, sweep, RecordingTracker()))
    (warning,) = [r.getMessage() for r in caplog.records if "partial" in r.getMessage()]
    assert f"{sweep} is a partial cross-validation: folds 0, 1 of 5 (3 out-of-fold" in warning
    assert "Run fold(s) 2, 3, 4 too" in warning


def test_quality_comparison_collects_mean_and_std_over_folds(tmp_path, capsys):
    from benchmarks import quality_comparison as module
    from benchmarks._common import read_result

    out = tmp_path / "out"
    out.mkdir()
    sweep = make_sweep(tmp_path).rename(out / "regions")
    for job_dir in sweep.iterdir():
        (job_dir / "results.json").write_text("{}")  # what marks a fold job finished
    selection = select_postprocessing(cases(), BRATS2019, thresholds=[5],
                                      component_thresholds=())
    save_postprocessing(sweep, selection, BRATS2019)
    results = tmp_path / "quality_comparison.json"
    assert module.main(["--out", str(out), "--collect", "--folds", "2",
                        "--results", str(results)]) == 0
    rows = read_result(results)["summary"]
    assert set(rows) == {"regions", "regions + post-processing"}
    # fold 0 = cases a, b (ET Dice 0 and 1), fold 1 = case c (1): mean 0.75, std 0.25
    assert rows["regions"]["Dice_ET"] == pytest.approx([0.75, 0.25])
    assert rows["regions + post-processing"]["Dice_ET"] == pytest.approx([1.0, 0.0])
    assert rows["regions + post-processing"]["HD95_WT"] == pytest.approx([0.0, 0.0])
    assert "regions + post-processing" in (out / "comparison.md").read_text()
    # With lesion-wise columns (the 2023 rules read BraTS 2019's ET as label 4) and the same
    # selection without the small-component rule.
    assert module.main(["--out", str(out), "--collect", "--folds", "2", "--lesionwise",
                        "brats2023", "--results", str(results)]) == 0
    rows = read_result(results)["summary"]
    assert "regions + post-processing without component removal" in rows
    assert rows["regions"]["LesionDice_ET"][0] <= rows["regions"]["Dice_ET"][0]
    assert "LesionHD95_WT" in rows["regions + post-processing"]


def test_small_components_take_the_next_region_out():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 2          # SNFH
    labels[4:8, 4:8, 4:8] = 1             # NETC
    labels[5:7, 5:7, 5:7] = 3             # ET inside: 8 voxels
    labels[15:17, 15:17, 15:17] = 2       # a WT speck of 8 voxels
    rules = PostprocessingRules(remove_components_below=(("WT", 10.0), ("ET", 10.0)))
    out = apply_postprocessing(labels, rules, BRATS2023)
    assert (out[15:17, 15:17, 15:17] == 0).all()      # WT: background
    assert (out[5:7, 5:7, 5:7] == 1).all()            # ET: NETC, TC's own value
    assert (out[2:10, 2:10, 2:10] == np.where(labels == 3, 1, labels)[2:10, 2:10, 2:10]).all()
    assert PostprocessingRules.from_dict(rules.to_dict()) == rules
    assert rules.describe() == ("WT components below 10 voxels removed + ET components below "
                                "10 voxels removed")


def test_lesionwise_criterion_removes_false_positive_components():
    from unet3d.evaluation.lesionwise import lesionwise_scorer

    reference = np.zeros((40, 40, 40), np.uint8)
    reference[5:15, 5:15, 5:15] = 2
    reference[8:12, 8:12, 8:12] = 3
    reference[25:35, 5:15, 5:15] = 2      # a second focus: the largest-component rule loses it
    reference[28:32, 8:12, 8:12] = 3
    prediction = reference.copy()
    prediction[30:33, 30:33, 30:33] = 3   # a 27-voxel false-positive ET component, far away
    cases = [OofCase("a", prediction, reference), OofCase("b", reference.copy(), reference)]
    scorer = lesionwise_scorer("brats2023", BRATS2023)
    selection = select_postprocessing(cases, BRATS2023, thresholds=[5], lesionwise=scorer,
                                      component_thresholds=[10, 50])
    assert selection.criterion.startswith("mean lesion-wise Dice")
    assert dict(selection.rules.remove_components_below) in ({"WT": 50.0}, {"TC": 50.0},
                                                             {"ET": 50.0})
    assert not selection.rules.keep_largest_wt_component
    # Case a: ET 2 lesions + 1 false positive -> 2/3 lesion-wise; removed: 1.
    assert selection.before.lesion["LesionDice_ET"] == pytest.approx((2 / 3 + 1) / 2)
    assert selection.after.lesion["LesionDice_ET"] == pytest.approx(1.0)
    assert selection.after.score == pytest.approx(1.0)
    assert selection.before.score < 1.0
    metrics = selection.metrics()
    assert metrics["postprocess_after_LesionDice_ET"] == pytest.approx(1.0)
    assert metrics["postprocess_before_Dice_ET"] < metrics["postprocess_after_Dice_ET"] == 1.0
    assert "lesion Dice ET" in selection.table()
