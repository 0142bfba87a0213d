"""Read-ahead and write-behind of the predict loop: order, threads, errors, the real mode."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from unet3d.errors import DataError
from unet3d.inference.background import BackgroundOutputs, CasePrefetcher
from unet3d.inference.inputs import InputCase, PendingCase


def pending(ids, log, broken=(), delay=0.0):
    def load(case_id):
        log.append((case_id, threading.current_thread().name))
        time.sleep(delay)
        if case_id in broken:
            raise DataError(f"case {case_id}: {case_id}_t1.nii.gz: truncated")
        return InputCase(case_id, np.zeros((2, 2, 2, 1), np.float32), None, (1.0,) * 3, None)

    return [PendingCase(case_id, f"/in/{case_id}", (lambda c=case_id: load(c))) for case_id in ids]


def test_cases_are_read_ahead_in_order_in_one_thread():
    log = []
    with CasePrefetcher(pending(["A", "B", "C"], log)) as reader:
        reader.start()
        deadline = time.monotonic() + 10
        while not log and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log == [("A", log[0][1])]  # read before the loop asked for it
        loaded = [case.load().case_id for case in reader.cases]
    assert loaded == ["A", "B", "C"]
    assert [case_id for case_id, _ in log] == ["A", "B", "C"]
    threads = {name for _, name in log}
    assert len(threads) == 1 and threads.pop().startswith("case-reader")
    assert [case.case_id for case in reader.cases] == ["A", "B", "C"]
    assert reader.cases[1].source == "/in/B"


def test_a_loading_error_belongs_to_its_case():
    log = []
    with CasePrefetcher(pending(["A", "B", "C"], log, broken={"B"})) as reader:
        reader.start()
        first, second, third = reader.cases
        assert first.load().case_id == "A"
        with pytest.raises(DataError, match="case B: B_t1.nii.gz"):
            second.load()
        assert third.load().case_id == "C"


def test_a_refused_case_is_not_read_ahead():
    log = []
    with CasePrefetcher(pending(["A", "B", "C"], log), accept=lambda case_id: case_id != "B") \
            as reader:
        reader.start()
        reader.cases[0].load()
        reader.cases[2].load()  # the loop skipped B (its output exists)
    assert [case_id for case_id, _ in log] == ["A", "C"]


def test_closing_cancels_the_reads_not_started():
    log = []
    reader = CasePrefetcher(pending(["A", "B", "C"], log, delay=0.3), depth=2)
    reader.start()
    deadline = time.monotonic() + 10
    while not log and time.monotonic() < deadline:
        time.sleep(0.01)
    reader.close()
    assert [case_id for case_id, _ in log] == ["A"]  # B was queued, then cancelled


class SlowOutputs:
    def __init__(self, failing=()):
        self.calls, self.failing = [], set(failing)

    def check(self, case_id):
        self.calls.append(("check", case_id, threading.current_thread().name))

    def write_probabilities(self, case, probabilities):
        self.calls.append(("probabilities", case.case_id, threading.current_thread().name))

    def write_segmentation(self, case, labels):
        time.sleep(0.05)
        if case.case_id in self.failing:
            raise OSError(28, "No space left on device")
        self.calls.append(("segmentation", case.case_id, threading.current_thread().name))


def case(case_id):
    return InputCase(case_id, None, None, (1.0,) * 3, None)


def test_writes_happen_behind_in_order_and_failures_are_collected():
    outputs = SlowOutputs(failing={"B"})
    labels = np.zeros((2, 2, 2), np.uint8)
    with BackgroundOutputs(outputs) as writer:
        for case_id in ("A", "B", "C"):
            writer.check(case_id)
            writer.write_probabilities(case(case_id), None)
            writer.write_segmentation(case(case_id), labels)
        failures = writer.close()
    assert [(failure.case_id, str(failure.error)) for failure in failures] == [
        ("B", "[Errno 28] No space left on device")]
    written = [(kind, case_id) for kind, case_id, _ in outputs.calls if kind != "check"]
    assert written == [("probabilities", "A"), ("segmentation", "A"), ("probabilities", "B"),
                       ("probabilities", "C"), ("segmentation", "C")]
    assert all(name == threading.current_thread().name
               for kind, _, name in outputs.calls if kind == "check")
    assert all(name.startswith("case-writer")
               for kind, _, name in outputs.calls if kind != "check")


def test_an_unexpected_write_error_is_raised():
    class Broken(SlowOutputs):
        def write_segmentation(self, case, labels):
            raise ValueError("a bug")

    writer = BackgroundOutputs(Broken())
    writer.write_segmentation(case("A"), None)
    with pytest.raises(ValueError, match="a bug"):
        writer.close()


def test_predict_lists_a_case_whose_file_could_not_be_written(tmp_path, monkeypatch, caplog):
    from tests.inference.test_predict import (
        FakeTracker,
        case_dir,
        compose_config,
        copy_case,
        make_runtime,
        predict_config,
        save_model,
    )
    from unet3d.data.synthetic.generate import generate_dataset
    from unet3d.inference.predict import NiftiOutputs
    from unet3d.modes.predict import predict

    generate_dataset(tmp_path / "gen", 2, (32, 32, 24), (1.0, 1.0, 1.0), seed=5)
    inputs = tmp_path / "in"
    for index, name in ((1, "Case_A"), (2, "Case_B")):
        copy_case(case_dir(tmp_path / "gen", index), inputs, name)
    run = tmp_path / "sweep" / "0_fold=0"
    save_model(run, compose_config("debug=fast"), seed=3, fold=0)
    original = NiftiOutputs.write_segmentation

    def failing(self, case, labels):
        if case.case_id == "Case_A":
            raise DataError(f"case {case.case_id}: {self.folder}/Case_A.nii.gz: cannot write "
                            "(No space left on device)")
        return original(self, case, labels)

    monkeypatch.setattr(NiftiOutputs, "write_segmentation", failing)
    tracker = FakeTracker()
    output = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="unet3d.modes.predict"), \
            pytest.raises(DataError, match=r"1 of 2 case\(s\) failed: Case_A"):
        predict(predict_config(inputs, output, [run]), make_runtime(), tracker, tmp_path / "run")
    assert sorted(path.name for path in output.glob("*.nii.gz")) == ["Case_B.nii.gz"]
    assert any("Case_A" in record.getMessage() and "No space left" in record.getMessage()
               for record in caplog.records)
    assert {"cases_written": 1.0, "cases_failed": 1.0, "cases_kept": 0.0} in tracker.metrics
    rows = (tmp_path / "run" / "metrics" / "predict_per_case.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("Case_B")
