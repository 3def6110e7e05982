"""JSON form of inputs and events: the bytes every log stores and every replay compares.

``dumps`` is canonical (sorted keys, no spaces), so a re-run of the engine that decides the same
events produces byte-identical records. Bytes travel as lowercase hex, page ranges as
``[start_page, page_count]`` pairs.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import orjson

from services.dm_engine import events as ev
from services.dm_engine import inputs as inp

#: Parses a stored record. orjson is about four times faster than ``json.loads`` here and returns
#: the same Python values, which matters when folding or replaying millions of records; writing
#: stays on the canonical encoder below (orjson's output differs in escaping).
loads: Callable[[str | bytes], Any] = orjson.loads

_FIELD_KINDS: dict[type, tuple[tuple[str, str], ...]] = {}


def _field_kinds(cls: type) -> tuple[tuple[str, str], ...]:
    """(field name, conversion kind) for a record class, computed once per class."""
    cached = _FIELD_KINDS.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        hint = hints[f.name]
        if hint is bytes:
            kind = "bytes"
        elif hint == ev.PageRanges:
            kind = "ranges"
        elif typing.get_origin(hint) is tuple:
            kind = "tuple"
        else:
            kind = "plain"
        out.append((f.name, kind))
    _FIELD_KINDS[cls] = result = tuple(out)
    return result


def to_dict(record: inp.InputBase | ev.EventBase) -> dict[str, Any]:
    """``{"type": KIND, **fields}`` with JSON-friendly values."""
    data: dict[str, Any] = {"type": record.KIND}
    for name, kind in _field_kinds(type(record)):
        value = getattr(record, name)
        if kind == "bytes":
            data[name] = value.hex()
        elif kind == "ranges":
            data[name] = [[s, c] for s, c in value]
        elif kind == "tuple":
            data[name] = list(value)
        else:
            data[name] = value
    return data


#: Record classes whose fields are all JSON scalars: built straight from the parsed dict.
_PLAIN_ONLY: dict[type, bool] = {}


def _from_dict(registry: dict[str, type[Any]], data: dict[str, Any]) -> Any:
    cls = registry[data["type"]]
    plain = _PLAIN_ONLY.get(cls)
    if plain is None:
        plain = _PLAIN_ONLY[cls] = all(kind == "plain" for _, kind in _field_kinds(cls))
    if plain:
        # The common case on the replay path: one C-level call instead of a loop per field.
        kwargs = dict(data)
        del kwargs["type"]
        return cls(**kwargs)
    kwargs = {}
    for name, kind in _field_kinds(cls):
        if name not in data:
            continue  # a field added later keeps its default when reading an older record
        value = data[name]
        if kind == "bytes":
            kwargs[name] = bytes.fromhex(value)
        elif kind == "ranges":
            kwargs[name] = tuple((int(s), int(c)) for s, c in value)
        elif kind == "tuple":
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def event_from_dict(data: dict[str, Any]) -> ev.Event:
    event: ev.Event = _from_dict(ev.EVENT_TYPES, data)
    return event


def input_from_dict(data: dict[str, Any]) -> inp.Input:
    record: inp.Input = _from_dict(inp.INPUT_TYPES, data)
    return record


#: One encoder for every record: ``json.dumps`` with options builds a new encoder per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def dumps(data: dict[str, Any]) -> str:
    """Canonical JSON: identical records give identical bytes."""
    return _CANONICAL.encode(data)


_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (C when available)

#: Per record class: (JSON text before the value, field name or None for "type", kind), in key order.
_PLANS: dict[type, tuple[tuple[str, str | None, str], ...]] = {}


def _plan(cls: type) -> tuple[tuple[str, str | None, str], ...]:
    plan = _PLANS.get(cls)
    if plan is None:
        keys = sorted([(name, kind) for name, kind in _field_kinds(cls)] + [("type", "type")])
        steps: list[tuple[str, str | None, str]] = []
        for i, (name, kind) in enumerate(keys):
            prefix = ("{" if i == 0 else ",") + _encode_str(name) + ":"
            if kind == "type":
                steps.append((prefix + _encode_str(cls.KIND), None, kind))  # type: ignore[attr-defined]
            else:
                steps.append((prefix, name, kind))
        _PLANS[cls] = plan = tuple(steps)
    return plan


def _scalar(value: Any) -> str:
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        return _encode_str(value)
    if value is None:
        return "null"
    return _CANONICAL.encode(value)


def event_json(event: ev.Event) -> str:
    """Canonical JSON of an event, byte-identical to ``dumps(to_dict(event))``.

    Written out field by field from a per-class plan because this is on the engine's hot path
    (one call per event) and the generic encoder sorts keys and walks a fresh dict every time.
    """
    parts: list[str] = []
    append = parts.append
    for prefix, name, kind in _plan(type(event)):
        if name is None:
            append(prefix)
            continue
        value = getattr(event, name)
        if kind == "plain":
            append(prefix + _scalar(value))
        elif kind == "ranges":
            append(prefix + "[" + ",".join([f"[{s},{c}]" for s, c in value]) + "]")
        elif kind == "tuple":
            append(prefix + "[" + ",".join([_scalar(v) for v in value]) + "]")
        else:  # bytes
            append(prefix + '"' + value.hex() + '"')
    parts.append("}")
    return "".join(parts)


def input_json(record: inp.Input) -> str:
    return dumps(to_dict(record))
