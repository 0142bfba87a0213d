"""Faults as users have them (issue 23), with the real runner in subprocesses.

One training run folder goes through what users report, in order (the tests of this module
share it, like one user's afternoon): a segmentation with a scanner-style name (BraTS 2020's
case 355), fixed, then Ctrl-C (SIGTERM) before the first checkpoint, ``resume=true`` of that
dead-end folder, ``kill -9`` in the middle of a checkpoint save, a disk that fills up at the
next save, and the resume that finishes. Then ``mode=predict`` killed in the middle of a case
and rerun into the same folder (predict on a full disk: ``tests/inference/test_write_faults``).
Finally two sweeps started at once on one MLflow store and one data cache. Writes are paused
or failed at the moment of the write with the test hook ``UNET3D_TEST_FAULT``
(``unet3d.runs.files.fault_point``); kills are real ``SIGKILL`` / ``SIGTERM`` of the process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.e2e.conftest import ROOT, mlflow_client, results
from unet3d.inference.output_folder import SETTINGS_FILE
from unet3d.runs.files import FAULT_MARKER_VARIABLE, FAULT_VARIABLE

pytestmark = pytest.mark.slow

#: The odd name BraTS 2020 ships for BraTS20_Training_355's segmentation.
ODD_NAME = "W39_1998.09.19_Segm.nii"
#: Shared by every training job of the chain (6 steps, a checkpoint every 2).
TRAIN = ("mode=train", "debug=fast", "data=brats2019", "training.max_steps=6",
         "training.checkpoint_every=2", "tracking.log_model=false")


# ------------------------------------------------------------------------------ helpers


def _env(**extra: str) -> dict[str, str]:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), **extra}
    for name in ("MLFLOW_TRACKING_URI", "UNET3D_LAUNCH_ID", FAULT_VARIABLE,
                 FAULT_MARKER_VARIABLE):
        if name not in extra:
            environment.pop(name, None)
    return environment


class Job:
    """``python -m unet3d.run ...`` started in ``cwd``, its output in ``<log>``."""

    def __init__(self, cwd: Path, log: Path, *args: str, fault: str | None = None) -> None:
        self.log = log
        self.marker = log.with_suffix(".paused")
        extra = {FAULT_VARIABLE: fault, FAULT_MARKER_VARIABLE: str(self.marker)} if fault else {}
        with open(log, "w") as stream:
            self.process = subprocess.Popen([sys.executable, "-m", "unet3d.run", *args],
                                            cwd=cwd, env=_env(**extra), stdout=stream,
                                            stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def paused_at(self, timeout: float = 900) -> Path:
        """Wait until the hook paused the job in a write; the file it was writing."""
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            assert self.process.poll() is None, f"ended before the pause:\n{self.output[-4000:]}"
            assert time.monotonic() < deadline, self.output[-4000:]
            time.sleep(0.1)
        return Path(self.marker.read_text().strip())

    def wait(self, timeout: float = 900) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        self.process.send_signal(sig)
        return self.wait()


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if "][ERROR] - " in line]


def _one_error(job: Job, returncode: int) -> str:
    returned = job.wait()
    output = job.output
    assert returned == returncode, output[-4000:]
    errors = _errors(output)
    assert len(errors) == 1, "\n".join(errors) + "\n---\n" + output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    return errors[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


class Chain:
    """The shared workspace: a BraTS-2019-layout folder of 6 synthetic cases, one run dir."""

    def __init__(self, root: Path) -> None:
        from unet3d.data.synthetic.generate import generate_dataset

        self.cwd = root
        self.raw = root / "BraTS2020_like"
        generate_dataset(self.raw, num_cases=6, shape=(40, 40, 32), spacing=(1.0, 1.0, 1.0),
                         seed=2020)
        (self.raw / "synthetic_manifest.json").unlink()
        self.cases = sorted(path.name for path in self.raw.iterdir() if path.is_dir())
        self.odd_case = self.cases[2]
        self.run_dir = root / "outputs" / "run"
        self.inputs = root / "new_cases"  # three of the cases, for predict
        self.data = (f"data.raw_dir={self.raw}", f"paths.data_dir={root / 'data'}")
        self.logs = 0

    def start(self, *args: str, fault: str | None = None) -> Job:
        self.logs += 1
        return Job(self.cwd, self.cwd / f"job{self.logs}.log", *args, *self.data, fault=fault)

    def train(self, *args: str, fault: str | None = None) -> Job:
        return self.start(*TRAIN, f"hydra.run.dir={self.run_dir}", *args, fault=fault)

    @property
    def checkpoints(self) -> list[str]:
        folder = self.run_dir / "checkpoints"
        return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []

    def run_id(self) -> str:
        return (self.run_dir / "mlflow_run_id").read_text().strip()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return Chain(tmp_path_factory.mktemp("faults"))


# ------------------------------------------------------------------------------ training


def test_a_segmentation_with_another_name_stops_training_with_one_line(chain: Chain) -> None:
    case = chain.odd_case
    seg = chain.raw / case / f"{case}_seg.nii.gz"
    odd = chain.raw / case / ODD_NAME
    nib.save(nib.load(seg), odd)  # as BraTS 2020 ships it: another name, not gzipped
    seg.unlink()
    line = _one_error(chain.train(), 1)
    assert f"case {case}: missing file {chain.raw / case / case}_seg.nii.gz" in line, line
    assert ODD_NAME in line and f"{case}_t1ce.nii.gz" in line, line
    assert not chain.checkpoints
    # The user fixes the name as the line says.
    odd.rename(chain.raw / case / f"{case}_seg.nii")


def test_the_rerun_takes_the_dead_end_folder_over_and_sigterm_does_not_suggest_resume(
        chain: Chain) -> None:
    earlier = chain.run_id()  # the failed job's MLflow run: the folder holds no checkpoint
    job = chain.train(fault="pause:ckpt-2_temp")  # before TensorFlow writes the first one
    assert job.paused_at().name == "ckpt-2_temp"
    job.process.send_signal(signal.SIGTERM)
    line = _one_error(job, 143)
    assert "terminated by signal SIGTERM" in line, line
    assert "no checkpoint was written yet" in line and "resume=true" not in line, line
    output = job.output
    assert "stopped before its first checkpoint" in output, output[-4000:]
    assert (chain.run_dir / "earlier_mlflow_run_ids").read_text().split() == [earlier]
    client = mlflow_client(chain.cwd)
    assert client.get_run(earlier).info.status == "FAILED"  # kept as it ended
    assert chain.run_id() != earlier
    assert client.get_run(chain.run_id()).info.status == "KILLED"
    assert not any(name.endswith(".index") for name in chain.checkpoints)


def test_resume_of_the_dead_end_starts_at_0_and_a_kill_mid_save_keeps_what_was_saved(
        chain: Chain) -> None:
    run_id = chain.run_id()
    # Paused once TensorFlow wrote ckpt-2's files, before the `checkpoint` index.
    job = chain.train("resume=true", fault="pause:ckpt-2")
    assert job.paused_at() == chain.run_dir / "checkpoints" / "ckpt-2"
    assert job.kill() == -signal.SIGKILL
    output = job.output
    assert "training starts at step 0" in output and "training steps 1..6" in output, output
    assert "ckpt-2.index" in chain.checkpoints and "checkpoint" not in chain.checkpoints
    run = mlflow_client(chain.cwd).get_run(run_id)
    assert run.data.tags["unet3d.resumed_from_step"] == "0"
    assert chain.run_id() == run_id


def test_a_full_disk_at_a_save_is_one_line_and_keeps_the_checkpoints_saved_before(
        chain: Chain) -> None:
    # Resumes from ckpt-2 (complete, not in any index), saves ckpt-4, then the disk is full.
    job = chain.train("resume=true", fault="enospc:ckpt-*_temp:2")
    line = _one_error(job, 1)
    output = job.output
    assert "restored" in output and "ckpt-2 at step 2" in output, output[-4000:]
    target = chain.run_dir / "checkpoints" / "ckpt-6"
    assert f"{target}: cannot write (no space left on device)" in line, line
    assert [name for name in chain.checkpoints if name.endswith(".index")] == [
        "ckpt-2.index", "ckpt-4.index"]
    state = (chain.run_dir / "checkpoints" / "checkpoint").read_text()
    assert '"ckpt-4"' in state and "ckpt-6" not in state
    assert mlflow_client(chain.cwd).get_run(chain.run_id()).info.status == "FAILED"


def test_the_last_resume_finishes_the_same_mlflow_run(chain: Chain) -> None:
    run_id = chain.run_id()
    job = chain.train("resume=true")
    assert job.wait() == 0, job.output[-4000:]
    assert "training steps 5..6" in job.output
    record = results(chain.run_dir)
    assert record["status"] == "FINISHED" and record["mlflow_run_id"] == run_id
    run = mlflow_client(chain.cwd).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["unet3d.resumed_from_step"] == "4"
    assert "ckpt-6.index" in chain.checkpoints
    assert not [name for name in chain.checkpoints if "_temp" in name or ".tmp" in name]


# ------------------------------------------------------------------------------ predict


def _predict(chain: Chain, output: Path, fault: str | None = None) -> Job:
    return chain.start("mode=predict", "debug=fast", "data=brats2019",
                       f"predict.checkpoint={chain.run_dir}", f"predict.input_dir={chain.inputs}",
                       f"predict.output_dir={output}", "tracking.log_model=false", fault=fault)


def test_predict_killed_in_the_middle_of_a_case_rewrites_it_on_the_rerun(chain: Chain) -> None:
    for case in chain.cases[:3]:
        shutil.copytree(chain.raw / case, chain.inputs / case)
    output = chain.cwd / "predictions"
    first, second, third = (output / f"{case}.nii.gz" for case in chain.cases[:3])
    job = _predict(chain, output, fault="pause:*.nii.gz:2")
    assert job.paused_at() == second
    assert job.kill() == -signal.SIGKILL
    assert sorted(path.name for path in output.iterdir() if ".tmp-" not in path.name) == sorted(
        [first.name, SETTINGS_FILE])
    assert list(output.glob(f"{second.name}.tmp-*"))  # the half-written case, not in place
    done = first.read_bytes()

    # The same command again continues the prediction: the case written before is kept as it
    # is (predict_settings.json: the same prediction), the interrupted one and the rest are
    # written, the dead writer's temporary file is gone.
    rerun = _predict(chain, output)
    assert rerun.wait() == 0, rerun.output[-4000:]
    assert "1 case(s) written by an earlier run are kept" in rerun.output, rerun.output[-4000:]
    assert first.read_bytes() == done
    assert sorted(path.name for path in output.iterdir()) == sorted(
        [path.name for path in (first, second, third)] + [SETTINGS_FILE])
    for path in (second, third):
        labels = np.asanyarray(nib.load(path).dataobj)
        assert labels.shape == (40, 40, 32) and labels.dtype == np.uint8


# ------------------------------------------------------------------------------ two sweeps


def test_two_sweeps_at_once_share_the_store_and_build_the_data_cache_once(
        tmp_path: Path) -> None:
    sweep = ("--multirun", "debug=fast", "mode=train", "num_folds=2", "fold=0,1",
             "training.max_steps=2", "tracking.log_model=false")
    first = Job(tmp_path, tmp_path / "first.log", *sweep, fault="pause:*.tfrecord:3")
    first.paused_at()  # it holds the preprocessing lock, the cache half-built
    second = Job(tmp_path, tmp_path / "second.log", *sweep)
    deadline = time.monotonic() + 900
    while "waiting for another job preprocessing into" not in second.output:
        assert second.process.poll() is None, second.output[-4000:]
        assert time.monotonic() < deadline, second.output[-4000:]
        time.sleep(0.2)
    first.marker.unlink()  # let the first go on: the second then finds the cache built
    assert first.wait() == 0, first.output[-4000:]
    assert second.wait() == 0, second.output[-4000:]
    both = first.output + second.output
    assert both.count("Generating 10 synthetic case(s)") == 1, both[-4000:]
    assert both.count("Preprocessing 10 of 10 case(s)") == 1, both[-4000:]
    assert "Preprocessing" not in second.output.replace("Preprocessed data in", "")
    assert "database is locked" not in both

    from unet3d.data.tfrecord import validate_records

    (records,) = (tmp_path / "data" / "preprocessed").glob("synthetic-*")
    validate_records(sorted(records.glob("*.tfrecord")))
    assert not list(records.glob("*.tmp-*"))
    client = mlflow_client(tmp_path)
    sweep_dirs = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweep_dirs) == 2
    parents = set()
    for sweep_dir in sweep_dirs:
        parent = (sweep_dir / "mlflow_parent_run_id").read_text().strip()
        parents.add(parent)
        children = client.search_runs([client.get_run(parent).info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        assert len(children) == 2
        for child in children:
            assert child.info.status == "FINISHED"
            assert Path(child.data.tags["unet3d.output_dir"]).parent == sweep_dir.resolve()
        assert client.get_run(parent).info.status == "FINISHED"
    assert len(parents) == 2
