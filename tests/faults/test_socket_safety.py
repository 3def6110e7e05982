"""``--socket PATH`` removes a stale socket and nothing else: not the log, not a directory, not a
socket another process listens on. The same rule for the per-VM QMP sockets, and the gateway
removes its own socket on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import ChannelOpened
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.service import EmbeddedService
from services.event_log.sqlite_log import SqliteLog
from services.qmp import socket_path, start_qmp_servers
from services.socket_files import SocketPathInUse, remove_stale_socket
from services.vmbus_gateway.server import GatewayServer
from tests.faults.run_process import hvdm


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stale_socket(path: Path) -> Path:
    """A socket file whose listener is gone (what a killed service leaves behind)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    return path


@contextlib.contextmanager
def listening(path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(8)
    try:
        yield s
    finally:
        s.close()


def a_log(path: Path) -> Path:
    log = SqliteLog(path)
    log.append_input("vm1", 0, {"type": "Tick", "tick": 0})
    log.close()
    return path


# ------------------------------------------------------------------------------------------ the rule
def test_only_a_socket_nobody_listens_on_is_removed(tmp_path: Path) -> None:
    assert remove_stale_socket(tmp_path / "missing.sock") is False
    stale = stale_socket(tmp_path / "stale.sock")
    assert remove_stale_socket(stale) is True and not stale.exists()

    regular = tmp_path / "file"
    regular.write_text("precious")
    with pytest.raises(SocketPathInUse, match="is a regular file"):
        remove_stale_socket(regular)
    assert regular.read_text() == "precious"

    directory = tmp_path / "dir"
    directory.mkdir()
    with pytest.raises(SocketPathInUse, match="is a directory"):
        remove_stale_socket(directory)

    link = tmp_path / "link.sock"
    link.symlink_to(stale_socket(tmp_path / "target.sock"))
    with pytest.raises(SocketPathInUse, match="symbolic link"):
        remove_stale_socket(link)
    assert link.is_symlink()

    live = tmp_path / "live.sock"
    with listening(live) as server:
        with pytest.raises(SocketPathInUse, match="another process is listening"):
            remove_stale_socket(live)
        assert stat.S_ISSOCK(os.lstat(live).st_mode)
        server.settimeout(5)
        server.accept()[0].close()  # the probe connected; the listener still works


# ------------------------------------------------------------------------------------------ hvdm run
def test_swapped_db_and_socket_are_refused_and_delete_nothing(tmp_path: Path) -> None:
    db = a_log(tmp_path / "hvdm.db")
    before = digest(db)
    result = hvdm("run", "--db", str(tmp_path / "hvdm.sock"), "--socket", str(db), "--duration", "1")
    assert result.returncode == 1
    assert "refusing to remove it" in result.stderr and "Traceback" not in result.stderr
    assert digest(db) == before
    assert not (tmp_path / "hvdm.sock").exists()  # nothing was created either


def test_socket_and_db_naming_the_same_new_file_are_refused(tmp_path: Path) -> None:
    same = tmp_path / "x"
    result = hvdm("run", "--db", str(same), "--socket", str(same), "--duration", "1")
    assert result.returncode == 1 and "name the same file" in result.stderr
    assert not same.exists()


def test_a_live_socket_is_refused_and_keeps_working(tmp_path: Path) -> None:
    live = tmp_path / "gw.sock"
    with listening(live) as server:
        result = hvdm("run", "--db", str(tmp_path / "hvdm.db"), "--socket", str(live), "--duration", "1")
        assert result.returncode == 1 and "another process is listening" in result.stderr
        assert stat.S_ISSOCK(os.lstat(live).st_mode)
        server.settimeout(5)
        server.accept()[0].close()


def test_a_stale_socket_is_replaced_and_removed_at_exit(tmp_path: Path) -> None:
    sock = stale_socket(tmp_path / "gw.sock")
    result = hvdm(
        "run", "--db", str(tmp_path / "hvdm.db"), "--socket", str(sock), "--duration", "0.5", "--progress-interval", "0"
    )
    assert result.returncode == 0, result.stderr
    assert not sock.exists()


# ------------------------------------------------------------------------------------------ the servers
async def test_gateway_removes_its_socket_but_not_a_successor(tmp_path: Path) -> None:
    service = EmbeddedService.open(tmp_path / "hvdm.db", speed=1e-9)
    await service.start()
    try:
        sock = tmp_path / "gw.sock"
        gateway = GatewayServer(EmbeddedBackend(service))
        await gateway.start(unix_path=str(sock))
        await gateway.close()
        assert not sock.exists()

        gateway = GatewayServer(EmbeddedBackend(service))
        await gateway.start(unix_path=str(sock))
        with pytest.raises(SocketPathInUse):  # a second gateway on a live socket
            await GatewayServer(EmbeddedBackend(service)).start(unix_path=str(sock))
        os.unlink(sock)
        with listening(sock):  # someone else took the path meanwhile: theirs stays
            await gateway.close()
            assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    finally:
        await service.stop()


async def test_qmp_sockets_never_replace_a_file_and_replace_a_stale_socket(tmp_path: Path) -> None:
    service = EmbeddedService.open(tmp_path / "hvdm.db", speed=1e-9, config=EngineConfig(post_init_wait_ticks=1))
    await service.start()
    qmp_dir = tmp_path / "qmp"
    qmp_dir.mkdir(mode=0o700)
    precious = socket_path(qmp_dir, "vm1")
    precious.write_text("not a socket")
    stale_socket(socket_path(qmp_dir, "vm2"))
    for vm in ("vm1", "vm2"):
        await service.wait_processed(service.submit(vm, ChannelOpened(boot_bytes=1 << 30, maxmem_bytes=1 << 31)))
    servers = await start_qmp_servers(service, qmp_dir)
    try:
        assert precious.read_text() == "not a socket"  # vm1 gets no QMP socket; the file stays
        vm2 = socket_path(qmp_dir, "vm2")
        _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(vm2)), 5)
        writer.close()
    finally:
        await servers.close()
        await service.stop()
    assert precious.read_text() == "not a socket"
    assert not socket_path(qmp_dir, "vm2").exists()  # ours, removed on close
