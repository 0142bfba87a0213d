"""Claiming a run folder: refusal of used folders, deferred .hydra/ and run.log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.runs.test_run_faults import INDEX
from unet3d.errors import RunFolderError
from unet3d.runs.folder import LOG_FILE, RunFolder, used_markers

log = logging.getLogger("tests.runs")


@pytest.fixture(autouse=True)
def _info_logging():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(level)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("markers", [
    ("checkpoints/ckpt-1.index", "checkpoints/ckpt-1.data-00000-of-00001"),
    ("results.json", "mlflow_run_id"),
], ids=["checkpoint", "results"])
def test_used_folder_refused_without_resume(tmp_path: Path, markers: tuple[str, ...]) -> None:
    for marker in markers:
        (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / marker).write_bytes(INDEX if marker.endswith(".index") else b"x")
    (tmp_path / LOG_FILE).write_text("earlier log\n")
    before = _snapshot(tmp_path)
    folder = RunFolder(tmp_path, resume=False)
    with pytest.raises(RunFolderError) as error:
        folder.claim()
    message = str(error.value)
    assert str(tmp_path) in message and "resume=true" in message and "another folder" in message
    assert "\n" not in message
    assert _snapshot(tmp_path) == before


def test_empty_checkpoints_folder_or_hydra_files_do_not_mark_a_folder_used(
        tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("fold: 0\n")
    assert used_markers(tmp_path) == []
    RunFolder(tmp_path, resume=False).claim()


def test_fresh_commit_writes_hydra_files_and_the_log_from_the_first_line(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run", resume=False)
    folder.claim()
    log.info("before the commit")
    folder.commit(OmegaConf.create({"fold": 1}), OmegaConf.create({"hydra": {"x": 1}}),
                  ["fold=1"])
    log.info("after the commit")
    folder.close()
    log.info("after the close")
    hydra_dir = tmp_path / "run" / ".hydra"
    assert OmegaConf.load(hydra_dir / "config.yaml") == {"fold": 1}
    assert OmegaConf.load(hydra_dir / "hydra.yaml") == {"hydra": {"x": 1}}
    assert list(OmegaConf.load(hydra_dir / "overrides.yaml")) == ["fold=1"]
    text = (tmp_path / "run" / LOG_FILE).read_text()
    assert "before the commit" in text and "after the commit" in text
    assert "after the close" not in text
    assert text.index("before the commit") < text.index("after the commit")


def test_resume_writes_nothing_until_committed_and_a_release_drops_the_held_lines(
        tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-4.index").write_bytes(INDEX)
    (tmp_path / LOG_FILE).write_text("first attempt\n")
    before = _snapshot(tmp_path)
    refused = RunFolder(tmp_path, resume=True)
    refused.claim()
    log.info("refused attempt")
    refused.release()
    refused.close()
    assert _snapshot(tmp_path) == before
    accepted = RunFolder(tmp_path, resume=True)
    accepted.claim()
    log.info("accepted attempt")
    accepted.commit(OmegaConf.create({"fold": 0}), None, ["resume=true"])
    accepted.close()
    text = (tmp_path / LOG_FILE).read_text()
    assert text.startswith("first attempt\n") and "accepted attempt" in text
    assert "refused attempt" not in text
    assert not (tmp_path / ".hydra" / "hydra.yaml").exists()


def test_non_chief_neither_checks_nor_writes(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text("{}")
    folder = RunFolder(tmp_path, resume=False, is_chief=False)
    folder.claim()  # the chief checks
    folder.commit(OmegaConf.create({"fold": 0}), None, [])
    folder.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results.json"]


def test_a_resumed_sweep_job_named_by_an_earlier_unet3d_is_pointed_at_with_a_rename(
        tmp_path: Path) -> None:
    """Issue 30: job folders no longer carry training.max_steps; a sweep started before keeps
    its jobs in '<n>_...,training.max_steps=N': a resume says which folder and what to do."""
    sweep = tmp_path / "sweep"
    old = sweep / "0_debug=fast,fold=0,training.max_steps=2"
    (old / "checkpoints").mkdir(parents=True)
    for name in ("ckpt-2.index", "ckpt-2.data-00000-of-00001"):
        (old / "checkpoints" / name).write_bytes(INDEX if name.endswith(".index") else b"x")
    (sweep / "1_debug=fast,fold=1,training.max_steps=2").mkdir()  # another job: not this one
    before = _snapshot(sweep)
    new = sweep / "0_debug=fast,fold=0"
    new.mkdir()
    with pytest.raises(RunFolderError) as error:
        RunFolder(new, resume=True).claim()
    message = str(error.value)
    assert message.startswith("resume: 0_debug=fast,fold=0 holds no run, but this sweep's job "
                              f"is in {old.name}")
    assert f"rename that folder to {new.name}" in message
    assert _snapshot(sweep) == before
    RunFolder(sweep / "1_debug=fast,fold=1", resume=True).claim()  # no earlier checkpoint
    RunFolder(new, resume=False).claim()  # a new job there is not concerned


def test_training_max_steps_is_not_part_of_a_sweep_job_folder_name() -> None:
    from unet3d.runs.naming import job_dirname

    hydra_defaults = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "hydra"
                                    / "default.yaml")
    exclude = list(hydra_defaults.job.config.override_dirname.exclude_keys)
    assert job_dirname(["fold=0", "training.max_steps=600"], exclude) == job_dirname(
        ["fold=0", "training.max_steps=2000", "resume=true"], exclude) == "fold=0"
