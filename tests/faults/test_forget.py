"""Issue 9 §3: VMs are released. ``hvdm ctl VM forget`` (the real qemu.qmp client, in a child
process) and the retention setting drop a disconnected VM's state, its QMP socket and its metric
series from a real ``/metrics`` scrape; a connected VM is refused; the audit still replays byte for
byte; and a restart of the service does not bring a forgotten VM back."""

from __future__ import annotations

import asyncio
import urllib.request
from dataclasses import replace
from pathlib import Path

from services.dm_engine import inputs as inp
from services.embedded.service import EmbeddedService
from services.metrics import serve_for_service
from services.qmp import socket_path, start_qmp_servers
from tests.faults.run_process import audit_json
from tests.qmp.qmp_env import FAST, FROZEN, Env, qmp_env
from tests.qmp.test_ctl import ctl


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def series_of(text: str, vm: str) -> list[str]:
    return [line for line in text.splitlines() if f'vm="{vm}"' in line]


async def scrape_without(url: str, vm: str, timeout: float = 10.0) -> str:
    """A scrape with no series of ``vm``; the server reuses one render for up to a second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = await asyncio.to_thread(scrape, url)
        if not series_of(text, vm) or loop.time() > deadline:
            return text
        await asyncio.sleep(0.1)


async def wait_gone(path: Path, timeout: float = 5.0) -> None:
    """The socket goes on the service's loop right after the engine drops the VM."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while path.exists():
        assert loop.time() < deadline, f"{path} still exists"
        await asyncio.sleep(0.02)


async def close_channel(env: Env, vm: str) -> None:
    pos = env.service.submit(vm, inp.ChannelClosed(reason="guest left"))
    await env.service.wait_processed(pos)


def test_ctl_forget_releases_a_disconnected_vm_and_refuses_a_connected_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            served = serve_for_service(env.service, "127.0.0.1", 0)
            url = f"{served.server.base_url}/metrics"
            try:
                await env.ready_guest("vm1")
                await env.ready_guest("vm2")
                sock1 = socket_path(env.qmp_dir, "vm1")
                before = await asyncio.to_thread(scrape, url)
                assert series_of(before, "vm1") and series_of(before, "vm2")

                # Connected: refused with a QMP error, recorded, and nothing is released.
                code, out, err = await ctl(env, "vm1", "forget")
                assert (code, out) == (1, "")
                assert "VM is connected" in err and "(GenericError)" in err
                assert "vm1" in env.service.runner.states and sock1.exists()

                await close_channel(env, "vm1")
                assert await ctl(env, "vm1", "forget") == (0, "", "")
                await wait_gone(sock1)
                assert "vm1" not in env.service.runner.states
                after = await scrape_without(url, "vm1")
                assert series_of(after, "vm1") == []
                assert series_of(after, "vm2")  # the other VM is untouched
                code, _, err = await ctl(env, "vm1", "info", "balloon")
                assert code == 2 and "cannot talk to VM 'vm1'" in err

                # The same id later is a fresh VM with a fresh socket.
                g = env.guest("vm1", boot_bytes=2 << 30)
                await g.open()
                await env.servers.sync()
                assert sock1.exists()
                assert env.service.runner.states["vm1"].boot_pages == (2 << 30) >> 12
                await close_channel(env, "vm1")
                assert await ctl(env, "vm1", "qmp", "x-hvdm-forget") == (0, "{}\n", "")
                await wait_gone(sock1)
            finally:
                served.close()
        report = audit_json(tmp_path / "hvdm.db")
        assert report["replay_matches"] is True

        # A restart folds the log again: vm1 stays forgotten, vm2 comes back with its socket.
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        servers = await start_qmp_servers(service, tmp_path / "qmp")
        try:
            assert sorted(service.runner.states) == ["vm2"]
            assert socket_path(tmp_path / "qmp", "vm2").exists()
            assert not socket_path(tmp_path / "qmp", "vm1").exists()
        finally:
            await servers.close()
            await service.stop()

    asyncio.run(scenario())


def test_retention_forgets_closed_vms_after_retention_ticks(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path, replace(FAST, retention_ticks=10)) as env:
            g1 = await env.ready_guest("vm1")
            never = env.guest("vm3")  # a hello whose handshake never happened
            await never.open()
            await close_channel(env, "vm3")
            await env.ready_guest("vm2")
            await close_channel(env, "vm1")
            await env.servers.sync()
            assert socket_path(env.qmp_dir, "vm1").exists() and socket_path(env.qmp_dir, "vm3").exists()
            await g1.tick(10)
            assert "vm1" in env.service.runner.states  # its countdown began at the first tick after the close
            await g1.tick(1)
            assert sorted(env.service.runner.states) == ["vm2"]
            await wait_gone(socket_path(env.qmp_dir, "vm1"))
            await wait_gone(socket_path(env.qmp_dir, "vm3"))
            assert socket_path(env.qmp_dir, "vm2").exists()  # connected VMs are never retired
        report = audit_json(tmp_path / "hvdm.db")
        assert report["replay_matches"] is True

    asyncio.run(scenario())
