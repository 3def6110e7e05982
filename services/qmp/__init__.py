"""QMP-compatible control sockets, one per VM, so QEMU's own tooling drives hvdm.

``start_qmp_servers(service, qmp_dir)`` serves ``qmp_dir/<vm>.sock``; ``hmp`` holds the text
commands shared by ``human-monitor-command`` and ``hvdm ctl``.
"""

from .paths import default_qmp_dir, socket_path
from .server import QmpServers, start_qmp_servers

__all__ = ["QmpServers", "default_qmp_dir", "socket_path", "start_qmp_servers"]
