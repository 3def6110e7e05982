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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..dm_engine.inputs import ALL_VMS
from ..dm_engine.limits import MAX_RECORD_INT, valid_vm_id
from ..dm_engine.records import dumps, loads

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
