"""The QEMU agent: keeps sessions to QEMU monitors alive and feeds the engine's inbox.

One supervisor task per monitor address: connect, probe, attach, run the session; when it ends,
report ``QemuDetached`` and try again (the socket may come back when QEMU restarts: the new QEMU
is attached as the same VM and the standing target is delivered again). A monitor that accepts
the connection but never greets is busy (QEMU's socket monitor serves one client; libvirt or a
human holds it): that is logged once per episode and retried with back-off, never fatal.

``--qemu-dir DIR`` adds a watcher that scans DIR every poll interval for UNIX sockets; a new one
gets a supervisor, and a supervisor whose socket file is gone stops after reporting the detach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qemu.qmp import QMPError

from ..dm_engine import events as ev
from ..dm_engine import inputs as inp
from ..dm_engine.step import Processed
from . import probe
from .address import QmpAddress, parse_address
from .session import AgentSink, MonitorBusy, Session, connect, describe
from .trace_follow import follow_trace

log = logging.getLogger("hvdm.qemu_agent")

RETRY_MIN = 0.2
RETRY_MAX = 5.0


@dataclass(slots=True)
class AgentStats:
    attaches: int = 0
    detaches: int = 0
    busy: int = 0
    probe_failures: int = 0
    sessions: dict[str, Session] = field(default_factory=dict)


class QemuAgent:
    def __init__(
        self,
        sink: AgentSink,
        addresses: Sequence[str] = (),
        *,
        directory: str | None = None,
        poll_seconds: float = 1.0,
        trace_file: str | None = None,
    ) -> None:
        self.sink = sink
        self.addresses = [parse_address(a) for a in addresses]
        self.directory = directory
        self.poll_seconds = poll_seconds
        self.trace_file = trace_file
        self.stats = AgentStats()
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        for address in self.addresses:
            self._supervise(address, vanish_stops=False)
        if self.directory is not None:
            self._tasks.append(asyncio.create_task(self._watch_directory(), name="qemu-dir"))
        if self.trace_file is not None:
            self._tasks.append(asyncio.create_task(self._follow(self.trace_file), name="qemu-trace"))

    async def close(self) -> None:
        tasks = list(self._supervisors.values()) + self._tasks
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._supervisors.clear()
        self._tasks.clear()

    def on_batch(self, batch: Sequence[Processed]) -> None:
        """Runner listener: a committed ``QemuBalloonCommanded`` wakes the VM's delivery."""
        for p in batch:
            session = self.stats.sessions.get(p.vm)
            if session is not None and any(isinstance(e, ev.QemuBalloonCommanded) for e in p.events):
                session.wake.set()

    @property
    def sessions(self) -> dict[str, Session]:
        return self.stats.sessions

    # ------------------------------------------------------------------ supervision
    def _supervise(self, address: QmpAddress, *, vanish_stops: bool) -> None:
        key = str(address)
        if key in self._supervisors and not self._supervisors[key].done():
            return
        self._supervisors[key] = asyncio.create_task(self._supervisor(address, vanish_stops), name=f"qemu-{key}")

    async def _supervisor(self, address: QmpAddress, vanish_stops: bool) -> None:
        delay = RETRY_MIN
        busy_logged = False
        while True:
            if address.path is not None and not _is_socket(address.path):
                if vanish_stops:
                    return
                await asyncio.sleep(self.poll_seconds)
                continue
            try:
                client = await connect(address)
            except MonitorBusy as exc:
                self.stats.busy += 1
                if not busy_logged:
                    log.warning("qemu monitor busy: %s; retrying", exc)
                    busy_logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except (OSError, QMPError, EOFError) as exc:
                log.debug("qemu monitor %s not reachable: %s", address, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            busy_logged = False
            try:
                desc = await describe(client, address)
            except (probe.ProbeError, QMPError, OSError, EOFError, TimeoutError) as exc:
                self.stats.probe_failures += 1
                log.warning("qemu monitor %s: cannot describe the VM: %s", address, exc)
                with contextlib.suppress(Exception):
                    await client.disconnect()
                await asyncio.sleep(RETRY_MAX)
                continue
            reason = await self._attach(client, address, desc)
            log.info("qemu vm=%s detached: %s", desc.vm_id, reason)
            delay = RETRY_MIN

    async def _attach(self, client: object, address: QmpAddress, desc: probe.VmDescription) -> str:
        existing = self.stats.sessions.get(desc.vm_id)
        if existing is not None:
            log.warning("qemu vm=%s already attached through %s; %s ignored", desc.vm_id, existing.address, address)
            with contextlib.suppress(Exception):
                await client.disconnect()  # type: ignore[attr-defined]
            await asyncio.sleep(RETRY_MAX)
            return "duplicate VM id"
        session = Session(client, address, desc, self.sink, poll_seconds=self.poll_seconds)  # type: ignore[arg-type]
        self.stats.sessions[desc.vm_id] = session
        self.stats.attaches += 1
        log.info("qemu vm=%s attached: %s, %s, QEMU %s", desc.vm_id, address, desc.device, desc.qemu_version)
        reason = "agent stopped"
        try:
            session.attach()
            session.wake.set()  # a standing target may already be in the outbox
            reason = await session.run()
            return reason
        finally:
            del self.stats.sessions[desc.vm_id]
            self.stats.detaches += 1
            session.sink.submit(desc.vm_id, inp.QemuDetached(reason=reason))

    async def _watch_directory(self) -> None:
        assert self.directory is not None
        while True:
            with contextlib.suppress(OSError):
                for entry in os.scandir(self.directory):
                    with contextlib.suppress(OSError):
                        if stat.S_ISSOCK(entry.stat().st_mode) and len(entry.path.encode()) <= 107:
                            self._supervise(QmpAddress(path=entry.path), vanish_stops=True)
            for key in [k for k, t in self._supervisors.items() if t.done()]:
                del self._supervisors[key]
            await asyncio.sleep(self.poll_seconds)

    async def _follow(self, path: str) -> None:
        """Trace changes go to the one attached hv-balloon VM (a trace file belongs to one QEMU)."""
        async for change in follow_trace(Path(path), self.poll_seconds / 4):
            while (vm := self._trace_vm()) is None:
                # Hold the line back (the file keeps the rest) until QEMU's VM is attached.
                await asyncio.sleep(self.poll_seconds / 4)
            self.sink.submit(vm, inp.QemuTracePages(op=change.op, ranges=change.ranges))

    def _trace_vm(self) -> str | None:
        sessions = self.stats.sessions
        return next((v for v, s in sessions.items() if s.desc.device == "hv-balloon"), next(iter(sessions), None))


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
