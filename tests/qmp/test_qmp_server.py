"""The QMP sockets against a real EmbeddedService, driven with QEMU's own client (qemu.qmp).

Every command's happy path and its QEMU error classes, the events with their rate limits, the
socket files' life cycle and modes. Raw-socket tests cover what ``QMPClient`` hides (the greeting,
negotiation, malformed input).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from services.dm_engine import inputs as inp
from services.dm_protocol import BalloonRequest
from services.qmp import socket_path
from services.qmp.commands import COMMANDS
from services.qmp.paths import ensure_private_dir
from tests.metrics.guest_driver import GIB, MIB
from tests.qmp.qmp_env import Env, drained_events, next_event, qmp_env

BOOT = 4 * GIB


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def expect_error(client: QMPClient, cmd: str, args: dict[str, Any] | None, cls: str, desc: str) -> None:
    with pytest.raises(ExecuteError) as info:
        await client.execute(cmd, args)
    assert info.value.error.error.class_ == cls
    assert info.value.error.error.desc == desc


def inbox_kinds(env: Env, vm: str) -> list[str]:
    return [r.record["type"] for r in env.service.log.read_inbox(0, 100_000, vm=vm) if r.vm == vm]


# ------------------------------------------------------------------------------ protocol
async def _raw(env: Env, vm: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(socket_path(env.qmp_dir, vm)))


async def _recv(reader: asyncio.StreamReader) -> Any:
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.endswith(b"\r\n")
    return json.loads(line)


def test_greeting_negotiation_and_malformed_input(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            reader, writer = await _raw(env, "vm1")
            try:
                greeting = await _recv(reader)
                assert greeting == {
                    "QMP": {
                        "version": {"qemu": {"major": 10, "minor": 0, "micro": 0}, "package": "hvdm"},
                        "capabilities": [],
                    }
                }
                # Before negotiation: QEMU's CommandNotFound, id echoed; and no events yet.
                await g.status(2 * GIB, GIB)
                writer.write(b'{"execute": "query-balloon", "id": "a"}')
                assert await _recv(reader) == {
                    "error": {
                        "class": "CommandNotFound",
                        "desc": "Expecting capabilities negotiation with 'qmp_capabilities'",
                    },
                    "id": "a",
                }
                writer.write(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}')
                assert (await _recv(reader))["error"]["desc"] == "Capability 'oob' not available"
                writer.write(b'{"execute": "qmp_capabilities", "id": 1}')
                assert await _recv(reader) == {"return": {}, "id": 1}
                writer.write(b'{"execute": "qmp_capabilities"}')
                assert await _recv(reader) == {
                    "error": {
                        "class": "CommandNotFound",
                        "desc": "Capabilities negotiation is already complete, command ignored",
                    }
                }
                # Two commands in one write, no delimiter (as qemu.qmp sends them).
                writer.write(b'{"execute": "query-balloon", "id": 2}{"execute": "nope", "id": 3}')
                assert await _recv(reader) == {"return": {"actual": BOOT}, "id": 2}
                assert await _recv(reader) == {
                    "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"},
                    "id": 3,
                }
                cases = [
                    (b"[1, 2]", "QMP input must be a JSON object"),
                    (b'{"arguments": {}, "id": 4}', "QMP input lacks member 'execute'"),
                    (b'{"execute": 5}', "QMP input member 'execute' must be a string"),
                    (
                        b'{"execute": "query-balloon", "arguments": []}',
                        "QMP input member 'arguments' must be an object",
                    ),
                    (b'{"execute": "query-balloon", "extra": 1}', "QMP input member 'extra' is unexpected"),
                ]
                for data, desc in cases:
                    writer.write(data)
                    reply = await _recv(reader)
                    assert reply["error"] == {"class": "GenericError", "desc": desc}
                writer.write(b'{"execute": "query-balloon", "id": 4, "arguments": 3}')
                assert (await _recv(reader))["id"] == 4
                writer.write(b"{'single': 'quotes'}")
                reply = await _recv(reader)
                assert reply["error"]["class"] == "GenericError"
                assert reply["error"]["desc"].startswith("JSON parse error")
                writer.write(b"garbage\n")
                assert (await _recv(reader))["error"]["desc"].startswith("JSON parse error")
                # The connection survived all of that.
                writer.write(b'{"execute": "query-status"}')
                assert await _recv(reader) == {"return": {"status": "running", "running": True}}
            finally:
                writer.close()
                await writer.wait_closed()

    run(scenario())


def test_socket_files_follow_the_vms_with_private_modes(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            assert stat.S_IMODE(os.stat(env.qmp_dir).st_mode) == 0o700
            assert os.listdir(env.qmp_dir) == []
            await env.guest("vm1").open()  # a VM appears when its first input is processed
            await env.guest("odd/name").open()
            await env.servers.sync()
            assert sorted(os.listdir(env.qmp_dir)) == ["odd%2Fname.sock", "vm1.sock"]
            for name in os.listdir(env.qmp_dir):
                st = os.stat(env.qmp_dir / name)
                assert stat.S_ISSOCK(st.st_mode)
                assert stat.S_IMODE(st.st_mode) == 0o600
                assert st.st_uid == os.getuid()
            c = await env.client("odd/name")
            assert await c.execute("query-balloon") == {"actual": BOOT}
            # A VM that leaves the engine's projection loses its socket.
            del env.service.runner.states["vm1"]
            await env.guest("vm2").open()
            await env.servers.sync()
            assert sorted(os.listdir(env.qmp_dir)) == ["odd%2Fname.sock", "vm2.sock"]
        assert os.listdir(tmp_path / "qmp") == []  # close() removed every socket

    run(scenario())


def test_existing_vms_get_sockets_at_start_and_stale_files_are_replaced(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            await env.ready_guest("vm1")
        # Restart on the same log and directory, with a stale socket file left behind.
        qmp_dir = tmp_path / "qmp"
        qmp_dir.chmod(0o755)
        import socket

        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(qmp_dir / "vm1.sock"))
        stale.close()
        async with qmp_env(tmp_path) as env:
            assert stat.S_IMODE(os.stat(qmp_dir).st_mode) == 0o700
            c = await env.client("vm1")
            assert await c.execute("query-balloon") == {"actual": BOOT}

    run(scenario())


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the directory to another user")
def test_directory_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 12345, 12345)
    with pytest.raises(PermissionError):
        ensure_private_dir(d)


# ------------------------------------------------------------------------------ commands
def test_balloon_and_query_balloon(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            c = await env.client("vm1")
            assert await c.execute("query-balloon") == {"actual": BOOT}
            assert await c.execute("balloon", {"value": BOOT - 256 * MIB}) == {}
            assert env.service.runner.states["vm1"].target_pages == (BOOT - 256 * MIB) >> 12
            assert "SetTarget" in inbox_kinds(env, "vm1")  # commands are in the audit trail
            await g.answer()
            assert any(isinstance(m, BalloonRequest) for m in g.received)
            assert await c.execute("query-balloon") == {"actual": BOOT - 256 * MIB}
            before = len(inbox_kinds(env, "vm1"))
            await expect_error(
                c, "balloon", {"value": 0}, "GenericError", "Parameter 'value' expects a size greater than zero"
            )
            await expect_error(c, "balloon", {}, "GenericError", "Parameter 'value' is missing")
            await expect_error(
                c, "balloon", {"value": "1G"}, "GenericError", "Invalid parameter type for 'value', expected: integer"
            )
            await expect_error(c, "balloon", {"value": 1, "x": 2}, "GenericError", "Parameter 'x' is unexpected")
            assert len(inbox_kinds(env, "vm1")) == before  # refused before entering the inbox

            # A VM the engine knows but whose guest never described its memory: no balloon device.
            await env.guest("bare").put(inp.AddBackend(backend_id="m", size_bytes=GIB))
            await env.servers.sync()
            bare = await env.client("bare")
            no_device = "No balloon device has been activated"
            await expect_error(bare, "query-balloon", None, "DeviceNotActive", no_device)
            await expect_error(bare, "balloon", {"value": GIB}, "DeviceNotActive", no_device)

    run(scenario())


def test_object_add_and_object_del(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            c = await env.client("vm1")
            add = {"qom-type": "memory-backend-ram", "id": "mem1", "size": GIB}
            assert await c.execute("object-add", add) == {}
            assert env.service.runner.states["vm1"].backends == {"mem1": GIB}
            await expect_error(
                c,
                "object-add",
                add,
                "GenericError",
                "attempt to add duplicate property 'mem1' to object (type 'container')",
            )
            await expect_error(
                c,
                "object-add",
                {**add, "qom-type": "memory-backend-file"},
                "GenericError",
                "Invalid parameter 'qom-type': hvdm creates only 'memory-backend-ram' objects, "
                "not 'memory-backend-file'",
            )
            await expect_error(
                c, "object-add", {**add, "id": "1bad"}, "GenericError", "Parameter 'id' expects an identifier"
            )
            await expect_error(
                c, "object-add", {**add, "id": "m0", "size": 0}, "GenericError", "can't create backend with size 0"
            )
            await expect_error(
                c,
                "object-add",
                {**add, "id": "m2", "size": GIB + 1},
                "GenericError",
                "memory backend 'm2': size must be a positive multiple of 4096",
            )
            await expect_error(
                c, "object-add", {**add, "share": True}, "GenericError", "Parameter 'share' is unexpected"
            )
            await expect_error(
                c,
                "object-add",
                {**add, "id": "m3", "size": -1},
                "GenericError",
                "Invalid parameter type for 'size', expected: size",
            )
            await expect_error(c, "object-del", {"id": "nope"}, "GenericError", "object 'nope' not found")

            # In use once the guest accepted memory from it; free again after a reboot.
            assert await c.execute("hv-balloon-add-memory", {"id": "mem1"}) == {}
            assert await c.execute("balloon", {"value": BOOT + GIB}) == {}
            await g.answer()
            assert env.service.runner.states["vm1"].hot_added_pages == GIB >> 12
            await expect_error(
                c, "object-del", {"id": "mem1"}, "GenericError", "object 'mem1' is in use, can not be deleted"
            )
            await g.put(inp.SystemReset())
            assert await c.execute("object-del", {"id": "mem1"}) == {}
            assert env.service.runner.states["vm1"].backends == {}

    run(scenario())


def test_hv_balloon_add_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            await env.ready_guest("vm1")
            c = await env.client("vm1")
            await expect_error(
                c, "hv-balloon-add-memory", {"id": "mem1"}, "GenericError", "Memory backend 'mem1' not found"
            )
            await c.execute("object-add", {"qom-type": "memory-backend-ram", "id": "mem1", "size": 2 * GIB})
            assert await c.execute("hv-balloon-add-memory", {"id": "mem1"}) == {}
            await expect_error(
                c, "hv-balloon-add-memory", {"id": "mem1"}, "GenericError", "memory backend 'mem1' is busy"
            )
            # Too big for the hot-add window: the projection cannot tell, the engine refuses it and
            # its CommandRejected event becomes the QMP error.
            await c.execute("object-add", {"qom-type": "memory-backend-ram", "id": "huge", "size": 100 * GIB})
            with pytest.raises(ExecuteError) as info:
                await c.execute("hv-balloon-add-memory", {"id": "huge"})
            assert info.value.error.error.class_ == "GenericError"
            assert info.value.error.error.desc.startswith("WINDOW_EXHAUSTED")
            devices = await c.execute("query-memory-devices")
            assert devices == [
                {"type": "hv-balloon", "data": {"id": "hvb", "max-size": 60 * GIB, "memaddr": 32 * GIB}},
                {
                    "type": "dimm",
                    "data": {
                        "addr": 32 * GIB,
                        "size": 2 * GIB,
                        "slot": -1,
                        "node": 0,
                        "memdev": "/objects/mem1",
                        "hotplugged": True,
                        "hotpluggable": False,
                    },
                },
            ]

            # A guest that has not negotiated yet, and one without hot-add.
            early = env.guest("early")
            await early.open()
            await early.put(inp.AddBackend(backend_id="m", size_bytes=GIB))
            await env.servers.sync()
            ce = await env.client("early")
            await expect_error(
                ce, "hv-balloon-add-memory", {"id": "m"}, "GenericError", "no guest attached to the DM protocol yet"
            )
            assert await ce.execute("query-memory-devices") == [
                {"type": "hv-balloon", "data": {"id": "hvb", "max-size": 60 * GIB, "memaddr": 32 * GIB}}
            ]
            await env.ready_guest("nohot", hot_add=False)
            cn = await env.client("nohot")
            await cn.execute("object-add", {"qom-type": "memory-backend-ram", "id": "m", "size": GIB})
            await expect_error(
                cn, "hv-balloon-add-memory", {"id": "m"}, "GenericError", "guest does not support hot-add"
            )
            await env.guest("bare").put(inp.AddBackend(backend_id="m", size_bytes=GIB))
            await env.servers.sync()
            assert await (await env.client("bare")).execute("query-memory-devices") == []

    run(scenario())


def test_status_report_query_and_simple_queries(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            c = await env.client("vm1")
            await expect_error(
                c, "query-hv-balloon-status-report", None, "GenericError", "no guest memory status report received yet"
            )
            await g.status(3 * GIB, GIB + 4096)
            assert await c.execute("query-hv-balloon-status-report") == {"committed": GIB + 4096, "available": 3 * GIB}
            await env.ready_guest("quiet", status_reports=False)
            await expect_error(
                await env.client("quiet"),
                "query-hv-balloon-status-report",
                None,
                "GenericError",
                "guest memory status reporting not enabled",
            )
            await env.guest("bare").put(inp.AddBackend(backend_id="m", size_bytes=GIB))
            await env.servers.sync()
            await expect_error(
                await env.client("bare"),
                "query-hv-balloon-status-report",
                None,
                "GenericError",
                "no hv-balloon device present",
            )
            commands = await c.execute("query-commands")
            assert isinstance(commands, list)
            names = [e["name"] for e in commands]
            assert sorted(names) == sorted([*COMMANDS, "qmp_capabilities"])
            assert await c.execute("query-status") == {"status": "running", "running": True}
            assert await c.execute("query-version") == {
                "qemu": {"major": 10, "minor": 0, "micro": 0},
                "package": "hvdm",
            }

    run(scenario())


def test_human_monitor_command(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            c = await env.client("vm1")

            async def hmp(line: str) -> str:
                out = await c.execute("human-monitor-command", {"command-line": line})
                assert isinstance(out, str)
                return out

            assert await hmp("info balloon") == "balloon: actual=4096\r\n"
            assert await hmp("balloon 3840") == ""
            await g.answer()
            assert await hmp("info balloon") == "balloon: actual=3840\r\n"
            assert await hmp("object_add memory-backend-ram,id=mem1,size=1G") == ""
            assert await hmp("hv-balloon-add-memory id=mem1") == ""
            devices = await hmp("info memory-devices")
            assert devices == (
                'Memory device [hv-balloon]: "hvb"\r\n'
                "  memaddr: 0x800000000\r\n"
                "  max-size: 64424509440\r\n"
                'Memory device [dimm]: ""\r\n'
                "  addr: 0x800000000\r\n"
                "  slot: -1\r\n"
                "  node: 0\r\n"
                "  size: 1073741824\r\n"
                "  memdev: /objects/mem1\r\n"
                "  hotplugged: true\r\n"
                "  hotpluggable: false\r\n"
            )
            assert await hmp("object_del mem9") == "Error: object 'mem9' not found\r\n"
            assert await hmp("frobnicate") == "unknown command: 'frobnicate'\r\n"
            assert await hmp("info status") == "VM status: running\r\n"
            assert "object_add" in await hmp("help")
            await expect_error(c, "human-monitor-command", {}, "GenericError", "Parameter 'command-line' is missing")

    run(scenario())


# ------------------------------------------------------------------------------ events
def test_balloon_change_is_rate_limited_keeping_the_latest(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            c = await env.client("vm1")
            env.clock.now += 10  # the throttle armed when the VM was described has expired
            await c.execute("balloon", {"value": BOOT - 256 * MIB})
            await g.answer()
            ev = await next_event(c)
            assert ev["event"] == "BALLOON_CHANGE"
            assert ev["data"] == {"actual": BOOT - 256 * MIB}
            assert set(ev["timestamp"]) == {"seconds", "microseconds"}
            # Two more changes within the same second: held back, only the latest survives.
            await c.execute("balloon", {"value": BOOT - 512 * MIB})
            await g.answer()
            await c.execute("balloon", {"value": BOOT - 768 * MIB})
            await g.answer()
            assert await drained_events(c) == []
            env.clock.now += 0.5
            env.servers.poll()
            assert await drained_events(c) == []
            env.clock.now += 0.5
            env.servers.poll()
            events = await drained_events(c)
            assert [(e["event"], e["data"]) for e in events] == [("BALLOON_CHANGE", {"actual": BOOT - 768 * MIB})]
            # The timer re-armed when it fired; with nothing pending it goes idle and the next
            # change is sent at once.
            env.clock.now += 1
            env.servers.poll()
            await c.execute("balloon", {"value": BOOT})
            await g.answer()
            assert (await next_event(c))["data"] == {"actual": BOOT}

    run(scenario())


def test_status_report_events_are_rate_limited_and_driven_by_engine_batches(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            c = await env.client("vm1")
            await g.status(2 * GIB, GIB)
            ev = await next_event(c)
            assert ev["event"] == "HV_BALLOON_STATUS_REPORT"
            assert ev["data"] == {"committed": GIB, "available": 2 * GIB}
            await g.status(2 * GIB, GIB + 4096)
            await g.status(2 * GIB, GIB + 8192)
            assert await drained_events(c) == []
            env.clock.now += 1.0
            await g.tick()  # any engine batch fires due throttles; no sleeping, no explicit poll
            events = await drained_events(c)
            assert [e["data"] for e in events] == [{"committed": GIB + 8192, "available": 2 * GIB}]

    run(scenario())


def test_no_status_report_event_when_status_reporting_is_off(tmp_path: Path) -> None:
    """QEMU's ``hv_balloon_handle_status_report`` returns before sending the event when the
    device has ``status-report=off`` (here: the hello's ``status_reports: false``)."""

    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            quiet = await env.ready_guest("vm1", status_reports=False)
            loud = await env.ready_guest("vm2")
            c_quiet, c_loud = await env.client("vm1"), await env.client("vm2")
            await quiet.status(2 * GIB, GIB)
            await loud.status(2 * GIB, GIB)
            assert (await next_event(c_loud))["event"] == "HV_BALLOON_STATUS_REPORT"
            env.clock.now += 2.0
            await quiet.tick()
            assert [e["event"] for e in await drained_events(c_quiet)] == []
            await expect_error(
                c_quiet,
                "query-hv-balloon-status-report",
                None,
                "GenericError",
                "guest memory status reporting not enabled",
            )

    run(scenario())


def test_memory_backend_unused_after_reboot_is_never_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            c = await env.client("vm1")
            for backend in ("mem1", "mem2"):
                await c.execute("object-add", {"qom-type": "memory-backend-ram", "id": backend, "size": GIB})
                await c.execute("hv-balloon-add-memory", {"id": backend})
            await c.execute("balloon", {"value": BOOT + 2 * GIB})
            await g.answer()
            assert env.service.runner.states["vm1"].current_pages == (BOOT + 2 * GIB) >> 12
            c.events.clear()
            await g.put(inp.SystemReset())
            events = await drained_events(c)
            unused = [e["data"] for e in events if e["event"] == "HV_BALLOON_MEMORY_BACKEND_UNUSED"]
            assert unused == [{"id": "mem1"}, {"id": "mem2"}]  # same instant, both delivered
            # As the seed says: the backend can now be deleted, or re-added once the rebooted
            # guest has negotiated again.
            await c.execute("object-del", {"id": "mem1"})
            await g.handshake()
            await g.tick(2)
            await c.execute("hv-balloon-add-memory", {"id": "mem2"})
            assert [v.backend_id for v in env.service.runner.states["vm1"].layout.vdimms] == ["mem2"]

    run(scenario())


def test_events_reach_every_negotiated_client(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            a, b = await env.client("vm1"), await env.client("vm1")
            await g.status(2 * GIB, GIB)
            assert (await next_event(a))["event"] == "HV_BALLOON_STATUS_REPORT"
            assert (await next_event(b))["event"] == "HV_BALLOON_STATUS_REPORT"

    run(scenario())


def test_a_failing_projection_never_breaks_the_engine(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            c = await env.client("vm1")

            def broken_clock() -> float:
                raise RuntimeError("clock on fire")

            env.servers.clock = broken_clock
            await g.status(2 * GIB, GIB)  # processed and committed despite the listener failing
            assert env.service.runner.states["vm1"].counters.status_reports_total == 1
            assert await c.execute("query-hv-balloon-status-report") == {"committed": GIB, "available": 2 * GIB}

    run(scenario())
