"""Cross-validation summary: job results, statistics, tables."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from unet3d.runs.naming import parse_override
from unet3d.runs.results import (
    collect_job_results,
    find_job_dirs,
    read_job_result,
    write_job_result,
)
from unet3d.tracking.summary import (
    FOLDS_CSV,
    STD_DDOF,
    SUMMARY_CSV,
    SUMMARY_MARKDOWN,
    cross_validation_summary,
    format_markdown_table,
    group_overrides,
    summary_metric_name,
    summary_metrics,
    write_summary_tables,
)

DICE = {0: 0.80, 1: 0.70, 2: 0.90}
HD95 = {0: 5.0, 1: float("nan"), 2: 3.0}


def make_sweep(sweep_dir: Path, failing_fold: int | None = None, missing_fold: int | None = None):
    """Hydra-like sweep dir: <num>_<overrides>/.hydra/overrides.yaml (+ results.json)."""
    number = 0
    for precision in ("fp32", "amp"):
        for fold in DICE:
            overrides = [f"fold={fold}", f"precision={precision}", "training.max_steps=5"]
            job_dir = sweep_dir / f"{number}_{','.join(overrides)}"
            (job_dir / ".hydra").mkdir(parents=True)
            (job_dir / ".hydra" / "overrides.yaml").write_text(
                "".join(f"- {item}\n" for item in overrides)
            )
            # What a job writes when it takes its folder: its composed config (the fold of a job
            # killed before its results.json comes from there).
            (job_dir / ".hydra" / "config.yaml").write_text(
                f"fold: {fold}\nnum_folds: 3\nseed: 42\n")
            number += 1
            if precision == "amp" and fold == missing_fold:
                (job_dir / "mlflow_run_id").write_text("abc123\n")
                continue
            offset = 0.0 if precision == "fp32" else 0.01
            failed = precision == "amp" and fold == failing_fold
            write_job_result(
                job_dir,
                status="FAILED" if failed else "FINISHED",
                fold=fold,
                overrides=overrides,
                metrics={"Dice_WT": DICE[fold] + offset, "HD95_WT": HD95[fold]},
                error="FloatingPointError: loss is NaN at step 7\ntraceback..." if failed else None,
                mlflow_run_id=f"run{number}",
            )
    return sweep_dir


def test_write_and_read_job_result(tmp_path: Path) -> None:
    path = write_job_result(
        tmp_path, "finished", 2, ["fold=2"], {"a": np.float32(0.5), "b": float("inf")}, None, "r1"
    )
    assert path.name == "results.json" and not list(tmp_path.glob("*.tmp-*"))
    record = read_job_result(tmp_path)
    assert record["status"] == "FINISHED" and record["fold"] == 2
    assert record["metrics"] == {"a": 0.5, "b": None}
    assert json.loads(path.read_text())["mlflow_run_id"] == "r1"
    with pytest.raises(ValueError, match="status"):
        write_job_result(tmp_path, "RUNNING", 0, [])


def test_parse_and_group_overrides() -> None:
    assert parse_override("+training.lr=0.1") == ("training.lr", "0.1")
    assert group_overrides(["fold=1", "precision=amp", "hydra.verbose=true", "a=b"]) == {
        "a": "b",
        "precision": "amp",
    }


def test_collect_marks_missing_results_failed(tmp_path: Path) -> None:
    results = collect_job_results(make_sweep(tmp_path, missing_fold=1))
    assert len(results) == 6
    assert [r["fold"] for r in results] == [0, 1, 2, 0, 1, 2]
    missing = results[4]
    assert missing["status"] == "FAILED" and "no results.json" in missing["error"]
    assert missing["overrides"] == ["fold=1", "precision=amp", "training.max_steps=5"]
    assert missing["mlflow_run_id"] == "abc123"


def test_summary_math_matches_numpy(tmp_path: Path) -> None:
    summaries = cross_validation_summary(collect_job_results(make_sweep(tmp_path, failing_fold=2)))
    assert [s.group for s in summaries] == ["precision=amp", "precision=fp32"]
    amp, fp32 = summaries

    values = np.array(list(DICE.values()))
    dice = fp32.metrics["Dice_WT"]
    assert dice.mean == pytest.approx(np.mean(values))
    assert dice.std == pytest.approx(np.std(values, ddof=1))
    assert STD_DDOF == 1
    assert (dice.min, dice.max, dice.count) == (0.70, 0.90, 3)
    # NaN HD95 of fold 1 is left out.
    hd95 = fp32.metrics["HD95_WT"]
    assert hd95.count == 2 and hd95.mean == pytest.approx(4.0)
    assert hd95.std == pytest.approx(np.std([5.0, 3.0], ddof=1))

    # The failed fold is recorded and left out of the statistics.
    assert [r["fold"] for r in amp.failed] == [2]
    assert amp.metrics["Dice_WT"].count == 2
    assert amp.metrics["Dice_WT"].mean == pytest.approx(np.mean([0.81, 0.71]))
    # One finite value: std undefined.
    assert amp.metrics["HD95_WT"].count == 1 and math.isnan(amp.metrics["HD95_WT"].std)


def test_summary_metric_names(tmp_path: Path) -> None:
    amp, fp32 = cross_validation_summary(collect_job_results(make_sweep(tmp_path, failing_fold=2)))
    single = summary_metrics(fp32)
    assert single["cv_mean/Dice_WT"] == pytest.approx(np.mean(list(DICE.values())))
    assert {"cv_std/Dice_WT", "cv_min/Dice_WT", "cv_max/HD95_WT"} <= set(single)
    assert single["cv_folds/failed"] == 0 and single["cv_folds/total"] == 3
    grouped = summary_metrics(amp, amp.group)
    assert "cv_std/precision-amp/HD95_WT" not in grouped  # NaN std is not logged
    assert grouped["cv_folds/precision-amp/failed"] == 1
    assert summary_metric_name("mean", "eval/Dice_WT", "a=b,c=d") == "cv_mean/a-b_c-d/eval/Dice_WT"


def test_tables_markdown_and_csv(tmp_path: Path) -> None:
    summaries = cross_validation_summary(collect_job_results(make_sweep(tmp_path, failing_fold=2)))
    markdown = format_markdown_table(summaries)
    assert "### Cross-validation: precision=fp32 (3/3 folds finished)" in markdown
    assert "### Cross-validation: precision=amp (2/3 folds finished)" in markdown
    expected_row = "| Dice_WT | 0.8000 | 0.7000 | 0.9000 | 0.8000 | 0.1000 | 0.7000 | 0.9000 | 3 |"
    assert expected_row in markdown
    assert "| status | FINISHED | FINISHED | FAILED |" in markdown
    assert "- fold 2: FAILED — FloatingPointError: loss is NaN at step 7" in markdown
    assert "ddof=1" in markdown

    paths = write_summary_tables(summaries, tmp_path / "out")
    assert set(paths) == {SUMMARY_MARKDOWN, FOLDS_CSV, SUMMARY_CSV}
    assert paths[SUMMARY_MARKDOWN].read_text() == markdown
    folds = list(csv.DictReader(io.StringIO(paths[FOLDS_CSV].read_text())))
    assert len(folds) == 6
    failed = [row for row in folds if row["status"] == "FAILED"]
    assert [(row["group"], row["fold"]) for row in failed] == [("precision=amp", "2")]
    assert failed[0]["error"].startswith("FloatingPointError")
    stats = {
        (row["group"], row["metric"]): row
        for row in csv.DictReader(io.StringIO(paths[SUMMARY_CSV].read_text()))
    }
    row = stats[("precision=fp32", "Dice_WT")]
    assert float(row["mean"]) == pytest.approx(0.8) and float(row["std"]) == pytest.approx(0.1)
    assert stats[("precision=amp", "HD95_WT")]["std"] == ""


def test_single_configuration_is_one_group(tmp_path: Path) -> None:
    results = [
        r for r in collect_job_results(make_sweep(tmp_path)) if "precision=fp32" in r["overrides"]
    ]
    (summary,) = cross_validation_summary(results)
    assert summary.group == "" and summary.label == "all" and summary.overrides == {}
    assert "cv_mean/Dice_WT" in summary_metrics(summary)


def test_jobs_at_any_depth_with_only_an_identity_are_found_and_their_fold_read_from_it(
    tmp_path: Path,
) -> None:
    """Hydra without .hydra/ files (output_subdir null) and job folders several levels deep
    (a path-valued override in the name): the jobs and their folds come from run_identity.json."""
    from unet3d.runs.identity import RunIdentity

    deep = tmp_path / "0_data.raw_dir=" / "abs" / "data"
    finished, killed = deep / "fold=1", tmp_path / "1_data.raw_dir=" / "abs" / "data,fold=0"
    # A finished job whose results.json does not know its fold; a killed one without results.
    write_job_result(finished, "FINISHED", None, ["data.raw_dir=/abs/data"], {"Dice_WT": 0.8})
    RunIdentity(fold=0, num_folds=2, seed=42).write(finished)  # the record wins over the name
    RunIdentity(fold=1, num_folds=2, seed=42).write(killed)
    (killed / "mlflow_run_id").write_text("run-killed\n")

    assert find_job_dirs(tmp_path, "") == [finished.resolve(), killed.resolve()]
    records = collect_job_results(tmp_path, "")
    assert [(record["status"], record["fold"]) for record in records] == [
        ("FINISHED", 0), ("FAILED", 1)]
    assert records[1]["mlflow_run_id"] == "run-killed"
    assert "no results.json" in records[1]["error"]


def test_empty_sweep(tmp_path: Path) -> None:
    assert collect_job_results(tmp_path / "missing") == []
    assert cross_validation_summary([]) == []
