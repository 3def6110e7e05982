"""The HMP text commands hvdm understands, as QMP commands plus a renderer for their answers.

One parser serves both ``human-monitor-command`` (server side) and ``hvdm ctl`` (client side):
a line such as ``object_add memory-backend-ram,id=mem1,size=200G`` becomes the QMP command and
arguments QEMU's HMP would run, and the QMP answer is rendered the way QEMU's HMP prints it
(``balloon: actual=1024``). Keeping the parse on both sides identical is what lets ``hvdm ctl``
show real QMP error classes while accepting exactly the text the seed's HMP session uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..units import MIB

_SUFFIXES = {"": None, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}
#: At most 30 digits a side: anything longer is far beyond 2**64, and Python refuses to convert
#: integers of more than 4300 digits with a ValueError that is not an HmpError.
_SIZE_RE = re.compile(r"^\s*(\d{1,30}(?:\.\d{1,30})?)\s*([bkmgtpeBKMGTPE]?)\s*$")


class HmpError(ValueError):
    """The line cannot be run; ``str()`` is what QEMU's HMP would print."""


def parse_size(text: str, default_unit: int = 1) -> int:
    """A size as QEMU's ``qemu_strtosz`` reads it: a number with an optional binary suffix.

    >>> parse_size("200G"), parse_size("4096"), parse_size("1.5k"), parse_size("1024", MIB)
    (214748364800, 4096, 1536, 1073741824)

    Runtime complexity: O(len(text))
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise HmpError(f"invalid size '{text}'")
    number: str = m.group(1)
    suffix: str = m.group(2).lower()
    unit = _SUFFIXES[suffix] or default_unit
    if "." in number:
        if unit == 1:
            raise HmpError(f"invalid size '{text}': a fraction needs a unit suffix")
        whole, frac = number.split(".")
        scale: int = 10 ** len(frac)
        value = int(whole) * unit + int(frac) * unit // scale
    else:
        value = int(number) * unit
    if value >= 1 << 64:
        raise HmpError(f"invalid size '{text}': too large")
    return value


def split_keyval(text: str) -> list[str]:
    """Split a QemuOpts/keyval string at single commas (``,,`` is a literal comma).

    >>> split_keyval("memory-backend-ram,id=mem1,size=200G")
    ['memory-backend-ram', 'id=mem1', 'size=200G']
    >>> split_keyval("a=x,,y,b=1")
    ['a=x,y', 'b=1']

    Runtime complexity: O(len(text))
    """
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _render_nothing(_: Any) -> str:
    return ""


def render_balloon(result: Any) -> str:
    """``info balloon``: QEMU prints ``actual`` in MiB."""
    return f"balloon: actual={int(result['actual']) >> 20}\n"


def render_memory_devices(result: Any) -> str:
    """``info memory-devices``, field by field as QEMU's ``hmp_info_memory_devices``."""
    lines: list[str] = []
    for dev in result:
        data = dev["data"]
        lines.append(f'Memory device [{dev["type"]}]: "{data.get("id", "")}"')
        if dev["type"] == "hv-balloon":
            if "memaddr" in data:
                lines.append(f"  memaddr: 0x{data['memaddr']:x}")
            lines.append(f"  max-size: {data['max-size']}")
            if "memdev" in data:
                lines.append(f"  memdev: {data['memdev']}")
        else:
            lines.append(f"  addr: 0x{data['addr']:x}")
            lines.append(f"  slot: {data['slot']}")
            lines.append(f"  node: {data['node']}")
            lines.append(f"  size: {data['size']}")
            lines.append(f"  memdev: {data['memdev']}")
            lines.append(f"  hotplugged: {str(data['hotplugged']).lower()}")
            lines.append(f"  hotpluggable: {str(data['hotpluggable']).lower()}")
    return "".join(line + "\n" for line in lines)


def render_status(result: Any) -> str:
    return f"VM status: {result['status']}\n"


def render_version(result: Any) -> str:
    q = result["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']} ({result['package']})\n"


def render_status_report(result: Any) -> str:
    return f"committed: {int(result['committed']) >> 20} MiB, available: {int(result['available']) >> 20} MiB\n"


HELP = """\
balloon target -- request VM to change its memory allocation (in MB)
forget -- retire this disconnected VM: state, metric series and QMP socket go (x-hvdm-forget)
hv-balloon-add-memory id=backend -- hot-add a memory backend through the guest's DM driver
info balloon -- show balloon information
info hv-balloon-status-report -- show the guest's last memory status report
info memory-devices -- show memory devices
info status -- show the current VM status
info version -- show the version of hvdm
object_add qom-type,id=str,size=size -- create a memory backend (memory-backend-ram only)
object_del id -- destroy a memory backend
"""


@dataclass(frozen=True, slots=True)
class HmpCommand:
    """What a text line means: the QMP command to run (None: answer locally with ``text``)."""

    qmp_command: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    render: Callable[[Any], str] = _render_nothing
    text: str = ""


_INFO: dict[str, tuple[str, Callable[[Any], str]]] = {
    "balloon": ("query-balloon", render_balloon),
    "memory-devices": ("query-memory-devices", render_memory_devices),
    "status": ("query-status", render_status),
    "version": ("query-version", render_version),
    "hv-balloon-status-report": ("query-hv-balloon-status-report", render_status_report),
}


def parse_object_add(spec: str) -> dict[str, Any]:
    """``memory-backend-ram,id=mem1,size=200G`` -> object-add arguments (size in bytes).

    >>> parse_object_add("memory-backend-ram,id=mem1,size=1G")
    {'qom-type': 'memory-backend-ram', 'id': 'mem1', 'size': 1073741824}

    Runtime complexity: O(len(spec))
    """
    parts = split_keyval(spec)
    args: dict[str, Any] = {}
    for n, part in enumerate(parts):
        if "=" in part:
            key, value = part.split("=", 1)
        elif n == 0:
            key, value = "qom-type", part  # the implied first key, as in keyval
        else:
            raise HmpError(f"Expected '=' after parameter '{part}'")
        if key in args:
            raise HmpError(f"Parameter '{key}' appears more than once")
        args[key] = parse_size(value) if key == "size" else value
    if "qom-type" not in args:
        raise HmpError("Parameter 'qom-type' is missing")
    return args


def _without_arguments(name: str, rest: list[str]) -> HmpCommand:
    if name == "forget":
        if rest:
            raise HmpError("forget: takes no arguments")
        return HmpCommand("x-hvdm-forget")
    return HmpCommand(None, text=HELP)


def parse_line(line: str) -> HmpCommand:
    """Parse one HMP line; raises ``HmpError`` with the text QEMU's HMP would print.

    >>> parse_line("balloon 1024").arguments
    {'value': 1073741824}
    >>> parse_line("hv-balloon-add-memory id=mem1").qmp_command
    'hv-balloon-add-memory'
    >>> parse_line("info balloon").render({"actual": 2 << 30})
    'balloon: actual=2048\\n'

    Runtime complexity: O(len(line))
    """
    words = line.split()
    if not words:
        return HmpCommand(None)
    name, rest = words[0], words[1:]
    if name in ("help", "?", "forget"):
        return _without_arguments(name, rest)
    if name == "balloon":
        if len(rest) != 1:
            raise HmpError("balloon: missing or extra arguments (usage: balloon target-MiB)")
        return HmpCommand("balloon", {"value": parse_size(rest[0], MIB)})
    if name == "info":
        if len(rest) != 1 or rest[0] not in _INFO:
            known = ", ".join(sorted(_INFO))
            raise HmpError(f"info: unknown or missing item (one of: {known})")
        command, render = _INFO[rest[0]]
        return HmpCommand(command, {}, render)
    if name == "object_add":
        if len(rest) != 1:
            raise HmpError("object_add: usage: object_add memory-backend-ram,id=ID,size=SIZE")
        return HmpCommand("object-add", parse_object_add(rest[0]))
    if name == "object_del":
        if len(rest) != 1:
            raise HmpError("object_del: usage: object_del ID")
        return HmpCommand("object-del", {"id": rest[0]})
    if name in ("hv-balloon-add-memory", "hv_balloon_add_memory"):
        if len(rest) != 1:
            raise HmpError(f"{name}: usage: {name} id=BACKEND")
        arg = rest[0]
        backend = arg.split("=", 1)[1] if arg.startswith("id=") else arg
        if not backend:
            raise HmpError(f"{name}: missing backend id")
        return HmpCommand("hv-balloon-add-memory", {"id": backend})
    raise HmpError(f"unknown command: '{name}'")
