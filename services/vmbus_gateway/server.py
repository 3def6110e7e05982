"""The VMBus gateway: one connection per VM channel, frames in, inbox records out, outbox back.

Peers are hostile until authenticated (``auth``): a UNIX peer by its uid, a TCP peer by its TLS
client certificate or its per-VM token, and a hello may claim only a VM its peer is entitled to.
A connected VM cannot be taken over, a channel is resumed only by the peer that held it, and
every refusal is counted by reason (``refusals``) and logged with the VM and the peer.

Guest bytes are never trusted: a frame the reader cannot parse becomes a ``MalformedFrame`` input,
a frame it can becomes a ``GuestMessage`` with its raw bytes (the engine decodes and judges), and
a connection that exceeds its violation budget (malformed frames and undecodable DM messages) or
its rate budget is closed with a logged reason. Status reports above one per ``status_interval_s``
are coalesced: the newest waits and is stored when the interval has passed, the ones it replaced
are counted, not stored. Host messages are written in outbox order, each descriptor carrying its
DM message's trans_id as QEMU's does; a channel's messages have consecutive outbox sequence
numbers, so a resumed channel continues from the count the guest received.

No idle timeout: a guest with status reports off, or a paused VM, may stay silent for hours. The
optional keepalive is TCP's own (the peer's kernel answers), which a silent guest cannot fail.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..dm_engine.inputs import ChannelClosed, ChannelOpened, GuestMessage, Input, MalformedFrame
from ..dm_protocol import DecodeError, FrameReader, StatusReport, decode, dm_message_bytes, dm_trans_id, frame
from ..event_log.retry import retry_write
from ..event_log.sqlite_log import LogWriteError
from ..socket_files import remove_own_socket, remove_stale_socket, socket_identity
from .auth import GatewayAuth, PeerIdentity, certificate_names, peer_uid, token_matches
from .backend import GatewayBackend
from .counters import VM_CONNECTED, GatewayCounters
from .hello import MAX_HELLO_BYTES, Hello, HelloError, parse_hello

log = logging.getLogger("hvdm.gateway")

#: Refusals of a hello that does not parse: counted by code in ``hello_rejected``.
_HELLO_REFUSALS = frozenset({"hello_invalid", "hello_timeout"})
#: accept() failures that mean "out of descriptors or memory": back off, the server keeps going.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    max_payload: int = 4096
    hello_timeout_s: float = 5.0
    violation_budget: int = 1000
    max_frames_per_second: int = 5000
    #: At most one status report per VM is stored per interval (QEMU rate-limits its status event
    #: to one a second); the newest of the others is stored when the interval ends.
    status_interval_s: float = 1.0
    #: New VM ids (unknown to the log) one peer identity may create while this gateway runs.
    max_new_vms_per_peer: int = 10_000
    #: New VM ids all peers together may create per ``new_vm_window_s``.
    max_new_vms_per_window: int = 2_000
    new_vm_window_s: float = 60.0
    #: TCP keepalive after this many idle seconds (None: off). Answered by the peer's kernel.
    keepalive_s: float | None = None
    accept_backoff_max_s: float = 1.0


@dataclass(slots=True)
class Connection:
    hello: Hello
    writer: asyncio.StreamWriter
    delivered: int
    peer: str = ""
    frames_in: int = 0
    frames_out: int = 0
    violations: int = 0
    #: Status reports received but not stored (a newer one replaced them).
    coalesced: int = 0
    window_start: float = field(default_factory=time.monotonic)
    window_frames: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False
    status_stored_at: float = -math.inf
    pending_status: bytes | None = None
    status_timer: asyncio.TimerHandle | None = None


class Refused(Exception):
    """A peer or hello the gateway will not serve; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class GatewayServer:
    def __init__(
        self,
        backend: GatewayBackend,
        limits: GatewayLimits | None = None,
        auth: GatewayAuth | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.limits = limits or GatewayLimits()
        self.auth = auth or GatewayAuth()
        self.clock = clock
        self.connections: dict[str, Connection] = {}
        self.closed_reasons: list[tuple[str, str]] = []
        #: accept() failures by errno name (``hvdm_gateway_accept_errors_total{errno}``).
        self.accept_errors: collections.Counter[str] = collections.Counter()
        self.status_coalesced = 0
        self.undecodable_messages = 0
        #: vm -> identity of the peer that last held its channel (resume is for that peer only).
        self.owners: dict[str, str] = {}
        self._seen_vms: set[str] = set()
        self._new_vms_by_peer: collections.Counter[str] = collections.Counter()
        self._new_vm_times: collections.deque[float] = collections.deque()
        self._listeners: list[socket.socket] = []
        #: (path, identity) of the UNIX sockets we bound, removed on close if still ours.
        self._unix_sockets: list[tuple[str, tuple[int, int] | None]] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        #: Refused hellos by reason code (``hello.HELLO_REASONS``): ``hvdm_gateway_hello_rejected_total``.
        self.hello_rejected: collections.Counter[str] = collections.Counter()
        #: Accepted connections, refusals, disconnects, frames: ``hvdm_gateway_*`` (metrics.sources).
        self.counters = GatewayCounters()
        backend.on_outbox(self._outbox_changed)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, unix_path: str | None = None, tcp: tuple[str, int] | None = None) -> None:
        """Listen; a TCP listener without client authentication (or ``insecure``) is refused."""
        if tcp:
            self.auth.check_tcp()
        if unix_path:
            remove_stale_socket(unix_path)  # refuses anything but a socket nobody listens on
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(unix_path)
                # Peer credentials are checked on every connection as well, so the instant between
                # bind and chmod (umask permissions) does not let anyone in.
                os.chmod(unix_path, self.auth.socket_mode)
                sock.listen(1024)
            except OSError:
                sock.close()
                raise
            self._unix_sockets.append((unix_path, socket_identity(unix_path)))
            self._listen(sock, "unix")
        if tcp:
            self._listen(socket.create_server(tcp, backlog=1024), "tcp")

    def _listen(self, sock: socket.socket, kind: str) -> None:
        sock.setblocking(False)
        self._listeners.append(sock)
        self._acceptors.append(asyncio.create_task(self._accept_loop(sock, kind), name=f"gateway-accept-{kind}"))

    @property
    def tcp_port(self) -> int | None:
        for sock in self._listeners:
            name = sock.getsockname()
            if isinstance(name, tuple):
                return int(name[1])
        return None

    async def close(self) -> None:
        """Stop accepting and drop connections WITHOUT closing the guests' channels: like a host
        service restart, the channel survives and a guest may resume."""
        for task in self._acceptors:
            task.cancel()
        for task in self._acceptors:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._acceptors = []
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        for path, identity in self._unix_sockets:
            remove_own_socket(path, identity)
        self._unix_sockets = []
        for conn in list(self.connections.values()):
            conn.closing = True
            conn.writer.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _outbox_changed(self, vms: set[str]) -> None:
        for vm in vms:
            conn = self.connections.get(vm)
            if conn is not None:
                conn.wake.set()

    # ------------------------------------------------------------------ accepting
    async def _accept_loop(self, listener: socket.socket, kind: str) -> None:
        """Accept forever; running out of descriptors backs off and is counted, never fatal."""
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            try:
                sock, _addr = await loop.sock_accept(listener)
            except OSError as e:
                name = errno.errorcode.get(e.errno or 0, "OSError")
                self.accept_errors[name] += 1
                if e.errno in _RESOURCE_ERRNOS:
                    backoff = min(self.limits.accept_backoff_max_s, max(0.01, backoff * 2))
                    log.warning("event=accept_failed listener=%s errno=%s backoff_s=%.2f", kind, name, backoff)
                    await asyncio.sleep(backoff)
                else:
                    log.warning("event=accept_failed listener=%s errno=%s", kind, name)
                continue
            backoff = 0.0
            task = asyncio.create_task(self._handle(sock, kind))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, sock: socket.socket, kind: str) -> None:
        writer: asyncio.StreamWriter | None = None
        peer = kind
        try:
            if kind == "unix":
                uid = peer_uid(sock)
                peer = f"uid:{uid}"
                reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_HELLO_BYTES)
                identity = PeerIdentity(peer)
                if uid is None or uid not in self.auth.allowed_uids:
                    # Refused whatever it says; its hello is read (bounded) only to log the VM it
                    # claimed and so that closing does not reset the connection before the answer.
                    identity = PeerIdentity(peer, frozenset(), refusal="uid_not_allowed")
            else:
                host = _host_of(sock)
                peer = f"tcp:{host}"
                self._keepalive(sock)
                reader, writer = await self._tcp_streams(sock)
                identity = self._tcp_identity(writer, host)
                peer = identity.name
            await self._serve(reader, writer, identity)
        except Refused as r:
            self._refuse(r.reason, str(r), vm=None, peer=peer)
            if writer is not None:
                with contextlib.suppress(Exception):
                    await self._reply(writer, {"ok": False, "error": str(r), "reason": r.reason})
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()

    def _keepalive(self, sock: socket.socket) -> None:
        idle = self.limits.keepalive_s
        if idle is None:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        seconds = max(1, math.ceil(idle))
        for name, value in (("TCP_KEEPIDLE", seconds), ("TCP_KEEPINTVL", max(1, seconds // 3)), ("TCP_KEEPCNT", 3)):
            opt = getattr(socket, name, None)
            if opt is not None:
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)

    async def _tcp_streams(self, sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Streams over an accepted TCP socket, after the server-side TLS handshake if configured
        (done here rather than by the listener so that a failed handshake is counted)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_HELLO_BYTES, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        tls = self.auth.tls
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=tls,
                ssl_handshake_timeout=self.auth.tls_handshake_timeout_s if tls is not None else None,
            )
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as e:
            raise Refused("tls_handshake", f"TLS handshake failed: {e}") from None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    def _tcp_identity(self, writer: asyncio.StreamWriter, host: str) -> PeerIdentity:
        auth = self.auth
        if auth.client_certs:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            names = certificate_names(writer.get_extra_info("peercert"))
            if not der or not names:
                raise Refused("tls_handshake", "the client certificate names no VM")
            fingerprint = hashlib.sha256(der).hexdigest()[:16]
            return PeerIdentity(f"cert:{min(names)}/{fingerprint}", names)
        if auth.token_secret is not None:
            return PeerIdentity(f"tcp:{host}", frozenset())
        return PeerIdentity(f"tcp:{host}", None)  # --insecure

    @property
    def refusals(self) -> dict[str, int]:
        """Refusals by reason, except invalid hellos (``hello_rejected`` counts those by code);
        both are ``hvdm_gateway_refusals_total{reason}``."""
        return self.counters.refused

    def _refuse(self, reason: str, detail: str, *, vm: str | None, peer: str) -> None:
        if reason not in _HELLO_REFUSALS:
            self.counters.refuse(reason)
        log.warning("event=refused reason=%s vm=%s peer=%s detail=%r", reason, vm or "-", peer, detail)

    async def _reply(self, writer: asyncio.StreamWriter, data: dict[str, object]) -> None:
        writer.write((json.dumps(data, separators=(",", ":")) + "\n").encode())
        await writer.drain()

    # ------------------------------------------------------------------ who may claim a VM
    def _authorize(self, identity: PeerIdentity, hello: Hello) -> str:
        """The identity that holds the channel, or ``Refused``: a VM is claimed only by an entitled
        peer, never while connected, and resumed only by the peer that held it."""
        vm = hello.vm
        holder = identity.name
        if not identity.entitled(vm):
            secret = self.auth.token_secret
            if secret is None or hello.token is None:
                raise Refused("not_entitled", f"{identity.name} may not speak for {vm}")
            if not token_matches(secret, vm, hello.token):
                raise Refused("token_invalid", f"wrong token for {vm}")
            holder = f"token:{vm}"
        if vm in self.connections:
            raise Refused(VM_CONNECTED, f"vm {vm} is already connected")
        known = vm in self._seen_vms or self.backend.known_vm(vm)
        if hello.resume_after is not None:
            owner = self.owners.get(vm)
            stored = self.backend.owner(vm)
            if (owner is not None and owner != holder) or (stored and stored != identity_digest(holder)):
                raise Refused("resume_other_peer", f"vm {vm}'s channel belongs to another peer")
            if not known:
                raise Refused("resume_unknown_vm", f"vm {vm} has no channel to resume")
        elif not known:
            self._admit_new_vm(identity.name, vm)
        return holder

    def _admit_new_vm(self, peer: str, vm: str) -> None:
        limits = self.limits
        if self._new_vms_by_peer[peer] >= limits.max_new_vms_per_peer:
            raise Refused("vm_limit_peer", f"{peer} already created {limits.max_new_vms_per_peer} VMs")
        now = self.clock()
        times = self._new_vm_times
        while times and now - times[0] >= limits.new_vm_window_s:
            times.popleft()
        if len(times) >= limits.max_new_vms_per_window:
            raise Refused(
                "vm_limit_rate", f"more than {limits.max_new_vms_per_window} new VMs in {limits.new_vm_window_s:g} s"
            )
        times.append(now)
        self._new_vms_by_peer[peer] += 1

    # ------------------------------------------------------------------ one connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: PeerIdentity) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), self.limits.hello_timeout_s)
        except TimeoutError:
            self.hello_rejected["timeout"] += 1
            raise Refused("hello_timeout", "hello timed out") from None
        except ValueError as e:  # a line longer than the hello limit
            self.hello_rejected["too_long"] += 1
            raise Refused("hello_invalid", str(e)) from None
        try:
            hello = parse_hello(line)
        except HelloError as e:
            self.hello_rejected[e.reason] += 1
            raise Refused("hello_invalid", str(e)) from None
        vm = hello.vm
        if identity.refusal is not None:
            detail = f"{identity.name.replace(':', ' ')} is not allowed on this socket"
            self._refuse(identity.refusal, detail, vm=vm, peer=identity.name)
            await self._reply(writer, {"ok": False, "error": detail, "reason": identity.refusal})
            return
        try:
            holder = self._authorize(identity, hello)
        except Refused as r:
            self._refuse(r.reason, str(r), vm=vm, peer=identity.name)
            await self._reply(writer, {"ok": False, "error": str(r), "reason": r.reason})
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
                        uuid=hello.uuid or "",
                    ),
                )
            except LogWriteError as exc:
                # Nothing was recorded: refuse the channel; the guest may retry later.
                detail = f"event log not writable ({exc.kind}); retry later"
                self._refuse("log_unwritable", detail, vm=vm, peer=identity.name)
                await self._reply(writer, {"ok": False, "error": detail, "reason": "log_unwritable"})
                return
            delivered = backend.outbox_high_watermark(vm)
            self._save_delivered(vm, delivered)
        else:
            delivered = min(hello.resume_after, backend.outbox_high_watermark(vm))
        self._seen_vms.add(vm)
        self.owners[vm] = holder
        backend.set_owner(vm, identity_digest(holder))
        conn = Connection(hello=hello, writer=writer, delivered=delivered, peer=holder)
        self.connections[vm] = conn
        log.info(
            "event=connected vm=%s peer=%s resume=%s delivered=%d",
            vm,
            holder,
            hello.resume_after is not None,
            delivered,
        )
        self.counters.accepted += 1
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
            self._flush_status(conn, final=True)
            self.connections.pop(vm, None)
            self.counters.frames_in_closed += conn.frames_in
            self.counters.frames_out_closed += conn.frames_out
            if not conn.closing:
                await self._submit(vm, ChannelClosed(reason=reason))
                self.closed_reasons.append((vm, reason))
                self.counters.disconnect(reason)
                log.info("event=disconnected vm=%s peer=%s reason=%r", vm, holder, reason)

    async def _receive_loop(self, reader: asyncio.StreamReader, conn: Connection) -> str:
        vm = conn.hello.vm
        frames = FrameReader(max_payload=self.limits.max_payload)
        limits = self.limits
        while True:
            try:
                data = await reader.read(65536)
            except OSError as e:  # e.g. ETIMEDOUT: TCP keepalive found the peer gone
                return f"connection lost: {e}"
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
                    if conn.violations > limits.violation_budget:
                        break  # what follows in this read is not stored: the peer is cut off
                    continue
                raw = dm_message_bytes(fr.payload)
                try:
                    message = decode(raw)
                except DecodeError:
                    # The engine records what is wrong with it; the connection pays for it too.
                    conn.violations += 1
                    self.undecodable_messages += 1
                    await self._submit(vm, GuestMessage(raw=raw))
                    if conn.violations > limits.violation_budget:
                        break
                    continue
                if isinstance(message, StatusReport):
                    self._status_report(conn, raw)
                else:
                    await self._submit(vm, GuestMessage(raw=raw))
            if conn.violations > limits.violation_budget:
                return f"violation budget of {limits.violation_budget} exceeded"
            if broken is not None:
                await self._submit(vm, MalformedFrame(reason=str(broken.reason)))
                return f"unrecoverable framing error: {broken}"
            now = time.monotonic()
            if now - conn.window_start >= 1.0:
                conn.window_start, conn.window_frames = now, 0
            conn.window_frames += len(batch)
            if conn.window_frames > limits.max_frames_per_second:
                return f"rate budget of {limits.max_frames_per_second} frames/s exceeded"

    # ------------------------------------------------------------------ status-report coalescing
    def _status_report(self, conn: Connection, raw: bytes) -> None:
        """Store at most one report per interval; keep the newest of the rest for the interval's end."""
        now = self.clock()
        interval = self.limits.status_interval_s
        if conn.pending_status is None and now - conn.status_stored_at >= interval:
            try:
                self.backend.submit(conn.hello.vm, GuestMessage(raw=raw))
                conn.status_stored_at = now
                return
            except LogWriteError:
                pass  # kept as the pending report, stored when the log takes writes again
        if conn.pending_status is not None:
            conn.coalesced += 1
            self.status_coalesced += 1
        conn.pending_status = raw
        if conn.status_timer is None:
            delay = max(0.0, interval - (now - conn.status_stored_at))
            conn.status_timer = asyncio.get_running_loop().call_later(delay, self._flush_status, conn)

    def _flush_status(self, conn: Connection, *, final: bool = False) -> None:
        if conn.status_timer is not None:
            conn.status_timer.cancel()
            conn.status_timer = None
        raw, conn.pending_status = conn.pending_status, None
        if raw is not None:
            try:
                self.backend.submit(conn.hello.vm, GuestMessage(raw=raw))
            except LogWriteError:
                if final:  # the channel is closing: a status report is coalescible, count it
                    conn.coalesced += 1
                    self.status_coalesced += 1
                    return
                # The log is not writable: keep the newest report and try again an interval later.
                conn.pending_status = raw
                delay = max(0.05, self.limits.status_interval_s)
                conn.status_timer = asyncio.get_running_loop().call_later(delay, self._flush_status, conn)
                return
            conn.status_stored_at = self.clock()

    # ------------------------------------------------------------------ host to guest
    async def _send_loop(self, conn: Connection) -> None:
        vm = conn.hello.vm
        backend = self.backend
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            while rows := backend.read_outbox(vm, conn.delivered, 500):
                for row in rows:
                    conn.writer.write(frame(row.message, trans_id=dm_trans_id(row.message)))
                await conn.writer.drain()
                conn.delivered = rows[-1].seq
                conn.frames_out += len(rows)
                self._save_delivered(vm, conn.delivered)

    # ------------------------------------------------------------------ log outages
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


def identity_digest(identity: str) -> int:
    """A peer identity as a positive 56-bit integer, to store where the log keeps positions."""
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:7], "big") | 1


def _host_of(sock: socket.socket) -> str:
    try:
        name = sock.getpeername()
    except OSError:
        return "?"
    return str(name[0]) if isinstance(name, tuple) else str(name)
