"""The JSON records on the Kafka topics: one envelope per topic around the project's record shapes.

Why envelopes: the inner records are exactly what the embedded log stores (``records.to_dict`` of
inputs and events, ``dm_protocol.encode`` of host messages), so ``schemas/`` and the audit read
both deployments alike; the envelope adds what a partitioned log needs to be replayed and
deduplicated -- the VM, the inbox position ``[partition, offset]`` a result came from, and the
per-VM sequence numbers. Every value is canonical JSON (sorted keys, no spaces), so a re-decided
input produces byte-identical records. Keys are the VM id (UTF-8); records that concern a whole
partition (ticks, checkpoints) use the key ``*`` and are written to an explicit partition.

inbox (key = vm)::

    {"vm": "vm1", "record": {"type": "GuestMessage", "tick": 0, "raw": "0220..."}}
    {"vm": "*", "record": {"type": "Tick", "tick": 412}}          # key "*", explicit partition

  A non-tick input's ``tick`` is only the publisher's hint: the engine stamps every input with its
  partition's clock (see ``partition.PartitionClock``), which is a function of record order alone.

events (key = vm, same partition as the input; ALL the events one input caused for one VM)::

    {"vm": "vm1", "inbox": [3, 1207], "seq": 41, "tick": 412, "outbox_seq": 9,
     "events": [{"type": "StatusReported", ...}, ...]}

  ``seq`` is the per-VM sequence number of the first event (the others follow), ``outbox_seq``
  the VM's last outbox sequence number after this record.

outbox (key = vm, same partition; the host messages those events imply, derived purely)::

    {"vm": "vm1", "inbox": [3, 1207], "messages": [[8, 40, "0a20..."], [9, 41, "0b20..."]]}

  each message is ``[outbox seq, event seq, encoded DM message as hex]``.

snapshots (key = vm, same partition; compacted where the broker compacts)::

    {"vm": "vm1", "seq": 41, "outbox_seq": 9, "applied": 1207, "state": {...}}
    {"vm": "*", "partition": 3, "events_offset": 52011, "inbox_offset": 1207}   # checkpoint

meta (one partition; the first record of a key wins)::

    {"key": "engine_config", "value": "{...}"}

Compact records. The two records every status report writes have a compact form, told from an
envelope by its first byte (an envelope starts with ``{``); readers take both, so topics written
before read as they are (``decode_inbox``, ``decode_events``):

* inbox, a ``GuestMessage``: byte ``0x01``, then the raw guest bytes. The VM is the record's key
  and the tick is not written (the engine stamps every input with its partition's clock anyway):
  the one fact is the frame, which the JSON envelope carried as hex inside 110 bytes of keys.
* events: byte ``0x02``, then ``partition,offset,seq,tick,outbox_seq`` in decimal, then each event
  after a newline, in its embedded-log stored form (``records.stored_event``: a code byte and
  the integers of a ``StatusReported``, canonical JSON for the rest). The VM is the key. Readers
  expand each event to exactly the canonical JSON the envelope would have held.

Why: compression (``settings.compression``) removes most of the envelopes' repetition in full
batches, but a batch of a few records keeps it; the compact forms cost a status report 49 + ~40
bytes before compression instead of ~165 + ~235 (bench/kafka_log_size.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..dm_engine.inputs import ALL_VMS
from ..dm_engine.limits import MAX_RECORD_INT, valid_vm_id
from ..dm_engine.records import dumps, guest_frame, loads, stored_event_json

_json_str = json.encoder.encode_basestring_ascii  # the str encoder ``dumps`` uses


class EnvelopeError(ValueError):
    """A topic record that is not an hvdm envelope (never raised for a record we wrote)."""


def _count(name: str, value: Any) -> int:
    """A position, offset, sequence number or tick: an integer in [0, 2**63). Anything else
    (a float, which is how orjson returns an integer above 2**64, a bool, a string) is refused
    rather than converted, so one hostile record cannot move a clock or a position."""
    if type(value) is not int or not 0 <= value <= MAX_RECORD_INT:
        raise EnvelopeError(f"{name} must be an integer in [0, 2**63), got {type(value).__name__}")
    return value


def encode(value: dict[str, Any]) -> bytes:
    return dumps(value).encode()


def decode(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise EnvelopeError("record has no value")
    try:
        value = loads(raw)  # orjson: the same values as json.loads, several times faster
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"record is not JSON: {exc}") from None
    if not isinstance(value, dict) or (not isinstance(value.get("vm"), str) and "key" not in value):
        raise EnvelopeError("record is not an hvdm envelope")
    return value


# ---------------------------------------------------------------------------------------- inbox
def inbox_value(vm: str, record: dict[str, Any]) -> bytes:
    return encode({"vm": vm, "record": record})


#: First byte of the compact records (an envelope's is ``{``).
COMPACT_GUEST_MESSAGE = 0x01
COMPACT_EVENTS = 0x02
_COMPACT_GUEST_MESSAGE = bytes((COMPACT_GUEST_MESSAGE,))


def publish_value(vm: str, record: dict[str, Any], *, compact: bool = True) -> bytes:
    """What a publisher writes for an input record (``records.to_dict``): a ``GuestMessage``
    exactly ``{type, tick, raw}`` in the compact form, anything else as the JSON envelope.

    >>> publish_value("vm1", {"type": "GuestMessage", "tick": 7, "raw": "0500"})
    b'\\x01\\x05\\x00'
    >>> publish_value("vm1", {"type": "SetTarget", "tick": 7, "target_bytes": 4096})[:12]
    b'{"record":{"'
    """
    if compact and (blob := guest_frame(record)) is not None:
        return _COMPACT_GUEST_MESSAGE + blob
    return inbox_value(vm, record)


def _key_vm(key: bytes | None) -> str:
    try:
        vm = key.decode() if key is not None else None
    except UnicodeDecodeError:
        vm = None
    if vm is None or not valid_vm_id(vm):
        raise EnvelopeError("compact record without a valid vm id as its key")
    return vm


def decode_inbox(key: bytes | None, raw: bytes | None) -> dict[str, Any]:
    """An inbox record as the envelope dict ``inbox_entry`` takes, from either form. A compact
    ``GuestMessage`` gets ``"tick": 0``: the worker and the audit stamp the partition's clock.

    >>> decode_inbox(b"vm1", b"\\x01\\x05\\x00")
    {'vm': 'vm1', 'record': {'type': 'GuestMessage', 'tick': 0, 'raw': '0500'}}
    >>> decode_inbox(b"vm1", b'{"record":{"tick":3,"type":"Tick"},"vm":"*"}')["record"]
    {'tick': 3, 'type': 'Tick'}
    """
    if raw and raw[0] == COMPACT_GUEST_MESSAGE:
        return {"vm": _key_vm(key), "record": {"type": "GuestMessage", "tick": 0, "raw": raw[1:].hex()}}
    return decode(raw)


def tick_value(tick: int) -> bytes:
    return inbox_value(ALL_VMS, {"type": "Tick", "tick": tick})


def is_tick(value: dict[str, Any]) -> bool:
    return value.get("vm") == ALL_VMS and value["record"].get("type") == "Tick"


def inbox_entry(value: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The VM (or ``ALL_VMS``) and the record of an inbox envelope; ``EnvelopeError`` when the VM
    id is not one hvdm accepts or there is no record object. The worker and the audit reader apply
    this same rule, so both skip the same records.

    >>> inbox_entry({"vm": "vm1", "record": {"type": "Tick"}})
    ('vm1', {'type': 'Tick'})
    >>> inbox_entry({"vm": "vm1\\n", "record": {}})
    Traceback (most recent call last):
    ...
    services.kafka_engine.envelope.EnvelopeError: inbox envelope without a valid vm id and record
    """
    vm = value.get("vm")
    record = value.get("record")
    if not (vm == ALL_VMS or valid_vm_id(vm)) or not isinstance(record, dict):
        raise EnvelopeError("inbox envelope without a valid vm id and record")
    assert isinstance(vm, str)
    return vm, record


def tick_number(record: dict[str, Any]) -> int:
    """The tick of a partition-wide ``Tick`` record; ``EnvelopeError`` for anything else.

    >>> tick_number({"type": "Tick", "tick": 12})
    12
    >>> tick_number({"type": "Tick", "tick": 1e30})
    Traceback (most recent call last):
    ...
    services.kafka_engine.envelope.EnvelopeError: tick must be an integer in [0, 2**63), got float
    """
    if record.get("type") != "Tick":
        raise EnvelopeError("not a Tick")
    return _count("tick", record.get("tick"))


# ---------------------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class EventsRecord:
    vm: str
    partition: int
    offset: int
    seq: int
    tick: int
    outbox_seq: int
    events: tuple[dict[str, Any], ...]

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.events) - 1

    def to_value(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "inbox": [self.partition, self.offset],
            "seq": self.seq,
            "tick": self.tick,
            "outbox_seq": self.outbox_seq,
            "events": list(self.events),
        }

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> EventsRecord:
        try:
            partition, offset = value["inbox"]
            vm = value["vm"]
            events = value["events"]
            if not valid_vm_id(vm) or not isinstance(events, list):
                raise ValueError("vm or events")
            return cls(
                vm=vm,
                partition=_count("partition", partition),
                offset=_count("offset", offset),
                seq=_count("seq", value["seq"]),
                tick=_count("tick", value["tick"]),
                outbox_seq=_count("outbox_seq", value["outbox_seq"]),
                events=tuple(events),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EnvelopeError(f"not an events record: {exc!r}") from None


def events_value(
    vm: str, partition: int, offset: int, seq: int, tick: int, outbox_seq: int, events_json: Sequence[str]
) -> bytes:
    """The encoded events record from its events' canonical JSON (``records.event_json``),
    byte-identical to ``encode(EventsRecord(...).to_value())`` (tested) without building the dicts:
    this runs once per decided input."""
    return (
        f'{{"events":[{",".join(events_json)}],"inbox":[{partition},{offset}],"outbox_seq":{outbox_seq},'
        f'"seq":{seq},"tick":{tick},"vm":{_json_str(vm)}}}'
    ).encode()


_COUNT_TEXT = re.compile(rb"[0-9]{1,19}")


def compact_events_value(
    partition: int, offset: int, seq: int, tick: int, outbox_seq: int, stored: Sequence[str | bytes]
) -> bytes:
    """The compact events record (module docstring) from its events' stored forms
    (``records.stored_event``). The VM is the record's key."""
    parts = [b"%c%d,%d,%d,%d,%d" % (COMPACT_EVENTS, partition, offset, seq, tick, outbox_seq)]
    for event in stored:
        parts.append(event if isinstance(event, bytes) else event.encode())
    return b"\n".join(parts)


def decode_events(key: bytes | None, raw: bytes | None) -> EventsRecord:
    """An events record from either form; ``EnvelopeError`` for anything else."""
    if not raw or raw[0] != COMPACT_EVENTS:
        return EventsRecord.from_value(decode(raw))
    vm = _key_vm(key)
    head, *entries = raw[1:].split(b"\n")
    numbers = head.split(b",")
    if len(numbers) != 5 or not all(_COUNT_TEXT.fullmatch(n) for n in numbers):
        raise EnvelopeError("compact events record without its five numbers")
    partition, offset, seq, tick, outbox_seq = (_count("number", int(n)) for n in numbers)
    events = []
    for entry in entries:
        try:
            text = entry.decode() if entry[:1] == b"{" else stored_event_json(entry)
            event = loads(text)
        except (ValueError, UnicodeDecodeError):
            raise EnvelopeError("compact events record with an unreadable event") from None
        if type(event) is not dict:
            raise EnvelopeError("compact events record with an event that is not an object")
        events.append(event)
    return EventsRecord(vm, partition, offset, seq, tick, outbox_seq, tuple(events))


# ---------------------------------------------------------------------------------------- outbox
@dataclass(frozen=True, slots=True)
class OutboxMessage:
    seq: int
    event_seq: int
    message: bytes


def outbox_value(vm: str, partition: int, offset: int, messages: list[OutboxMessage]) -> dict[str, Any]:
    return {
        "vm": vm,
        "inbox": [partition, offset],
        "messages": [[m.seq, m.event_seq, m.message.hex()] for m in messages],
    }


def outbox_messages_of(value: dict[str, Any]) -> list[OutboxMessage]:
    try:
        return [
            OutboxMessage(_count("seq", s), _count("event seq", e), bytes.fromhex(h)) for s, e, h in value["messages"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvelopeError(f"not an outbox record: {exc!r}") from None


# ---------------------------------------------------------------------------------------- snapshots
def snapshot_value(vm: str, seq: int, outbox_seq: int, applied: int, state: dict[str, Any]) -> dict[str, Any]:
    return {"vm": vm, "seq": seq, "outbox_seq": outbox_seq, "applied": applied, "state": state}


def checkpoint_value(partition: int, events_offset: int, inbox_offset: int) -> dict[str, Any]:
    return {"vm": ALL_VMS, "partition": partition, "events_offset": events_offset, "inbox_offset": inbox_offset}


# ---------------------------------------------------------------------------------------- meta
def meta_value(key: str, value: str) -> bytes:
    return encode({"key": key, "value": value})
