"""Gateway load: 1,000 simulated Linux guests on ONE gateway (embedded backend) over UNIX sockets.

Every guest sends its status report once a second of simulated time and answers the host; an
operator loop in the gateway's process moves a rotating group of VMs between 75 % and 100 % of
their boot memory, so balloon and unballoon transactions run all the time. The guests live in
this process, the gateway with the engine and its SQLite log in a child process, so the child's
CPU (``getrusage``) and memory (``VmRSS`` / ``VmHWM``) are the gateway's alone.

What it reports:

* frames/s in (guest to host) and out (host to guest) at the gateway, over the measured window;
* the gateway process's CPU (% of one core) and RSS over that window;
* dropped frames, which must be 0. At the end the operator stops, the guests stop sending on
  their own (they still answer the host) and everything settles; then, per VM, the guest's sent
  messages must equal the gateway's frames in and the inbox's guest-message records, and the
  outbox's messages must equal the gateway's frames out and the messages the guest received.

Run: ``python -m bench.gateway_load [--guests 1000] [--seconds 30]`` (``main(argv) -> int``).
Every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import SetTarget
from services.dm_engine.state import ProtocolState
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.service import EmbeddedService
from services.guest_sim import GuestConfig, SimulatedGuest
from services.units import GIB
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.hello import Hello
from services.vmbus_gateway.server import GatewayLimits, GatewayServer

ROOT = Path(__file__).resolve().parents[1]
#: A Linux guest swallows its first 45 status calls, one per 1 s + 1 jiffy of its time: a warp of
#: 45 s skips all but the last, and the first report then comes at the normal pace (a longer warp
#: would squeeze real reports into one engine tick, which the engine calls a flood).
STATUS_DELAY_SECONDS = 45.0
BOOT = 4 * GIB
MAXMEM = 16 * GIB


# ---------------------------------------------------------------------------------------- guests
class WarpClock:
    """The guests' simulated clock: ``speed`` simulated seconds per wall second, plus warps.

    Why warps: a Linux guest swallows its first 45 status-report calls (``pressure_report_delay``,
    one per second of its time), so at speed 1 the fleet would be silent for 45 s. ``warp`` moves
    the guests' time forward by ``seconds`` over ``over`` wall seconds; their status threads run
    through the swallowed calls quickly, then report at 1 Hz of real time. The engine's clock is
    its own (ticks in the gateway process) and never sees the warp.
    """

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed
        self._t0 = time.monotonic()
        self._warps: list[tuple[float, float, float]] = []  # (wall start, wall length, seconds)

    def warp(self, seconds: float, over: float) -> None:
        self._warps.append((time.monotonic(), over, seconds))

    def now(self) -> float:
        t = time.monotonic()
        extra = sum(s * min(1.0, max(0.0, (t - start) / over)) for start, over, s in self._warps)
        return (t - self._t0) * self.speed + extra


class QuietableGuest:
    """A SimulatedGuest whose own initiative (status reports, timers) can be switched off; it
    still answers every host message, so transactions in flight complete."""

    def __init__(self, guest: SimulatedGuest) -> None:
        self.guest = guest
        self.quiet = False

    @property
    def closed(self) -> bool:
        return self.guest.closed

    def connect(self, now: float) -> list[bytes]:
        return self.guest.connect(now)

    def receive(self, message: bytes, now: float) -> list[bytes]:
        return self.guest.receive(message, now)

    def poll(self, now: float) -> list[bytes]:
        return [] if self.quiet else self.guest.poll(now)


@dataclass(slots=True)
class GuestFleet:
    """Simulated guests, each on its own connection to the gateway socket."""

    socket: str
    count: int
    clock: Callable[[], float]
    poll_interval_s: float = 0.2
    links: dict[str, GuestLink] = field(default_factory=dict)
    guests: dict[str, QuietableGuest] = field(default_factory=dict)

    async def connect(self, concurrency: int = 50) -> None:
        """Open every guest's channel, ``concurrency`` connections at a time (the listen backlog)."""
        names = [f"vm{i + 1}" for i in range(self.count)]
        for start in range(0, len(names), concurrency):
            chunk = names[start : start + concurrency]
            for i, vm in enumerate(chunk, start):
                guest = QuietableGuest(SimulatedGuest(GuestConfig(boot_bytes=BOOT, profile="linux", seed=i)))
                self.guests[vm] = guest
                self.links[vm] = GuestLink(
                    guest,
                    Hello(vm=vm, boot_bytes=BOOT, maxmem_bytes=MAXMEM),
                    self.clock,
                    poll_interval_s=self.poll_interval_s,
                )
            await asyncio.gather(*(self.links[vm].open(unix_path=self.socket) for vm in chunk))

    def quiet(self) -> None:
        for guest in self.guests.values():
            guest.quiet = True

    def sent(self) -> dict[str, int]:
        return {vm: link.sent_messages for vm, link in self.links.items()}

    def received(self) -> dict[str, int]:
        return {vm: link.host_messages for vm, link in self.links.items()}

    async def stop(self) -> None:
        await asyncio.gather(*(link.stop() for link in self.links.values()))


# ---------------------------------------------------------------------------------------- the gateway
@dataclass(slots=True)
class GatewayHost:
    """The embedded service, its gateway and an operator moving targets, in one process."""

    service: EmbeddedService
    server: GatewayServer
    period_s: float = 1.0
    fraction: float = 0.1
    targets_set: int = 0
    _operator: asyncio.Task[None] | None = None
    _next: int = 0

    @classmethod
    async def start(
        cls, db: str, socket: str, *, speed: float = 1.0, post_init_wait_ticks: int = 5, **kw: Any
    ) -> GatewayHost:
        # The engine's post-init wait (50 ticks by default, as Hyper-V) is shortened so that the
        # operator's balloon traffic starts within a short run.
        config = EngineConfig(post_init_wait_ticks=post_init_wait_ticks)
        service = EmbeddedService.open(db, speed=speed, config=config)
        await service.start()
        # One stored status report per simulated second, as the guests send them; the gateway
        # coalesces (counts, does not store) what comes faster.
        server = GatewayServer(EmbeddedBackend(service), GatewayLimits(status_interval_s=1.0 / speed))
        await server.start(unix_path=socket)
        host = cls(service, server, **kw)
        host._operator = asyncio.create_task(host._operate(), name="bench-operator")
        return host

    async def _operate(self) -> None:
        """Every period, the next ``fraction`` of the VMs (in rotation) alternate between 75 % and
        100 % of boot memory: a balloon, then an unballoon transaction per VM and cycle."""
        while True:
            await asyncio.sleep(self.period_s)
            states = self.service.runner.states
            ready = sorted(vm for vm, s in states.items() if s.protocol is ProtocolState.IDLE)
            if not ready:
                continue
            group = max(1, int(len(ready) * self.fraction))
            for i in range(group):
                vm = ready[(self._next + i) % len(ready)]
                state = states[vm]
                low = state.boot_pages * 3 // 4
                target = state.boot_pages if state.target_pages == low else low
                self.service.submit(vm, SetTarget(target_bytes=target << 12))
                self.targets_set += 1
            self._next += group

    def stop_operator(self) -> None:
        if self._operator is not None:
            self._operator.cancel()
            self._operator = None

    def counters(self) -> dict[str, Any]:
        conns = self.server.connections.values()
        runner = self.service.runner
        return {
            "connections": len(self.server.connections),
            "frames_in": sum(c.frames_in for c in conns),
            "coalesced": sum(c.coalesced for c in conns),
            "frames_out": sum(c.frames_out for c in conns),
            "closed": len(self.server.closed_reasons),
            "lag": runner.lag(),
            "undelivered": sum(
                max(0, self.service.log.outbox_high_watermark(vm) - c.delivered)
                for vm, c in self.server.connections.items()
            ),
            "targets_set": self.targets_set,
        }

    def per_vm(self) -> dict[str, dict[str, int]]:
        return {
            vm: {"frames_in": c.frames_in, "frames_out": c.frames_out, "coalesced": c.coalesced}
            for vm, c in self.server.connections.items()
        }

    async def stop(self) -> None:
        self.stop_operator()
        await self.server.close()
        await self.service.stop()


def log_counts(db: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per VM: inbox records that carry a guest frame, and outbox messages (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        inbox = dict(
            conn.execute(
                "SELECT vm, COUNT(*) FROM inbox WHERE kind IN ('GuestMessage', 'MalformedFrame') GROUP BY vm"
            ).fetchall()
        )
        outbox = dict(conn.execute("SELECT vm, COUNT(*) FROM outbox GROUP BY vm").fetchall())
        return inbox, outbox
    finally:
        conn.close()


def event_kinds(db: str) -> dict[str, int]:
    """Events per kind, and guest violations per reason as ``GuestViolation:REASON``."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = dict(conn.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
        for reason, n in conn.execute(
            "SELECT json_extract(record, '$.reason'), COUNT(*) FROM events WHERE kind = 'GuestViolation' GROUP BY 1"
        ):
            out[f"GuestViolation:{reason}"] = n
        return out
    finally:
        conn.close()


def drops(
    sent: dict[str, int],
    received: dict[str, int],
    gateway: dict[str, dict[str, int]],
    inbox: dict[str, int],
    outbox: dict[str, int],
) -> dict[str, int]:
    """Frames lost anywhere on the way, both directions (every value must be 0). Status reports
    the gateway coalesced were counted, not lost."""
    vms = set(sent) | set(gateway)
    return {
        "guest_to_gateway": sum(abs(sent.get(vm, 0) - gateway.get(vm, {}).get("frames_in", 0)) for vm in vms),
        "gateway_to_inbox": sum(
            abs(gateway.get(vm, {}).get("frames_in", 0) - gateway.get(vm, {}).get("coalesced", 0) - inbox.get(vm, 0))
            for vm in vms
        ),
        "outbox_to_gateway": sum(abs(outbox.get(vm, 0) - gateway.get(vm, {}).get("frames_out", 0)) for vm in vms),
        "gateway_to_guest": sum(abs(gateway.get(vm, {}).get("frames_out", 0) - received.get(vm, 0)) for vm in vms),
    }


def memory_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------------------------------- child process
async def serve(args: argparse.Namespace) -> int:
    """The gateway process: JSON-line commands on stdin, JSON-line answers on stdout."""
    _raise_fd_limit()
    host = await GatewayHost.start(args.db, args.socket, speed=args.speed, period_s=args.period, fraction=args.fraction)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def answer(data: dict[str, Any]) -> None:
        out.write(json.dumps(data) + "\n")
        out.flush()

    answer({"ready": True})
    mark = (time.monotonic(), cpu_seconds(), host.counters())
    try:
        while line := await reader.readline():
            cmd = json.loads(line)["cmd"]
            if cmd == "mark":
                mark = (time.monotonic(), cpu_seconds(), host.counters())
                answer({"ok": True})
            elif cmd == "stats":
                wall, cpu, counters = time.monotonic(), cpu_seconds(), host.counters()
                rss, hwm = memory_kib()
                answer(
                    {
                        **counters,
                        "seconds": wall - mark[0],
                        "cpu_seconds": cpu - mark[1],
                        "frames_in_window": counters["frames_in"] - mark[2]["frames_in"],
                        "frames_out_window": counters["frames_out"] - mark[2]["frames_out"],
                        "rss_kib": rss,
                        "hwm_kib": hwm,
                        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                    }
                )
            elif cmd == "quiesce":
                host.stop_operator()
                answer({"ok": True})
            elif cmd == "per_vm":
                answer({"per_vm": host.per_vm()})
            elif cmd == "exit":
                break
    finally:
        await host.stop()
    answer({"stopped": True})
    return 0


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------------------- the run
class Child:
    def __init__(self, args: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.gateway_load", "--serve", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def ask(self, cmd: str) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the gateway process exited (status {self.proc.poll()})")
            answer: dict[str, Any] = json.loads(line)
            return answer

        return await asyncio.to_thread(call)

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError("the gateway process did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def settle(
    counters: Callable[[], Any], fleet: GuestFleet, quiet_for: float = 1.5, timeout: float = 120.0
) -> dict[str, Any]:
    """Until nothing moves for ``quiet_for`` seconds: no frame either way, no engine lag, nothing
    undelivered. ``counters`` returns the gateway's counters (awaitable)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    since = time.monotonic()
    while True:
        c = await counters()
        state = (c["frames_in"], c["frames_out"], sum(fleet.sent().values()), sum(fleet.received().values()))
        if state != last or c["lag"] or c["undelivered"]:
            last, since = state, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return dict(c)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fleet did not settle: {c}")
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    _raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="hvdm-gateway-load-"))
    db, socket = str(workdir / "hvdm.db"), str(workdir / "gw.sock")
    child = Child(
        [
            "--db",
            db,
            "--socket",
            socket,
            "--speed",
            str(args.speed),
            "--period",
            str(args.period),
            "--fraction",
            str(args.fraction),
        ]
    )
    try:
        await child.ready()
        clock = WarpClock(args.speed)
        fleet = GuestFleet(socket, args.guests, clock.now)
        started = time.monotonic()
        await fleet.connect()
        connect_s = time.monotonic() - started
        clock.warp(STATUS_DELAY_SECONDS, 2.0)
        await asyncio.sleep(2.0 + args.warmup)
        await child.ask("mark")
        sent0 = sum(fleet.sent().values())
        await asyncio.sleep(args.seconds)
        stats = await child.ask("stats")
        sent1 = sum(fleet.sent().values())
        # The end: no new targets, no guest initiative; answers still flow until all is settled.
        await child.ask("quiesce")
        fleet.quiet()
        await settle(lambda: child.ask("stats"), fleet)
        per_vm = (await child.ask("per_vm"))["per_vm"]
        sent, received = fleet.sent(), fleet.received()
        await fleet.stop()
    finally:
        child.stop()
    inbox, outbox = log_counts(db)
    kinds = event_kinds(db)
    return {
        "guests": args.guests,
        "speed": args.speed,
        "connect_seconds": connect_s,
        "window_seconds": stats["seconds"],
        "frames_in_per_s": stats["frames_in_window"] / stats["seconds"],
        "frames_out_per_s": stats["frames_out_window"] / stats["seconds"],
        "guest_messages_per_s": (sent1 - sent0) / stats["seconds"],
        "gateway_cpu_percent": 100 * stats["cpu_seconds"] / stats["seconds"],
        "gateway_rss_mib": stats["rss_kib"] / 1024,
        "gateway_peak_rss_mib": stats["hwm_kib"] / 1024,
        "targets_set": stats["targets_set"],
        "connections": stats["connections"],
        "frames_in_total": sum(sent.values()),
        "frames_out_total": sum(received.values()),
        "dropped": drops(sent, received, per_vm, inbox, outbox),
        "balloon_transactions": kinds.get("BalloonRequested", 0),
        "unballoon_transactions": kinds.get("UnballoonRequested", 0),
        "status_reports": kinds.get("StatusReported", 0),
        "violations": {k.split(":", 1)[1]: v for k, v in kinds.items() if k.startswith("GuestViolation:")},
        "workdir": str(workdir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gateway_load", description=__doc__)
    parser.add_argument("--guests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="after the last guest connected")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between operator target moves")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of the VMs moved each period")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return asyncio.run(serve(args))
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        d = report["dropped"]
        print(
            f"gateway load: {report['guests']} Linux guests on one gateway (embedded backend, UNIX sockets), "
            f"speed x{report['speed']:g}, {report['window_seconds']:.0f} s measured after "
            f"{report['connect_seconds']:.1f} s of connecting: frames in {report['frames_in_per_s']:,.0f}/s, "
            f"out {report['frames_out_per_s']:,.0f}/s; "
            f"{report['targets_set']} targets set ({report['balloon_transactions']} balloon, "
            f"{report['unballoon_transactions']} unballoon requests, {report['status_reports']:,} status reports, "
            f"guest violations {report['violations'] or 'none'}); "
            f"gateway process CPU {report['gateway_cpu_percent']:.0f}% of one core, "
            f"RSS {report['gateway_rss_mib']:.0f} MiB (peak {report['gateway_peak_rss_mib']:.0f} MiB); "
            f"after settling {report['frames_in_total']:,} guest and {report['frames_out_total']:,} host messages, "
            f"dropped {sum(d.values())} ({', '.join(f'{k} {v}' for k, v in d.items())})"
        )
    return 0 if not any(report["dropped"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
