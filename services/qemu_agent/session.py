"""One attachment to one QEMU monitor: probe the VM, then report and deliver until it goes.

A session connects with the ``qemu.qmp`` client, reads what the VM is (``probe``), reports it as
``QemuAttached``, and then runs three things side by side until the connection ends:

* events: ``BALLOON_CHANGE`` (virtio) -> ``QemuActualChanged``; ``HV_BALLOON_STATUS_REPORT`` ->
  ``QemuStatusReport``; ``SHUTDOWN`` ends the session;
* a poll every ``poll_seconds``: ``query-balloon`` (hv-balloon sends no ``BALLOON_CHANGE``;
  virtio's is rate-limited to 1/s, so its last step can lag) and, on virtio, ``guest-stats``;
  only a changed value becomes an input, so an idle VM writes nothing to the inbox;
* delivery: QMP commands from the VM's outbox rows (``balloon``), each failure reported as
  ``QemuCommandFailed``.

Whatever QEMU answers is validated by ``probe``; an answer that fails validation is logged and
counted and that one report is dropped, the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from qemu.qmp import ExecuteError, QMPClient, QMPError

from ..dm_engine import inputs as inp
from . import probe
from .address import QmpAddress

log = logging.getLogger("hvdm.qemu_agent")

#: A monitor that accepted the connection but sent no greeting in this time is serving someone
#: else (QEMU's socket monitor takes one client; the next one waits in the listen backlog).
GREETING_TIMEOUT = 3.0
COMMAND_TIMEOUT = 10.0
#: virtio guest-stats: how often QEMU asks the guest (seconds); the session reads at poll rate.
STATS_INTERVAL = 1


class AgentSink(Protocol):
    """Where a session's inputs go and where its commands come from (the embedded service or Kafka)."""

    def submit(self, vm: str, record: inp.Input) -> int: ...

    def outbox_after(self, vm: str, after_seq: int) -> list[tuple[int, bytes]]: ...

    def outbox_high_watermark(self, vm: str) -> int: ...


class MonitorBusy(Exception):
    """The socket accepted the connection but QEMU never greeted: another client holds it."""


@dataclass(slots=True)
class SessionCounters:
    inputs: int = 0
    polls: int = 0
    commands: int = 0
    command_failures: int = 0
    bad_answers: int = 0


async def connect(address: QmpAddress, timeout: float = GREETING_TIMEOUT) -> QMPClient:
    client = QMPClient("hvdm")
    try:
        await asyncio.wait_for(client.connect(address.target), timeout)
    except TimeoutError as exc:
        with contextlib.suppress(Exception):
            await client.disconnect()
        raise MonitorBusy(f"{address} accepted the connection but sent no QMP greeting in {timeout:g} s") from exc
    except BaseException:
        with contextlib.suppress(Exception):
            await client.disconnect()
        raise
    return client


async def _try(client: QMPClient, command: str, args: dict[str, Any] | None = None) -> Any:
    """An answer, or None when QEMU says the command does not apply (unknown command, no device)."""
    try:
        return await asyncio.wait_for(client.execute(command, args), COMMAND_TIMEOUT)
    except ExecuteError:
        return None


async def describe(client: QMPClient, address: QmpAddress) -> probe.VmDescription:
    name = await _try(client, "query-name")
    version = probe.version_text(await client.execute("query-version"))
    listings = {p: await _try(client, "qom-list", {"path": p}) for p in probe.PERIPHERAL_PATHS}
    device, path = probe.balloon_device(listings)
    boot, maxmem = probe.memory_sizes(
        await client.execute("query-memory-size-summary"), await _try(client, "query-memory-devices") or []
    )
    balloon = await _try(client, "query-balloon") if device != "none" else None
    actual = probe.actual_of(balloon) if balloon is not None else boot
    if device == "virtio-balloon":
        maxmem = boot  # virtio cannot grow a guest past its boot memory
    uuid = None
    try:
        uuid = probe.uuid_of(await _try(client, "query-uuid"))
    except probe.ProbeError as e:
        # A label, not something to refuse the VM for: attached without a UUID, and said so.
        log.warning("event=qemu_bad_answer address=%s command=query-uuid error=%r", address, str(e))
    return probe.VmDescription(
        vm_id=probe.vm_id_for(name, str(address)),
        device=device,
        device_path=path,
        boot_bytes=boot,
        maxmem_bytes=maxmem,
        actual_bytes=actual,
        qemu_version=version,
        uuid=uuid,
    )


class Session:
    """A live attachment. ``run`` returns the reason it ended (the ``QemuDetached`` reason)."""

    def __init__(
        self,
        client: QMPClient,
        address: QmpAddress,
        desc: probe.VmDescription,
        sink: AgentSink,
        *,
        poll_seconds: float = 1.0,
        on_input: Callable[[str, inp.Input], None] | None = None,
    ) -> None:
        self.client = client
        self.address = address
        self.desc = desc
        self.vm = desc.vm_id
        self.sink = sink
        self.poll_seconds = poll_seconds
        self.counters = SessionCounters()
        self.wake = asyncio.Event()
        self._last_actual = desc.actual_bytes
        self._last_status: tuple[int, int] | None = None
        self._outbox_seq = 0
        self._on_input = on_input
        self._ended: asyncio.Future[str] | None = None

    def submit(self, record: inp.Input) -> None:
        self.counters.inputs += 1
        self.sink.submit(self.vm, record)
        if self._on_input is not None:
            self._on_input(self.vm, record)

    def attach(self) -> None:
        """Report the VM; commands the engine decides from now on are this session's to deliver."""
        self._outbox_seq = self.sink.outbox_high_watermark(self.vm)
        d = self.desc
        self.submit(
            inp.QemuAttached(
                device=d.device,
                boot_bytes=d.boot_bytes,
                maxmem_bytes=d.maxmem_bytes,
                actual_bytes=d.actual_bytes,
                qemu_version=d.qemu_version,
                address=str(self.address),
                uuid=d.uuid or "",
            )
        )

    async def run(self) -> str:
        loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        if self.desc.device == "virtio-balloon":
            with contextlib.suppress(ExecuteError):
                await self.client.execute(
                    "qom-set",
                    {
                        "path": self.desc.device_path,
                        "property": "guest-stats-polling-interval",
                        "value": STATS_INTERVAL,
                    },
                )
        tasks = [
            asyncio.create_task(self._events(), name=f"qemu-events-{self.vm}"),
            asyncio.create_task(self._poll(), name=f"qemu-poll-{self.vm}"),
            asyncio.create_task(self._deliver(), name=f"qemu-deliver-{self.vm}"),
            asyncio.create_task(self._watch(), name=f"qemu-watch-{self.vm}"),
        ]
        try:
            return await self._ended
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await self.client.disconnect()

    def _end(self, reason: str) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(reason)

    async def _guard(self, body: Callable[[], Any]) -> None:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except (QMPError, OSError, EOFError, TimeoutError) as exc:
            self._end(f"connection lost: {type(exc).__name__}")
        except Exception as exc:  # a bug must not leave the VM half-attached: detach and say why
            log.exception("qemu session vm=%s failed", self.vm)
            self._end(f"agent error: {type(exc).__name__}")

    async def _watch(self) -> None:
        async def body() -> None:
            while True:
                state = await self.client.runstate_changed()
                if state.name != "RUNNING":
                    self._end("monitor closed")
                    return

        await self._guard(body)

    def _actual(self, actual: int) -> None:
        if actual != self._last_actual:
            self._last_actual = actual
            self.submit(inp.QemuActualChanged(actual_bytes=actual))

    def _status(self, status: tuple[int, int], source: str) -> None:
        if status != self._last_status or source == "hv-balloon":
            # hv-balloon reports are the guest's own messages (about 1/s): each one counts, as on
            # the DM gateway; virtio's polled stats only count when they changed.
            self._last_status = status
            self.submit(inp.QemuStatusReport(available_bytes=status[0], committed_bytes=status[1], source=source))

    async def _events(self) -> None:
        async def body() -> None:
            async for event in self.client.events:
                name, data = event.get("event"), event.get("data")
                try:
                    if name == "BALLOON_CHANGE":
                        self._actual(probe.actual_of(data))
                    elif name == "HV_BALLOON_STATUS_REPORT":
                        self._status(probe.hv_status(data), "hv-balloon")
                    elif name == "SHUTDOWN":
                        self._end("QEMU shut down")
                        return
                except probe.ProbeError as exc:
                    self.counters.bad_answers += 1
                    log.warning("qemu vm=%s bad %s event: %s", self.vm, name, exc)

        await self._guard(body)

    async def _poll(self) -> None:
        async def body() -> None:
            while True:
                await asyncio.sleep(self.poll_seconds)
                self.counters.polls += 1
                try:
                    if self.desc.device != "none":
                        self._actual(probe.actual_of(await self._exec("query-balloon")))
                    if self.desc.device == "virtio-balloon":
                        stats = await self._exec_or_none(
                            "qom-get", {"path": self.desc.device_path, "property": "guest-stats"}
                        )
                        ballooned = self.desc.boot_bytes - self._last_actual
                        status = probe.virtio_status(stats, ballooned) if stats is not None else None
                        if status is not None:
                            self._status(status, "virtio-guest-stats")
                except probe.ProbeError as exc:
                    self.counters.bad_answers += 1
                    log.warning("qemu vm=%s bad answer: %s", self.vm, exc)

        await self._guard(body)

    async def _exec(self, command: str, args: dict[str, Any] | None = None) -> Any:
        return await asyncio.wait_for(self.client.execute(command, args), COMMAND_TIMEOUT)

    async def _exec_or_none(self, command: str, args: dict[str, Any] | None = None) -> Any:
        try:
            return await self._exec(command, args)
        except ExecuteError:
            return None

    async def _deliver(self) -> None:
        async def body() -> None:
            while True:
                await self.wake.wait()
                self.wake.clear()
                for seq, payload in self.sink.outbox_after(self.vm, self._outbox_seq):
                    self._outbox_seq = seq
                    await self._send(payload)

        await self._guard(body)

    async def _send(self, payload: bytes) -> None:
        try:
            command = json.loads(payload)
            name, args = command["execute"], command.get("arguments")
        except (ValueError, KeyError, TypeError):
            log.warning("qemu vm=%s outbox row is not a QMP command; skipped", self.vm)
            return
        self.counters.commands += 1
        try:
            await self._exec(name, args)
        except ExecuteError as exc:
            self.counters.command_failures += 1
            self.submit(inp.QemuCommandFailed(command=name, error_class=exc.error_class, desc=str(exc)))
