"""SIGINT and SIGTERM during an evaluation: stop within seconds, losing nothing.

While a run is in progress (on the main thread's event loop), either signal cancels the run:
episodes in flight are dropped (they are not recorded, so a resumed run runs them), every
sandbox is closed, and the file holds every finished episode. Then SIGINT surfaces as
``KeyboardInterrupt`` and SIGTERM is delivered again to the handler that was there before
(by default the process ends with the status a scheduler expects).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from ..sandbox.ownership import install_signal_handlers

__all__ = ["StopSignals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Cancel a task on SIGINT or SIGTERM while inside :meth:`installed`; remember which came."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.received: signal.Signals | None = None

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received is None:
            self.received = sig
            self.task.cancel()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Install the handlers (main thread only; elsewhere a no-op) and restore the old ones after."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        # The sandbox layer's own SIGTERM handler (remove this process's sandboxes, then the old
        # handler) is installed first, so that it is what is restored and re-delivered to.
        install_signal_handlers()
        loop = asyncio.get_running_loop()
        previous: dict[signal.Signals, Any] = {}
        try:
            for sig in _SIGNALS:
                previous[sig] = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal, sig)
            yield self
        finally:
            for sig, handler in previous.items():
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)
                with contextlib.suppress(ValueError, TypeError, OSError):
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def reraise(self) -> None:
        """After the run stopped: SIGINT raises ``KeyboardInterrupt``; SIGTERM goes to the old handler."""
        if self.received == signal.SIGTERM:
            signal.raise_signal(signal.SIGTERM)
        if self.received is not None:
            raise KeyboardInterrupt(f"evaluation stopped by {self.received.name}")
