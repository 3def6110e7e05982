"""One writer per embedded log: an exclusive ``flock`` on ``PATH.lock`` next to the SQLite file.

Why: SQLite's own locking serialises transactions, not processes, so two ``hvdm run`` (or
``hvdm engine --db``) on one log would both append inputs and both run the engine, each deciding
from its own in-memory state: duplicated events and accounting that no longer folds. And
``hvdm run --fresh`` would rename a log from under a service still writing it. Both fail silently
without this lock.

Why a separate lock file and ``flock``: the kernel drops the lock when the holder's last file
descriptor closes, so a service killed with ``kill -9`` (or a crashed host process) never leaves
a stale lock behind, and no pid file needs judging "stale". Locking the database file itself
would interfere with SQLite's own POSIX locks (closing any descriptor of the file drops those).
The lock file is never deleted (deleting it would let a second writer lock a new inode while
the first still holds the old one), and ``--fresh`` leaves it in place: it guards the path, not
its contents. The holder's pid is written into it, only to name the holder in the refusal.

Readers (``hvdm audit``, ``replay``, the metrics, ``rebalance --db``) do not take it: WAL lets
them read a consistent snapshot while the writer runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

#: How long a refused writer waits for the holder's pid to appear in the file (the holder
#: writes it right after locking; an empty file means that instant).
_PID_WAIT_SECONDS = 0.5


class LogLockError(Exception):
    """The writer lock could not be taken; the message names the log and why (one line)."""


class LogInUse(LogLockError):
    """Another process holds the log's writer lock; ``pid`` is its pid when it could be read."""

    def __init__(self, log_path: str | Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process (pid unknown)"
        super().__init__(f"log {log_path} is in use by {holder}")
        self.pid = pid


def lock_path(log_path: str | Path) -> Path:
    """``PATH.lock``: where the writer lock of the log at ``PATH`` lives.

    >>> lock_path("/var/lib/hvdm/hvdm.db").name
    'hvdm.db.lock'
    """
    return Path(f"{log_path}.lock")


class WriterLock:
    """The held writer lock of one log; released by :meth:`release`, ``with``, or the process dying."""

    def __init__(self, log_path: str | Path, fd: int) -> None:
        self.log_path = str(log_path)
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, log_path: str | Path) -> WriterLock:
        """Take the lock without waiting; ``LogInUse`` naming the holder's pid if it is held.

        Raises ``LogLockError`` when the lock file cannot be opened (a missing directory, no
        permission): the log could not be written there either."""
        path = lock_path(log_path)
        try:
            # Not inherited by exec'd children (Python's default), so a spawned helper cannot keep it.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LogLockError(f"cannot open the lock file {path} of log {log_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise LogLockError(f"cannot lock {path} (log {log_path}): {exc.strerror}") from None
            pid = _holder_pid(fd)
            os.close(fd)
            raise LogInUse(log_path, pid) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)  # drops the lock
            raise LogLockError(f"cannot write the lock file {path} of log {log_path}: {exc.strerror}") from None
        return cls(log_path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays: see the module docstring."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # No pid of a process that no longer holds it; on a failing disk it may stay, which is
        # harmless: the pid is only ever read by a writer the lock refused.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _holder_pid(fd: int) -> int | None:
    """The pid the holder wrote, waiting briefly if it has locked but not written it yet."""
    deadline = time.monotonic() + _PID_WAIT_SECONDS
    while True:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)
