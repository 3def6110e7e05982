"""JSON Schema documents for every record hvdm writes, derived from the record definitions.

Why generated: the inbox and event records are frozen dataclasses and the outbox records are DM
messages whose field widths live in ``dm_protocol.messages``; writing the schemas by hand would
give the project a second, drifting definition of each record. Here the type hints and the wire
field kinds are read once, and ``python -m services.schemas --check`` in CI fails whenever a
record changed without its schema being regenerated.

The rules, so a reader of a schema file knows what it promises:

* ``type`` is a ``const`` naming the record kind; every field the canonical JSON form writes is
  ``required`` (``records.to_dict`` and ``to_json_dict`` always write all of them, and a reader
  that silently defaulted a missing ``tick`` to 0 would rewrite history); ``additionalProperties``
  is false.
* integers are counts, page numbers, ticks, transaction ids or sizes, so ``minimum: 0`` -- except
  the sizes in operator commands (:data:`SIGNED_FIELDS`): the engine judges those itself and turns
  a bad one into a ``CommandRejected`` event, which a schema rejecting them would hide.
* page ranges are ``[start_page, page_count]`` arrays of two non-negative integers; bytes are
  lowercase hex strings; ``int | None`` is an integer or null.
* outbox messages also carry their wire limits (u4/u32/u64 maxima, 40-bit start page, 24-bit
  page count), because those are facts of the protocol, not of a Python type.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, Final, Literal

from ..dm_engine import events as ev
from ..dm_engine import inputs as inp
from ..dm_protocol.messages import (
    INT_LIMITS,
    MESSAGE_CLASSES,
    PAGE_COUNT_LIMIT,
    START_PAGE_LIMIT,
    WIRE_FIELDS,
    FieldKind,
    MessageType,
)

Schema = dict[str, Any]

DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
BASE_URL: Final = "https://hvdm.dev/schemas"
#: The version every schema file is written under; bump it (and keep the old files) when a record
#: changes incompatibly, so consumers can tell which shape a stored record has.
VERSION: Final = 1

#: Schema families, one directory each under ``schemas/``.
INBOX: Final = "inbox"
EVENTS: Final = "events"
OUTBOX: Final = "outbox"
ENVELOPES: Final = "envelopes"
FAMILIES: Final = (INBOX, EVENTS, OUTBOX, ENVELOPES)

#: The DM messages the host sends; the outbox holds nothing else.
HOST_TO_GUEST: Final = (
    MessageType.DM_VERSION_RESPONSE,
    MessageType.DM_CAPABILITIES_RESPONSE,
    MessageType.DM_BALLOON_REQUEST,
    MessageType.DM_UNBALLOON_REQUEST,
    MessageType.DM_MEM_HOT_ADD_REQUEST,
    MessageType.DM_MEM_HOT_REMOVE_REQUEST,
    MessageType.DM_INFO_MESSAGE,
)

#: Operator-typed sizes the engine validates itself (see the module docstring).
SIGNED_FIELDS: Final = frozenset({(INBOX, "SetTarget", "target_bytes"), (INBOX, "AddBackend", "size_bytes")})

#: Fields typed ``str`` whose values come from a closed vocabulary defined elsewhere in the code.
FIELD_ENUMS: Final[Mapping[tuple[str, str, str], type[enum.Enum]]] = {
    (EVENTS, "GuestViolation", "reason"): ev.ViolationReason,
}

_HEX: Final = {"type": "string", "pattern": "^(?:[0-9a-f]{2})*$", "description": "lowercase hex"}


def schema_id(family: str, kind: str) -> str:
    """The ``$id`` (and the file's path under ``schemas/``) of one record kind.

    >>> schema_id("events", "PagesBallooned")
    'https://hvdm.dev/schemas/events/PagesBallooned.v1.json'
    """
    return f"{BASE_URL}/{relative_path(family, kind)}"


def relative_path(family: str, kind: str) -> str:
    """Where the schema of ``kind`` lives, relative to the ``schemas/`` directory."""
    return f"{family}/{kind}.v{VERSION}.json"


def _integer(minimum: int | None = 0, maximum: int | None = None) -> Schema:
    out: Schema = {"type": "integer"}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


def _page_range(start_max: int | None = None, count_max: int | None = None) -> Schema:
    return {
        "type": "array",
        "description": "[start_page, page_count]",
        "prefixItems": [_integer(0, start_max), _integer(0, count_max)],
        "items": False,
        "minItems": 2,
        "maxItems": 2,
    }


def _docstring(cls: type) -> str | None:
    """The class docstring, minus the signature ``dataclass`` invents for undocumented classes."""
    doc = cls.__doc__
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    return inspect.cleandoc(doc)


def _hint_schema(hint: Any, where: str, signed: bool) -> Schema:
    """The schema of one Python type hint; an unknown hint is a programmer error, raised loudly
    so that a record gaining a new kind of field cannot slip past the generator."""
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return _integer(None if signed else 0)
    if hint is str:
        return {"type": "string"}
    if hint is bytes:
        return dict(_HEX)
    if hint == ev.PageRanges:
        return {"type": "array", "items": _page_range()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"type": "string", "enum": [str(m.value) for m in hint]}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _hint_schema(args[0], where, signed)}
    if origin in (typing.Union, types.UnionType):
        options = [_hint_schema(a, where, signed) for a in args if a is not type(None)]
        if type(None) in args:
            options.append({"type": "null"})
        return options[0] if len(options) == 1 else {"anyOf": options}
    raise TypeError(f"{where}: no JSON Schema rule for type hint {hint!r}; teach services.schemas")


def _object(family: str, kind: str, cls: type, properties: Schema) -> Schema:
    doc = _docstring(cls)
    out: Schema = {"$schema": DRAFT, "$id": schema_id(family, kind), "title": kind}
    if doc:
        out["description"] = doc
    out.update(
        type="object",
        properties=properties,
        required=list(properties),
        additionalProperties=False,
    )
    return out


def record_schema(family: str, cls: type) -> Schema:
    """Schema of an inbox input or an event dataclass, in the ``records.to_dict`` form."""
    kind: str = cls.KIND  # type: ignore[attr-defined]
    hints = typing.get_type_hints(cls)
    properties: Schema = {"type": {"const": kind}}
    for f in fields(cls):
        key = (family, kind, f.name)
        enum_cls = FIELD_ENUMS.get(key)
        if enum_cls is not None:
            prop = _hint_schema(enum_cls, f"{kind}.{f.name}", False)
        else:
            prop = _hint_schema(hints[f.name], f"{kind}.{f.name}", key in SIGNED_FIELDS)
        properties[f.name] = prop
    return _object(family, kind, cls, properties)


def _wire_schema(kind: FieldKind) -> Schema:
    limit = INT_LIMITS.get(kind)
    if limit is not None:
        return _integer(0, limit - 1)
    rng = _page_range(START_PAGE_LIMIT - 1, PAGE_COUNT_LIMIT - 1)
    wire: dict[FieldKind, Callable[[], Schema]] = {
        FieldKind.BOOL: lambda: {"type": "boolean"},
        FieldKind.RANGE: lambda: rng,
        FieldKind.OPTIONAL_RANGE: lambda: {"anyOf": [rng, {"type": "null"}]},
        FieldKind.RANGES: lambda: {"type": "array", "items": rng},
        FieldKind.BYTES: lambda: dict(_HEX),
    }
    return wire[kind]()


def outbox_schema(message_type: MessageType) -> Schema:
    """Schema of a host-to-guest DM message in its ``to_json_dict`` form.

    ``anomalies`` is not allowed: it marks odd bytes a *guest* sent, and the host never sends any.
    """
    cls = MESSAGE_CLASSES[message_type]
    properties: Schema = {"type": {"const": message_type.name}}
    for name, kind in WIRE_FIELDS[cls]:
        properties[name] = _wire_schema(kind)
    return _object(OUTBOX, message_type.name, cls, properties)


#: The outbox record of a QEMU-managed VM: a QMP command the QEMU agent sends (dm_engine.qemu_vm).
QMP_BALLOON: Final = "qmp_balloon"


def qmp_balloon_schema() -> Schema:
    """QMP ``balloon`` as the outbox stores it for a QEMU-managed VM (canonical JSON bytes)."""
    return {
        "$schema": DRAFT,
        "$id": schema_id(OUTBOX, QMP_BALLOON),
        "title": QMP_BALLOON,
        "description": "A QMP command for a QEMU-managed VM's monitor, derived from QemuBalloonCommanded; "
        "the QEMU agent sends it verbatim. value is the target guest size in bytes, a multiple of 4096.",
        "type": "object",
        "properties": {
            "execute": {"const": "balloon"},
            "arguments": {
                "type": "object",
                "properties": {"value": {**_integer(4096), "multipleOf": 4096}},
                "required": ["value"],
                "additionalProperties": False,
            },
        },
        "required": ["execute", "arguments"],
        "additionalProperties": False,
    }


def _record_union(family: str, kinds: list[str]) -> Schema:
    """A record of any kind in ``family``, checked against that kind's own schema.

    ``if``/``then`` on the ``type`` field rather than ``oneOf``: a bad record then fails with the
    errors of its own kind, not with one error per kind it is not.
    """
    return {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": kinds}},
        "allOf": [
            {
                "if": {"properties": {"type": {"const": k}}, "required": ["type"]},
                "then": {"$ref": schema_id(family, k)},
            }
            for k in kinds
        ],
    }


def envelope_schemas() -> dict[str, Schema]:
    """The row envelopes of the SQLite log (and of any other log adapter's records)."""
    vm = {"type": "string", "minLength": 1}
    event_row: Schema = {
        "$schema": DRAFT,
        "$id": schema_id(ENVELOPES, "event_row"),
        "title": "event_row",
        "description": "One row of the event log: the event a VM decided, with the inbox position "
        "it came from. seq counts from 1 per VM with no gaps.",
        "type": "object",
        "properties": {
            "vm": {**vm, "not": {"const": "*"}},
            "seq": _integer(1),
            "inbox_pos": _integer(1),
            "record": _record_union(EVENTS, sorted(ev.EVENT_TYPES)),
        },
        "required": ["vm", "seq", "inbox_pos", "record"],
        "additionalProperties": False,
    }
    inbox_row: Schema = {
        "$schema": DRAFT,
        "$id": schema_id(ENVELOPES, "inbox_row"),
        "title": "inbox_row",
        "description": 'One row of the inbox. vm "*" is a broadcast (a clock tick) that reaches '
        "every VM which has appeared in the inbox before it.",
        "type": "object",
        "properties": {
            "vm": vm,
            "pos": _integer(1),
            "tick": _integer(0),
            "record": _record_union(INBOX, sorted(inp.INPUT_TYPES)),
        },
        "required": ["vm", "pos", "tick", "record"],
        "additionalProperties": False,
    }
    return {"event_row": event_row, "inbox_row": inbox_row}


def generate() -> dict[str, Schema]:
    """Every schema, keyed by its path relative to ``schemas/`` (``events/TargetSet.v1.json``)."""
    out: dict[str, Schema] = {}
    for kind, cls in inp.INPUT_TYPES.items():
        out[relative_path(INBOX, kind)] = record_schema(INBOX, cls)
    for kind, ecls in ev.EVENT_TYPES.items():
        out[relative_path(EVENTS, kind)] = record_schema(EVENTS, ecls)
    for message_type in HOST_TO_GUEST:
        out[relative_path(OUTBOX, message_type.name)] = outbox_schema(message_type)
    out[relative_path(OUTBOX, QMP_BALLOON)] = qmp_balloon_schema()
    for kind, schema in envelope_schemas().items():
        out[relative_path(ENVELOPES, kind)] = schema
    return dict(sorted(out.items()))
