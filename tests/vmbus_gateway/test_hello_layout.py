"""The hello's RAM layout and reset kind, and what the gateway puts in the inbox for them.

Rules carried over from the C sources:

* QEMU's x86 machines relocate RAM above 4 GiB (``pc_q35_init``, ``pc_init1``), so the hello says
  which machine it is (q35 by default) or lists the RAM ranges;
* a channel can only be opened again after a VMBus device reset (QEMU ``hv_balloon_vmdev_reset``
  runs before the state machine accepts an open), so a fresh hello carries ``reset: "vmbus"``; a
  reboot is a system reset (``hv_balloon_system_reset``) and says ``"system"``; a resumed channel
  was not reset at all and may not claim one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.dm_engine.inputs import SetTarget
from services.dm_engine.state import ProtocolState
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.service import EmbeddedService
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.hello import Hello, HelloError, parse_hello
from services.vmbus_gateway.server import GatewayServer
from tests.vmbus_gateway.peers import EchoGuest, running_service, wait_for

GIB = 1 << 30
GIB_PAGES = GIB >> 12


def line(**fields: object) -> bytes:
    data = {"hello": "hvdm/1", "vm": "vm1", "boot_bytes": 4 * GIB, "maxmem_bytes": 64 * GIB}
    data.update(fields)
    return json.dumps(data).encode()


def test_default_is_a_q35_split_and_a_vmbus_reset() -> None:
    """pc_q35_init for 4 GiB; a fresh channel implies hv_balloon_vmdev_reset."""
    hello = parse_hello(line())
    assert hello.machine == "q35" and hello.ram is None and hello.reset == "vmbus"
    assert hello.ram_ranges() == ((0, 2 * GIB_PAGES), (4 * GIB_PAGES, 2 * GIB_PAGES))


def test_pc_machine_splits_at_three_gigabytes() -> None:
    """pc_init1: from 3.5 GiB of RAM, 3 GiB stay below 4 GiB (gigabyte_align)."""
    hello = parse_hello(line(machine="pc"))
    assert hello.ram_ranges() == ((0, 3 * GIB_PAGES), (4 * GIB_PAGES, GIB_PAGES))


def test_explicit_ram_is_taken_as_given() -> None:
    """An explicit map covers machines ram_layout does not model (max-ram-below-4g, SGX, AMD 1 TiB hole)."""
    ram = [[0, GIB_PAGES], [8 * GIB_PAGES, 3 * GIB_PAGES]]
    hello = parse_hello(line(ram=ram, reset="system"))
    assert hello.ram_ranges() == ((0, GIB_PAGES), (8 * GIB_PAGES, 3 * GIB_PAGES))
    assert hello.reset == "system"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"machine": "microvm"}, "machine must be one of"),
        ({"machine": "q35", "ram": [[0, 4 * GIB_PAGES]]}, "either machine or ram"),
        ({"ram": [[0, GIB_PAGES]]}, "add up to boot_bytes"),
        ({"ram": [[0, 2 * GIB_PAGES], [GIB_PAGES, 2 * GIB_PAGES]]}, "overlap"),
        ({"ram": "all of it"}, "list of"),
        ({"ram": [[0, "x"]]}, "integers"),
        ({"reset": "cold"}, "reset must be"),
        ({"reset": "system", "resume_after": 3}, "reset cannot go with resume_after"),
        ({"hot_add_base_page": 5 * GIB_PAGES}, "above guest RAM"),  # q35: RAM runs to 6 GiB
    ],
)
def test_bad_layouts_and_resets_are_refused(fields: dict[str, object], message: str) -> None:
    """Hostile or impossible layouts never reach the inbox (a resumed channel was not reset)."""
    with pytest.raises(HelloError, match=message):
        parse_hello(line(**fields))


@pytest.mark.parametrize(
    "hello",
    [
        Hello(vm="a", boot_bytes=4 * GIB, maxmem_bytes=8 * GIB),
        Hello(vm="b", boot_bytes=4 * GIB, maxmem_bytes=8 * GIB, machine="pc", reset="system"),
        Hello(vm="c", boot_bytes=GIB, maxmem_bytes=GIB, ram=((16, GIB_PAGES),)),
        Hello(vm="d", boot_bytes=GIB, maxmem_bytes=GIB, resume_after=7),
    ],
)
def test_hello_round_trips(hello: Hello) -> None:
    """What Hello.to_line writes, parse_hello reads back unchanged."""
    assert parse_hello(hello.to_line()) == hello


# ----------------------------------------------------------------------------- through the gateway
@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[EmbeddedService]:
    async with running_service(tmp_path) as svc:
        yield svc


async def _hello(sock: str, hello: Hello) -> dict[str, object]:
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(hello.to_line())
    await writer.drain()
    answer: dict[str, object] = json.loads(await reader.readline())
    writer.close()
    return answer


async def test_gateway_puts_layout_and_reset_in_channel_opened(service: EmbeddedService, tmp_path: Path) -> None:
    """The gateway copies the layout and the reset kind into the inbox record the engine decides from."""
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service))
    await gateway.start(unix_path=sock)
    try:
        assert (await _hello(sock, Hello(vm="vm1", boot_bytes=4 * GIB, maxmem_bytes=8 * GIB)))["ok"]
        assert (await _hello(sock, Hello(vm="vm2", boot_bytes=4 * GIB, maxmem_bytes=8 * GIB, reset="system")))["ok"]
    finally:
        await gateway.close()
    opened = {row.vm: row.record for row in service.log.read_inbox(0, 100) if row.record["type"] == "ChannelOpened"}
    assert opened["vm1"]["ram"] == [[0, 2 * GIB_PAGES], [4 * GIB_PAGES, 2 * GIB_PAGES]]
    assert opened["vm1"]["reset"] == "vmbus"
    assert opened["vm2"]["reset"] == "system"


async def _idle(service: EmbeddedService, vm: str) -> None:
    await wait_for(
        lambda: service.runner.states.get(vm) is not None and service.runner.states[vm].protocol is ProtocolState.IDLE
    )


async def test_a_rebooted_guest_does_not_keep_the_old_boots_books(service: EmbeddedService, tmp_path: Path) -> None:
    """Issue 12 s1 through the socket: the guest's connection closes and a fresh hello opens a new
    channel (QEMU: only after hv_balloon_vmdev_reset). The pages the old boot gave are forgotten,
    so growing never unballoons pages the new boot did not give; resuming keeps them."""
    sock = str(tmp_path / "gw.sock")
    gateway = GatewayServer(EmbeddedBackend(service))
    await gateway.start(unix_path=sock)
    try:
        guest = EchoGuest()
        link = GuestLink(guest, Hello(vm="vm1", boot_bytes=2 * GIB, maxmem_bytes=2 * GIB), service.now_seconds)
        await link.open(unix_path=sock)
        await _idle(service, "vm1")
        service.submit("vm1", SetTarget(target_bytes=GIB))
        await wait_for(lambda: service.runner.states["vm1"].ballooned_pages == GIB_PAGES)
        # a resumed channel keeps everything
        await gateway.close()
        gateway = GatewayServer(EmbeddedBackend(service))
        await gateway.start(unix_path=sock)
        await link.open(unix_path=sock, resume=True)
        await asyncio.sleep(0.05)
        assert service.runner.states["vm1"].ballooned_pages == GIB_PAGES
        # a reboot: the connection closes, the new boot says hello afresh
        await link.stop()
        await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.CLOSED)
        rebooted = EchoGuest()
        link = GuestLink(rebooted, Hello(vm="vm1", boot_bytes=2 * GIB, maxmem_bytes=2 * GIB), service.now_seconds)
        await link.open(unix_path=sock)
        await _idle(service, "vm1")
        state = service.runner.states["vm1"]
        assert state.ballooned_pages == 0 and state.current_pages == 2 * GIB_PAGES
        service.submit("vm1", SetTarget(target_bytes=2 * GIB))
        await asyncio.sleep(0.1)
        assert not any(type(m).__name__ == "UnballoonRequest" for m in rebooted.received)
        await link.stop()
    finally:
        await gateway.close()
