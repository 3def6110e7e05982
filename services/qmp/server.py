"""One QMP server socket per VM, opened and closed as VMs come and go in the engine's projection.

The sockets are a projection like the metrics: a listener on the engine's committed batches
notices new VMs (a VM exists once its first input is processed), turns the batch's events into
QMP events (``BALLOON_CHANGE``, ``HV_BALLOON_STATUS_REPORT``, ``HV_BALLOON_MEMORY_BACKEND_UNUSED``)
and fires the rate limiters with the service's clock. Commands go the other way: into the inbox
through ``service.submit``, waiting for the engine to process them, so every change an operator
makes is in the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..dm_engine import events as ev
from ..dm_engine import inputs as inp
from ..dm_engine.state import VmState
from ..dm_engine.step import Processed
from ..event_log.sqlite_log import LogWriteError
from ..units import PAGE_SHIFT
from .commands import COMMANDS, execute
from .paths import MAX_SOCKET_PATH, ensure_private_dir, remove_stale_socket, socket_path
from .protocol import (
    COMMAND_NOT_FOUND,
    JsonSplitter,
    QmpError,
    Request,
    encode,
    error_reply,
    event,
    generic,
    greeting,
    parse_request,
    reply,
)
from .ratelimit import RateLimiter

log = logging.getLogger("hvdm.qmp")

#: QEMU's monitor throttles BALLOON_CHANGE and HV_BALLOON_STATUS_REPORT to one per second.
RATE_LIMIT_SECONDS = 1.0
#: Largest request; QMP commands are tiny, so anything bigger is a broken or hostile client.
MAX_REQUEST = 1 << 20
READ_CHUNK = 1 << 16
#: A client that stops reading is dropped once this much output is queued for it.
MAX_QUEUED_OUTPUT = 4 << 20
#: How long a forgotten VM's open sessions may take to finish answering before they are dropped.
FORGET_GRACE_SECONDS = 1.0


class _Runner(Protocol):
    states: dict[str, VmState]
    listeners: list[Callable[[Sequence[Processed]], None]]


class QmpService(Protocol):
    """The part of ``EmbeddedService`` the QMP servers use."""

    @property
    def runner(self) -> _Runner: ...

    def now_seconds(self) -> float: ...

    def submit(self, vm: str, record: inp.Input) -> int: ...

    async def wait_processed(self, pos: int, timeout: float = 5.0) -> None: ...

    def add_listener(self, cb: Callable[[Sequence[Processed]], None]) -> None: ...


class _Session:
    """One client connection: greeting, capabilities negotiation, then commands in order."""

    def __init__(self, monitor: VmMonitor, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.monitor = monitor
        self.reader = reader
        self.writer = writer
        self.negotiated = False

    def send_error(self, error: QmpError, request: Request | None = None) -> None:
        """An error reply, counted (``hvdm_qmp_errors_total``) so hostile or broken clients show."""
        self.monitor.count_error(error, None if request is None else request.command)
        self.send(error_reply(error, request))

    def send(self, message: dict[str, Any]) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_QUEUED_OUTPUT:
            log.warning("qmp client not reading; dropping it vm=%s", self.monitor.vm)
            self.writer.transport.abort()
            return
        self.writer.write(encode(message))

    async def run(self) -> None:
        self.send(greeting())
        splitter = JsonSplitter(MAX_REQUEST)
        try:
            while True:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                try:
                    texts = splitter.feed(data)
                except OverflowError:
                    self.send_error(generic("JSON parse error, request too large"))
                    break
                for text in texts:
                    await self._handle(text)
                await self.writer.drain()
        except ConnectionError:
            pass
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _handle(self, line: bytes) -> None:
        try:
            request = parse_request(line)
        except QmpError as e:
            self.send_error(e)
            return
        if not self.negotiated:
            self._negotiate(request)
            return
        if request.command == "qmp_capabilities":
            self.send_error(
                QmpError(COMMAND_NOT_FOUND, "Capabilities negotiation is already complete, command ignored"),
                request,
            )
            return
        counts = self.monitor._servers.command_counts
        # Only known command names become label values: a client must not create series at will.
        name = request.command if request.command in COMMANDS else "unknown"
        try:
            result = await execute(self.monitor, request.command, request.arguments)
        except QmpError as e:
            counts[name, e.error_class] = counts.get((name, e.error_class), 0) + 1
            self.send_error(e, request)
        except Exception as e:  # a bug must not kill the connection, and must be visible
            counts[name, "internal"] = counts.get((name, "internal"), 0) + 1
            log.exception("qmp command failed vm=%s command=%s", self.monitor.vm, request.command)
            self.send_error(generic(f"internal error: {e}"), request)
        else:
            counts[name, "ok"] = counts.get((name, "ok"), 0) + 1
            self.send(reply(result, request))

    def _negotiate(self, request: Request) -> None:
        if request.command != "qmp_capabilities":
            self.send_error(
                QmpError(COMMAND_NOT_FOUND, "Expecting capabilities negotiation with 'qmp_capabilities'"),
                request,
            )
            return
        extra = [k for k in request.arguments if k != "enable"]
        enable = request.arguments.get("enable", [])
        if extra:
            self.send_error(generic(f"Parameter '{extra[0]}' is unexpected"), request)
        elif not isinstance(enable, list):
            self.send_error(generic("Invalid parameter type for 'enable', expected: array"), request)
        elif enable:
            self.send_error(generic(f"Capability '{enable[0]}' not available"), request)
        else:
            self.negotiated = True
            self.send(reply({}, request))


class VmMonitor:
    """One VM's QMP endpoint: its socket, its clients, its event throttles."""

    def __init__(self, servers: QmpServers, vm: str, actual: int) -> None:
        self.vm = vm
        self._servers = servers
        self.sessions: set[_Session] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.AbstractServer | None = None
        self.path: Path | None = None
        self.last_actual = actual
        self.balloon_change: RateLimiter[dict[str, Any]] = RateLimiter(servers.rate_limit_seconds)
        self.status_report: RateLimiter[dict[str, Any]] = RateLimiter(servers.rate_limit_seconds)

    def count_error(self, error: QmpError, command: str | None) -> None:
        self._servers.count_error(error, command)

    # CommandContext
    def state(self) -> VmState | None:
        return self._servers.service.runner.states.get(self.vm)

    async def submit(self, record: inp.Input) -> None:
        await self._servers.submit(self.vm, record)

    # events
    def emit(self, name: str, data: dict[str, Any]) -> None:
        """Send one event to every negotiated client (QEMU sends none before negotiation)."""
        message = event(name, data)
        for session in self.sessions:
            if session.negotiated:
                session.send(message)

    def poll(self, now: float) -> None:
        for data in self.balloon_change.poll(now):
            self.emit("BALLOON_CHANGE", data)
        for data in self.status_report.poll(now):
            self.emit("HV_BALLOON_STATUS_REPORT", data)

    @property
    def armed(self) -> bool:
        return self.balloon_change.armed or self.status_report.armed

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self, reader, writer)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        self.sessions.add(session)
        try:
            await session.run()
        except asyncio.CancelledError:
            # Only close() (or loop shutdown) cancels a connection. Ending normally keeps
            # asyncio's stream callback from reporting the cancellation as an error.
            pass
        finally:
            self.sessions.discard(session)
            if task is not None:
                self.tasks.discard(task)

    async def close(self, grace: float = 0.0) -> None:
        """Stop listening, remove the socket file, then drop the clients; ``grace`` seconds let
        a session finish what it is answering (``x-hvdm-forget`` closes the socket it came on)."""
        if self.server is not None:
            self.server.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None  # a VM back under the same id may already listen at this path
        if grace > 0 and self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.path = None


class QmpServers:
    """Every VM's QMP socket under one private directory; see :func:`start_qmp_servers`."""

    def __init__(
        self,
        service: QmpService,
        qmp_dir: str | Path,
        *,
        clock: Callable[[], float] | None = None,
        rate_limit_seconds: float = RATE_LIMIT_SECONDS,
        command_timeout: float = 5.0,
    ) -> None:
        self.service = service
        self.qmp_dir = Path(qmp_dir)
        self.clock = clock if clock is not None else service.now_seconds
        self.rate_limit_seconds = rate_limit_seconds
        self.command_timeout = command_timeout
        self.monitors: dict[str, VmMonitor] = {}
        self._opening: dict[str, asyncio.Task[None]] = {}
        self._armed: set[VmMonitor] = set()
        self._watch: dict[int, list[ev.CommandRejected]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        #: (command, result) -> count, result "ok" or the QMP error class; hvdm_qmp_commands_total.
        self.command_counts: dict[tuple[str, str], int] = {}
        #: Error replies by (error class, command): ``hvdm_qmp_errors_total``. Commands hvdm does not
        #: know are counted as "unknown" and unparsable requests as "none", so a client cannot grow
        #: the label set.
        self.errors: Counter[tuple[str, str]] = Counter()

    def count_error(self, error: QmpError, command: str | None) -> None:
        if command is None:
            label = "none"
        elif command in COMMANDS or command == "qmp_capabilities":
            label = command
        else:
            label = "unknown"
        self.errors[(error.error_class, label)] += 1

    async def start(self) -> None:
        ensure_private_dir(self.qmp_dir)
        for vm, state in self.service.runner.states.items():
            self._add(vm, state.current_pages << PAGE_SHIFT)
        self.service.add_listener(self._on_batch)
        await self.sync()

    # ------------------------------------------------------------------ VMs appearing and going
    def _add(self, vm: str, actual: int) -> VmMonitor:
        monitor = self.monitors[vm] = VmMonitor(self, vm, actual)
        self._opening[vm] = asyncio.get_running_loop().create_task(self._open(monitor))
        return monitor

    async def _open(self, monitor: VmMonitor) -> None:
        path = socket_path(self.qmp_dir, monitor.vm)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            log.warning("qmp socket path too long; VM has no QMP socket vm=%s path=%s", monitor.vm, path)
            return
        try:
            remove_stale_socket(path)
            server = await asyncio.start_unix_server(monitor.serve, path=str(path), limit=READ_CHUNK)
            path.chmod(0o600)
        except OSError:
            log.exception("qmp socket failed vm=%s path=%s", monitor.vm, path)
            return
        monitor.server, monitor.path = server, path
        log.info("qmp socket open vm=%s path=%s", monitor.vm, path)

    def _reconcile(self) -> None:
        states = self.service.runner.states
        for vm in [vm for vm in self.monitors if vm not in states]:
            monitor = self.monitors.pop(vm)
            self._armed.discard(monitor)
            opening = self._opening.pop(vm, None)
            if opening is not None:
                opening.cancel()
            task = asyncio.get_running_loop().create_task(monitor.close(grace=FORGET_GRACE_SECONDS))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            log.info("qmp socket closed; VM gone vm=%s", vm)
        for vm, state in states.items():
            if vm not in self.monitors:
                self._add(vm, state.current_pages << PAGE_SHIFT)

    async def sync(self) -> None:
        """Bring the sockets in line with the engine's VMs now and wait until they are listening."""
        self._reconcile()
        opening = list(self._opening.values())
        self._opening.clear()
        for task in opening:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ the projection
    def _on_batch(self, batch: Sequence[Processed]) -> None:
        """Runs on the engine's loop after each committed batch: cheap, no awaiting.

        The batch is already committed, so a failure here must not reach the engine (it would
        treat it as a failed batch); it is logged and the projection carries on."""
        if self._closed:
            return
        try:
            self._project(batch)
        except Exception:
            log.exception("qmp projection failed for a batch of %d records", len(batch))

    def _project(self, batch: Sequence[Processed]) -> None:
        now = self.clock()
        watch = self._watch
        for p in batch:
            monitor = self.monitors.get(p.vm)
            if monitor is None:
                if p.vm not in self.service.runner.states:
                    continue  # forgotten in this batch: it gets no socket
                monitor = self._add(p.vm, 0)  # a new VM starts from nothing
            if watch and p.inbox_pos in watch:
                watch[p.inbox_pos].extend(e for e in p.events if isinstance(e, ev.CommandRejected))
            for e in p.events:
                if isinstance(e, ev.StatusReported):
                    if not p.state.status_reports_enabled:
                        # status-report=off: QEMU's hv_balloon_handle_status_report returns before
                        # it stores the report or sends the event.
                        continue
                    data = {
                        "committed": e.committed_pages << PAGE_SHIFT,
                        "available": e.available_pages << PAGE_SHIFT,
                    }
                    for item in monitor.status_report.offer(data, now):
                        monitor.emit("HV_BALLOON_STATUS_REPORT", item)
                    self._armed.add(monitor)
                elif isinstance(e, ev.MemoryBackendUnused):
                    monitor.emit("HV_BALLOON_MEMORY_BACKEND_UNUSED", {"id": e.backend_id})
            actual = p.state.current_pages << PAGE_SHIFT
            if actual != monitor.last_actual:
                monitor.last_actual = actual
                for item in monitor.balloon_change.offer({"actual": actual}, now):
                    monitor.emit("BALLOON_CHANGE", item)
                self._armed.add(monitor)
        if len(self.monitors) != len(self.service.runner.states):
            self._reconcile()
        self.poll(now)

    def poll(self, now: float | None = None) -> None:
        """Fire due rate-limit timers (called after every batch; the engine ticks keep it going)."""
        if now is None:
            now = self.clock()
        for monitor in list(self._armed):
            monitor.poll(now)
            if not monitor.armed:
                self._armed.discard(monitor)

    async def submit(self, vm: str, record: inp.Input) -> None:
        """Inbox append + wait; a ``CommandRejected`` the engine recorded becomes the QMP error."""
        try:
            pos = self.service.submit(vm, record)
        except LogWriteError as exc:
            raise generic(f"event log not writable ({exc.kind}); command not recorded, retry later") from None
        rejected: list[ev.CommandRejected] = []
        self._watch[pos] = rejected
        try:
            await self.service.wait_processed(pos, self.command_timeout)
        except TimeoutError:
            raise generic(
                f"command recorded at inbox position {pos} but not processed within "
                f"{self.command_timeout:g} s; check query-balloon later"
            ) from None
        finally:
            self._watch.pop(pos, None)
        if rejected:
            raise QmpError(rejected[0].error_class, rejected[0].desc)

    async def close(self) -> None:
        """Stop listening, drop every client and remove every socket file."""
        self._closed = True
        with contextlib.suppress(ValueError):
            self.service.runner.listeners.remove(self._on_batch)
        for task in self._opening.values():
            task.cancel()
        for task in self._opening.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._opening.clear()
        monitors = list(self.monitors.values())
        self.monitors.clear()
        self._armed.clear()
        for monitor in monitors:
            await monitor.close()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def start_qmp_servers(
    service: QmpService,
    qmp_dir: str | Path,
    *,
    clock: Callable[[], float] | None = None,
    rate_limit_seconds: float = RATE_LIMIT_SECONDS,
) -> QmpServers:
    """Serve ``qmp_dir/<vm>.sock`` (0600, directory 0700) for every VM the engine knows, now and
    later. ``clock`` (default: ``service.now_seconds``) drives the event rate limits."""
    servers = QmpServers(service, qmp_dir, clock=clock, rate_limit_seconds=rate_limit_seconds)
    await servers.start()
    return servers
