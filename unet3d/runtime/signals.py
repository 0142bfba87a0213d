"""Process signals: SIGTERM and Ctrl-C become exceptions in the main thread, so cleanup runs.

A batch system (SLURM, Kubernetes) or ``horovodrun`` stops a job with SIGTERM. Python's default
action ends the process at once; `install_termination_handlers` instead raises
`TerminationRequested` in the main thread, so ``finally`` blocks and context managers (the
MLflow run's status, ``results.json``) still run. Ctrl-C (SIGINT) raises ``KeyboardInterrupt``
as Python's own handler does.

Only the first stop signal raises: a terminal's Ctrl-C reaches every process of the foreground
group, and a parent (``mode=cross_validate``) also forwards SIGTERM to its fold sweep, so a
process often gets two; a second one while the first is being cleaned up only logs a warning
(cleanup, such as ending MLflow runs and telling Optuna a trial failed, is not cut short).
Ctrl-\\ (SIGQUIT) still ends the process at once.

`stop_signal` names the signal that stopped the process (``SIGINT``, ``SIGTERM``); `on_stop`
registers cleanup that the sweep's entry point (``unet3d.run.cli``) runs before it logs its one
ERROR line (`run_stop_hooks`).
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


_state: dict[str, Any] = {"depth": 0, "raised": None}


def stop_signal() -> str | None:
    """The name of the signal that stopped this process (``SIGINT``/``SIGTERM``), or None."""
    return _state["raised"]


def _raise_stop(signal_number: int, frame: Any) -> None:
    """SIGTERM / SIGINT handler: raise once; later stop signals let cleanup finish."""
    name = signal.Signals(signal_number).name
    if _state["raised"] is not None:
        logger.warning("%s received again; still cleaning up (Ctrl-\\ quits at once)", name)
        return
    _state["raised"] = name
    if signal_number == signal.SIGINT:
        raise KeyboardInterrupt
    raise TerminationRequested(f"terminated by signal {name}")


def install_termination_handlers() -> Callable[[], None]:
    """Turn SIGTERM into `TerminationRequested` and Ctrl-C into ``KeyboardInterrupt`` (once).

    SIGINT is handled only where Python's own handler was in place (a shell that starts a
    job in the background ignores SIGINT for it: that stays so). Installations nest: the
    outermost one starts a fresh "first signal".

    Returns:
        A function restoring the previous handlers. Outside the main thread (signals can only
        be handled there) nothing is installed and the function is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        logger.debug("Not the main thread: SIGTERM handler not installed")
        return lambda: None
    previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _raise_stop):
        previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    if _state["depth"] == 0:
        _state["raised"] = None
    _state["depth"] += 1
    for number in previous:
        signal.signal(number, _raise_stop)

    def restore() -> None:
        if threading.current_thread() is threading.main_thread():
            _state["depth"] = max(0, _state["depth"] - 1)
            for number, handler in previous.items():
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)

    return restore


#: Cleanup run by `run_stop_hooks`: each returns what it did (a phrase) or None.
_stop_hooks: list[Callable[[], str | None]] = []


def on_stop(hook: Callable[[], str | None]) -> None:
    """Register ``hook`` to run when a stop signal ends the process (`run_stop_hooks`)."""
    _stop_hooks.append(hook)


def run_stop_hooks() -> list[str]:
    """Run (and forget) the registered stop hooks, newest first; the phrases they return.

    A hook that raises is logged and skipped: the others still run.
    """
    done = []
    while _stop_hooks:
        hook = _stop_hooks.pop()
        try:
            phrase = hook()
        except Exception:  # noqa: BLE001 - the other hooks must still run
            logger.exception("cleanup after the stop signal failed")
            continue
        if phrase:
            done.append(phrase)
    return done
