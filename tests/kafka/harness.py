"""Drive the demo scenario in lockstep through the real distributed deployment.

simulated guests -> GuestLink sockets -> gateway (KafkaBackend) -> tansu -> ``python -m services
engine --broker`` subprocesses -> outbox -> gateway -> guests, with ticks appended by this driver
(``ticks=external``) so that a run is a function of the scenario alone (see ``scenario.py``).

One tick, reproducing ``LockstepFleet.advance`` followed by the demo scripts:

1. hold host-to-guest delivery; publish the operator inputs the scripts queued, then Tick n to
   every inbox partition;
2. move the guests' clock to n and wait until every guest has polled at n and the gateway has
   read all it sent;
3. resume delivery and run until quiet: every input on the broker is committed by the engine
   group, the gateway has read the outbox to its end, every guest has received its last message,
   and nobody sent anything new meanwhile;
4. let each script take its next step (inputs are queued for the next tick, as the embedded fleet
   processes them only at its next advance; a reboot publishes and settles at once, as there).

The engines are real processes: a test may ``kill -9`` one between ticks or inside step 3, or
restart the gateway at a quiet point; nothing in the resulting logs may change.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.demo.scenario import DemoScript, advance_demo
from services.dm_engine.inputs import Input
from services.dm_engine.records import to_dict
from services.kafka_engine import envelope
from services.kafka_engine.gateway import start_gateway, stop_gateway
from services.kafka_engine.gateway_backend import KafkaBackend
from services.kafka_engine.kafka_log import GroupOffsets, PartitionReader, ensure_topics, new_producer
from services.kafka_engine.projection import EventsProjection
from services.kafka_engine.settings import KafkaSettings
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.hello import Hello
from services.vmbus_gateway.server import GatewayLimits, GatewayServer
from tests.kafka.scenario import BOOT, MAXMEM, RunResult, TrackedGuest, accounting, make_guests

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------- engines
@dataclass(slots=True)
class Engines:
    """``hvdm engine --broker`` subprocesses; every one started is stopped by ``stop_all``."""

    url: str
    logdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            i = len(self.procs)
            log = open(self.logdir / f"engine{i}.log", "wb")  # noqa: SIM115 - owned by the child
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services", "engine", "--broker", self.url, "-v"],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(10)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is None]


def lockstep_settings(url: str, prefix: str, partitions: int = 4) -> KafkaSettings:
    return KafkaSettings.from_url(
        f"{url}?prefix={prefix}&partitions={partitions}&ticks=external"
        "&session_timeout=3&heartbeat=0.5&rebalance_timeout=3&commit_interval=0.05"
    )


# ---------------------------------------------------------------------------------------- the driver
class KafkaLockstep:
    """The demo's host (``services.demo.host.DemoHost``): the projection's states, the driver's
    progress."""

    @property
    def consumed(self) -> int:
        return self.settled_token

    @property
    def states(self) -> dict[str, Any]:
        return self.projection.states

    def now_seconds(self) -> float:
        return self.now

    def __init__(self, settings: KafkaSettings, workdir: Path, guests: int) -> None:
        self.settings = settings
        self.workdir = workdir
        self.socket = str(workdir / "gw.sock")
        self.guests: dict[str, TrackedGuest] = make_guests(guests)
        self.links: dict[str, GuestLink] = {}
        self.connected: set[str] = set()
        self.sent_base: dict[str, int] = {}
        self.tick = 0
        self.now = 0.0
        self.server: GatewayServer | None = None
        self.backend: KafkaBackend | None = None
        self.queue: list[tuple[str, Input]] = []
        self.token = 0
        self.settled_token = 0
        self.partitions = 0
        self.producer: Any = None
        self.reader: PartitionReader | None = None
        self.group: Any = None
        self.projection: EventsProjection
        self.settles = 0
        #: Per inbox partition, the offset after the last record this driver published.
        self.published_ends: dict[int, int] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        counts = await asyncio.to_thread(ensure_topics, self.settings)
        self.partitions = counts[self.settings.inbox]
        self.producer = new_producer(self.settings)
        self.reader = PartitionReader(self.settings)
        self.group = GroupOffsets(self.settings)
        self.projection = EventsProjection(self.settings, self.partitions, keep_events=True)
        await self.start_gateway()
        for vm, guest in self.guests.items():
            link = GuestLink(
                guest, Hello(vm=vm, boot_bytes=BOOT, maxmem_bytes=MAXMEM), lambda: self.now, poll_interval_s=0.005
            )
            self.links[vm] = link
            await self._open(vm)
        await self.settle()

    async def close(self) -> None:
        for link in self.links.values():
            await link.stop()
        if self.server is not None and self.backend is not None:
            await stop_gateway(self.server, self.backend)
        if self.producer is not None:
            self.producer.close()
        if self.reader is not None:
            self.reader.close()
        if self.group is not None:
            self.group.close()

    async def start_gateway(self) -> None:
        # Lockstep time runs far faster than the wall clock: the gateway's status-report
        # coalescing (one per wall second) would drop reports the embedded run stores.
        self.server, self.backend = await start_gateway(
            self.settings, unix_path=self.socket, tcp=None, limits=GatewayLimits(status_interval_s=0.0)
        )

    async def restart_gateway(self) -> None:
        """A clean gateway restart at a quiet point: guests resume their channels."""
        assert self.server is not None and self.backend is not None
        # The gateway goes first: it drops connections without closing the guests' channels.
        await stop_gateway(self.server, self.backend)
        for vm in sorted(self.connected):
            await self.links[vm].stop()
        await self.start_gateway()
        for vm in sorted(self.connected):
            await self._open(vm, resume=True)
        await self.settle()

    async def _open(self, vm: str, *, resume: bool = False, first: list[bytes] | None = None) -> None:
        link = self.links[vm]
        self.sent_base[vm] = link.sent_messages
        await link.open(unix_path=self.socket, resume=resume, first_messages=first)
        self.connected.add(vm)

    # ------------------------------------------------------------------ inputs
    def submit(self, vm: str, record: Input) -> int:
        """Queue an operator input (published at the next tick, or by a reboot)."""
        self.queue.append((vm, record))
        self.token += 1
        return self.token

    async def publish_queue(self) -> None:
        queue, self.queue = self.queue, []
        for vm, record in queue:
            f = self.producer.send(
                self.settings.inbox, key=vm.encode(), value=envelope.inbox_value(vm, to_dict(record))
            )
            f.add_callback(self._published)
        await asyncio.to_thread(self.producer.flush)

    def _published(self, metadata: Any) -> None:
        self._published_at(int(metadata.partition), int(metadata.offset) + 1)

    def _published_at(self, partition: int, end: int) -> None:
        if end > self.published_ends.get(partition, 0):
            self.published_ends[partition] = end

    async def publish_tick(self, tick: int) -> None:
        futures = [
            self.producer.send(self.settings.inbox, key=b"*", value=envelope.tick_value(tick), partition=p)
            for p in range(self.partitions)
        ]
        await asyncio.to_thread(self.producer.flush)
        for f in futures:
            self._published(f.get(30))

    def now_tick(self) -> int:
        return self.tick

    # ------------------------------------------------------------------ quiet
    async def _until(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"tick {self.tick}: {what} not reached in {timeout:.0f} s")
            await asyncio.sleep(0.002)

    def _guests_done(self) -> bool:
        assert self.server is not None
        for vm in self.connected:
            conn = self.server.connections.get(vm)
            link = self.links[vm]
            if conn is None or conn.frames_in != link.sent_messages - self.sent_base[vm]:
                return False
        return True

    def _inbox_ends(self) -> dict[int, int]:
        """The inbox's end, from the offsets the broker gave this driver's and the gateway's sends
        (everything in the inbox comes from one of them)."""
        assert self.backend is not None
        # Kept in the driver's dict, so the ends survive a gateway restart (a new backend).
        for p, end in list(self.backend.published_ends.items()):
            self._published_at(p, end)
        return {p: self.published_ends.get(p, 0) for p in range(self.partitions)}

    def _committed(self) -> dict[int, int]:
        committed: dict[int, int] = self.group.committed(self.partitions)
        return committed

    async def settle(self, timeout: float = 120.0) -> None:
        """Run until nobody has anything left to say (see the module docstring, step 3)."""
        assert self.backend is not None
        backend = self.backend
        self.settles += 1
        deadline = time.monotonic() + timeout
        while True:
            await self._until(self._guests_done, "gateway read every guest frame", timeout)
            sent = sum(link.sent_messages for link in self.links.values())
            await asyncio.to_thread(backend.flush)
            inbox_end = self._inbox_ends()
            while True:
                committed = await asyncio.to_thread(self._committed)
                if all(committed[p] >= inbox_end[p] for p in inbox_end):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tick {self.tick}: engines did not commit {inbox_end} (at {committed})")
                await asyncio.sleep(0.01)
            committed_at = time.time()
            while not await backend.outbox_read_since(committed_at):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tick {self.tick}: gateway did not read the outbox")
                await asyncio.sleep(0.002)
            await self._until(
                lambda: all(self.links[vm].last_host_seq >= backend.outbox_high_watermark(vm) for vm in self.connected),
                "every guest received its messages",
                timeout,
            )
            await self._until(self._guests_done, "gateway read every guest frame", timeout)
            if sum(link.sent_messages for link in self.links.values()) == sent:
                await asyncio.to_thread(backend.flush)
                if self._inbox_ends() == inbox_end:
                    break
        assert self.reader is not None
        await asyncio.to_thread(self.projection.catch_up, self.reader)
        self.settled_token = self.token - len(self.queue)

    # ------------------------------------------------------------------ ticks and the scenario
    async def advance(self) -> None:
        assert self.backend is not None
        self.tick += 1
        self.backend.pause_delivery()
        await self.publish_queue()
        await self.publish_tick(self.tick)
        self.now = float(self.tick)  # tick_seconds is 1 in the default EngineConfig
        await self._until(
            lambda: all(self.guests[vm].polled_at >= self.now for vm in self.connected), "guests polled", 30
        )
        await self._until(self._guests_done, "gateway read every guest frame", 30)
        self.backend.resume_delivery()
        await self.settle()

    def _rebooter(self, vm: str) -> Callable[[Callable[[], None]], Awaitable[None]]:
        async def reboot(reset_host: Callable[[], None]) -> None:
            # As the embedded fleet: inputs queued so far go in first, then the channel closes.
            await self.publish_queue()
            await self.links[vm].stop()
            self.connected.discard(vm)
            server = self.server
            assert server is not None
            await self._until(lambda: vm not in server.connections, "gateway saw the channel close", 30)
            await self.settle()
            reset_host()
            await self.publish_queue()
            await self._open(vm, first=self.guests[vm].reboot(self.now))
            await self.settle()

        return reboot

    async def run_demo(
        self, *, max_ticks: int = 1000, on_tick: Callable[[KafkaLockstep], Awaitable[None]] | None = None
    ) -> RunResult:
        scripts = {vm: DemoScript(vm, BOOT, self._rebooter(vm)) for vm in self.guests}
        while self.tick < max_ticks and not all(s.done for s in scripts.values()):
            await self.advance()
            if on_tick is not None:
                await on_tick(self)
            for script in scripts.values():
                await advance_demo(script, self)
        return RunResult(
            self.tick,
            all(s.done for s in scripts.values()),
            self.projection.event_log(),
            accounting(self.projection.states),
        )


def describe_logs(workdir: Path) -> str:
    """The engines' logs, for a failing assertion's message."""
    out = []
    for path in sorted(workdir.glob("engine*.log")):
        text = path.read_text(errors="replace").splitlines()
        out.append(f"--- {path.name} (last 30 lines)\n" + "\n".join(text[-30:]))
    return "\n".join(out) if out else "(no engine logs)"


def env_without_kafka() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HVDM_KAFKA_")}
