"""SIGINT and SIGTERM both ask a running service to stop cleanly.

Why both: an operator's Ctrl-C and systemd's (or Docker's, or a test's) SIGTERM mean the same
thing, "stop now", and both must leave the same log behind: inputs processed, channels closed,
sockets removed, summary printed. Without a handler SIGTERM would kill the process on the spot.
The handlers only set an event; the service's own loop notices it and runs its normal shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Install with ``install()`` on the running loop; ``event`` is set by the first signal."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        #: Name of the signal that asked to stop (``SIGTERM``), or None.
        self.received: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Called on the loop with the signal's name when the first stop request arrives (e.g. to
        #: tell systemd ``STOPPING=1`` at once, before the shutdown's own work).
        self.on_stop: list[Callable[[str], None]] = []

    def install(self) -> StopSignals:
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    def _on_signal(self, sig: signal.Signals) -> None:
        first = self.received is None
        if first:
            self.received = sig.name
        self.event.set()
        if first:
            for callback in self.on_stop:
                callback(sig.name)

    def uninstall(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        for sig in SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.remove_signal_handler(sig)
        self._loop = None

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a stop request; True if one came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        return self.event.is_set()
