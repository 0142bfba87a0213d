"""unet3d.data.parallel: how many worker processes, and where none can be started."""

from __future__ import annotations

import multiprocessing

import pytest

from unet3d.data import parallel


def test_worker_count_reads_the_request_and_the_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 2)
    assert parallel.worker_count(0, 10) == 2
    assert parallel.worker_count(4, 3) == 3
    assert parallel.worker_count(0, 0) == 1
    with pytest.raises(ValueError, match=r"^must be an integer >= 0, got -1$"):
        parallel.worker_count(-1, 3)


def test_a_joblib_worker_runs_its_cases_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # In a loky worker (hydra/launcher=joblib) the start method is "loky": a spawned child would
    # fail at start ("cannot find context for 'loky'"), so the work stays in this process.
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 2)
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "loky")
    assert not parallel.can_spawn_workers()
    assert parallel.worker_count(0, 10) == 1
    assert list(parallel.process_map(divmod, [(7, 2), (9, 4)], 1)) == [(3, 1), (2, 1)]
