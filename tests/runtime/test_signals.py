"""SIGTERM as TerminationRequested in the main thread, and the previous handler restored."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from unet3d.runtime.signals import TerminationRequested, install_termination_handlers


def test_sigterm_raises_once_then_the_previous_handler_is_restored() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    restore = install_termination_handlers()
    try:
        with pytest.raises(TerminationRequested, match="terminated by signal SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in the main thread before this ends
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM only warns: cleanup goes on
        time.sleep(0.1)
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) == previous
    assert issubclass(TerminationRequested, KeyboardInterrupt)


def test_outside_the_main_thread_nothing_is_installed() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    restores = []
    thread = threading.Thread(target=lambda: restores.append(install_termination_handlers()))
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) == previous
    restores[0]()  # a no-op
    assert signal.getsignal(signal.SIGTERM) == previous
