"""The guest end of a gateway connection, for simulated guests and tests.

It owns nothing of the protocol: a ``SimulatedGuest`` decides what to send; this adapter only
frames, writes, reads and keeps the simulated clock ticking. It counts the host frames it
received from the position the gateway's answer named (a channel's host messages have consecutive
outbox sequence numbers; the descriptor's trans_id is the DM message's own), so it can resume a
channel after a gateway restart without losing or repeating a host message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from ..dm_protocol import DecodeError, FrameReader, dm_message_bytes, frame
from .hello import Hello

log = logging.getLogger("hvdm.guest_link")


class GuestModel(Protocol):
    @property
    def closed(self) -> bool: ...

    def connect(self, now: float) -> list[bytes]: ...
    def receive(self, message: bytes, now: float) -> list[bytes]: ...
    def poll(self, now: float) -> list[bytes]: ...


class GatewayRefused(ConnectionError):
    pass


class GuestLink:
    """Runs one guest model over one gateway connection until closed."""

    def __init__(
        self,
        guest: GuestModel,
        hello: Hello,
        clock: Callable[[], float],
        *,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.guest = guest
        self.hello = hello
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.last_host_seq = 0
        self.host_messages = 0
        self.sent_messages = 0
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def open(
        self,
        *,
        unix_path: str | None = None,
        tcp: tuple[str, int] | None = None,
        resume: bool = False,
        first_messages: list[bytes] | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """Connect, say hello, and start exchanging messages in the background.

        A new channel starts with the guest's ``connect()`` messages, or with ``first_messages``
        when the caller already has them (a rebooted guest's first version request); a resumed
        channel starts with nothing. ``tls`` wraps a TCP connection (with a client certificate
        loaded when the gateway asks for one).
        """
        if unix_path:
            reader, writer = await asyncio.open_unix_connection(unix_path)
        elif tcp:
            reader, writer = await asyncio.open_connection(
                tcp[0], tcp[1], ssl=tls, server_hostname=(server_hostname or tcp[0]) if tls else None
            )
        else:
            raise ValueError("unix_path or tcp is required")
        hello = replace(self.hello, resume_after=self.last_host_seq if resume else None)
        writer.write(hello.to_line())
        await writer.drain()
        answer: dict[str, Any] = json.loads(await reader.readline() or b"{}")
        if not answer.get("ok"):
            writer.close()
            raise GatewayRefused(str(answer.get("error", "connection refused")))
        delivered = answer.get("delivered")
        if not isinstance(delivered, int) or isinstance(delivered, bool) or delivered < 0:
            writer.close()
            raise GatewayRefused(f"the gateway's answer has no valid delivered position: {answer!r}")
        self.last_host_seq = delivered
        self._writer = writer
        self.connected.set()
        if not resume:
            self._send(first_messages if first_messages is not None else self.guest.connect(self.clock()))
        self._task = asyncio.create_task(self._run(reader), name=f"guest-{self.hello.vm}")

    def _send(self, messages: list[bytes]) -> None:
        writer = self._writer
        if writer is None or not messages:
            return
        writer.write(b"".join(frame(m) for m in messages))
        self.sent_messages += len(messages)

    async def _run(self, reader: asyncio.StreamReader) -> None:
        frames = FrameReader()
        poller = asyncio.create_task(self._poll_loop())
        try:
            while data := await reader.read(65536):
                try:
                    batch = frames.feed(data)
                except DecodeError as e:
                    log.warning("event=host_framing_error vm=%s error=%s", self.hello.vm, e)
                    return
                for fr in batch:
                    self.last_host_seq += 1
                    self.host_messages += 1
                    self._send(self.guest.receive(dm_message_bytes(fr.payload), self.clock()))
                if self._writer is not None:
                    await self._writer.drain()
        except ConnectionError:
            pass
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            if self.guest.closed:
                await self.close()
                return
            self._send(self.guest.poll(self.clock()))
            if self._writer is not None:
                with contextlib.suppress(ConnectionError):
                    await self._writer.drain()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def stop(self) -> None:
        await self.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
