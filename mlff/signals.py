"""A clean stop on SIGINT/SIGTERM, shared by MD, relaxation and training loops.

While a :class:`GracefulStop` is active, the first SIGINT or SIGTERM only records its name; the
loop polls :attr:`GracefulStop.signal_name`, finishes its step, writes its files and stops. A second
SIGINT (an impatient Ctrl-C) raises ``KeyboardInterrupt`` at once. Handlers are installed only in
the main thread (Python allows no other); elsewhere the object records nothing.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = ("SIGINT", "SIGTERM")


class GracefulStop:
    """Context manager: ``with GracefulStop() as stop: ... if stop.signal_name: break``."""

    def __init__(self) -> None:
        self.signal_name: str | None = None  # "SIGINT" or "SIGTERM" once one has arrived
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for name in SIGNALS:
                signum = getattr(signal, name)
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
