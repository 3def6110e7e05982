"""JSON form of DM messages: plain dicts for the CLI, logs, fixtures and event payloads.

Why a separate form: events and logs must be readable and diffable, and test fixtures must be
writable by hand. Keys are ``type`` (the ``MessageType`` name), ``trans_id``, then the message's
fields under their struct names; ranges are ``[start_page, page_count]`` lists, byte blobs are
lowercase hex, and ``anomalies`` appears only when non-empty so that clean messages stay short.

``from_json_dict`` is strict, because its input is typed by people: an unknown key, a missing
required field or a wrongly typed value is ``DecodeError(INVALID_JSON_FIELD)``; an unknown type
name is ``DecodeError(UNKNOWN_TYPE)``; a well-typed value the wire cannot carry is the same
``EncodeError`` that ``encode`` would raise (FIELD_OUT_OF_BOUNDS / RANGE_OUT_OF_BOUNDS), so every
message it returns can be encoded, size limit of the u16 header aside.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from .messages import (
    INT_LIMITS,
    MESSAGE_CLASSES,
    PAGE_COUNT_LIMIT,
    START_PAGE_LIMIT,
    WIRE_FIELDS,
    FieldKind,
    Message,
    MessageType,
    PageRange,
)
from .reasons import DecodeError, DecodeReason, EncodeError

_INVALID: Final = DecodeReason.INVALID_JSON_FIELD

#: Names of fields that may be omitted in JSON because the dataclass has a default for them.
_OPTIONAL: Final[Mapping[type[Any], frozenset[str]]] = {
    cls: frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    )
    for cls in MESSAGE_CLASSES.values()
}


def to_json_dict(msg: Message) -> dict[str, object]:
    """The JSON-ready dict of ``msg`` (only str, int, bool, None, list values).

    >>> from services.dm_protocol.messages import HotAddRequest
    >>> to_json_dict(HotAddRequest(trans_id=2, range=(0x100000, 0x8000)))
    {'type': 'DM_MEM_HOT_ADD_REQUEST', 'trans_id': 2, 'range': [1048576, 32768], 'region': None}
    """
    out: dict[str, object] = {"type": msg.TYPE.name}
    for name, kind in WIRE_FIELDS[type(msg)]:
        value = getattr(msg, name)
        if kind is FieldKind.BOOL:
            out[name] = bool(value)
        elif kind is FieldKind.RANGES:
            out[name] = [[start, count] for start, count in value]
        elif kind is FieldKind.RANGE or (kind is FieldKind.OPTIONAL_RANGE and value is not None):
            out[name] = [value[0], value[1]]
        elif kind is FieldKind.BYTES:
            out[name] = bytes(value).hex()
        else:
            out[name] = value
    if msg.anomalies:
        out["anomalies"] = [str(reason) for reason in msg.anomalies]
    return out


def _int(name: str, value: object, limit: int) -> int:
    if type(value) is not int:  # JSON true/false must not pass as 1/0
        raise DecodeError(_INVALID, f"{name} must be an integer, got {value!r}")
    if not 0 <= value < limit:
        raise EncodeError(DecodeReason.FIELD_OUT_OF_BOUNDS, f"{name}={value} is not in [0, {limit})")
    return value


def _range(name: str, value: object) -> PageRange:
    if not isinstance(value, list | tuple) or len(value) != 2 or any(type(v) is not int for v in value):
        raise DecodeError(_INVALID, f"{name} must be [start_page, page_count], got {value!r}")
    start, count = value
    if not (0 <= start < START_PAGE_LIMIT and 0 <= count < PAGE_COUNT_LIMIT):
        raise EncodeError(DecodeReason.RANGE_OUT_OF_BOUNDS, f"{name} {value!r}: start_page < 2**40, page_count < 2**24")
    return (start, count)


def _field(name: str, kind: FieldKind, value: object) -> object:
    limit = INT_LIMITS.get(kind)
    if limit is not None:
        return _int(name, value, limit)
    if kind is FieldKind.BOOL:
        if type(value) is not bool:
            raise DecodeError(_INVALID, f"{name} must be true or false, got {value!r}")
        return value
    if kind is FieldKind.RANGE:
        return _range(name, value)
    if kind is FieldKind.OPTIONAL_RANGE:
        return None if value is None else _range(name, value)
    if kind is FieldKind.RANGES:
        if not isinstance(value, list | tuple):
            raise DecodeError(_INVALID, f"{name} must be a list of [start_page, page_count], got {value!r}")
        return tuple(_range(f"{name}[{i}]", item) for i, item in enumerate(value))
    # FieldKind.BYTES
    if not isinstance(value, str):
        raise DecodeError(_INVALID, f"{name} must be a hex string, got {value!r}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise DecodeError(_INVALID, f"{name} is not hex: {value!r}") from None


def _anomalies(value: object) -> tuple[DecodeReason, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise DecodeError(_INVALID, f"anomalies must be a list of reason codes, got {value!r}")
    try:
        return tuple(DecodeReason(v) for v in value)
    except ValueError:
        raise DecodeError(_INVALID, f"anomalies holds an unknown reason code: {value!r}") from None


def from_json_dict(d: Mapping[str, object]) -> Message:
    """The message described by ``d`` (the inverse of ``to_json_dict``); see the module docstring.

    >>> from_json_dict({"type": "DM_BALLOON_REQUEST", "num_pages": 512})
    BalloonRequest(trans_id=0, anomalies=(), num_pages=512)
    """
    if not isinstance(d, Mapping):
        raise DecodeError(_INVALID, f"a message must be a JSON object, got {type(d).__name__}")
    type_name = d.get("type")
    if not isinstance(type_name, str):
        raise DecodeError(_INVALID, f"type must be a message type name, got {type_name!r}")
    try:
        cls = MESSAGE_CLASSES[MessageType[type_name]]
    except KeyError:
        raise DecodeError(DecodeReason.UNKNOWN_TYPE, f"no message type named {type_name!r}") from None
    fields = WIRE_FIELDS[cls]
    known = {name for name, _ in fields}
    unknown = sorted(str(k) for k in d if k not in known and k not in ("type", "anomalies"))
    if unknown:
        raise DecodeError(_INVALID, f"{type_name} has no field(s) {', '.join(unknown)}")
    kwargs: dict[str, object] = {}
    for name, kind in fields:
        if name in d:
            kwargs[name] = _field(name, kind, d[name])
        elif name not in _OPTIONAL[cls]:
            raise DecodeError(_INVALID, f"{type_name} needs field {name}")
    if "anomalies" in d:
        kwargs["anomalies"] = _anomalies(d["anomalies"])
    msg: Message = cls(**kwargs)
    return msg
