"""Where the per-VM QMP sockets live, and how the directory is kept private.

A QMP socket can resize a VM's memory, so access is controlled by the file system alone: the
directory is created 0700 and owned by the service's user, and every socket is chmod-ed 0600. The
directory's mode is what closes the short window between ``bind`` (which creates the socket with
the umask's mode) and the ``chmod`` that follows.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import quote

from ..socket_files import remove_stale_socket as remove_unused_socket

#: Longest ``sun_path`` Linux accepts, without the terminating NUL.
MAX_SOCKET_PATH = 107

#: Characters kept as they are in socket file names; everything else is percent-encoded.
_SAFE = "-_.@+"


def default_qmp_dir() -> Path:
    """``$HVDM_QMP_DIR``, else ``$XDG_RUNTIME_DIR/hvdm/qmp``, else ``/tmp/hvdm-<uid>/qmp``.

    ``hvdm run --qmp-dir`` and ``hvdm ctl --qmp-dir`` share this default so they find each other.
    """
    env = os.environ.get("HVDM_QMP_DIR")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hvdm" / "qmp"
    return Path(f"/tmp/hvdm-{os.getuid()}") / "qmp"


def socket_name(vm: str) -> str:
    """The socket file name of a VM: the id, percent-encoded so it is one safe path component.

    >>> socket_name("vm-1"), socket_name("a/b"), socket_name("..")
    ('vm-1.sock', 'a%2Fb.sock', '%2E..sock')

    Runtime complexity: O(len(vm))
    """
    name = quote(vm, safe=_SAFE)
    if name.startswith("."):
        name = "%2E" + name[1:]
    return name + ".sock"


def socket_path(qmp_dir: str | Path, vm: str) -> Path:
    return Path(qmp_dir) / socket_name(vm)


def ensure_private_dir(qmp_dir: str | Path) -> Path:
    """Create ``qmp_dir`` (and parents) 0700, or tighten an existing one we own to 0700.

    Raises ``PermissionError`` when the directory belongs to someone else: whoever owns it could
    replace our sockets, so we refuse to serve from it.
    """
    path = Path(qmp_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(str(path))
    if st.st_uid != os.getuid():
        raise PermissionError(f"QMP directory {path} is owned by uid {st.st_uid}, not by us ({os.getuid()})")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def remove_stale_socket(path: Path) -> None:
    """Unlink a socket left behind by a previous run; refuse anything else (a file, a live socket)."""
    remove_unused_socket(path)
