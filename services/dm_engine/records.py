"""JSON form of inputs and events: the bytes every log stores and every replay compares.

``dumps`` is canonical (sorted keys, no spaces), so a re-run of the engine that decides the same
events produces byte-identical records. Bytes travel as lowercase hex, page ranges as
``[start_page, page_count]`` pairs.
"""

from __future__ import annotations

import json
import operator
import re
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import orjson

from . import events as ev
from . import inputs as inp
from .limits import MAX_RECORD_INT, MIN_RECORD_INT, BoundsError, canonical_uuid, check_window

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


class RecordError(ValueError):
    """A stored inbox record this engine cannot hold: unknown type, missing or unknown field, a
    field of the wrong JSON type, or a number beyond the bounds in ``dm_engine.limits`` (an integer
    above 2**64 comes back from orjson as a float). Raised instead of whatever the constructor or
    the decider would have raised later, so the caller can skip and count one input."""


#: Per input class: (field, "int" | "bool" | "str", None allowed) for its scalar fields.
_INPUT_CHECKS: dict[type, tuple[tuple[str, str, bool], ...]] = {}
_SCALAR_KINDS = {int: "int", bool: "bool", str: "str"}


def _input_checks(cls: type) -> tuple[tuple[str, str, bool], ...]:
    checks = _INPUT_CHECKS.get(cls)
    if checks is None:
        hints = typing.get_type_hints(cls)
        out = []
        for f in fields(cls):
            args = typing.get_args(hints[f.name]) or (hints[f.name],)
            kinds = [_SCALAR_KINDS[a] for a in args if a in _SCALAR_KINDS]
            if len(kinds) == 1:
                out.append((f.name, kinds[0], type(None) in args))
        _INPUT_CHECKS[cls] = checks = tuple(out)
    return checks


def _check_ranges(cls: type, data: dict[str, Any]) -> None:
    """``[[start, count], ...]`` of integers that fit a record; ``_from_dict`` would otherwise
    turn ``1e30`` into an integer silently."""
    for name, kind in _field_kinds(cls):
        if kind != "ranges" or name not in data:
            continue
        value = data[name]
        if not isinstance(value, list) or not all(
            type(pair) is list and len(pair) == 2 and all(type(v) is int and 0 <= v <= MAX_RECORD_INT for v in pair)
            for pair in value
        ):
            raise RecordError(f"{cls.__name__}.{name} must be a list of [start_page, page_count] integer pairs")


def _check_input(cls: type, data: dict[str, Any]) -> None:
    _check_ranges(cls, data)
    for name, kind, optional in _input_checks(cls):
        value = data.get(name)
        if name not in data or (value is None and optional):
            continue
        if kind == "int":
            if type(value) is not int or not MIN_RECORD_INT <= value <= MAX_RECORD_INT:
                raise RecordError(f"{cls.__name__}.{name} must be a 64-bit integer, got {type(value).__name__}")
        elif type(value) is not (bool if kind == "bool" else str):
            raise RecordError(f"{cls.__name__}.{name} must be a {kind}, got {type(value).__name__}")


def input_from_dict(data: dict[str, Any]) -> inp.Input:
    """The input a stored record holds; ``RecordError`` for anything else (never another exception).

    >>> input_from_dict({"type": "SetTarget", "tick": 3, "target_bytes": 4096})
    SetTarget(tick=3, target_bytes=4096)
    >>> input_from_dict({"type": "SetTarget", "tick": 3, "target_bytes": 1e23})
    Traceback (most recent call last):
    ...
    services.dm_engine.records.RecordError: SetTarget.target_bytes must be a 64-bit integer, got float
    """
    if type(data) is dict and data.get("type") == "GuestMessage" and len(data) == 3:
        # The hottest input: checked and built directly (anything unusual takes the general path).
        tick, raw = data.get("tick"), data.get("raw")
        if type(tick) is int and MIN_RECORD_INT <= tick <= MAX_RECORD_INT and type(raw) is str:
            try:
                return inp.GuestMessage(tick=tick, raw=bytes.fromhex(raw))
            except ValueError:
                pass
    cls = inp.INPUT_TYPES.get(data.get("type")) if isinstance(data, dict) else None  # type: ignore[arg-type]
    if cls is None:
        raise RecordError("not an input record")
    _check_input(cls, data)
    try:
        record: inp.Input = _from_dict(inp.INPUT_TYPES, data)
    except (KeyError, TypeError, ValueError) as e:
        raise RecordError(f"not a {cls.__name__} record: {e}") from None
    if type(record) is inp.ChannelOpened:
        try:
            check_window(record.boot_bytes, record.maxmem_bytes, record.hot_add_base_page, record.ram)
        except BoundsError as e:
            raise RecordError(f"ChannelOpened: {e}") from None
    if (type(record) is inp.ChannelOpened or type(record) is inp.QemuAttached) and record.uuid:
        # Stored canonical (lower case) by whoever wrote it; anything else is not a UUID we wrote.
        try:
            ok = canonical_uuid(record.uuid) == record.uuid
        except ValueError:
            ok = False
        if not ok:
            raise RecordError(f"{record.KIND}.uuid must be a lower-case canonical UUID or empty")
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


#: Per class whose fields are all declared ``int``: (``%``-template of its canonical JSON, getter of
#: its values in key order); None for the other classes.
_INT_TEMPLATES: dict[type, tuple[str, Callable[[Any], tuple[Any, ...]]] | None] = {}
_INT_ONLY = {int}


def _int_template(cls: type) -> tuple[str, Callable[[Any], tuple[Any, ...]]] | None:
    hints = typing.get_type_hints(cls)
    names = [name for _, name, _ in _plan(cls) if name is not None]
    if len(names) < 2 or not all(hints[name] is int for name in names):
        return None  # (attrgetter of one name returns a bare value, not a tuple)
    template = "".join(p.replace("%", "%%") + ("" if n is None else "%s") for p, n, _ in _plan(cls)) + "}"
    getter: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(*names)
    return template, getter


def _ranges_json(value: Any) -> str:
    """``[[start,count],...]``: by orjson when that gives the same bytes, in about a third of the time
    on a 510-range balloon answer. Page ranges are pairs of ints by their type; orjson's output is
    then digits, signs, commas and brackets only, as ``str`` writes them. Anything else it would
    write differently (a bool, None, a float, an int beyond 64 bits) is written out pair by pair as
    before, and fails, if it must, as before."""
    try:
        if set(map(len, value)) == _PAIRS:
            out = orjson.dumps(value, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
            if not out.translate(None, b"0123456789,[]-"):
                return out.decode()
    except TypeError:  # orjson.JSONEncodeError too: beyond 64 bits, an unknown type; or a len()-less item
        pass
    return "[" + ",".join([f"[{s},{c}]" for s, c in value]) + "]"


_PAIRS = {2}


def event_json(event: ev.Event) -> str:
    """Canonical JSON of an event, byte-identical to ``dumps(to_dict(event))``.

    Written out field by field from a per-class plan because this is on the engine's hot path
    (one call per event) and the generic encoder sorts keys and walks a fresh dict every time.
    Classes of integers only (status reports, targets, most of a log) fill a ``%``-template.
    """
    cls = type(event)
    try:
        fast = _INT_TEMPLATES[cls]
    except KeyError:
        fast = _INT_TEMPLATES[cls] = _int_template(cls)
    if fast is not None:
        values = fast[1](event)
        if set(map(type, values)) == _INT_ONLY:  # a bool or None would print as Python, not JSON
            return fast[0] % values
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
            append(prefix + _ranges_json(value))
        elif kind == "tuple":
            append(prefix + "[" + ",".join([_scalar(v) for v in value]) + "]")
        else:  # bytes
            append(prefix + '"' + value.hex() + '"')
    parts.append("}")
    return "".join(parts)


def input_json(record: inp.Input) -> str:
    return dumps(to_dict(record))


# ---------------------------------------------------------------------- compact stored forms
#
# Log format 2 stores the hottest records in a compact form instead of canonical JSON (format 1
# stored JSON only; both are read). A row says which form it holds by its SQLite type: TEXT is
# canonical JSON, a BLOB is compact. Readers turn a compact row back into exactly the canonical
# JSON that ``event_json`` / ``to_dict`` would have produced, so everything above the log (audits
# comparing bytes, digests, folds) sees the same records whichever form was stored.
#
# * An event blob is one code byte naming the event class and its field layout, then the fields'
#   decimal values joined by commas, in the canonical (sorted-key) order. Only classes whose fields
#   are all integers are compacted, so the decimal text *is* the canonical JSON of each value.
# * An inbox blob is a ``GuestMessage``'s raw guest bytes (its tick is the row's tick): the raw
#   frame is the one fact; hex in JSON would double it.

#: Log format this code writes (``meta.log_format``); 1 = JSON only (no such meta key).
LOG_FORMAT = 2

#: Code byte -> (event kind, its integer fields in canonical key order), pinned: a blob written
#: under a code always expands to those keys. Codes are never reused; a class whose fields change
#: is stored as JSON until it gets a new code (``test_compact_layouts_match_the_event_classes``).
COMPACT_LAYOUTS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: (
        "StatusReported",
        (
            "available_pages",
            "committed_pages",
            "io_diff",
            "page_file_size_pages",
            "page_file_writes",
            "tick",
            "zero_free_pages",
        ),
    ),
}
_COMPACT_TEMPLATES: dict[int, tuple[str, re.Pattern[bytes]]] = {}


def _compact_template(code: int) -> tuple[str, re.Pattern[bytes]]:
    """(``%``-template of the canonical JSON, pattern a valid blob body matches) for a code."""
    cached = _COMPACT_TEMPLATES.get(code)
    if cached is None:
        kind, names = COMPACT_LAYOUTS[code]
        keys = sorted([*names, "type"])
        parts = []
        for i, key in enumerate(keys):
            prefix = ("{" if i == 0 else ",") + _encode_str(key) + ":"
            parts.append(prefix + (_encode_str(kind) if key == "type" else "%s"))
        template = "".join(parts).replace("%", "%%").replace("%%s", "%s") + "}"
        pattern = re.compile(rb"-?[0-9]+(?:,-?[0-9]+){%d}" % (len(names) - 1))
        _COMPACT_TEMPLATES[code] = cached = (template, pattern)
    return cached


def _compact_format(cls: type) -> tuple[bytes, Callable[[Any], tuple[Any, ...]]] | None:
    names = tuple(name for _, name, _ in _plan(cls) if name is not None)
    for code, (kind, pinned) in COMPACT_LAYOUTS.items():
        if kind == getattr(cls, "KIND", None) and pinned == names:
            return bytes((code,)) + b",".join([b"%d"] * len(names)), operator.attrgetter(*names)
    return None


#: Per event class: (``%``-template of its blob, getter of its values in key order), or None.
_COMPACT_FORMATS: dict[type, tuple[bytes, Callable[[Any], tuple[Any, ...]]] | None] = {}


def compact_event(event: ev.Event) -> bytes | None:
    """The compact stored form of ``event``, or None if its class is stored as JSON."""
    cls = type(event)
    try:
        fmt = _COMPACT_FORMATS[cls]
    except KeyError:
        fmt = _COMPACT_FORMATS[cls] = _compact_format(cls)
    if fmt is None:
        return None
    values = fmt[1](event)
    if set(map(type, values)) != _INT_ONLY:
        return None  # a bool or None where an int is declared: keep the JSON, which says so
    return fmt[0] % values


def stored_event(event: ev.Event) -> str | bytes:
    """What a format-2 log stores for ``event``: its compact form, else its canonical JSON.

    Fails exactly when ``event_json`` would: compact classes hold integers only, whose JSON cannot
    fail, so a step encoding with this rejects the same inputs as one encoding with ``event_json``.
    The same bytes as ``compact_event(event) or event_json(event)``, with one call per event
    instead of three (the embedded runner calls this for every event it records)."""
    cls = type(event)
    encode = _STORED_ENCODERS.get(cls)
    if encode is None:
        encode = _STORED_ENCODERS[cls] = _stored_encoder(cls)
    return encode(event)


def _stored_encoder(cls: type) -> Callable[[Any], str | bytes]:
    fmt = _compact_format(cls)
    if fmt is None:
        return event_json
    template, getter = fmt

    def encode(event: Any) -> str | bytes:
        values = getter(event)
        if set(map(type, values)) == _INT_ONLY:
            return template % values
        return event_json(event)  # a bool or None where an int is declared (see compact_event)

    return encode


_STORED_ENCODERS: dict[type, Callable[[Any], str | bytes]] = {}


def stored_event_json(record: str | bytes) -> str:
    """The canonical JSON of a stored event record, in either form.

    A blob that is not a valid compact record (a damaged or forged row) comes back as a string that
    is not JSON, so an audit reports the record as differing, as it does for any unreadable text."""
    if isinstance(record, str):
        return record
    body = bytes(record)
    try:
        template, pattern = _COMPACT_TEMPLATES[body[0]]
    except (KeyError, IndexError):
        if not body or body[0] not in COMPACT_LAYOUTS:
            return "!invalid compact record " + body.hex()
        template, pattern = _compact_template(body[0])
    if pattern.fullmatch(body, 1):
        return template % tuple(body[1:].decode().split(","))
    return "!invalid compact record " + body.hex()


def guest_frame(record: dict[str, Any]) -> bytes | None:
    """The raw frame of a ``GuestMessage`` record that is exactly ``{type, tick, raw}`` with ``raw``
    in canonical (lower-case) hex: the one record a compact form may store as its bytes alone,
    because expanding them gives this record back. None for every other record."""
    if record.get("type") != "GuestMessage" or len(record) != 3 or "tick" not in record:
        return None
    raw = record.get("raw")
    if type(raw) is not str:
        return None
    try:
        blob = bytes.fromhex(raw)
    except ValueError:
        return None
    return blob if blob.hex() == raw else None


def stored_input(record: dict[str, Any], tick: int) -> str | bytes:
    """What the inbox stores for an input record appended at ``tick``: raw bytes for a
    ``GuestMessage`` whose record is exactly ``{type, tick, raw}``, canonical JSON otherwise."""
    if record.get("tick") == tick and (blob := guest_frame(record)) is not None:
        return blob
    return dumps(record)


def stored_input_dict(record: str | bytes, tick: int) -> dict[str, Any]:
    """The input record (a parsed dict, as ``to_dict`` gives) a stored inbox row holds."""
    if isinstance(record, str):
        data: dict[str, Any] = loads(record)
        return data
    return {"raw": bytes(record).hex(), "tick": tick, "type": "GuestMessage"}


# ---------------------------------------------------------------------- reading stored forms fast
#
# Folds and replays want event and input *objects*; going through the canonical JSON text (expand
# the blob, parse it, build the object from the dict) costs several times what the facts need.
# These read a stored record straight into its object, and fall back to exactly that slow path for
# anything that is not a plainly well-formed compact record, so both give the same object (or the
# same exception) for every stored value (``tests/event_log/test_stored_forms.py``).

#: A compact body whose integers are canonical JSON (no leading zeros, no ``-0``) and at most 18
#: digits (well inside 64 bits, what orjson reads): only those are decoded without the JSON detour.
_PLAIN_INT = rb"(?:0|-?[1-9][0-9]{0,17})"
_FAST_BODIES: dict[int, tuple[re.Pattern[bytes], Callable[..., Any]]] = {}


def _fast_body(code: int) -> tuple[re.Pattern[bytes], Callable[..., Any]] | None:
    cached = _FAST_BODIES.get(code)
    if cached is None:
        layout = COMPACT_LAYOUTS.get(code)
        if layout is None:
            return None
        kind, names = layout
        cls = ev.EVENT_TYPES[kind]
        pattern = re.compile(_PLAIN_INT + (rb"," + _PLAIN_INT) * (len(names) - 1))
        # A positional constructor for a keyword-only class: one call, no dict per record.
        args = ", ".join(f"v{i}" for i in range(len(names)))
        kwargs = ", ".join(f"{name}=int(v{i})" for i, name in enumerate(names))
        build = eval(f"lambda {args}: cls({kwargs})", {"cls": cls, "int": int})
        _FAST_BODIES[code] = cached = (pattern, build)
    return cached


def event_from_stored(record: str | bytes) -> ev.Event:
    """The event a stored event record holds, in either form; the same object (or exception) as
    ``event_from_dict(loads(stored_event_json(record)))``, without the JSON detour for compact rows."""
    if type(record) is bytes and record:
        fast = _FAST_BODIES.get(record[0]) or _fast_body(record[0])
        if fast is not None and fast[0].fullmatch(record, 1):
            event: ev.Event = fast[1](*record[1:].split(b","))
            return event
    return event_from_dict(loads(stored_event_json(record)))
