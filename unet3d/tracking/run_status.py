"""The end status of a job's MLflow run, from how the block that runs the job exits.

``tracked_run`` wraps a job: a normal exit ends its run FINISHED, Ctrl-C and SIGTERM KILLED,
any other exception FAILED (with the error recorded), then the exception goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from unet3d.runtime.signals import install_termination_handlers
from unet3d.tracking.tracker import Tracker

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def tracked_run(tracker: Tracker, handle_sigterm: bool = True) -> Iterator[Tracker]:
    """End `tracker`'s run according to how the block exits, then re-raise.

    - normal exit, or `SystemExit(0)`: FINISHED (unless the block already ended the run);
    - `KeyboardInterrupt`, SIGTERM (`TerminationRequested`): KILLED;
    - any other exception (including `FloatingPointError` for a NaN loss, non-zero
      `SystemExit`): FAILED.
    The error is recorded as tag `error` and artifact `error.txt`. With `handle_sigterm`,
    SIGTERM raises `TerminationRequested` in the main thread while the block runs.
    """
    restore = install_termination_handlers() if handle_sigterm else (lambda: None)
    try:
        yield tracker
    except KeyboardInterrupt as error:
        _end_quietly(tracker, "KILLED", error)
        raise
    except SystemExit as error:
        if error.code in (None, 0):
            _end_quietly(tracker, "FINISHED", None)
        else:
            _end_quietly(tracker, "FAILED", error)
        raise
    except BaseException as error:
        _end_quietly(tracker, "FAILED", error)
        raise
    else:
        tracker.end("FINISHED")
    finally:
        restore()


def _end_quietly(tracker: Tracker, status: str, error: BaseException | None) -> None:
    try:
        tracker.end(status, error)
    except Exception:  # noqa: BLE001 - keep the original exception
        logger.exception("MLflow: could not end run %s as %s", tracker.run_id, status)
