"""The systemd side of ``sd_notify`` for tests: an AF_UNIX datagram socket a child process is told
about through ``$NOTIFY_SOCKET``, and the messages it receives, with the time each arrived."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path


class NotifySocket:
    """Bound at ``path`` (or, with ``abstract``, at ``@name`` in Linux's abstract namespace)."""

    def __init__(self, path: Path | None = None, *, abstract: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind(b"\0" + abstract.encode())
            self.env_value = f"@{abstract}"
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.env_value = str(path)
        #: (monotonic time, message) in arrival order.
        self.messages: list[tuple[float, str]] = []

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = dict(os.environ, NOTIFY_SOCKET=self.env_value)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = data.decode()
        self.messages.append((time.monotonic(), message))
        return message

    def wait_for(self, line: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> str:
        """The first message (received from now on) that has ``line`` as one of its lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                raise AssertionError(f"the process exited before sending {line!r}")
            message = self.receive(min(0.5, max(0.01, deadline - time.monotonic())))
            if message is not None and line in message.splitlines():
                return message
        raise AssertionError(f"no {line!r} within {timeout} s; got {[m for _, m in self.messages]!r}")

    def lines(self, prefix: str) -> list[str]:
        return [line for _, m in self.messages for line in m.splitlines() if line.startswith(prefix)]

    def close(self) -> None:
        self.sock.close()
