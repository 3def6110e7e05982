"""The QEMU Machine Protocol's message shapes: greeting, requests, replies, errors and events.

Texts and error classes follow QEMU's ``qapi/qmp-dispatch.c`` and ``monitor/qmp.c`` so that QMP
tooling (``qemu.qmp``, libvirt, qmp-shell) sees the answers it knows. Requests are a stream of JSON
objects with no delimiter (``qemu.qmp`` writes no newline), so :class:`JsonSplitter` cuts the
stream where QEMU's JSON streamer does: when the brackets opened outside strings are closed again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ..dm_engine.limits import MAX_JSON_DEPTH, json_too_deep

#: The QEMU version hvdm's behaviour follows (hv-balloon as merged in QEMU 8.2, read in 10.0).
QEMU_VERSION = {"major": 10, "minor": 0, "micro": 0}
PACKAGE = "hvdm"

#: QMP error classes (qapi/error.json).
GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
DEVICE_NOT_FOUND = "DeviceNotFound"


class QmpError(Exception):
    """A command failed the way QEMU reports it: an error class and a human-readable ``desc``."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(f"{error_class}: {desc}")
        self.error_class = error_class
        self.desc = desc


def generic(desc: str) -> QmpError:
    return QmpError(GENERIC_ERROR, desc)


@dataclass(frozen=True, slots=True)
class Request:
    """One ``{"execute": ..., "arguments": ..., "id": ...}`` message; ``has_id`` because any JSON
    value, null included, is a valid id that must be echoed."""

    command: str
    arguments: dict[str, Any]
    id: Any = None
    has_id: bool = False


def greeting() -> dict[str, Any]:
    """The banner a QMP server sends first; hvdm offers no capabilities (no OOB)."""
    return {"QMP": {"version": {"qemu": dict(QEMU_VERSION), "package": PACKAGE}, "capabilities": []}}


def parse_request(line: bytes | str) -> Request:
    """Validate one input line as QEMU's dispatcher does; raises ``QmpError`` with QEMU's texts.

    >>> parse_request('{"execute": "query-balloon", "id": 7}')
    Request(command='query-balloon', arguments={}, id=7, has_id=True)
    >>> parse_request('[1]')
    Traceback (most recent call last):
    ...
    services.qmp.protocol.QmpError: GenericError: QMP input must be a JSON object
    >>> parse_request(b'{"execute": "balloon", "arguments": {"value": ' + b'[' * 100_000 + b']' * 100_000 + b'}}')
    Traceback (most recent call last):
    ...
    services.qmp.protocol.QmpError: GenericError: JSON parse error, nesting deeper than 256 levels

    Runtime complexity: O(len(line))
    """
    if json_too_deep(line):
        raise generic(f"JSON parse error, nesting deeper than {MAX_JSON_DEPTH} levels")
    try:
        msg = json.loads(line)
    except RecursionError:
        raise generic(f"JSON parse error, nesting deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise generic(f"JSON parse error, {e}") from None
    if not isinstance(msg, dict):
        raise generic("QMP input must be a JSON object")
    has_id = "id" in msg
    msg_id = msg.get("id")
    for key in msg:
        if key not in ("execute", "arguments", "id"):
            raise _with_id(generic(f"QMP input member '{key}' is unexpected"), msg_id, has_id)
    if "execute" not in msg:
        raise _with_id(generic("QMP input lacks member 'execute'"), msg_id, has_id)
    command = msg["execute"]
    if not isinstance(command, str):
        raise _with_id(generic("QMP input member 'execute' must be a string"), msg_id, has_id)
    arguments = msg.get("arguments", {})
    if not isinstance(arguments, dict):
        raise _with_id(generic("QMP input member 'arguments' must be an object"), msg_id, has_id)
    return Request(command, arguments, msg_id, has_id)


class RequestError(QmpError):
    """A malformed request that still carried an id, so the error reply can echo it."""

    def __init__(self, error: QmpError, msg_id: Any) -> None:
        super().__init__(error.error_class, error.desc)
        self.msg_id = msg_id


def _with_id(error: QmpError, msg_id: Any, has_id: bool) -> QmpError:
    return RequestError(error, msg_id) if has_id else error


class JsonSplitter:
    """Cuts a byte stream into top-level JSON texts by bracket depth, like QEMU's json-streamer.

    >>> js = JsonSplitter()
    >>> js.feed(b'{"execute": "a"}{"execute"'), js.feed(b': "b}"}\\n  oops\\n')
    ([b'{"execute": "a"}'], [b'{"execute": "b}"}', b'oops'])

    Text outside brackets (which can never be a QMP command) is passed on one line at a time, so
    the caller answers it with a parse error instead of waiting forever. ``feed`` raises
    ``OverflowError`` when one text grows beyond ``limit`` bytes.

    Runtime complexity: O(len(data)) per feed.
    """

    __slots__ = ("_buf", "_depth", "_escape", "_in_string", "_limit", "_stray")

    def __init__(self, limit: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._stray = False
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        for byte in data:
            if not buf:  # between two texts
                if byte in b" \t\r\n":
                    continue
                self._stray = byte not in b"{["
            buf.append(byte)
            if self._stray:
                if byte == 0x0A:
                    out.append(bytes(buf).strip())
                    buf.clear()
            elif self._in_string:
                if self._escape:
                    self._escape = False
                elif byte == 0x5C:  # backslash
                    self._escape = True
                elif byte == 0x22:  # double quote
                    self._in_string = False
            elif byte == 0x22:
                self._in_string = True
            elif byte in b"{[":
                self._depth += 1
            elif byte in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    out.append(bytes(buf))
                    buf.clear()
            if len(buf) > self._limit:
                buf.clear()
                self._depth = 0
                self._in_string = self._escape = False
                raise OverflowError("JSON text too long")
        return out


def reply(result: Any, request: Request) -> dict[str, Any]:
    out: dict[str, Any] = {"return": result}
    if request.has_id:
        out["id"] = request.id
    return out


def error_reply(error: QmpError, request: Request | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": {"class": error.error_class, "desc": error.desc}}
    if request is not None and request.has_id:
        out["id"] = request.id
    elif isinstance(error, RequestError):
        out["id"] = error.msg_id
    return out


def event(name: str, data: dict[str, Any], wall_time: float | None = None) -> dict[str, Any]:
    """An asynchronous event. The timestamp is wall-clock time, as QEMU's (``g_get_real_time``),
    so clients can line events up with their own logs."""
    now = time.time() if wall_time is None else wall_time
    seconds = int(now)
    return {
        "event": name,
        "data": data,
        "timestamp": {"seconds": seconds, "microseconds": int((now - seconds) * 1_000_000)},
    }


def encode(message: dict[str, Any]) -> bytes:
    """One message on the wire: compact JSON and CRLF, as QEMU writes it."""
    return json.dumps(message, separators=(", ", ": ")).encode() + b"\r\n"
