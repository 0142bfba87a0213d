"""Process signals: SIGTERM becomes an exception in the main thread, so cleanup code runs.

A batch system (SLURM, Kubernetes) or ``horovodrun`` stops a job with SIGTERM. Python's default
action ends the process at once; `install_termination_handlers` instead raises
`TerminationRequested` in the main thread, so ``finally`` blocks and context managers (the
MLflow run's status, ``results.json``) still run.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class TerminationRequested(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (ends the run as KILLED).

    It derives from `KeyboardInterrupt` so that `except Exception` blocks (Hydra's `run_job`,
    library code) do not swallow it.
    """


def _raise_termination(signal_number: int, frame: Any) -> None:
    """SIGTERM handler: raise `TerminationRequested` once; later SIGTERMs let cleanup finish."""
    if getattr(_raise_termination, "raised", False):
        logger.warning("SIGTERM received again; still cleaning up")
        return
    _raise_termination.raised = True  # type: ignore[attr-defined]
    raise TerminationRequested(f"terminated by signal {signal.Signals(signal_number).name}")


def install_termination_handlers() -> Callable[[], None]:
    """Turn SIGTERM into `TerminationRequested` (a KeyboardInterrupt) in the main thread.

    Returns:
        A function restoring the previous handler. Outside the main thread (signals can only
        be handled there) nothing is installed and the function is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        logger.debug("Not the main thread: SIGTERM handler not installed")
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    _raise_termination.raised = False  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, _raise_termination)

    def restore() -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return restore
