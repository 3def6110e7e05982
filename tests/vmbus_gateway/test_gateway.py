"""The gateway over real sockets: hello, frames in, violations, budgets, ordered outbox delivery,
and resuming a channel across a gateway restart without losing or repeating a host message."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.dm_engine.inputs import SetTarget
from services.dm_engine.state import ProtocolState
from services.dm_protocol import (
    BalloonRequest,
    CapabilitiesReport,
    FrameReader,
    StatusReport,
    VersionRequest,
    decode,
    dm_message_bytes,
    encode,
    frame,
)
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.service import EmbeddedService
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.hello import Hello
from services.vmbus_gateway.server import GatewayLimits, GatewayServer
from tests.vmbus_gateway.peers import GIB, EchoGuest, running_service, wait_for


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[EmbeddedService]:
    async with running_service(tmp_path) as svc:
        yield svc


def idle(service: EmbeddedService, vm: str) -> bool:
    s = service.runner.states.get(vm)
    return s is not None and s.protocol is ProtocolState.IDLE


async def raw_connection(path: str, hello: Hello) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict]:  # type: ignore[type-arg]
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(hello.to_line())
    await writer.drain()
    answer = json.loads(await reader.readline())
    return reader, writer, answer


async def test_guest_handshake_and_balloon_over_the_socket(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service))
    await gateway.start(unix_path=sock)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    guest = EchoGuest()
    link = GuestLink(guest, Hello(vm="vm1", boot_bytes=4 * GIB, maxmem_bytes=16 * GIB), service.now_seconds)
    await link.open(unix_path=sock)
    await wait_for(
        lambda: (
            service.runner.states.get("vm1") is not None and service.runner.states["vm1"].protocol is ProtocolState.IDLE
        )
    )
    service.submit("vm1", SetTarget(target_bytes=2 * GIB))
    await wait_for(lambda: service.runner.states["vm1"].current_pages == (2 * GIB) >> 12)
    assert any(isinstance(m, BalloonRequest) for m in guest.received)
    # The guest counted the host frames from where its channel started: it knows the outbox seq.
    assert link.last_host_seq == service.log.outbox_high_watermark("vm1")
    await link.stop()
    await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.CLOSED)
    await gateway.close()


async def test_bad_hello_is_refused_with_a_reason(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service))
    await gateway.start(unix_path=sock)
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(b'{"hello": "hvdm/1", "vm": "../etc", "boot_bytes": 4096, "maxmem_bytes": 4096}\n')
    await writer.drain()
    answer = json.loads(await reader.readline())
    assert answer["ok"] is False and "vm must match" in answer["error"]
    writer.close()
    await gateway.close()


async def test_malformed_frames_become_violations_and_budget_closes(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service), GatewayLimits(violation_budget=3))
    await gateway.start(unix_path=sock)
    reader, writer, answer = await raw_connection(sock, Hello(vm="bad", boot_bytes=GIB, maxmem_bytes=GIB))
    assert answer["ok"]
    good = encode(StatusReport(num_avail=1, num_committed=1))
    bad_type = bytearray(frame(good))
    bad_type[0] = 9  # not an in-band data packet
    writer.write(frame(good[:20]))  # decodable frame, truncated DM message: engine violation
    for _ in range(5):
        writer.write(bytes(bad_type))  # framing violations, counted against the budget
    await writer.drain()
    assert await reader.read() == b""  # the gateway closed the connection
    await wait_for(lambda: service.runner.states["bad"].protocol is ProtocolState.CLOSED)
    violations = service.runner.states["bad"].counters.violations
    # The undecodable message and the malformed frames share the budget: the fourth violation
    # closes the connection and the fifth frame is never stored.
    assert violations.get("MALFORMED_FRAME", 0) == 3
    assert violations.get("SIZE_MISMATCH", 0) + violations.get("TRUNCATED", 0) == 1
    assert gateway.closed_reasons and "violation budget" in gateway.closed_reasons[-1][1]
    await gateway.close()


async def test_oversized_frame_closes_the_connection(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service))
    await gateway.start(unix_path=sock)
    reader, writer, _ = await raw_connection(sock, Hello(vm="big", boot_bytes=GIB, maxmem_bytes=GIB))
    writer.write(frame(b"\x00" * 8192))
    await writer.drain()
    assert await reader.read() == b""
    await wait_for(lambda: service.runner.states["big"].counters.violations.get("MALFORMED_FRAME", 0) == 1)
    assert "unrecoverable framing error" in gateway.closed_reasons[-1][1]
    await gateway.close()


async def test_resume_after_gateway_restart_loses_and_repeats_nothing(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    backend = EmbeddedBackend(service)
    gateway = GatewayServer(backend)
    await gateway.start(unix_path=sock)
    guest = EchoGuest()
    link = GuestLink(guest, Hello(vm="vm1", boot_bytes=4 * GIB, maxmem_bytes=16 * GIB), service.now_seconds)
    await link.open(unix_path=sock)
    await wait_for(
        lambda: "vm1" in service.runner.states and service.runner.states["vm1"].protocol is ProtocolState.IDLE
    )
    await gateway.close()  # the service restarts; the guest's channel survives
    await link.stop()
    # While no gateway runs, the host decides to balloon: the request waits in the outbox.
    service.submit("vm1", SetTarget(target_bytes=3 * GIB))
    await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.BALLOON_REPLY_WAIT)
    assert link.last_host_seq < service.log.outbox_high_watermark("vm1")
    gateway = GatewayServer(backend)
    await gateway.start(unix_path=sock)
    await link.open(unix_path=sock, resume=True)
    await wait_for(lambda: service.runner.states["vm1"].current_pages == (3 * GIB) >> 12)
    seqs = [m for m in guest.received]
    assert sum(isinstance(m, BalloonRequest) for m in seqs) == 1  # delivered once, not lost, not repeated
    assert link.host_messages == service.log.outbox_high_watermark("vm1")
    await link.stop()
    await gateway.close()


def test_frame_reader_round_trip_of_host_frames() -> None:
    reader = FrameReader()
    data = frame(encode(BalloonRequest(num_pages=5)), trans_id=7)
    frames = reader.feed(data[:5]) + reader.feed(data[5:])
    assert [f.trans_id for f in frames] == [7]


async def test_host_descriptors_carry_the_dm_trans_id(service: EmbeddedService, tmp_path: Path) -> None:
    """As QEMU's hv_balloon_send_packet: the descriptor's trans_id is the DM message's, not an
    outbox sequence number (the guest learns where its channel starts from the hello answer)."""
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service))
    await gateway.start(unix_path=sock)
    reader, writer, answer = await raw_connection(sock, Hello(vm="vm1", boot_bytes=4 * GIB, maxmem_bytes=16 * GIB))
    assert answer == {"ok": True, "vm": "vm1", "delivered": 0}
    writer.write(frame(encode(VersionRequest(trans_id=41, version=0x20000))))
    writer.write(frame(encode(CapabilitiesReport(trans_id=42, balloon=True, hot_add=True, hot_add_alignment=7))))
    await writer.drain()
    await wait_for(lambda: idle(service, "vm1"))
    service.submit("vm1", SetTarget(target_bytes=3 * GIB))
    frames = FrameReader()
    got: list[tuple[int, object]] = []
    while len(got) < 3:  # version response, capabilities response, balloon request
        for fr in frames.feed(await asyncio.wait_for(reader.read(4096), 10)):
            got.append((fr.trans_id, decode(dm_message_bytes(fr.payload))))
    assert [type(m).__name__ for _, m in got] == ["VersionResponse", "CapabilitiesResponse", "BalloonRequest"]
    assert all(tid == m.trans_id for tid, m in got)  # type: ignore[attr-defined]
    assert got[0][0] == 41  # the response names the request it answers (not outbox seq 1)
    writer.close()
    await gateway.close()


async def test_resume_is_exact_across_two_gateway_restarts(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    backend = EmbeddedBackend(service)
    guest = EchoGuest()
    link = GuestLink(guest, Hello(vm="vm1", boot_bytes=4 * GIB, maxmem_bytes=16 * GIB), service.now_seconds)
    gateway = GatewayServer(backend)
    await gateway.start(unix_path=sock)
    await link.open(unix_path=sock)
    await wait_for(lambda: idle(service, "vm1"))
    base = link.last_host_seq - link.host_messages
    for target in (3 * GIB, 2 * GIB):
        await gateway.close()
        await link.stop()
        service.submit("vm1", SetTarget(target_bytes=target))  # queued while no gateway runs
        await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.BALLOON_REPLY_WAIT)
        gateway = GatewayServer(backend)
        await gateway.start(unix_path=sock)
        await link.open(unix_path=sock, resume=True)

        def reached(t: int = target) -> bool:
            return service.runner.states["vm1"].current_pages == t >> 12

        await wait_for(reached)
    high = service.log.outbox_high_watermark("vm1")
    assert link.last_host_seq == high
    assert link.host_messages == high - base == len(guest.received)  # nothing lost, nothing repeated
    assert sum(isinstance(m, BalloonRequest) for m in guest.received) >= 2
    await link.stop()
    await gateway.close()
