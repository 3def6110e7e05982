"""The QMP commands of one VM: argument checks, queries on the projection, commands into the inbox.

Queries read the VM's current state (the fold of its events). Commands are checked against that
same state first, so an operator gets QEMU's error at once and a hopeless command never enters the
audit trail; a command that passes becomes an inbox input, and the engine has the last word (a
``CommandRejected`` event for that input becomes the QMP error). Error classes and texts follow
QEMU: ``GenericError`` for bad arguments and refused operations, ``CommandNotFound``,
``DeviceNotActive`` for ``balloon``/``query-balloon`` when the VM has no balloon device yet.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..dm_engine import inputs as inp
from ..dm_engine.limits import MAX_BACKEND_BYTES, MAX_MEMORY_BYTES, MAX_RECORD_INT
from ..dm_engine.state import NEGOTIATED_STATES, VmState
from ..units import PAGE_SHIFT
from . import hmp
from .protocol import (
    COMMAND_NOT_FOUND,
    DEVICE_NOT_ACTIVE,
    PACKAGE,
    QEMU_VERSION,
    QmpError,
    generic,
)

#: The hv-balloon device's id in ``query-memory-devices`` (the seed's ``-device hv-balloon,id=hvb``).
HV_BALLOON_ID = "hvb"
MEMORY_BACKEND_RAM = "memory-backend-ram"

_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,127}")


class CommandContext(Protocol):
    """What a command needs from its VM's monitor."""

    vm: str

    def state(self) -> VmState | None:
        """The VM's current projection, or None if the engine no longer has the VM."""

    async def submit(self, record: inp.Input) -> None:
        """Append to the inbox, wait until the engine processed it; ``QmpError`` if it was rejected."""


Handler = Callable[[CommandContext, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    #: parameter -> (kind, required); kinds: int, size, str, bool.
    params: Mapping[str, tuple[str, bool]]
    handler: Handler


INT64_MIN = -(1 << 63)

_KIND_NAMES = {"int": "integer", "size": "size", "str": "string", "bool": "boolean"}


def check_arguments(command: Command, args: Mapping[str, Any]) -> None:
    """QEMU's generated argument checks, with its texts."""
    for key in args:
        if key not in command.params:
            raise generic(f"Parameter '{key}' is unexpected")
    for key, (kind, required) in command.params.items():
        if key not in args:
            if required:
                raise generic(f"Parameter '{key}' is missing")
            continue
        value = args[key]
        # QAPI's int is int64 and size uint64 (a bigger JSON number is a float to QEMU, hence a type
        # error); a size must also fit a stored record, which is signed 64-bit.
        ok = (
            (kind == "int" and type(value) is int and INT64_MIN <= value <= MAX_RECORD_INT)
            or (kind == "size" and type(value) is int and 0 <= value <= MAX_RECORD_INT)
            or (kind == "str" and isinstance(value, str))
            or (kind == "bool" and isinstance(value, bool))
        )
        if not ok:
            raise generic(f"Invalid parameter type for '{key}', expected: {_KIND_NAMES[kind]}")


# ---------------------------------------------------------------------------------- helpers
def _state(ctx: CommandContext) -> VmState:
    state = ctx.state()
    if state is None:
        raise QmpError(DEVICE_NOT_ACTIVE, "No balloon device has been activated")
    return state


def _balloon_device(ctx: CommandContext) -> VmState:
    """QEMU answers DeviceNotActive when no balloon handler exists: here, before the guest's
    channel has described the VM's memory (there is nothing to balloon yet)."""
    state = _state(ctx)
    if not state.described:
        raise QmpError(DEVICE_NOT_ACTIVE, "No balloon device has been activated")
    return state


def _in_use(state: VmState, backend_id: str) -> bool:
    vdimm = state.layout.get(backend_id)
    in_flight = state.txn is not None and state.txn.backend_id == backend_id
    return vdimm is not None and (vdimm.added_pages > 0 or in_flight)


# ---------------------------------------------------------------------------------- commands
async def _balloon(ctx: CommandContext, args: dict[str, Any]) -> Any:
    _balloon_device(ctx)
    value = args["value"]
    if value <= 0:
        raise generic("Parameter 'value' expects a size greater than zero")
    if value > MAX_MEMORY_BYTES:
        raise generic(f"Parameter 'value' expects a size of at most {MAX_MEMORY_BYTES} (4 PiB, 2**40 pages)")
    await ctx.submit(inp.SetTarget(target_bytes=value))
    return {}


async def _forget(ctx: CommandContext, args: dict[str, Any]) -> Any:
    """``x-hvdm-forget``: retire this VM (``inputs.ForgetVm``). Not pre-checked here: whether the
    VM is connected is the engine's call, and a refusal is recorded (``CommandRejected``) so the
    audit shows who tried to retire a live VM. On success this socket goes away."""
    _state(ctx)
    await ctx.submit(inp.ForgetVm(reason="operator"))
    return {}


async def _query_balloon(ctx: CommandContext, args: dict[str, Any]) -> Any:
    state = _balloon_device(ctx)
    return {"actual": state.current_pages << PAGE_SHIFT}


async def _object_add(ctx: CommandContext, args: dict[str, Any]) -> Any:
    qom_type = args["qom-type"]
    if qom_type != MEMORY_BACKEND_RAM:
        raise generic(
            f"Invalid parameter 'qom-type': hvdm creates only '{MEMORY_BACKEND_RAM}' objects, not '{qom_type}'"
        )
    backend_id = args["id"]
    if not _ID_RE.fullmatch(backend_id):
        raise generic("Parameter 'id' expects an identifier")
    size = args.get("size", 0)
    if size == 0:
        raise generic("can't create backend with size 0")
    if size % (1 << PAGE_SHIFT):
        raise generic(f"memory backend '{backend_id}': size must be a positive multiple of 4096")
    if size > MAX_BACKEND_BYTES:
        raise generic(f"Parameter 'size' expects a size of at most {MAX_BACKEND_BYTES} (4 PiB, 2**40 pages)")
    state = _state(ctx)
    if backend_id in state.backends:
        raise generic(f"attempt to add duplicate property '{backend_id}' to object (type 'container')")
    await ctx.submit(inp.AddBackend(backend_id=backend_id, size_bytes=size))
    return {}


async def _object_del(ctx: CommandContext, args: dict[str, Any]) -> Any:
    backend_id = args["id"]
    state = _state(ctx)
    if backend_id not in state.backends:
        raise generic(f"object '{backend_id}' not found")
    if _in_use(state, backend_id):
        raise generic(f"object '{backend_id}' is in use, can not be deleted")
    await ctx.submit(inp.RemoveBackend(backend_id=backend_id))
    return {}


async def _add_memory(ctx: CommandContext, args: dict[str, Any]) -> Any:
    """v2's ``hv-balloon-add-memory``: checks in the engine's order, so both agree on the error."""
    backend_id = args["id"]
    state = _state(ctx)
    if backend_id not in state.backends:
        raise generic(f"Memory backend '{backend_id}' not found")
    if state.protocol not in NEGOTIATED_STATES or state.caps is None:
        raise generic("no guest attached to the DM protocol yet")
    if not state.caps.hot_add:
        raise generic("guest does not support hot-add")
    if state.layout.get(backend_id) is not None:
        raise generic(f"memory backend '{backend_id}' is busy")
    await ctx.submit(inp.PlugBackend(backend_id=backend_id))
    return {}


def memory_devices(state: VmState) -> list[dict[str, Any]]:
    """The hv-balloon device (HvBalloonDeviceInfo; its "our range" is the whole hot-add window)
    followed by one ``dimm`` per vDIMM, as v2 listed its hidden ``mem-hapvdimm`` devices (slot -1,
    node 0, hot-plugged, not user-unpluggable)."""
    if not state.described:
        return []
    layout = state.layout
    window = (layout.window_end_page - layout.window_start_page) << PAGE_SHIFT
    hv: dict[str, Any] = {"id": HV_BALLOON_ID, "max-size": window}
    if window:
        hv["memaddr"] = layout.window_start_page << PAGE_SHIFT
    out: list[dict[str, Any]] = [{"type": "hv-balloon", "data": hv}]
    for vd in layout.vdimms:
        out.append(
            {
                "type": "dimm",
                "data": {
                    "addr": vd.start_page << PAGE_SHIFT,
                    "size": vd.size_bytes,
                    "slot": -1,
                    "node": 0,
                    "memdev": f"/objects/{vd.backend_id}",
                    "hotplugged": True,
                    "hotpluggable": False,
                },
            }
        )
    return out


async def _query_memory_devices(ctx: CommandContext, args: dict[str, Any]) -> Any:
    state = ctx.state()
    return [] if state is None else memory_devices(state)


async def _query_status_report(ctx: CommandContext, args: dict[str, Any]) -> Any:
    state = ctx.state()
    if state is None or not state.described:
        raise generic("no hv-balloon device present")
    if not state.status_reports_enabled:
        raise generic("guest memory status reporting not enabled")
    if state.status is None:
        raise generic("no guest memory status report received yet")
    return {
        "committed": state.status.committed_pages << PAGE_SHIFT,
        "available": state.status.available_pages << PAGE_SHIFT,
    }


async def _query_status(ctx: CommandContext, args: dict[str, Any]) -> Any:
    return {"status": "running", "running": True}


async def _query_version(ctx: CommandContext, args: dict[str, Any]) -> Any:
    return {"qemu": dict(QEMU_VERSION), "package": PACKAGE}


async def _query_commands(ctx: CommandContext, args: dict[str, Any]) -> Any:
    return [{"name": name} for name in sorted([*COMMANDS, "qmp_capabilities"])]


async def _human_monitor_command(ctx: CommandContext, args: dict[str, Any]) -> Any:
    """HMP through QMP: errors are part of the printed text, as QEMU does, never a QMP error."""
    try:
        parsed = hmp.parse_line(args["command-line"])
    except hmp.HmpError as e:
        text = f"{e}\n"
    else:
        if parsed.qmp_command is None:
            text = parsed.text
        else:
            try:
                text = parsed.render(await execute(ctx, parsed.qmp_command, parsed.arguments))
            except QmpError as e:
                text = f"Error: {e.desc}\n"
    return text.replace("\n", "\r\n")  # QEMU's monitor_puts turns every newline into CRLF


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("balloon", {"value": ("int", True)}, _balloon),
        Command("query-balloon", {}, _query_balloon),
        Command(
            "object-add",
            {"qom-type": ("str", True), "id": ("str", True), "size": ("size", False)},
            _object_add,
        ),
        Command("object-del", {"id": ("str", True)}, _object_del),
        Command("hv-balloon-add-memory", {"id": ("str", True)}, _add_memory),
        Command("query-memory-devices", {}, _query_memory_devices),
        Command("query-hv-balloon-status-report", {}, _query_status_report),
        Command("query-commands", {}, _query_commands),
        Command("x-hvdm-forget", {}, _forget),
        Command("query-status", {}, _query_status),
        Command("query-version", {}, _query_version),
        Command(
            "human-monitor-command",
            {"command-line": ("str", True), "cpu-index": ("int", False)},
            _human_monitor_command,
        ),
    )
}


async def execute(ctx: CommandContext, name: str, args: Mapping[str, Any]) -> Any:
    """Run one command (after negotiation); raises ``QmpError`` as QEMU would answer."""
    command = COMMANDS.get(name)
    if command is None:
        raise QmpError(COMMAND_NOT_FOUND, f"The command {name} has not been found")
    check_arguments(command, args)
    return await command.handler(ctx, dict(args))
