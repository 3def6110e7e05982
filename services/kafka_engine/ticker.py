"""The Tick records of an owned partition, with ``ticks=worker``.

Why the owner appends them: after recovery it finds the last Tick in the partition and continues
from there, one tick per ``tick_seconds / speed`` wall seconds, never skipping a number. Time a
partition spent without an owner is not counted: a guest is not timed out for the host's own
outage, which also makes a fail-over invisible in the event log. With ``ticks=external``
something else appends them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..dm_engine.inputs import ALL_VMS
from . import envelope
from .crash import crash
from .ownership import OwnedPartition
from .settings import KafkaSettings

log = logging.getLogger("hvdm.kafka_worker")


async def run_ticker(part: OwnedPartition, producer: Any, settings: KafkaSettings, tick_seconds: float) -> None:
    """Append Tick records to the partition through Faust's ``producer``, continuing from the last one in it."""
    from faust.exceptions import NotReady

    interval = tick_seconds / settings.speed
    base_tick = part.last_tick or 0
    base_time = time.monotonic()
    appended = base_tick
    try:
        while not part.gone.is_set():
            due = base_tick + int((time.monotonic() - base_time) / interval)
            seen = part.engine.clock.last if part.engine and part.engine.clock else None
            if seen is not None and seen > appended:
                appended = seen  # another ticker got ahead (fail-over overlap): follow it
            while appended < due and not part.gone.is_set():
                while True:  # a partition can be assigned before the app's producer has started
                    try:
                        fut = await producer.send(
                            settings.inbox, ALL_VMS.encode(), envelope.tick_value(appended + 1), part.number, None, None
                        )
                        break
                    except NotReady:
                        await asyncio.sleep(0.05)
                await fut
                appended += 1
            next_at = base_time + (appended + 1 - base_tick) * interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("event=ticker_failed partition=%d", part.number)
        crash()
