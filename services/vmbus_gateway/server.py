"""The VMBus gateway: one connection per VM channel, frames in, inbox records out, outbox back.

Guest bytes are never trusted: a frame the reader cannot parse becomes a ``MalformedFrame`` input,
a frame it can becomes a ``GuestMessage`` with its raw bytes (the engine decodes and judges), and a
connection that exceeds its violation or rate budget is closed with a logged reason. Host messages
are written in outbox order with the outbox sequence number in the descriptor's trans_id (the
guest ignores it, as Linux ignores host descriptor ids), which is what lets a resumed channel
continue without losing or repeating a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from services.dm_engine.inputs import ChannelClosed, ChannelOpened, GuestMessage, Input, MalformedFrame
from services.dm_protocol import DecodeError, FrameReader, dm_message_bytes, frame
from services.embedded.socket_files import remove_own_socket, remove_stale_socket, socket_identity
from services.event_log.retry import retry_write
from services.event_log.sqlite_log import LogWriteError
from services.vmbus_gateway.backend import GatewayBackend
from services.vmbus_gateway.counters import VM_CONNECTED, GatewayCounters
from services.vmbus_gateway.hello import MAX_HELLO_BYTES, Hello, HelloError, parse_hello

log = logging.getLogger("hvdm.gateway")


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    max_payload: int = 4096
    hello_timeout_s: float = 5.0
    #: A guest sends a status report every second; silence this long means the peer is gone.
    idle_timeout_s: float = 300.0
    violation_budget: int = 1000
    max_frames_per_second: int = 5000


@dataclass(slots=True)
class Connection:
    hello: Hello
    writer: asyncio.StreamWriter
    delivered: int
    frames_in: int = 0
    frames_out: int = 0
    violations: int = 0
    window_start: float = field(default_factory=time.monotonic)
    window_frames: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False


class GatewayServer:
    def __init__(self, backend: GatewayBackend, limits: GatewayLimits | None = None) -> None:
        self.backend = backend
        self.limits = limits or GatewayLimits()
        self.connections: dict[str, Connection] = {}
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._unix_sockets: list[tuple[str, tuple[int, int] | None]] = []
        self.closed_reasons: list[tuple[str, str]] = []
        #: Refused hellos by reason code (``hello.HELLO_REASONS``): ``hvdm_gateway_hello_rejected_total``.
        self.hello_rejected: Counter[str] = Counter()
        #: Accepted connections, other refusals, disconnects, frames: ``hvdm_gateway_*`` (metrics.sources).
        self.counters = GatewayCounters()
        backend.on_outbox(self._outbox_changed)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, unix_path: str | None = None, tcp: tuple[str, int] | None = None) -> None:
        if unix_path:
            remove_stale_socket(unix_path)  # refuses anything but a socket nobody listens on
            server = await asyncio.start_unix_server(self._handle, path=unix_path, limit=MAX_HELLO_BYTES)
            os.chmod(unix_path, 0o600)
            self._servers.append(server)
            self._unix_sockets.append((unix_path, socket_identity(unix_path)))
        if tcp:
            server = await asyncio.start_server(self._handle, tcp[0], tcp[1], limit=MAX_HELLO_BYTES)
            self._servers.append(server)

    @property
    def tcp_port(self) -> int | None:
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    return int(name[1])
        return None

    async def close(self) -> None:
        """Stop accepting and drop connections WITHOUT closing the guests' channels: like a host
        service restart, the channel survives and a guest may resume."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections.values()):
            conn.closing = True
            conn.writer.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers = []
        for path, identity in self._unix_sockets:
            remove_own_socket(path, identity)
        self._unix_sockets = []

    def _outbox_changed(self, vms: set[str]) -> None:
        for vm in vms:
            conn = self.connections.get(vm)
            if conn is not None:
                conn.wake.set()

    # ------------------------------------------------------------------ one connection
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels a connection; ending normally keeps asyncio's stream callback
            # from logging the cancellation as an error.
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, data: dict[str, object]) -> None:
        writer.write((json.dumps(data, separators=(",", ":")) + "\n").encode())
        await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), self.limits.hello_timeout_s)
            hello = parse_hello(line)
        except (TimeoutError, HelloError, ValueError) as e:
            # A ValueError that is not a HelloError is readline's length limit.
            code = e.reason if isinstance(e, HelloError) else "timeout" if isinstance(e, TimeoutError) else "too_long"
            reason = str(e) or "hello timed out"
            self.hello_rejected[code] += 1
            log.warning("event=hello_rejected code=%s reason=%r", code, reason)
            await self._reply(writer, {"ok": False, "error": reason})
            return
        vm = hello.vm
        if vm in self.connections:
            self.counters.refuse(VM_CONNECTED)
            await self._reply(writer, {"ok": False, "error": f"vm {vm} is already connected"})
            return
        backend = self.backend
        if hello.resume_after is None:
            # A new channel: anything still in the outbox belongs to the old one.
            try:
                backend.submit(
                    vm,
                    ChannelOpened(
                        boot_bytes=hello.boot_bytes,
                        maxmem_bytes=hello.maxmem_bytes,
                        hot_add_base_page=hello.hot_add_base_page,
                        status_reports=hello.status_reports,
                        ram=hello.ram_ranges(),
                        reset=hello.reset,
                    ),
                )
            except LogWriteError as exc:
                # Nothing was recorded: refuse the channel and let the guest retry later.
                log.warning("event=hello_refused vm=%s reason=log_unwritable kind=%s", vm, exc.kind)
                await self._reply(writer, {"ok": False, "error": f"event log not writable ({exc.kind}); retry later"})
                return
            delivered = backend.outbox_high_watermark(vm)
            self._save_delivered(vm, delivered)
        else:
            delivered = min(hello.resume_after, backend.outbox_high_watermark(vm))
        conn = Connection(hello=hello, writer=writer, delivered=delivered)
        self.connections[vm] = conn
        self.counters.accepted += 1
        log.info("event=connected vm=%s resume=%s delivered=%d", vm, hello.resume_after is not None, delivered)
        await self._reply(writer, {"ok": True, "vm": vm, "delivered": delivered})
        sender = asyncio.create_task(self._send_loop(conn), name=f"gateway-send-{vm}")
        conn.wake.set()
        reason = "guest closed the connection"
        try:
            reason = await self._receive_loop(reader, conn)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self.connections.pop(vm, None)
            self.counters.frames_in_closed += conn.frames_in
            self.counters.frames_out_closed += conn.frames_out
            if not conn.closing:
                await self._submit(vm, ChannelClosed(reason=reason))
                self.closed_reasons.append((vm, reason))
                self.counters.disconnect(reason)
                log.info("event=disconnected vm=%s reason=%r", vm, reason)

    async def _receive_loop(self, reader: asyncio.StreamReader, conn: Connection) -> str:
        vm = conn.hello.vm
        frames = FrameReader(max_payload=self.limits.max_payload)
        limits = self.limits
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), limits.idle_timeout_s)
            except TimeoutError:
                return f"no data for {limits.idle_timeout_s:.0f} s"
            if not data:
                return "guest closed the connection"
            try:
                batch = frames.feed(data)
                broken: DecodeError | None = None
            except DecodeError as e:
                batch = list(getattr(e, "frames", ()))
                broken = e
            for fr in batch:
                conn.frames_in += 1
                if fr.error is not None:
                    conn.violations += 1
                    await self._submit(vm, MalformedFrame(reason=str(fr.error), raw=fr.payload[:64]))
                else:
                    await self._submit(vm, GuestMessage(raw=dm_message_bytes(fr.payload)))
            if broken is not None:
                await self._submit(vm, MalformedFrame(reason=str(broken.reason)))
                return f"unrecoverable framing error: {broken}"
            if conn.violations > limits.violation_budget:
                return f"violation budget of {limits.violation_budget} exceeded"
            now = time.monotonic()
            if now - conn.window_start >= 1.0:
                conn.window_start, conn.window_frames = now, 0
            conn.window_frames += len(batch)
            if conn.window_frames > limits.max_frames_per_second:
                return f"rate budget of {limits.max_frames_per_second} frames/s exceeded"

    async def _send_loop(self, conn: Connection) -> None:
        vm = conn.hello.vm
        backend = self.backend
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            while rows := backend.read_outbox(vm, conn.delivered, 500):
                for row in rows:
                    conn.writer.write(frame(row.message, trans_id=row.seq))
                await conn.writer.drain()
                conn.delivered = rows[-1].seq
                conn.frames_out += len(rows)
                self._save_delivered(vm, conn.delivered)

    async def _submit(self, vm: str, record: Input) -> None:
        """Hand a guest's input to the log, waiting out a log outage (a full disk) rather than
        dropping it: the guest is not read from meanwhile, so it is held back, not lost."""
        backend = self.backend
        try:
            backend.submit(vm, record)
        except LogWriteError:
            await retry_write(lambda: backend.submit(vm, record), what=f"gateway input vm={vm}")

    def _save_delivered(self, vm: str, seq: int) -> None:
        """Persist the delivery position; during a log outage the connection's own position
        stays authoritative and the next successful save catches up."""
        with contextlib.suppress(LogWriteError):  # counted and logged by the log
            self.backend.set_delivered(vm, seq)
