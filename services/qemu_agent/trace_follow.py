"""Follow a QEMU trace file as it grows (``tail -F``), yielding page changes as they appear."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from .trace import TraceChange, TraceInterpreter

#: A line longer than this is not a trace line; it is skipped up to its end.
MAX_LINE = 4096


async def follow_trace(
    path: Path, interval: float = 0.25, interpreter: TraceInterpreter | None = None
) -> AsyncIterator[TraceChange]:
    """Read ``path`` from its start and then as it grows; a truncated or replaced file (a new QEMU
    writing the same path) is read again from its start."""
    interp = interpreter or TraceInterpreter()
    position = 0
    inode: int | None = None
    partial = b""
    while True:
        try:
            st = path.stat()
        except OSError:
            await asyncio.sleep(interval)
            continue
        if inode is not None and (st.st_ino != inode or st.st_size < position):
            position, partial = 0, b""
        inode = st.st_ino
        if st.st_size == position:
            await asyncio.sleep(interval)
            continue
        chunk = b""
        with contextlib.suppress(OSError), path.open("rb") as f:
            f.seek(position)
            chunk = f.read(1 << 20)
        position += len(chunk)
        data = partial + chunk
        lines = data.split(b"\n")
        partial = lines.pop()
        if len(partial) > MAX_LINE:
            partial = b""
        for raw in lines:
            if len(raw) > MAX_LINE:
                interp.lines += 1
                interp.ignored += 1
                continue
            change = interp.feed(raw.decode("utf-8", "replace"))
            if change is not None:
                yield change
