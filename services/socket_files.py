"""UNIX socket files: remove one left behind by an earlier run, and never anything else.

A module of its own at the top of ``services``: the gateway, the QMP sockets and ``hvdm run`` all
use it, and none of them may import another for it (no cycle between packages).

Why: a listening socket must be bound to a path that does not exist, so a service removes the
socket file a crashed run left behind. Removing "whatever is at the path" turned a swapped
``--db``/``--socket`` into a deleted event log. A path is removed only when it is a socket and
nobody answers on it (``connect`` is refused); a regular file, a directory or a live socket is
refused with an error naming the path. The same rule serves the gateway socket and the per-VM
QMP sockets.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

#: How long a probe waits for a listener that accepts slowly before calling the socket busy.
PROBE_TIMEOUT_S = 1.0


class SocketPathInUse(FileExistsError):
    """The path exists and must not be removed: not a socket, or a socket someone listens on."""


def _what(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a socket"


def remove_stale_socket(path: str | Path) -> bool:
    """Unlink ``path`` if it is a socket nobody listens on; True if something was removed.

    Raises ``SocketPathInUse`` when ``path`` is anything else (a file, a directory, a symlink, a
    live socket, or a socket we cannot probe), leaving it untouched.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathInUse(f"{path} exists and is {_what(st.st_mode)}; refusing to remove it (not a stale socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SocketPathInUse(f"{path}: cannot tell whether the socket is in use ({exc}); not removing it") from None
    finally:
        probe.close()
    raise SocketPathInUse(f"{path}: another process is listening on this socket; refusing to remove it")


def socket_identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of the socket at ``path``, to recognise it as ours when we clean up."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISSOCK(st.st_mode) else None


def remove_own_socket(path: str | Path, identity: tuple[int, int] | None) -> None:
    """Unlink ``path`` on the way out if it is still the socket we bound (``socket_identity``).

    A socket another process bound there meanwhile is left alone.
    """
    if identity is not None and socket_identity(path) == identity:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
