"""QEMU agent benchmark: how many VMs one ``--qemu-dir`` agent polls at 1 Hz, and hvdm's overhead.

1. Scale: N simulated QEMU monitors (virtio-balloon, idle guests: ``query-balloon`` plus
   ``qom-get guest-stats`` each second, as the agent polls a virtio VM) run in a child process;
   this process runs the embedded service (SQLite log, engine, ticker) with the agent watching
   their directory at 1 Hz. CPU of this process over the measured window, as % of one core.
   Baseline in the same run: a bare asyncio poller sending the same two commands per VM per
   second over raw sockets (no QMP library, no engine): the ratio is the price of qemu.qmp and
   the service around it.
2. Command path: a target submitted to the inbox until the simulated QEMU receives the QMP
   ``balloon`` (inbox -> engine -> outbox -> agent -> monitor), median and p99 over repetitions.
3. ``--real-virtio SOCKET`` (a real guest, e.g. the realguest kit's ``rig virtio-up``): 2 GiB ->
   1 GiB -> 2 GiB, target to actual, first directly over QMP (polling ``query-balloon`` every
   5 ms), then through hvdm's own QMP socket (``balloon`` there, ``query-balloon`` there) with the
   agent polling QEMU at 1 s and at 0.1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from services.dm_engine import inputs as inp
from services.embedded.qemu_sink import attach_to_service
from services.embedded.service import EmbeddedService
from services.qemu_agent.simulated_qemu import SimulatedQemu
from services.qmp import start_qmp_servers

GIB = 1 << 30


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, Linux {platform.release()}"
    )


# ------------------------------------------------------------------------------------ child
async def serve_sims(directory: str, count: int) -> None:
    sims = [SimulatedQemu(f"{directory}/vm{i:04d}.sock", step_seconds=0.5) for i in range(count)]
    for sim in sims:
        await sim.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


class Sims:
    def __init__(self, count: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="qa", dir="/tmp")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.qemu_agent", "--serve-sims", self.dir, str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------ scale
async def measure_agent(count: int, seconds: float) -> dict[str, Any]:
    sims = Sims(count)
    workdir = Path(tempfile.mkdtemp(prefix="qa-db"))
    service = EmbeddedService.open(workdir / "hvdm.db")
    await service.start()
    agent = await attach_to_service(service, [], directory=sims.dir, poll_seconds=1.0)
    try:
        deadline = time.monotonic() + 120
        while len(agent.sessions) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        attached = len(agent.sessions)
        await asyncio.sleep(3)  # first polls, guest-stats switched on
        cpu0, wall0 = time.process_time(), time.monotonic()
        polls0 = sum(s.counters.polls for s in agent.sessions.values())
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        polls = sum(s.counters.polls for s in agent.sessions.values()) - polls0
    finally:
        await agent.close()
        await service.stop()
        sims.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"vms": count, "attached": attached, "cpu_percent": 100 * cpu / wall, "polls_per_s": polls / wall}


async def measure_raw(count: int, seconds: float) -> dict[str, Any]:
    """The baseline: the same commands per VM per second over raw sockets, nothing else."""
    sims = Sims(count)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for i in range(count):
            r, w = await asyncio.open_unix_connection(f"{sims.dir}/vm{i:04d}.sock")
            await r.readline()
            w.write(b'{"execute":"qmp_capabilities"}')
            await r.readline()
            conns.append((r, w))

        async def poll(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while True:
                w.write(b'{"execute":"query-balloon","id":1}')
                json.loads(await r.readline())
                w.write(
                    b'{"execute":"qom-get","arguments":{"path":"/machine/peripheral/balloon0",'
                    b'"property":"guest-stats"},"id":2}'
                )
                json.loads(await r.readline())
                await asyncio.sleep(1.0)

        tasks = [asyncio.create_task(poll(r, w)) for r, w in conns]
        await asyncio.sleep(2)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    finally:
        for _, w in conns:
            w.close()
        sims.stop()
    return {"vms": count, "cpu_percent": 100 * cpu / wall}


# ------------------------------------------------------------------------------------ command path
async def measure_command_path(repetitions: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="qa-cmd"))
    sim = SimulatedQemu(str(workdir / "vm.sock"))
    await sim.start()
    service = EmbeddedService.open(workdir / "hvdm.db")
    await service.start()
    agent = await attach_to_service(service, [sim.path], poll_seconds=1.0)
    arrivals: list[float] = []
    original = sim._answer

    def spy(command: str | None, args: dict[str, Any]) -> dict[str, Any]:
        if command == "balloon":
            arrivals.append(time.perf_counter())
        return original(command, args)

    sim._answer = spy  # type: ignore[method-assign]
    samples: list[float] = []
    try:
        while "vm" not in agent.sessions:
            await asyncio.sleep(0.01)
        for i in range(repetitions):
            before = len(arrivals)
            started = time.perf_counter()
            service.submit("vm", inp.SetTarget(target_bytes=(GIB if i % 2 == 0 else 2 * GIB)))
            while len(arrivals) == before:
                await asyncio.sleep(0.0005)
            samples.append(arrivals[-1] - started)
            await asyncio.sleep(0.02)
    finally:
        await agent.close()
        await service.stop()
        await sim.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    samples.sort()
    return {
        "repetitions": repetitions,
        "median_ms": 1000 * statistics.median(samples),
        "p99_ms": 1000 * samples[max(0, int(len(samples) * 0.99) - 1)],
    }


# ------------------------------------------------------------------------------------ real guest
async def _until_actual(client: QMPClient, value: int, timeout: float = 60) -> float:
    started = time.perf_counter()
    while True:
        answer: Any = await client.execute("query-balloon")
        if answer["actual"] == value:
            break
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"actual never reached {value}")
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def _round(client: QMPClient) -> tuple[float, float]:
    started = time.perf_counter()
    await client.execute("balloon", {"value": GIB})
    await _until_actual(client, GIB)
    down = time.perf_counter() - started
    started = time.perf_counter()
    await client.execute("balloon", {"value": 2 * GIB})
    await _until_actual(client, 2 * GIB)
    return down, time.perf_counter() - started


async def measure_real(socket_path: str, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    direct = QMPClient("bench")
    await direct.connect(socket_path)
    try:
        out["direct"] = [await _round(direct) for _ in range(rounds)]
    finally:
        await direct.disconnect()
    for poll in (1.0, 0.1):
        workdir = Path(tempfile.mkdtemp(prefix="qa-real", dir="/tmp"))
        service = EmbeddedService.open(workdir / "hvdm.db")
        await service.start()
        servers = await start_qmp_servers(service, str(workdir / "qmp"))
        agent = await attach_to_service(service, [socket_path], poll_seconds=poll)
        try:
            while not agent.sessions:
                await asyncio.sleep(0.05)
            vm = next(iter(agent.sessions))
            while not (workdir / "qmp" / f"{vm}.sock").exists():
                await asyncio.sleep(0.05)
            client = QMPClient("bench")
            await client.connect(str(workdir / "qmp" / f"{vm}.sock"))
            try:
                out[f"hvdm_poll_{poll:g}"] = [await _round(client) for _ in range(rounds)]
            finally:
                await client.disconnect()
        finally:
            await agent.close()
            await servers.close()
            await service.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------ main
async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "scale": []}
    for count in args.vms:
        agent = await measure_agent(count, args.seconds)
        raw = await measure_raw(count, args.seconds)
        report["scale"].append({**agent, "raw_cpu_percent": raw["cpu_percent"]})
    report["command_path"] = await measure_command_path(args.repetitions)
    if args.real_virtio:
        report["real_virtio"] = await measure_real(args.real_virtio, args.rounds)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.qemu_agent", description=__doc__)
    parser.add_argument("--vms", type=lambda t: [int(x) for x in t.split(",")], default=[50, 100, 200, 400])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per step")
    parser.add_argument("--repetitions", type=int, default=100, help="command-path samples")
    parser.add_argument("--real-virtio", help="QMP socket of a real virtio-balloon guest with 2 GiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-sims", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_sims:
        asyncio.run(serve_sims(args.serve_sims[0], int(args.serve_sims[1])))
        return 0
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print(f"qemu_agent benchmark on {report['machine']}")
    for row in report["scale"]:
        ratio = row["cpu_percent"] / row["raw_cpu_percent"] if row["raw_cpu_percent"] else float("inf")
        print(
            f"  {row['vms']:>5} virtio VMs polled at 1 Hz ({row['attached']} attached, "
            f"{row['polls_per_s']:.0f} polls/s): "
            f"hvdm process {row['cpu_percent']:.1f}% of a core; bare raw-socket poller {row['raw_cpu_percent']:.1f}% "
            f"(x{ratio:.1f})"
        )
    cp = report["command_path"]
    print(
        f"  command path inbox -> QMP balloon at the monitor: median {cp['median_ms']:.2f} ms, "
        f"p99 {cp['p99_ms']:.2f} ms ({cp['repetitions']} targets)"
    )
    real = report.get("real_virtio")
    if real:
        for name, rounds in real.items():
            downs = [d for d, _ in rounds]
            ups = [u for _, u in rounds]
            print(
                f"  real virtio guest, {name}: 2 GiB -> 1 GiB median {statistics.median(downs):.3f} s, "
                f"back {statistics.median(ups):.3f} s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
