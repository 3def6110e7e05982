"""A simulated QEMU monitor (virtio-balloon or hv-balloon) for the agent's tests and scale benchmark.

It speaks QMP over a UNIX socket the way QEMU's socket monitor does, as far as the agent uses it:
greeting, ``qmp_capabilities``, the discovery queries, ``balloon`` (the actual size moves toward
the target in steps, down to a floor a guest will not go below), ``qom-set``/``qom-get`` of
virtio guest-stats, ``BALLOON_CHANGE`` (virtio only, as in QEMU) and ``HV_BALLOON_STATUS_REPORT``
once a second (hv-balloon). Like QEMU, it serves one client at a time: a second connection is
accepted by the kernel but gets no greeting until the first one leaves. The real thing is tested
against the kit's real guests (tests/realguest); this exists to run hundreds at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SimulatedQemu:
    path: str
    device: str = "virtio-balloon"  # or "hv-balloon" or "none"
    name: str | None = None
    boot_bytes: int = 2 << 30
    hot_add_bytes: int = 0
    #: The guest will not go below this (a stalled target when asked for less).
    floor_bytes: int = 0
    step_bytes: int = 256 << 20
    step_seconds: float = 0.05
    version: tuple[int, int, int] = (7, 2, 22)
    #: What ``query-uuid`` answers (QEMU: the nil UUID unless started with -uuid); any value, so
    #: tests can answer garbage.
    uuid: Any = "00000000-0000-0000-0000-000000000000"
    actual: int = 0
    target: int = 0
    commands: list[str] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None
    _slot: asyncio.Lock = field(default_factory=asyncio.Lock)
    _writer: asyncio.StreamWriter | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.actual = self.target = self.boot_bytes

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        self._tasks.append(asyncio.create_task(self._mover()))

    async def kill(self) -> None:
        """QEMU exits: connections close and the socket file goes (QEMU unlinks it on exit)."""
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    # ------------------------------------------------------------------ the guest
    async def _mover(self) -> None:
        last_report = 0.0
        while True:
            await asyncio.sleep(self.step_seconds)
            goal = max(self.target, self.floor_bytes) if self.target < self.actual else self.target
            if goal != self.actual:
                if self.device == "hv-balloon" and goal > self.actual:
                    self.actual = goal  # hv-balloon counts returned pages at once
                else:
                    delta = max(-self.step_bytes, min(self.step_bytes, goal - self.actual))
                    self.actual += delta
                if self.device == "virtio-balloon":
                    self._event("BALLOON_CHANGE", {"actual": self.actual})
            now = time.monotonic()
            if self.device == "hv-balloon" and now - last_report >= 1.0:
                last_report = now
                self._event("HV_BALLOON_STATUS_REPORT", {"committed": self.actual // 2, "available": self.actual // 3})

    def _event(self, name: str, data: dict[str, Any]) -> None:
        w = self._writer
        if w is None or w.is_closing():
            return
        t = time.time()
        msg = {"event": name, "data": data, "timestamp": {"seconds": int(t), "microseconds": int(t * 1e6) % 1_000_000}}
        w.write(json.dumps(msg).encode() + b"\r\n")

    # ------------------------------------------------------------------ the monitor
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._slot:  # one client at a time, the rest wait without a greeting
            self._writer = writer
            try:
                major, minor, micro = self.version
                greeting = {
                    "QMP": {
                        "version": {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": ""},
                        "capabilities": [],
                    }
                }
                writer.write(json.dumps(greeting).encode() + b"\r\n")
                # QMP is a stream of JSON values, not lines: clients (qemu.qmp) send no newline.
                decoder = json.JSONDecoder()
                buffer = ""
                while chunk := await reader.read(65536):
                    buffer += chunk.decode("utf-8", "replace")
                    while buffer.strip():
                        try:
                            request, end = decoder.raw_decode(buffer.lstrip())
                        except ValueError:
                            break
                        buffer = buffer.lstrip()[end:]
                        if not isinstance(request, dict):
                            continue
                        reply = self._answer(request.get("execute"), request.get("arguments") or {})
                        if "id" in request:
                            reply["id"] = request["id"]
                        writer.write(json.dumps(reply).encode() + b"\r\n")
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                self._writer = None
                writer.close()

    def _answer(self, command: str | None, args: dict[str, Any]) -> dict[str, Any]:
        self.commands.append(str(command))
        balloon = self.device != "none"
        major, minor, micro = self.version
        fixed: dict[str, Any] = {
            "qmp_capabilities": {},
            "query-uuid": {"UUID": self.uuid},
            "query-name": {"name": self.name} if self.name else {},
            "query-version": {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": ""},
            "query-memory-size-summary": {"base-memory": self.boot_bytes, "plugged-memory": self.hot_add_bytes},
            "qom-set": {},
        }
        if command in fixed:
            return {"return": fixed[command]}
        if command == "qom-list":
            entries: list[dict[str, str]] = [{"name": "type", "type": "string"}]
            if args.get("path") == "/machine/peripheral" and balloon:
                kind = "virtio-balloon-pci" if self.device == "virtio-balloon" else "hv-balloon"
                entries.append({"name": "balloon0", "type": f"child<{kind}>"})
            return {"return": entries}
        if command == "query-memory-devices":
            if self.device == "hv-balloon" and self.hot_add_bytes:
                data = {"memdev": "/objects/mem1", "memaddr": 32 << 30, "max-size": self.hot_add_bytes, "id": "hvb"}
                return {"return": [{"type": "hv-balloon", "data": data}]}
            return {"return": []}
        if command in ("query-balloon", "balloon") and not balloon:
            return {"error": {"class": "DeviceNotActive", "desc": "No balloon device has been activated"}}
        if command == "query-balloon":
            return {"return": {"actual": self.actual}}
        if command == "balloon":
            value = args.get("value")
            if not isinstance(value, int) or value <= 0:
                return {"error": {"class": "GenericError", "desc": "Parameter 'target' expects a size"}}
            self.target = min(value, self.boot_bytes + self.hot_add_bytes)
            return {"return": {}}
        if command == "qom-get" and args.get("property") == "guest-stats":
            stats = {"stat-available-memory": self.actual // 2, "stat-total-memory": self.actual - (16 << 20)}
            return {"return": {"stats": stats, "last-update": int(time.time())}}
        return {"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}}
