"""``hvdm ctl`` as a user runs it: a separate process talking QMP to a running service."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from services.dm_engine.inputs import SetTarget
from tests.metrics.guest_driver import GIB
from tests.qmp.qmp_env import Env, qmp_env

REPO = Path(__file__).resolve().parents[2]


async def ctl(env: Env, *words: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        "ctl",
        "--qmp-dir",
        str(env.qmp_dir),
        *words,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_hmp_session_of_the_seed_through_hvdm_ctl(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            assert await ctl(env, "vm1", "info", "balloon") == (0, "balloon: actual=4096\n", "")
            assert await ctl(env, "vm1", "object_add", "memory-backend-ram,id=mem1,size=2G") == (0, "", "")
            assert await ctl(env, "vm1", "hv-balloon-add-memory", "id=mem1") == (0, "", "")
            assert await ctl(env, "vm1", "balloon", "5120") == (0, "", "")
            await g.answer()
            assert await ctl(env, "vm1", "info", "balloon") == (0, "balloon: actual=5120\n", "")
            code, out, _ = await ctl(env, "vm1", "info", "memory-devices")
            assert code == 0 and "memdev: /objects/mem1" in out and "size: 2147483648" in out
            # In use now: QEMU's error, exit status 1.
            code, out, err = await ctl(env, "vm1", "object_del", "mem1")
            assert (code, out) == (1, "")
            assert err == "Error: object 'mem1' is in use, can not be deleted (GenericError)\n"
            code, out, _ = await ctl(env, "vm1", "qmp", "query-hv-balloon-status-report")
            assert code == 1
            await g.status(2 * GIB, GIB)
            code, out, _ = await ctl(env, "vm1", "qmp", "query-hv-balloon-status-report")
            assert code == 0 and json.loads(out) == {"available": 2 * GIB, "committed": GIB}
            code, out, _ = await ctl(env, "vm1", "info", "hv-balloon-status-report")
            assert (code, out) == (0, "committed: 1024 MiB, available: 2048 MiB\n")

    asyncio.run(scenario())


def test_ctl_usage_and_connection_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            await env.ready_guest("vm1")
            code, _, err = await ctl(env, "nosuchvm", "info", "balloon")
            assert code == 2 and "cannot talk to VM 'nosuchvm'" in err
            code, _, err = await ctl(env, "vm1", "frobnicate")
            assert code == 2 and err == "unknown command: 'frobnicate'\n"
            code, out, _ = await ctl(env, "vm1", "help")
            assert code == 0 and "object_del id" in out
            code, _, err = await ctl(env, "vm1")
            assert code == 2 and "missing command" in err

    asyncio.run(scenario())


def test_ctl_events_follows_live_events(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with qmp_env(tmp_path) as env:
            g = await env.ready_guest("vm1")
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services",
                "ctl",
                "--qmp-dir",
                str(env.qmp_dir),
                "vm1",
                "events",
                "--count",
                "2",
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                # Wait (bounded) until the client has negotiated, so no event goes out before it.
                monitor = env.servers.monitors["vm1"]
                for _ in range(600):
                    if any(s.negotiated for s in monitor.sessions):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("hvdm ctl events never connected")
                await g.status(2 * GIB, GIB)
                env.clock.now += 5
                await g.put(SetTarget(target_bytes=3 * GIB))
                await g.answer()
                out, err = await asyncio.wait_for(proc.communicate(), 60)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert proc.returncode == 0, err
            events: list[dict[str, Any]] = [json.loads(line) for line in out.decode().splitlines()]
            assert [e["event"] for e in events] == ["HV_BALLOON_STATUS_REPORT", "BALLOON_CHANGE"]
            assert events[0]["data"] == {"available": 2 * GIB, "committed": GIB}
            assert events[1]["data"] == {"actual": 3 * GIB}

    asyncio.run(scenario())
