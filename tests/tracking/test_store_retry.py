"""unet3d.tracking.store.retry: which store errors get another try."""

from __future__ import annotations

import pytest

from unet3d.tracking import store


def _failing(times: int, message: str):
    calls = []

    def operation() -> int:
        calls.append(1)
        if len(calls) <= times:
            raise RuntimeError(message)
        return len(calls)

    return operation, calls


def test_a_lock_is_retried_and_other_errors_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.time, "sleep", lambda seconds: None)
    operation, calls = _failing(2, "(sqlite3.OperationalError) database is locked")
    assert store.retry(operation, "test") == 3
    duplicate = "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, ..."
    operation, calls = _failing(1, duplicate)
    with pytest.raises(RuntimeError, match="UNIQUE constraint"):
        store.retry(operation, "test")
    assert len(calls) == 1


def test_a_data_set_row_inserted_by_a_parallel_job_is_retried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two jobs of a joblib sweep log the same data set at once: MLflow checks for the row, then
    # inserts it, so the second insert fails on the UNIQUE constraint; the retry finds the row.
    monkeypatch.setattr(store.time, "sleep", lambda seconds: None)
    duplicate = "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, ..."
    operation, calls = _failing(1, duplicate)
    assert store.retry(operation, "test", also=("unique constraint failed: datasets",)) == 2
