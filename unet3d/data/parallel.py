"""Run one function over many cases in worker processes: generation and preprocessing.

``process_map`` yields ``function(*arguments)`` for each tuple of arguments, in order. With
``workers > 1`` the calls run in that many *spawned* processes (not forked: safe when the
parent has TensorFlow or threads running); at most ``2 * workers`` calls are in flight, so
the results waiting in the parent stay few whatever the number of cases. The first call that
raises cancels the calls not started and its exception is raised in the parent (with the
message the worker gave it, e.g. a ``DataError`` naming the case and file).

The function must be importable at module level and its arguments picklable.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from unet3d.data._files import usable_cpus

#: Start methods of the standard library: a process started by another (joblib's ``loky``
#: workers, e.g. a ``hydra/launcher=joblib`` sweep's jobs) cannot spawn children, since each
#: child would ask the standard library for the parent's start method (and fail: "cannot find
#: context for 'loky'").
STANDARD_START_METHODS = ("fork", "spawn", "forkserver")


def can_spawn_workers() -> bool:
    """Whether this process may start worker processes (see ``STANDARD_START_METHODS``)."""
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True)
    return method is None or method in STANDARD_START_METHODS


def worker_count(requested: int, tasks: int) -> int:
    """Processes to use: ``requested`` (0: one per usable CPU), at most ``tasks``, at least 1;
    1 in a process that cannot spawn workers (a joblib worker: ``can_spawn_workers``), whose
    siblings use the other CPUs anyway.

    Raises:
        ValueError: ``requested`` is negative or not an integer.
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"must be an integer >= 0, got {requested!r}")
    if not can_spawn_workers():
        return 1
    return max(1, min(requested or usable_cpus(), tasks))


def process_map(function: Callable[..., Any], arguments: Sequence[tuple], workers: int
                ) -> Iterator[Any]:
    """``function(*args)`` for each ``args`` of ``arguments``, in order.

    Args:
        function: a module-level function (it is pickled by name for the workers).
        arguments: one tuple of arguments per call.
        workers: processes; 1 runs every call in this process.

    Raises:
        Whatever a call raises (the calls not yet started are cancelled).
    """
    if workers <= 1 or len(arguments) <= 1:
        for args in arguments:
            yield function(*args)
        return
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[Future] = deque()
        queued = iter(arguments)
        try:
            for args in queued:
                pending.append(pool.submit(function, *args))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
