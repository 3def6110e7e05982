"""Who may speak for a VM (issue 9 section 2), attacked through real sockets.

An attacker claiming a VM id before its guest, taking it over while connected or during its
reconnect window, reading its outbox with ``resume_after=0``, presenting a wrong token or a wrong
certificate, and a TCP listener without authentication: each is refused, counted by reason,
and the honest guest keeps working.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.dm_engine.inputs import SetTarget
from services.dm_engine.state import ProtocolState
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.service import EmbeddedService
from services.metrics import serve_for_service
from services.vmbus_gateway.auth import AuthConfigError, GatewayAuth, build_auth, vm_token
from services.vmbus_gateway.client import GatewayRefused, GuestLink
from services.vmbus_gateway.server import GatewayServer
from tests.vmbus_gateway.peers import GIB, EchoGuest, Pki, hello, make_pki, raw_peer, running_service, wait_for

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"a host secret of more than sixteen bytes"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[EmbeddedService]:
    async with running_service(tmp_path) as svc:
        yield svc


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_auth(pki: Pki, *, tokens: bool = False) -> GatewayAuth:
    return build_auth(
        tls_cert=pki.path("server.pem"),
        tls_key=pki.path("server.key"),
        tls_client_ca=pki.path("ca.pem"),
    ) if not tokens else GatewayAuth(token_secret=SECRET)  # fmt: skip


async def start(service: EmbeddedService, auth: GatewayAuth, **kw: object) -> GatewayServer:
    gateway = GatewayServer(EmbeddedBackend(service), auth=auth)
    await gateway.start(**kw)  # type: ignore[arg-type]
    return gateway


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def idle(service: EmbeddedService, vm: str) -> bool:
    s = service.runner.states.get(vm)
    return s is not None and s.protocol is ProtocolState.IDLE


# ---------------------------------------------------------------------------- plain TCP
async def test_plain_tcp_is_refused_without_insecure(service: EmbeddedService) -> None:
    gateway = GatewayServer(EmbeddedBackend(service))
    with pytest.raises(AuthConfigError, match="--insecure"):
        await gateway.start(tcp=("127.0.0.1", 0))
    assert gateway.tcp_port is None  # nothing listens
    # TLS that authenticates only the server is not guest authentication either.
    with pytest.raises(AuthConfigError):
        GatewayAuth(tls=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)).check_tcp()
    insecure = await start(service, GatewayAuth(insecure=True), tcp=("127.0.0.1", 0))
    peer = await raw_peer(hello("vm1"), tcp=("127.0.0.1", insecure.tcp_port or 0))
    assert peer.answer["ok"] is True
    await peer.close()
    await insecure.close()


def test_cli_refuses_plain_tcp_with_one_clear_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "services", "run", "--db", str(tmp_path / "x.db"), "--socket", "", "--tcp", ":0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]  # one line, no traceback
    assert "--insecure" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.db").exists()  # refused before anything was created


# ---------------------------------------------------------------------------- UNIX sockets
async def test_unix_socket_is_private_and_checks_the_peer_uid(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    me = os.getuid()
    strangers = GatewayAuth(allowed_uids=frozenset({me + 12345}))
    gateway = await start(service, strangers, unix_path=sock)
    assert stat.S_IMODE(os.stat(sock).st_mode) & 0o007 == 0  # not world-accessible
    peer = await raw_peer(hello("vm1"), unix_path=sock)
    assert peer.answer == {"ok": False, "error": f"uid {me} is not allowed on this socket", "reason": "uid_not_allowed"}
    assert await peer.reader.read() == b""
    await peer.close()
    assert gateway.refusals == {"uid_not_allowed": 1}
    assert "vm1" not in service.runner.states  # nothing was created
    await gateway.close()
    # The default allow-list is this service's uid and root: the same uid gets in.
    gateway = await start(service, GatewayAuth(), unix_path=sock)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    peer = await raw_peer(hello("vm1"), unix_path=sock)
    assert peer.answer["ok"] is True
    await peer.close()
    await gateway.close()


# ---------------------------------------------------------------------------- tokens
async def test_tokens_wrong_missing_and_for_another_vm_are_refused(service: EmbeddedService) -> None:
    gateway = await start(service, GatewayAuth(token_secret=SECRET), tcp=("127.0.0.1", 0))
    tcp = ("127.0.0.1", gateway.tcp_port or 0)
    attempts = {
        "not_entitled": hello("vm1"),
        "token_invalid": hello("vm1", token=vm_token(SECRET, "vm2")),
    }
    for reason, h in attempts.items():
        peer = await raw_peer(h, tcp=tcp)
        assert peer.answer["ok"] is False and peer.answer["reason"] == reason
        assert await peer.reader.read() == b""
        await peer.close()
    wrong = await raw_peer(hello("vm1", token="0" * 64), tcp=tcp)
    assert wrong.answer["reason"] == "token_invalid"
    await wrong.close()
    assert gateway.refusals == {"not_entitled": 1, "token_invalid": 2}
    assert "vm1" not in service.runner.states
    # The real guest, with its token, connects and is ballooned.
    guest = EchoGuest()
    link = GuestLink(guest, hello("vm1", token=vm_token(SECRET, "vm1")), service.now_seconds)
    await link.open(tcp=tcp)
    await wait_for(lambda: idle(service, "vm1"))
    service.submit("vm1", SetTarget(target_bytes=3 * GIB))
    await wait_for(lambda: service.runner.states["vm1"].current_pages == (3 * GIB) >> 12)
    await link.stop()
    await gateway.close()


async def test_tokens_over_tls_without_client_certificates(service: EmbeddedService, pki: Pki, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    auth = build_auth(tls_cert=pki.path("server.pem"), tls_key=pki.path("server.key"), token_secret_file=str(secret))
    gateway = await start(service, auth, tcp=("127.0.0.1", 0))
    tcp = ("127.0.0.1", gateway.tcp_port or 0)
    peer = await raw_peer(hello("vm1"), tcp=tcp, tls=pki.client(""))  # encrypted, but no token
    assert peer.answer["reason"] == "not_entitled"
    await peer.close()
    peer = await raw_peer(hello("vm1", token=vm_token(SECRET, "vm1")), tcp=tcp, tls=pki.client(""))
    assert peer.answer["ok"] is True
    await peer.close()
    await gateway.close()


def test_token_command_prints_the_hmac(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    run = subprocess.run(
        [sys.executable, "-m", "services", "gateway", "token", "vm7", "--token-secret-file", str(secret)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == vm_token(SECRET, "vm7")


# ---------------------------------------------------------------------------- claiming and takeover
async def test_attacker_cannot_claim_a_vm_before_its_guest_nor_take_it_over(service: EmbeddedService, pki: Pki) -> None:
    gateway = await start(service, tls_auth(pki), tcp=("127.0.0.1", 0))
    tcp = ("127.0.0.1", gateway.tcp_port or 0)
    # Before the guest: vm2's certificate cannot claim vm1 (new channel or resume).
    for h in (hello("vm1"), hello("vm1", resume_after=0)):
        peer = await raw_peer(h, tcp=tcp, tls=pki.client("vm2"))
        assert peer.answer["reason"] == "not_entitled"
        await peer.close()
    assert "vm1" not in service.runner.states
    guest = EchoGuest()
    link = GuestLink(guest, hello("vm1"), service.now_seconds)
    await link.open(tcp=tcp, tls=pki.client("vm1"), server_hostname="localhost")
    await wait_for(lambda: idle(service, "vm1"))
    base = link.last_host_seq - link.host_messages  # the outbox position the channel started after
    # While connected: even another certificate entitled to vm1 cannot take it over.
    peer = await raw_peer(hello("vm1"), tcp=tcp, tls=pki.client("vm1b"))
    assert peer.answer["reason"] == "vm_connected"
    await peer.close()
    # Reconnect window: the gateway restarts, the channel survives, the host queues a request.
    await gateway.close()
    await link.stop()
    service.submit("vm1", SetTarget(target_bytes=3 * GIB))
    await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.BALLOON_REPLY_WAIT)
    gateway2 = await start(service, tls_auth(pki), tcp=("127.0.0.1", 0))  # knows the owner from the log
    tcp = ("127.0.0.1", gateway2.tcp_port or 0)
    # Another identity for vm1 cannot read its outbox from the start, nor resume at all.
    thief = await raw_peer(hello("vm1", resume_after=0), tcp=tcp, tls=pki.client("vm1b"))
    assert thief.answer["reason"] == "resume_other_peer"
    assert await thief.reader.read() == b""  # not one host frame
    await thief.close()
    # An unauthorised peer gets nothing either.
    thief = await raw_peer(hello("vm1", resume_after=0), tcp=tcp, tls=pki.client("vm2"))
    assert thief.answer["reason"] == "not_entitled"
    await thief.close()
    # The guest's own certificate resumes: the queued request arrives exactly once.
    await link.open(tcp=tcp, tls=pki.client("vm1"), server_hostname="localhost", resume=True)
    await wait_for(lambda: service.runner.states["vm1"].current_pages == (3 * GIB) >> 12)
    # Every host message of the channel arrived once, in order (none lost, none repeated).
    assert link.host_messages == service.log.outbox_high_watermark("vm1") - base == len(guest.received)
    assert any(type(m).__name__ == "BalloonRequest" for m in guest.received)
    assert gateway2.refusals == {"resume_other_peer": 1, "not_entitled": 1}
    assert gateway.refusals == {"not_entitled": 2, "vm_connected": 1}
    await link.stop()
    await gateway2.close()


async def test_a_vm_never_connected_cannot_be_resumed(service: EmbeddedService, tmp_path: Path) -> None:
    gateway = await start(service, GatewayAuth(), unix_path=str(tmp_path / "gw.sock"))
    peer = await raw_peer(hello("ghost", resume_after=0), unix_path=str(tmp_path / "gw.sock"))
    assert peer.answer["reason"] == "resume_unknown_vm"
    await peer.close()
    assert "ghost" not in service.runner.states
    await gateway.close()


# ---------------------------------------------------------------------------- certificates
async def test_wrong_certificate_is_refused_and_counted(service: EmbeddedService, pki: Pki) -> None:
    gateway = await start(service, tls_auth(pki), tcp=("127.0.0.1", 0))
    tcp = ("127.0.0.1", gateway.tcp_port or 0)
    for client in ("rogue", ""):  # a certificate from an untrusted CA, and none at all
        try:
            peer = await raw_peer(hello("vm1"), tcp=tcp, tls=pki.client(client))
        except (ssl.SSLError, ConnectionError):
            pass  # refused during the handshake (TLS 1.2) ...
        else:
            assert peer.answer == {}  # ... or right after it (TLS 1.3): no answer, closed
            await peer.close()
    await wait_for(lambda: gateway.refusals["tls_handshake"] == 2)
    assert "vm1" not in service.runner.states
    await gateway.close()


async def test_refusals_are_exported_on_the_metrics_endpoint(service: EmbeddedService) -> None:
    gateway = await start(service, GatewayAuth(token_secret=SECRET), tcp=("127.0.0.1", 0))
    served = serve_for_service(service, "127.0.0.1", 0, gateway=gateway)
    try:
        peer = await raw_peer(hello("vm1", token="f" * 64), tcp=("127.0.0.1", gateway.tcp_port or 0))
        await peer.close()
        body = await asyncio.to_thread(scrape, served.url)  # the scrape reads the engine on this loop
    finally:
        served.close()
        await gateway.close()
    samples = [line for line in body.splitlines() if line.startswith("hvdm_gateway_")]
    assert any(
        line.startswith("hvdm_gateway_refusals_total{") and 'reason="token_invalid"' in line and line.endswith(" 1.0")
        for line in samples
    ), samples
    assert any(line.startswith("hvdm_gateway_status_reports_coalesced_total") for line in samples), samples


async def test_guest_link_reports_a_refusal(service: EmbeddedService, tmp_path: Path) -> None:
    sock = str(tmp_path / "gw.sock")
    gateway = await start(service, GatewayAuth(allowed_uids=frozenset({os.getuid() + 1})), unix_path=sock)
    link = GuestLink(EchoGuest(), hello("vm1"), service.now_seconds)
    with pytest.raises(GatewayRefused, match="not allowed"):
        await link.open(unix_path=sock)
    await gateway.close()
