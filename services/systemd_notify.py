"""Tell systemd how the service is doing: the ``sd_notify`` protocol, spoken directly.

Why by hand: the protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named
by ``$NOTIFY_SOCKET`` (a leading ``@`` names Linux's abstract namespace); a binding to libsystemd
would add a C dependency for a dozen lines. With it the units are ``Type=notify``: systemd starts
the services ordered after hvdm only once ``READY=1`` says hvdm accepts work (sockets bound, log
recovered, metrics serving), shows the ``STATUS=`` line in ``systemctl status``, hears
``STOPPING=1`` when a stop begins, and restarts a service whose work loop stops sending
``WATCHDOG=1`` (``WatchdogSec=``): the pings come from a task on the loop that runs the engine, so
a loop stuck in a call never pings.

What it never does:

* act without being asked: with no ``$NOTIFY_SOCKET`` every call is a no-op, so running by hand,
  in tests or under ``Type=simple`` is unchanged; without ``$WATCHDOG_USEC`` (or with a
  ``$WATCHDOG_PID`` that is not this process) there are no pings;
* block: the socket is non-blocking and a message the peer has no room for is dropped, because a
  stalled peer must not stall the engine (systemd reads its socket promptly);
* crash the service: a ``$NOTIFY_SOCKET`` that does not exist, is not a socket, is too long or is
  not a path at all is logged once, as a warning, and the service carries on;
* speak for its children: the variables are removed from ``os.environ`` once read (libsystemd's
  ``unset_environment``), so the processes ``hvdm run --broker`` starts do not claim to be the
  service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, MutableMapping

log = logging.getLogger("hvdm.systemd")

#: Environment variables of the protocol (``man sd_notify``, ``man sd_watchdog_enabled``).
NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
#: ``sun_path`` holds 108 bytes on Linux, the terminating NUL of a path included.
MAX_ADDRESS_BYTES = 107
#: A ``STATUS=`` line longer than this is cut (systemctl shows one line).
MAX_STATUS_CHARS = 200
#: Seconds between two ``STATUS=`` refreshes when the status text changes.
STATUS_EVERY_S = 10.0


def notify_address(text: str) -> str | bytes:
    """The socket address ``$NOTIFY_SOCKET`` names: an absolute path, or ``@name`` for the
    abstract namespace (a leading NUL byte); ``ValueError`` for anything else.

    >>> notify_address("/run/systemd/notify"), notify_address("@hvdm/notify")
    ('/run/systemd/notify', b'\\x00hvdm/notify')
    """
    if "\0" in text:
        raise ValueError("NOTIFY_SOCKET contains a NUL byte")
    if text.startswith("@") and len(text) > 1:
        address = b"\0" + text[1:].encode("utf-8", "surrogateescape")
        if len(address) > MAX_ADDRESS_BYTES + 1:
            raise ValueError("NOTIFY_SOCKET is longer than a socket address")
        return address
    if text.startswith("/"):
        if len(os.fsencode(text)) > MAX_ADDRESS_BYTES:
            raise ValueError("NOTIFY_SOCKET is longer than a socket address")
        return text
    raise ValueError("NOTIFY_SOCKET must be an absolute path or @abstract-name")


#: systemd's ``USEC_INFINITY``: a watchdog that never fires.
USEC_INFINITY = 2**64 - 1


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC`` (systemd's advice),
    or None when the watchdog is off, malformed, or meant for another process.

    >>> watchdog_interval({"WATCHDOG_USEC": "4000000"}, 7), watchdog_interval({"WATCHDOG_USEC": "x"}, 7)
    (2.0, None)
    >>> watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "8"}, 7) is None
    True
    """
    usec = environ.get(WATCHDOG_USEC, "")
    # systemd writes a decimal usec_t (64 bits, its maximum meaning infinity). Anything else -- other
    # digits than ASCII ones, thousands of them (int() refuses those: it must not stop the service) --
    # is malformed.
    if not (usec.isascii() and usec.isdigit()) or len(usec) > 20:
        return None
    value = int(usec)
    if not 0 < value < USEC_INFINITY:
        return None
    owner = environ.get(WATCHDOG_PID)
    if owner is not None and owner != str(pid):
        return None
    return value / 2e6


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_STATUS_CHARS]


class Notifier:
    """The service's line to systemd; every method is a no-op when systemd did not ask.

    Build it with :meth:`from_environ` once per process, early (before any child process starts).
    """

    def __init__(self, address: str | bytes | None, watchdog_seconds: float | None = None) -> None:
        self.address = address
        #: Seconds between watchdog pings (half of ``WATCHDOG_USEC``), None when not asked for.
        self.watchdog_seconds = watchdog_seconds if address is not None else None
        self._sock: socket.socket | None = None
        self._warned = False
        self.sent: list[str] = []  # messages sent, for the log and tests (the last few)
        #: Messages not sent: the socket is unusable (``failures``), or the peer's queue was full.
        self.failures = 0
        self.dropped = 0
        self.is_ready = False
        self.is_stopping = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> Notifier:
        """The notifier ``environ`` (default ``os.environ``) asks for; the variables are removed
        from it when ``unset`` so child processes do not inherit them."""
        env = os.environ if environ is None else environ
        raw = env.get(NOTIFY_SOCKET)
        interval = watchdog_interval(env, os.getpid())
        if unset:
            for name in (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID):
                env.pop(name, None)
        if not raw:
            return cls(None)
        try:
            address: str | bytes = notify_address(raw)
        except ValueError as e:
            notifier = cls(None)
            notifier._warn(f"{e}: {raw[:120]!r}")
            return notifier
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    # ------------------------------------------------------------------ the messages
    def send(self, *lines: str) -> bool:
        """One datagram of ``lines``; True when it was handed to the kernel."""
        if self.address is None:
            return False
        message = "\n".join(lines) + "\n"
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except BlockingIOError:
            # The peer's queue is full: this message is dropped (the next ping or status follows).
            self.dropped += 1
            return False
        except (OSError, ValueError) as e:
            self.failures += 1
            self._warn(f"cannot notify systemd at {self._printable()}: {e}")
            return False
        self.sent = [*self.sent[-31:], message]
        return True

    def ready(self, status: str) -> None:
        """The service accepts work now (say so once everything it serves is bound)."""
        if self.is_ready:
            return
        self.is_ready = True
        self.send("READY=1", f"STATUS={_one_line(status)}")
        log.info("event=systemd_ready notify=%s", self.enabled)

    def status(self, text: str) -> None:
        self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str = "stopping") -> None:
        """A stop has begun (a signal, the end of a run): systemd waits for the exit from now on."""
        if self.is_stopping:
            return
        self.is_stopping = True
        self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    async def keep_alive(
        self,
        status: Callable[[], str] | None = None,
        *,
        healthy: Callable[[], bool] | None = None,
        status_every: float = STATUS_EVERY_S,
    ) -> None:
        """Run on the loop that does the service's work: ``WATCHDOG=1`` every ``watchdog_seconds``
        while ``healthy()`` holds (a loop that is stuck or failed stops pinging, and systemd
        restarts the service), and ``STATUS=`` from ``status()`` when it changes, at most every
        ``status_every`` seconds. Returns at once when systemd asked for neither."""
        if self.address is None or (self.watchdog_seconds is None and status is None):
            return
        period = min(self.watchdog_seconds or status_every, status_every)
        loop = asyncio.get_running_loop()
        last_status, last_status_at = "", -status_every
        while True:
            ok = True
            if healthy is not None:
                try:
                    ok = bool(healthy())
                except Exception:
                    ok = False
            if self.watchdog_seconds is not None and ok and not self.is_stopping:
                self.watchdog()
            now = loop.time()
            if status is not None and not self.is_stopping and now - last_status_at >= status_every:
                with contextlib.suppress(Exception):
                    text = _one_line(status())
                    if text != last_status:
                        self.status(text)
                        last_status = text
                    last_status_at = now
            await asyncio.sleep(period)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------ faults
    def _printable(self) -> str:
        a = self.address
        return "@" + a[1:].decode("utf-8", "replace") if isinstance(a, bytes) else str(a)

    def _warn(self, text: str) -> None:
        """Logged once per process: a misconfigured socket must not fill the log every ping."""
        if self._warned:
            return
        self._warned = True
        log.warning("event=systemd_notify_failed reason=%r (further failures are not logged)", text)
