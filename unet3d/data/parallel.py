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


def worker_count(requested: int, tasks: int) -> int:
    """Processes to use: ``requested`` (0: one per usable CPU), at most ``tasks``, at least 1.

    Raises:
        ValueError: ``requested`` is negative or not an integer.
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"must be an integer >= 0, got {requested!r}")
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
