"""Issue 9 section 1: one out-of-range number from a peer must not stop the engine for other VMs.

Before the fix each of these inputs was stored in the inbox and made every engine batch fail, for
every VM, forever: a hello integer >= 2**64 (read back from the log as a float), a hot-add window
above page 2**40 (the encoder refuses the first hot-add range), a QMP ``balloon`` of 10**23. Each
is now refused at the edge that received it, with one error, counted, and never reaches the inbox;
a well-behaved second VM reaches its balloon target afterwards.

Everything goes through the real interfaces: the gateway's UNIX socket of a running embedded
service, and QEMU's ``qemu.qmp`` client on hvdm's QMP socket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError

from services.dm_engine.inputs import SetTarget
from services.dm_engine.state import ProtocolState
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.service import EmbeddedService
from services.metrics.rejections import RejectionCollector
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.hello import HELLO_REASONS, Hello
from services.vmbus_gateway.server import GatewayServer
from tests.qmp.qmp_env import qmp_env
from tests.vmbus_gateway.peers import EchoGuest, running_service

GIB = 1 << 30
BOOT = 4 * GIB


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[EmbeddedService]:
    async with running_service(tmp_path) as svc:
        yield svc


async def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        await asyncio.sleep(0.01)


async def send_hello(path: str, line: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(line)
        await writer.drain()
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 5))
        return answer
    finally:
        writer.close()
        await writer.wait_closed()


def hello_line(**fields: Any) -> bytes:
    data = {"hello": "hvdm/1", "vm": "bad", "boot_bytes": BOOT, "maxmem_bytes": 16 * GIB, **fields}
    return (json.dumps(data) + "\n").encode()


#: (hello line, reason code, a piece of the error text)
HOSTILE_HELLOS = [
    (hello_line(boot_bytes=2**64), "bad_number", "boot_bytes"),
    (hello_line(maxmem_bytes=2**64), "bad_number", "maxmem_bytes"),
    (hello_line(maxmem_bytes=10**400), "bad_number", "maxmem_bytes"),
    (hello_line(hot_add_base_page=2**64), "bad_number", "hot_add_base_page"),
    # Between 2**40 and 2**64: stored fine, but the first hot-add range could not be encoded.
    (hello_line(hot_add_base_page=2**40 + 5), "bad_number", "hot_add_base_page"),
    (hello_line(hot_add_base_page=2**40 - 16), "bad_number", "beyond page 2**40 - 1"),
    (hello_line(maxmem_bytes=2**52), "bad_number", "hot-add window"),
    (hello_line(resume_after=2**64), "bad_number", "resume_after"),
    (hello_line(boot_bytes=4.0 * GIB), "bad_number", "boot_bytes must be an integer"),
    (hello_line(boot_bytes=True), "bad_number", "boot_bytes must be an integer"),
    (hello_line(vm="bad\n"), "bad_vm_id", "vm must match"),
    (b'{"hello": "hvdm/1", "vm": ' + b"[" * 1500 + b"]" * 1500 + b"}\n", "too_deep", "nested too deeply"),
    (b"[" * 4000 + b"\n", "too_deep", "nested too deeply"),
    (b"x" * 5000 + b"\n", "too_long", ""),
]


async def test_hostile_hello_numbers_are_refused_and_other_vms_carry_on(
    service: EmbeddedService, tmp_path: Path
) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service))
    await gateway.start(unix_path=sock)
    try:
        for line, code, text in HOSTILE_HELLOS:
            before = gateway.hello_rejected[code]
            answer = await send_hello(sock, line)
            assert answer["ok"] is False, line[:80]
            assert text in answer["error"], (line[:80], answer)
            assert "\n" not in answer["error"]
            assert gateway.hello_rejected[code] == before + 1, (line[:80], dict(gateway.hello_rejected))
        assert sum(gateway.hello_rejected.values()) == len(HOSTILE_HELLOS)
        # Nothing of it reached the log (only the clock's ticks are there), and there is no VM.
        assert {r.record["type"] for r in service.log.read_inbox(0, 100_000)} <= {"Tick"}
        assert "bad" not in service.runner.states

        # A well-behaved VM connects after the barrage and reaches its balloon target.
        guest = EchoGuest()
        link = GuestLink(guest, Hello(vm="good", boot_bytes=BOOT, maxmem_bytes=16 * GIB), service.now_seconds)
        await link.open(unix_path=sock)
        try:
            states = service.runner.states
            await wait_until(lambda: "good" in states and states["good"].protocol is ProtocolState.IDLE, "negotiated")
            service.submit("good", SetTarget(target_bytes=2 * GIB))
            await wait_until(lambda: service.runner.states["good"].current_pages == (2 * GIB) >> 12, "target reached")
        finally:
            await link.stop()
    finally:
        await gateway.close()

    # The counts are exported with every known reason, zeros included.
    collector = RejectionCollector(gateway, None, HELLO_REASONS)
    [hello_family, _] = collector.collect()
    exported = {s.labels["reason"]: s.value for s in hello_family.samples}
    assert set(exported) == set(HELLO_REASONS)
    assert exported["bad_number"] == sum(1 for _, c, _ in HOSTILE_HELLOS if c == "bad_number")


#: (arguments, error text) for QMP ``balloon``: QEMU's own texts where QEMU has the case.
HOSTILE_BALLOONS: list[tuple[dict[str, Any], str]] = [
    ({"value": 10**23}, "Invalid parameter type for 'value', expected: integer"),
    ({"value": 2**63}, "Invalid parameter type for 'value', expected: integer"),
    ({"value": 2**63 - 1}, "Parameter 'value' expects a size of at most 4503599627370496 (4 PiB, 2**40 pages)"),
    ({"value": 2**52 + 4096}, "Parameter 'value' expects a size of at most 4503599627370496 (4 PiB, 2**40 pages)"),
    ({"value": 1e30}, "Invalid parameter type for 'value', expected: integer"),
    ({"value": -(2**64)}, "Invalid parameter type for 'value', expected: integer"),
]


def test_hostile_qmp_balloon_values_are_refused_and_other_vms_carry_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            bad = await env.ready_guest("vm-bad")
            good = await env.ready_guest("vm-good")
            c_bad = await env.client("vm-bad")
            c_good = await env.client("vm-good")
            inbox_before = env.service.log.inbox_high_watermark()
            for args, desc in HOSTILE_BALLOONS:
                with pytest.raises(ExecuteError) as info:
                    await c_bad.execute("balloon", args)
                assert info.value.error.error.class_ == "GenericError"
                assert info.value.error.error.desc == desc, args
            assert env.servers.errors[("GenericError", "balloon")] == len(HOSTILE_BALLOONS)
            # object-add's size is bounded the same way.
            with pytest.raises(ExecuteError) as info:
                await c_bad.execute("object-add", {"qom-type": "memory-backend-ram", "id": "m", "size": 2**60})
            assert "Parameter 'size' expects a size of at most" in info.value.error.error.desc
            with pytest.raises(ExecuteError) as info:
                await c_bad.execute("object-add", {"qom-type": "memory-backend-ram", "id": "m", "size": 2**64})
            assert info.value.error.error.desc == "Invalid parameter type for 'size', expected: size"
            assert env.servers.errors[("GenericError", "object-add")] == 2
            # None of it entered the inbox.
            assert env.service.log.inbox_high_watermark() == inbox_before

            # Both VMs still work: the bad one's operator and the other VM reach their targets.
            for client, guest in ((c_good, good), (c_bad, bad)):
                assert await client.execute("balloon", {"value": BOOT - GIB}) == {}
                await guest.answer()
                assert await client.execute("query-balloon") == {"actual": BOOT - GIB}
            assert env.service.runner.lag() == 0

    asyncio.run(scenario())


def test_deeply_nested_qmp_request_gets_an_error_not_a_recursion_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            good = await env.ready_guest("vm1")
            from services.qmp import socket_path

            reader, writer = await asyncio.open_unix_connection(str(socket_path(env.qmp_dir, "vm1")))
            try:
                await reader.readline()  # greeting
                writer.write(b'{"execute": "qmp_capabilities"}')
                assert b"return" in await reader.readline()
                nested = b"[" * 100_000 + b"]" * 100_000
                writer.write(b'{"execute": "balloon", "arguments": {"value": ' + nested + b"}}")
                answer = json.loads(await asyncio.wait_for(reader.readline(), 10))
                assert answer["error"]["class"] == "GenericError"
                assert "nesting deeper than 256 levels" in answer["error"]["desc"]
                # The connection is still usable afterwards.
                writer.write(b'{"execute": "query-balloon", "id": 1}')
                assert json.loads(await asyncio.wait_for(reader.readline(), 5)) == {"return": {"actual": BOOT}, "id": 1}
            finally:
                writer.close()
                await writer.wait_closed()
            assert env.servers.errors[("GenericError", "none")] == 1
            await good.tick()

    asyncio.run(scenario())
