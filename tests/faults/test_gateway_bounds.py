"""Bounded resources at the gateway (issue 9 section 3) and quiet channels (issue 12 section 4),
through real sockets: a VM-id flood, a status-report flood, undecodable messages, running out of
file descriptors, and a guest that says nothing for longer than the old idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.gateway_load import log_counts
from services.audit.reader import SqliteReader
from services.dm_engine.state import ProtocolState
from services.dm_protocol import CapabilitiesReport, StatusReport, VersionRequest, encode, frame
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.service import EmbeddedService
from services.vmbus_gateway.auth import GatewayAuth
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.server import GatewayLimits, GatewayServer
from tests.vmbus_gateway.peers import EchoGuest, hello, raw_peer, running_service, wait_for


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[EmbeddedService]:
    async with running_service(tmp_path) as svc:
        yield svc


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def handshake(sock: str, vm: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw guest that negotiates and then does whatever the test writes."""
    peer = await raw_peer(hello(vm), unix_path=sock)
    assert peer.answer["ok"], peer.answer
    peer.writer.write(frame(encode(VersionRequest(trans_id=1, version=0x20000))))
    peer.writer.write(frame(encode(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7))))
    await peer.writer.drain()
    return peer.reader, peer.writer


def state(service: EmbeddedService, vm: str) -> ProtocolState | None:
    s = service.runner.states.get(vm)
    return None if s is None else s.protocol


def reported_available(tmp_path: Path, vm: str) -> list[int]:
    # Through the log's reader: StatusReported rows are stored compact (log format 2), not as JSON.
    reader = SqliteReader(tmp_path / "hvdm.db")
    try:
        records = [json.loads(row.record) for row in reader.iter_events(vm)]
    finally:
        reader.close()
    return [int(r["available_pages"]) for r in records if r["type"] == "StatusReported"]


# ---------------------------------------------------------------------------- VM-id flood
async def test_new_vm_ids_are_limited_per_window_and_per_peer(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    clock = FakeClock()
    limits = GatewayLimits(max_new_vms_per_window=5, new_vm_window_s=60.0, max_new_vms_per_peer=8)
    gateway = GatewayServer(EmbeddedBackend(service), limits, clock=clock)
    await gateway.start(unix_path=sock)

    async def claim(vm: str) -> dict[str, object]:
        peer = await raw_peer(hello(vm), unix_path=sock)
        await peer.close()
        return peer.answer

    for i in range(5):
        assert (await claim(f"vm{i}"))["ok"] is True
    assert (await claim("vm5"))["reason"] == "vm_limit_rate"
    await wait_for(lambda: all(state(service, f"vm{i}") is ProtocolState.CLOSED for i in range(5)))
    assert (await claim("vm0"))["ok"] is True  # a known VM is not a new one
    clock.now += 61  # the window has passed
    for i in (5, 6, 7):
        assert (await claim(f"vm{i}"))["ok"] is True
    assert (await claim("vm8"))["reason"] == "vm_limit_peer"  # 8 VMs from this uid
    assert gateway.refusals == {"vm_limit_rate": 1, "vm_limit_peer": 1}
    await wait_for(lambda: all(f"vm{i}" in service.runner.states for i in range(8)))
    assert "vm8" not in service.runner.states
    await gateway.close()
    # After a restart the VMs in the log are still known: reconnecting them creates nothing.
    gateway = GatewayServer(EmbeddedBackend(service), GatewayLimits(max_new_vms_per_window=1), clock=clock)
    await gateway.start(unix_path=sock)
    for i in range(8):
        assert (await claim(f"vm{i}"))["ok"] is True
    assert (await claim("fresh1"))["ok"] is True
    assert (await claim("fresh2"))["reason"] == "vm_limit_rate"
    await gateway.close()


# ---------------------------------------------------------------------------- status-report flood
async def test_status_report_flood_is_coalesced_and_the_latest_report_reaches_the_engine(
    service: EmbeddedService, tmp_path: Path
) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service), GatewayLimits(status_interval_s=0.3))
    await gateway.start(unix_path=sock)
    _reader, writer = await handshake(sock, "vm1")
    await wait_for(lambda: state(service, "vm1") is ProtocolState.IDLE)
    flood = [StatusReport(trans_id=3 + i, num_avail=100_000 + i, num_committed=200_000) for i in range(300)]
    writer.write(b"".join(frame(encode(m)) for m in flood))
    await writer.drain()
    await wait_for(lambda: gateway.connections["vm1"].frames_in == 302)
    # The first report is stored at once, the last one when the interval ends; the 298 between
    # them are counted, not stored.
    await wait_for(lambda: service.runner.states["vm1"].status is not None)
    await wait_for(lambda: service.runner.states["vm1"].status.available_pages == 100_299)  # type: ignore[union-attr]
    assert gateway.status_coalesced == gateway.connections["vm1"].coalesced == 298
    inbox, _ = log_counts(str(tmp_path / "hvdm.db"))
    assert inbox["vm1"] == 2 + 2  # version, capabilities, first and last status report
    assert reported_available(tmp_path, "vm1") == [100_000, 100_299]
    assert service.runner.states["vm1"].counters.violations == {}  # nothing the engine had to call a flood
    writer.close()
    await gateway.close()


async def test_a_report_waiting_for_its_interval_is_stored_when_the_channel_closes(
    service: EmbeddedService, tmp_path: Path
) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service), GatewayLimits(status_interval_s=3600))
    await gateway.start(unix_path=sock)
    _reader, writer = await handshake(sock, "vm1")
    await wait_for(lambda: state(service, "vm1") is ProtocolState.IDLE)
    for i in range(3):
        writer.write(frame(encode(StatusReport(trans_id=3 + i, num_avail=5_000 + i, num_committed=9_000))))
    await writer.drain()
    await wait_for(lambda: gateway.connections["vm1"].frames_in == 5)
    writer.close()
    await wait_for(lambda: state(service, "vm1") is ProtocolState.CLOSED)
    # (A closed channel forgets its status, as QEMU does: read the reports from the event log.)
    assert reported_available(tmp_path, "vm1") == [5_000, 5_002]
    assert gateway.status_coalesced == 1
    await gateway.close()


# ---------------------------------------------------------------------------- undecodable messages
async def test_undecodable_messages_spend_the_violation_budget(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service), GatewayLimits(violation_budget=3))
    await gateway.start(unix_path=sock)
    reader, writer = await handshake(sock, "vm1")
    await wait_for(lambda: state(service, "vm1") is ProtocolState.IDLE)
    unknown_type = (99).to_bytes(2, "little") + (8).to_bytes(2, "little") + bytes(4)  # well framed, no DM message
    for _ in range(10):
        writer.write(frame(unknown_type))
    await writer.drain()
    await asyncio.wait_for(reader.read(), 10)  # the gateway closes the connection
    await wait_for(lambda: state(service, "vm1") is ProtocolState.CLOSED)
    assert "violation budget of 3 exceeded" in gateway.closed_reasons[-1][1]
    assert gateway.undecodable_messages == 4  # the fourth exceeded the budget
    assert sum(service.runner.states["vm1"].counters.violations.values()) == 4  # each one recorded by the engine
    writer.close()
    await gateway.close()


# ---------------------------------------------------------------------------- the fd limit
async def test_accept_at_the_fd_limit_backs_off_counts_and_recovers(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service), GatewayLimits(accept_backoff_max_s=0.05))
    await gateway.start(unix_path=sock)
    clients = []
    for _ in range(3):  # connected in the kernel's backlog, not yet accepted
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(sock)
        clients.append(c)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        with contextlib.suppress(OSError):
            while True:  # fill every free descriptor below the limit
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        with pytest.raises(OSError) as full:
            os.open(os.devnull, os.O_RDONLY)
        assert full.value.errno == errno.EMFILE
        await wait_for(lambda: gateway.accept_errors["EMFILE"] >= 2, timeout=5)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Descriptors are back: the same clients are served, the server loop never died.
    for i, c in enumerate(clients):
        c.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(c, hello(f"late{i}").to_line())
        answer = await asyncio.wait_for(loop.sock_recv(c, 4096), 10)
        assert b'"ok":true' in answer
        c.close()
    await gateway.close()


# ---------------------------------------------------------------------------- quiet channels
async def test_a_quiet_guest_stays_connected_and_tcp_keepalive_is_the_liveness_check(
    service: EmbeddedService,
) -> None:
    clock = FakeClock()
    limits = GatewayLimits(keepalive_s=1.0)
    gateway = GatewayServer(EmbeddedBackend(service), limits, GatewayAuth(insecure=True), clock=clock)
    await gateway.start(tcp=("127.0.0.1", 0))
    guest = EchoGuest()  # handshakes, then never sends anything unasked (no status reports)
    link = GuestLink(guest, hello("quiet"), service.now_seconds)
    await link.open(tcp=("127.0.0.1", gateway.tcp_port or 0))
    await wait_for(lambda: state(service, "quiet") is ProtocolState.IDLE)
    server_sock = gateway.connections["quiet"].writer.get_extra_info("socket")
    assert server_sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert server_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1
    sent = link.sent_messages
    clock.now += 3600  # an hour of gateway time: there is no idle timeout to expire
    await asyncio.sleep(3.5)  # and three keepalive rounds of real time, each answered by the peer's kernel
    assert link.sent_messages == sent  # the guest really was silent
    assert "quiet" in gateway.connections and gateway.closed_reasons == []
    assert state(service, "quiet") is ProtocolState.IDLE
    await link.stop()
    await gateway.close()
