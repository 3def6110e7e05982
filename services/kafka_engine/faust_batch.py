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

Every Faust (and aiokafka-through-Faust) internal the engine worker relies on is used here and
nowhere else: the consumer's private drain loop and acknowledgement state (``FAUST_INTERNALS``),
its committed offsets (``committed_offset``), the transport registry (``faust_broker_url``) and
the producer's aiokafka client with its batch API (``aiokafka_producer``). They are written
against one release line (``SUPPORTED_FAUST``); ``check_faust_version`` refuses any other when
the app is built, so an upgrade fails at start with a clear message instead of misbehaving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .settings import KafkaSettings

#: The faust-streaming release line(s) whose internals this module is written against
#: (``pyproject.toml`` pins the same range).
SUPPORTED_FAUST = ("0.15",)


class UnsupportedFaust(RuntimeError):
    """The installed Faust is not a release whose internals ``faust_batch`` knows."""


def check_faust_version(version: str | None = None) -> str:
    """The installed Faust version (or ``version``), if it is one of ``SUPPORTED_FAUST``.

    Why refuse rather than try: the drain loop replaces a private Faust method and reads its
    private state; on another release it could acknowledge offsets whose effects are not durable.
    """
    if version is None:
        import faust

        version = str(getattr(faust, "__version__", "unknown"))
    line = ".".join(version.split(".")[:2])
    if line not in SUPPORTED_FAUST:
        raise UnsupportedFaust(
            f"faust-streaming {version} is not supported: the Kafka engine worker relies on Consumer "
            f"internals of faust-streaming {', '.join(v + '.x' for v in SUPPORTED_FAUST)} "
            "(services/kafka_engine/faust_batch.py); install a supported version (see constraints.txt)"
        )
    return version


def committed_offset(app: Any, tp: Any) -> int | None:
    """The offset Faust's consumer has committed for ``tp`` (None: nothing committed yet)."""
    consumer: Any = app.consumer
    committed = consumer._committed_offset.get(tp)
    return None if committed is None else int(committed)


def aiokafka_producer(app: Any) -> Any:
    """The aiokafka producer under Faust's: its ``create_batch`` / ``send_batch`` write one batch per
    partition, which Faust's per-record ``send`` cannot."""
    return app.producer._ensure_producer()


AckRange = Callable[[Any, int, int], None]


class BatchSink(Protocol):
    def deliver(self, records: Mapping[Any, Sequence[Any]], ack: AckRange) -> Awaitable[None]: ...
    def wait_idle(self) -> Awaitable[None]: ...


#: Attribute of a ``faust.App`` holding its sinks by topic name.
_SINKS_ATTR = "_hvdm_batch_sinks"


def register_batch_sink(app: Any, topic: str, sink: BatchSink) -> None:
    """Deliver ``topic``'s records to ``sink`` in whole fetches (the app's transport must be one
    built with ``BatchingConsumer``, as ``faust_broker_url`` builds it)."""
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


def require_internals(consumer: Any) -> None:
    """Refuse a consumer without every one of ``FAUST_INTERNALS`` (a Faust release that renamed
    what the drain loop relies on): never guess."""
    missing = [name for name in FAUST_INTERNALS if not hasattr(consumer, name)]
    if missing:
        raise UnsupportedFaust(f"faust_batch does not support this Faust version (no {', '.join(missing)})")


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
            require_internals(self)
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


# ---------------------------------------------------------------------------------------- the transport
FAUST_SCHEME = "hvdmkafka"
#: The Faust transport with a short fetch wait, set by ``faust_broker_url`` (QUIRK(tansu) long-poll).
FaustTransport: Any = None


def faust_broker_url(settings: KafkaSettings) -> str:
    """The ``broker`` argument for ``faust.App``: Faust's aiokafka transport, but with consumers
    that ask for ``settings.fetch_wait`` instead of Faust's fixed 1500 ms (QUIRK(tansu) long-poll)
    and that can hand whole fetches to a batch sink (``faust_batch``, not a quirk: performance)."""
    global FaustTransport
    if FaustTransport is None:
        from faust.transport.drivers import TRANSPORTS
        from faust.transport.drivers import aiokafka as faust_aiokafka

        wait_ms = max(1, int(settings.fetch_wait * 1000))

        class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
            def _create_worker_consumer(self, transport: Any) -> Any:
                consumer = super()._create_worker_consumer(transport)
                consumer._fetch_max_wait_ms = wait_ms  # read by AIOKafkaConsumer.start()
                return consumer

        class _Consumer(batching_consumer(faust_aiokafka.Consumer)):  # type: ignore[misc]
            def _new_consumer_thread(self) -> Any:
                return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        class _Transport(faust_aiokafka.Transport):
            Consumer = _Consumer

        FaustTransport = _Transport
        TRANSPORTS.aliases[FAUST_SCHEME] = f"{__name__}:FaustTransport"
    return ";".join(f"{FAUST_SCHEME}://{host}" for host in settings.bootstrap.split(","))
