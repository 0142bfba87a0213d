"""Host work of the per-case loop overlapped with the model: read ahead, write behind.

``mode=predict`` spends most of a case in the model's forward passes; reading and
preprocessing a raw case (gzip, NumPy) and writing its outputs (gzip) are host work that can
run meanwhile, each in one background thread (both release the GIL most of the time):

- ``CasePrefetcher`` loads the next case while this one is segmented (and the first case while
  the models are built), at most ``depth`` cases ahead, in order. A case whose outputs already
  exist (``accept`` says no) is not read ahead: the loop refuses it as before.
- ``BackgroundOutputs`` writes a case's files while the next case is segmented, at most one case
  behind. A write that fails is reported by ``close`` (case id and the error line), so the
  mode can list it with the other failures; a full disk or read-only folder
  (``StorageError``) is raised at the next write or at ``close``: nothing more can be written
  there, so the loop stops at once.

Neither changes what is computed or written; errors of a case stay that case's errors. On an
exception (or SIGTERM's ``TerminationRequested``) the ``with`` block cancels the reads not yet
started and waits for the running read and write: a file is never left half-written (the
writers are atomic) and no thread outlives the block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from unet3d.errors import StorageError, Unet3dError
from unet3d.inference.inputs import InputCase, PendingCase

log = logging.getLogger(__name__)


class CasePrefetcher:
    """Loads ``cases`` ahead of the loop in one background thread.

    Use as a context manager; ``start()`` begins reading the first case; iterate over
    ``cases`` (the same ids and sources, whose ``load`` returns the case read ahead and
    raises its loading error).

    Args:
        cases: the pending cases, in loop order.
        depth: how many cases to read ahead of the one being segmented (>= 1).
        accept: ``accept(case_id)``: whether a case may be read ahead (False: it is read, if
            at all, when the loop asks for it).
    """

    def __init__(self, cases: Sequence[PendingCase], depth: int = 1,
                 accept: Callable[[str], bool] | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._pending = list(cases)
        self._depth = int(depth)
        self._accept = accept or (lambda case_id: True)
        self._futures: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="case-reader")
        self.cases = [PendingCase(case.case_id, case.source,
                                  (lambda index=index: self._load(index)))
                      for index, case in enumerate(self._pending)]

    def __enter__(self) -> CasePrefetcher:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def start(self) -> None:
        """Begin reading the first case(s) in the background."""
        for index in range(min(self._depth, len(self._pending))):
            self._schedule(index)

    def close(self) -> None:
        """Cancel the reads not started; wait for the running one."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._futures.clear()

    def _schedule(self, index: int) -> None:
        if index >= len(self._pending) or index in self._futures:
            return
        case = self._pending[index]
        try:
            accepted = self._accept(case.case_id)
        except Exception:  # noqa: BLE001 - the loop's own check reports it
            accepted = False
        if accepted:
            self._futures[index] = self._pool.submit(case.load)

    def _load(self, index: int) -> InputCase:
        for ahead in range(index + 1, index + 1 + self._depth):
            self._schedule(ahead)
        future = self._futures.pop(index, None)
        if future is None:  # not read ahead: read it now, here
            return self._pending[index].load()
        return future.result()


@dataclass
class WriteFailure:
    """A case whose outputs could not be written: its id and the error."""

    case_id: str
    error: BaseException


class BackgroundOutputs:
    """``CaseOutputs`` that write in one background thread, at most one case behind.

    ``check`` runs at once (before the case is loaded, as before). ``write_probabilities`` and
    ``write_segmentation`` hand the work to the thread after waiting for the previous write, so
    at most one case's arrays are held for writing.

    Args:
        outputs: the real writers (``unet3d.inference.predict.NiftiOutputs``).
    """

    def __init__(self, outputs: Any) -> None:
        self._outputs = outputs
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="case-writer")
        self._in_flight: tuple[str, Future] | None = None
        self.failures: list[WriteFailure] = []

    def __enter__(self) -> BackgroundOutputs:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._finish(raise_unexpected=exc_info[0] is None)

    def check(self, case_id: str) -> None:
        """The outputs' check, at once (raises before the case is loaded)."""
        self._outputs.check(case_id)

    def write_probabilities(self, case: InputCase, probabilities: Any) -> None:
        """Write (or skip) the probabilities in the background."""
        self._submit(case.case_id, self._outputs.write_probabilities, case, probabilities)

    def write_segmentation(self, case: InputCase, labels: Any) -> None:
        """Write the labels in the background."""
        self._submit(case.case_id, self._outputs.write_segmentation, case, labels)

    def close(self) -> list[WriteFailure]:
        """Wait for the last write; return every write that failed (``Unet3dError`` or
        ``OSError``).

        Raises:
            StorageError: the disk is full or the folder read-only (also raised by the next
                ``write_*`` after the failed write); other errors of a write are raised too.
        """
        self._finish(raise_unexpected=True)
        return list(self.failures)

    def _submit(self, case_id: str, write: Callable[..., None], *arguments: Any) -> None:
        self._wait()
        if any(failure.case_id == case_id for failure in self.failures):
            return  # this case's probabilities failed: do not write its segmentation
        self._in_flight = (case_id, self._pool.submit(write, *arguments))

    def _wait(self) -> None:
        if self._in_flight is None:
            return
        case_id, future = self._in_flight
        self._in_flight = None
        try:
            future.result()
        except StorageError:
            raise  # nothing more can be written there: stop the loop (files before are intact)
        except (Unet3dError, OSError) as error:
            self.failures.append(WriteFailure(case_id, error))

    def _finish(self, raise_unexpected: bool) -> None:
        try:
            self._wait()
        except BaseException:
            if raise_unexpected:
                raise
            log.exception("background write failed")
        finally:
            self._pool.shutdown(wait=True)
