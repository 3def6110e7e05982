"""What ``hvdm run`` tells the operator about its log file, and ``--fresh``.

Why continuing is the default: the log is the service's memory (every VM's accounting is the fold
of it), and a restart after a crash or an upgrade must carry on from it; a restart that silently
started from nothing would forget every ballooned page. So an existing log is continued and the
start banner says so, with what it holds; ``--fresh`` moves the old file aside (never deletes
it) and starts a new one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..event_log.sqlite_log import SqliteLog, check_log_file

#: SQLite's companion files of a WAL database; they travel with the main file.
_COMPANIONS = ("-wal", "-shm")


def describe_log(log: SqliteLog, existed: bool) -> str:
    """One line for the start banner: a new log, or what the continued one holds."""
    if not existed:
        return f"new log {log.path}"
    vms = len(log.vms())
    inputs = log.inbox_high_watermark()
    tick = log.get_meta("last_tick") or "0"
    return (
        f"continuing the existing log {log.path}: {vms} VM{'s' if vms != 1 else ''}, {inputs} inbox records, "
        f"tick {tick} (--fresh starts a new log)"
    )


def backup_path(path: str | Path, now: float | None = None) -> Path:
    """``PATH.<UTC timestamp>.bak``, with ``.1``, ``.2``, ... added if that name is taken.

    >>> backup_path("/nonexistent/hvdm.db", 0.0).name
    'hvdm.db.19700101T000000Z.bak'
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    base = Path(f"{path}.{stamp}.bak")
    candidate, n = base, 0
    while any(Path(f"{candidate}{suffix}").exists() for suffix in ("", *_COMPANIONS)):
        n += 1
        candidate = Path(f"{base}.{n}")
    return candidate


def move_aside(path: str | Path, now: float | None = None) -> Path | None:
    """``--fresh``: rename the log at ``path`` (and its WAL companions) to :func:`backup_path`.

    Returns where it went, or None when there was no log. Refuses (``NotAnHvdmLog``) a file that
    is not an hvdm log: ``--fresh`` is no licence to move another application's data.
    """
    if not check_log_file(path):
        if Path(path).exists():
            os.unlink(path)  # an empty file: nothing to keep
        return None
    target = backup_path(path, now)
    os.rename(path, target)
    for suffix in _COMPANIONS:
        companion = Path(f"{path}{suffix}")
        if companion.exists():
            os.rename(companion, Path(f"{target}{suffix}"))
    return target
