"""Two ways to make the event log's disk fail: a real, small tmpfs, and an injected SQLite error.

``small_tmpfs`` mounts a real tmpfs of a few MiB (root only: the test is skipped where ``mount``
is refused) and ``fill`` takes its last byte, so SQLite meets a genuine ENOSPC. ``FaultyConnection``
wraps the log's ``sqlite3`` connection and, while ``failing`` is set, makes every write statement
fail the way SQLite does on a full disk: the transaction is rolled back by SQLite itself and the
statement raises ``OperationalError('database or disk is full')`` (or ``disk I/O error``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "COMMIT")


class FaultyConnection:
    """A ``sqlite3.Connection`` whose writes fail on demand (everything else is the real thing)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.failing: str | None = None  # the error message while failing
        self.failures = 0

    def _maybe_fail(self, sql: str) -> None:
        if self.failing is None or not sql.lstrip().upper().startswith(_WRITES):
            return
        self.failures += 1
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")  # what SQLite does by itself on SQLITE_FULL / IOERR
        raise sqlite3.OperationalError(self.failing)

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._maybe_fail(sql)
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self._maybe_fail(sql)
        return self._db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class FaultyConnect:
    """``connect=`` for ``SqliteLog``: remembers the connection it made, to switch faults on."""

    def __init__(self) -> None:
        self.connection: FaultyConnection | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> FaultyConnection:
        self.connection = FaultyConnection(sqlite3.connect(*args, **kwargs))
        return self.connection

    def fail(self, message: str | None = "database or disk is full") -> None:
        assert self.connection is not None
        self.connection.failing = message


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "3m") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``where`` (skips the test when mounting is refused)."""
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the file system is full; delete it to free the space."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


def free(filler: Path) -> None:
    os.unlink(filler)
