"""Whole fetches to one handler: Faust's consumer drain loop without its per-record pipeline.

Why: Faust hands every record to an agent through several coroutines of its own -- the drain loop
races each record's delivery against the flow-control event (two tasks per record), the
conductor decodes it and queues it, the stream's passive drainer runs the processors, and
``take_events`` acknowledges each event with its own ``await``. Measured in the engine worker
that is most of the CPU per inbox record, and it caps one worker at ~2,500 records/s. The engine
wants the opposite shape: a whole fetch at once, decided in a plain loop, written with one
producer batch per partition, acknowledged as offset ranges once the writes are durable.

What stays Faust's: the app, the worker, the consumer group (assignment, rebalances, the
``on_partitions_assigned`` / ``revoked`` signals), flow control during rebalances, the periodic
commit of acknowledged offsets, and the producer. Only the last step changes: for a topic with a
registered ``BatchSink``, ``BatchingConsumer._drain_messages`` passes each fetch (records per
partition, already filtered the way Faust's own ``getmany`` filters them) to the sink, and the
sink acknowledges offset ranges later through ``ack``. Records of any other topic still take
Faust's per-record path, so agents keep working alongside.

Contract of a sink:

* ``deliver(records, ack)`` is awaited by the drain loop, one fetch at a time, in fetch order;
  it may keep the work going after it returns (the engine pipelines its writes) and must call
  ``ack(tp, first, last)`` only once the effects of records ``first..last`` are durable. Faust
  commits only acknowledged offsets, contiguously from the committed one.
* ``wait_idle()`` returns when nothing delivered is still being worked on. A rebalance waits for
  it (``Consumer.wait_empty``) before it revokes partitions, as it waits for an agent's
  unacknowledged events, so a revoked partition's last batch is usually committed by its owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

AckRange = Callable[[Any, int, int], None]


class BatchSink(Protocol):
    def deliver(self, records: Mapping[Any, Sequence[Any]], ack: AckRange) -> Awaitable[None]: ...
    def wait_idle(self) -> Awaitable[None]: ...


#: Attribute of a ``faust.App`` holding its sinks by topic name.
_SINKS_ATTR = "_hvdm_batch_sinks"


def register_batch_sink(app: Any, topic: str, sink: BatchSink) -> None:
    """Deliver ``topic``'s records to ``sink`` in whole fetches (the app's transport must be one
    built with ``BatchingConsumer``, as ``kafka_log.faust_broker_url`` builds it)."""
    sinks: dict[str, BatchSink] = getattr(app, _SINKS_ATTR, None) or {}
    sinks[topic] = sink
    setattr(app, _SINKS_ATTR, sinks)


def sinks_of(app: Any) -> dict[str, BatchSink]:
    return getattr(app, _SINKS_ATTR, None) or {}


#: What the drain loop and ``ack_range`` use of Faust's ``Consumer`` beyond its public API (checked
#: when the loop starts; written against faust-streaming 0.15).
FAUST_INTERNALS = (
    "_wait_next_records",
    "_read_offset",
    "_committed_offset",
    "_acked",
    "_acked_index",
    "_n_acked",
    "_waiting_for_ack",
    "_buffered_partitions",
    "_commit_every",
    "consumer_stopped_errors",
    "perform_seek",
    "flow_active",
)


def batching_consumer(base: type[Any]) -> type[Any]:  # noqa: C901 -- one class body around Faust's
    """A subclass of Faust's aiokafka ``Consumer`` class ``base`` with the batch drain loop.

    Built by a function so that importing this module does not import Faust.
    """
    from faust.transport.consumer import CONSUMER_FETCHING
    from faust.types.tuples import ack_lock
    from mode.utils.futures import notify

    class BatchingConsumer(base):  # type: ignore[misc]
        _n_acked: int

        def ack_range(self, tp: Any, first: int, last: int) -> None:
            """Acknowledge offsets ``first..last`` of ``tp`` (Faust's ``ack`` for a range)."""
            with ack_lock:
                committed = self._committed_offset[tp]
                index = self._acked_index[tp]
                acked = self._acked[tp]
                start = first if committed is None else max(first, committed)
                added = 0
                for offset in range(start, last + 1):
                    if offset not in index:
                        index.add(offset)
                        acked.append(offset)
                        added += 1
                self._n_acked += added
                notify(self._waiting_for_ack)

        async def wait_empty(self) -> None:
            await super().wait_empty()
            for sink in sinks_of(self.app).values():
                await sink.wait_idle()

        async def _drain_messages(self, fetcher: Any) -> None:  # noqa: C901  # pragma: no cover - runs in the Fetcher
            sinks = sinks_of(self.app)
            if not sinks:
                await super()._drain_messages(fetcher)
                return
            missing = [name for name in FAUST_INTERNALS if not hasattr(self, name)]
            if missing:
                # A Faust release that renamed what this loop relies on: refuse, never guess.
                raise RuntimeError(f"faust_batch does not support this Faust version (no {', '.join(missing)})")
            callback = self.callback
            consumer_stopped = self._stopped.is_set
            fetcher_stopped = fetcher._stopped.is_set
            read_offset = self._read_offset
            commit_every = self._commit_every
            to_message = self._to_message
            ack = self.ack_range
            try:
                while not (consumer_stopped() or fetcher_stopped()):
                    self.diag.set_flag(CONSUMER_FETCHING)
                    records, active = await self._wait_next_records(1.0)
                    if records is None or self.should_stop:
                        continue
                    if not self.flow_active:
                        # As Faust's getmany: what was fetched during a rebalance is read again
                        # from the committed offsets.
                        try:
                            await self.perform_seek()
                        except Exception as exc:
                            self.log.warning("exception performing seek when flow not active %r", exc)
                        continue
                    generation = self.app.consumer_generation_id
                    await self.sleep(0)
                    if generation != self.app.consumer_generation_id or not self.flow_active:
                        continue  # a rebalance started meanwhile: Faust reads again from the commits
                    per_sink: dict[str, dict[Any, list[Any]]] = {}
                    others: list[tuple[Any, Any]] = []
                    for tp, batch in records.items():
                        if active is not None and tp not in active and tp not in self._buffered_partitions:
                            continue
                        start = read_offset[tp]
                        if start is not None and batch and batch[0].offset < start:
                            batch = [r for r in batch if r.offset >= start]  # read already (Faust's rule)
                        if not batch:
                            continue
                        read_offset[tp] = batch[-1].offset
                        if tp.topic in sinks:
                            per_sink.setdefault(tp.topic, {})[tp] = batch
                        else:
                            others.extend((tp, r) for r in batch)
                    for topic, batches in per_sink.items():
                        await sinks[topic].deliver(batches, ack)
                    for tp, record in others:
                        await callback(to_message(tp, record))
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    self.diag.unset_flag(CONSUMER_FETCHING)
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    return
                raise
            finally:
                self.diag.unset_flag(CONSUMER_FETCHING)

    return BatchingConsumer
