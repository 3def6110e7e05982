"""Peers of the gateway for its tests: honest and hostile, over UNIX sockets, TCP and TLS.

Certificates come from the ``openssl`` command (a throw-away CA, a server certificate for
127.0.0.1, client certificates naming VMs, and one from a CA the gateway does not trust).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.dm_engine.config import EngineConfig
from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    VersionRequest,
    decode,
    encode,
)
from services.embedded.service import EmbeddedService
from services.vmbus_gateway.hello import Hello

GIB = 1 << 30


class EchoGuest:
    """A minimal guest model: handshakes, then answers each balloon request with that many pages."""

    def __init__(self) -> None:
        self.closed = False
        self.received: list[object] = []
        self.next_page = 0
        self.trans_id = 0

    def _id(self) -> int:
        self.trans_id += 1
        return self.trans_id

    def connect(self, now: float) -> list[bytes]:
        return [encode(VersionRequest(trans_id=self._id(), version=0x20000))]

    def receive(self, message: bytes, now: float) -> list[bytes]:
        msg = decode(message)
        self.received.append(msg)
        if type(msg).__name__ == "VersionResponse":
            return [encode(CapabilitiesReport(trans_id=self._id(), balloon=True, hot_add=True, hot_add_alignment=7))]
        if isinstance(msg, BalloonRequest):
            start, self.next_page = self.next_page, self.next_page + msg.num_pages
            return [encode(BalloonResponse(trans_id=self._id(), more_pages=False, ranges=((start, msg.num_pages),)))]
        return []

    def poll(self, now: float) -> list[bytes]:
        return []


async def open_service(tmp_path: Path) -> EmbeddedService:
    svc = EmbeddedService.open(tmp_path / "hvdm.db", speed=1000.0, config=EngineConfig(post_init_wait_ticks=1))
    await svc.start()
    return svc


@contextlib.asynccontextmanager
async def running_service(tmp_path: Path) -> AsyncIterator[EmbeddedService]:
    svc = await open_service(tmp_path)
    try:
        yield svc
    finally:
        await svc.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def hello(vm: str, **kw: Any) -> Hello:
    return Hello(vm=vm, boot_bytes=4 * GIB, maxmem_bytes=16 * GIB, **kw)


@dataclass
class RawPeer:
    """A hand-driven connection: the hello's answer, then raw bytes both ways."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    answer: dict[str, Any]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def raw_peer(
    hello_line: Hello | bytes,
    *,
    unix_path: str | None = None,
    tcp: tuple[str, int] | None = None,
    tls: ssl.SSLContext | None = None,
) -> RawPeer:
    if unix_path:
        reader, writer = await asyncio.open_unix_connection(unix_path)
    else:
        assert tcp is not None
        reader, writer = await asyncio.open_connection(*tcp, ssl=tls, server_hostname="localhost" if tls else None)
    writer.write(hello_line.to_line() if isinstance(hello_line, Hello) else hello_line)
    await writer.drain()
    line = await reader.readline()
    answer = json.loads(line) if line else {}
    return RawPeer(reader, writer, answer)


# ---------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Pki:
    root: Path

    def path(self, name: str) -> str:
        return str(self.root / name)

    def client(self, name: str, ca: str = "ca.pem") -> ssl.SSLContext:
        """A client context trusting our CA, presenting ``name``.pem (or none for name '')."""
        ctx = ssl.create_default_context(cafile=self.path(ca))
        if name:
            ctx.load_cert_chain(self.path(f"{name}.pem"), self.path(f"{name}.key"))
        return ctx


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(root: Path, name: str, subject: str, san: str, ca: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=root,
    )  # fmt: skip
    (root / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=root,
    )  # fmt: skip


def _ca(root: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        cwd=root,
    )  # fmt: skip


def make_pki(root: Path) -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and client certificates:
    ``vm1`` (CN=vm1), ``vm1b`` (CN=spare, SAN DNS:vm1: a second identity for vm1), ``vm2``, and
    ``rogue`` (CN=vm1 but issued by a CA the gateway does not trust)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    _ca(root, "ca")
    _ca(root, "rogue-ca")
    _issue(root, "server", "/CN=localhost", "DNS:localhost,IP:127.0.0.1", "ca")
    _issue(root, "vm1", "/CN=vm1", "DNS:vm1", "ca")
    _issue(root, "vm1b", "/CN=spare", "DNS:vm1", "ca")
    _issue(root, "vm2", "/CN=vm2", "DNS:vm2", "ca")
    _issue(root, "rogue", "/CN=vm1", "DNS:vm1", "rogue-ca")
    return Pki(root)
