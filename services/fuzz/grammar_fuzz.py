"""A fuzzer for the two text grammars a peer speaks before the engine: the gateway hello and QMP.

Why: these parsers are the edge of the service. Whatever a peer sends, each must either accept
with every number inside ``dm_engine.limits`` or refuse with its own error (``HelloError``,
``QmpError``); any other exception is a crash waiting for a hostile peer, and an accepted value
outside the bounds is a poisoned inbox record. Each case builds a valid hello and a valid QMP
request and then, most of the time, breaks them: hostile numbers (2**64, 10**23, floats, bools,
2**40 +- 1), wrong types, missing and extra members, VM ids with newlines, deep nesting, byte
flips and truncation, HMP lines through ``human-monitor-command``. Accepted requests run through
the real command handlers against a VM state built by the real engine, and every input they
would put in the inbox must survive the stored-record decoder (``records.input_from_dict``).
Cases are derived from (seed, case number), so a failure is reproducible from its report line.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..dm_engine import inputs as inp
from ..dm_engine.decider import initial_state, process
from ..dm_engine.limits import (
    MAX_BACKEND_BYTES,
    MAX_MEMORY_BYTES,
    MAX_PAGE_NUMBER,
    MAX_RECORD_INT,
    check_window,
    valid_vm_id,
)
from ..dm_engine.records import input_from_dict, to_dict
from ..dm_engine.state import VmState
from ..dm_protocol import CapabilitiesReport, VersionRequest, encode
from ..qmp.commands import COMMANDS, execute
from ..qmp.protocol import QmpError, parse_request
from ..units import GIB
from ..vmbus_gateway.hello import HELLO_REASONS, Hello, HelloError, parse_hello

#: Numbers a hostile peer tries: type confusions and values around every bound hvdm has.
HOSTILE_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    4095,
    4096,
    2**31,
    2**32,
    2**40 - 1,
    2**40,
    2**40 + 1,
    2**52,
    2**52 + 4096,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    10**23,
    -(2**63) - 1,
    1e30,
    4096.0,
    0.5,
    True,
    False,
    None,
    "4096",
    "",
    [],
    {},
    [4096],
)
HOSTILE_IDS: tuple[str, ...] = ("vm1\n", "", "-vm", "a" * 65, "vm 1", "vm/1", "v\u00e9", "vm1\x00", ".", "x" * 64)
HMP_LINES: tuple[str, ...] = (
    "balloon 1024",
    "balloon 0",
    "balloon -5",
    "balloon 1e99",
    "balloon 99999999999999999999999",
    "balloon " + "9" * 5000,
    "balloon 1.5",
    "balloon 4P",
    "balloon 16E",
    "info balloon",
    "info memory-devices",
    "info nope",
    "object_add memory-backend-ram,id=m1,size=1G",
    "object_add memory-backend-ram,id=m1,size=1e99",
    "object_add memory-backend-ram,id=m1,size=" + "9" * 5000,
    "object_add memory-backend-ram,id=m\n1,size=1G",
    "object_add memory-backend-ram,id=,size=1G",
    "object_del m1",
    "hv-balloon-add-memory id=m1",
    "",
    "\x00",
)


@dataclass
class GrammarReport:
    hellos: int = 0
    hellos_accepted: int = 0
    hello_rejections: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    requests_accepted: int = 0
    qmp_errors: Counter[str] = field(default_factory=Counter)
    inputs_submitted: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "hellos": self.hellos,
            "hellos_accepted": self.hellos_accepted,
            "hello_rejections": dict(self.hello_rejections.most_common()),
            "qmp_requests": self.requests,
            "qmp_requests_accepted": self.requests_accepted,
            "qmp_errors": dict(self.qmp_errors.most_common()),
            "inputs_submitted": self.inputs_submitted,
        }


# ---------------------------------------------------------------------------------- mutations
def _nest(rng: random.Random) -> Any:
    """A nested value as deep as the JSON encoder can write (deeper texts are built as text)."""
    value: Any = rng.choice([1, "x", None])
    for _ in range(rng.choice([3, 200, 255, 257, 600])):
        value = [value] if rng.random() < 0.7 else {"a": value}
    return value


def _mutate_value(rng: random.Random, value: Any) -> Any:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(HOSTILE_NUMBERS)
    if roll < 0.75:
        return rng.choice(HOSTILE_IDS)
    if roll < 0.85:
        return _nest(rng)
    if isinstance(value, int) and not isinstance(value, bool):
        return value + rng.choice([-4096, -1, 1, 4096, 2**40, 2**64])
    return rng.randrange(-(2**70), 2**70)


def _mutate_dict(rng: random.Random, data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = dict(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.random()
        key = rng.choice(keys)
        if op < 0.7:
            out[key] = _mutate_value(rng, out.get(key))
        elif op < 0.85:
            out.pop(key, None)
        else:
            out[rng.choice(["extra", "", "x" * 100, key.upper()])] = _mutate_value(rng, None)
    return out


def _text(rng: random.Random, data: Any) -> bytes:
    """The JSON text of ``data``, sometimes broken at the byte level or nested beyond any limit."""
    text = json.dumps(data).encode()
    roll = rng.random()
    if roll < 0.08:
        depth = rng.choice([300, 5000, 100_000])
        return b"[" * depth + text + b"]" * depth
    if roll < 0.2:
        buf = bytearray(text)
        for _ in range(rng.randrange(1, 4)):
            if buf and rng.random() < 0.6:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            else:
                del buf[rng.randrange(len(buf) + 1) :]
        return bytes(buf)
    if roll < 0.23:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
    return text


# ---------------------------------------------------------------------------------- hello
_HELLO_KEYS = (
    "hello",
    "vm",
    "boot_bytes",
    "maxmem_bytes",
    "hot_add_base_page",
    "status_reports",
    "resume_after",
    "machine",
    "ram",
    "reset",
)


def hello_line(rng: random.Random) -> bytes:
    boot = rng.choice([1, 2, 4, 16, 64, 1024]) * GIB
    data: dict[str, Any] = {
        "hello": "hvdm/1",
        "vm": f"vm{rng.randrange(1000)}",
        "boot_bytes": boot,
        "maxmem_bytes": boot * rng.choice([1, 2, 16, 1024]),
        "hot_add_base_page": rng.choice([None, None, 64 * GIB >> 12, 2**40 - (1 << 20), 2**40 - 1]),
        "status_reports": rng.random() < 0.9,
    }
    if rng.random() < 0.3:
        data["machine"] = rng.choice(["q35", "pc"])
    if rng.random() < 0.2:
        data["resume_after"] = rng.randrange(0, 1000)
    if rng.random() < 0.8:
        data = _mutate_dict(rng, data, _HELLO_KEYS)
    return _text(rng, data) + b"\n"


def check_hello(line: bytes) -> Hello | str:
    """The parser's verdict on ``line``: a Hello whose numbers are in bounds, or the reason code
    of a HelloError. Anything else (another exception, a value out of bounds) is an error."""
    try:
        hello = parse_hello(line)
    except HelloError as e:
        assert e.reason in HELLO_REASONS, f"unknown hello reason {e.reason!r}"
        assert "\n" not in str(e), "a hello error must be one line"
        return e.reason
    assert valid_vm_id(hello.vm), f"accepted vm id {hello.vm!r}"
    assert 4096 <= hello.boot_bytes <= MAX_MEMORY_BYTES and hello.boot_bytes % 4096 == 0, hello
    assert hello.boot_bytes <= hello.maxmem_bytes <= MAX_MEMORY_BYTES, hello
    base = hello.hot_add_base_page
    assert base is None or (type(base) is int and 0 <= base <= MAX_PAGE_NUMBER), hello
    assert hello.resume_after is None or 0 <= hello.resume_after <= MAX_RECORD_INT, hello
    check_window(hello.boot_bytes, hello.maxmem_bytes, base, hello.ram or ())
    assert parse_hello(hello.to_line()) == hello, "an accepted hello must survive its own line"
    # What the gateway would put in the inbox is a record the engine can read back.
    opened = inp.ChannelOpened(
        boot_bytes=hello.boot_bytes,
        maxmem_bytes=hello.maxmem_bytes,
        hot_add_base_page=base,
        status_reports=hello.status_reports,
        ram=hello.ram_ranges(),
    )
    assert input_from_dict(json.loads(json.dumps(to_dict(opened)))) == opened
    return hello


# ---------------------------------------------------------------------------------- QMP
_ARGUMENTS: dict[str, dict[str, Any]] = {
    "balloon": {"value": 2 * GIB},
    "object-add": {"qom-type": "memory-backend-ram", "id": "mem1", "size": GIB},
    "object-del": {"id": "mem1"},
    "hv-balloon-add-memory": {"id": "mem1"},
    "human-monitor-command": {"command-line": "info balloon"},
}


def qmp_request(rng: random.Random) -> bytes:
    command = rng.choice([*COMMANDS, "qmp_capabilities", "nope", "quit"])
    arguments = dict(_ARGUMENTS.get(command, {}))
    if command == "human-monitor-command":
        arguments["command-line"] = rng.choice(HMP_LINES)
    data: dict[str, Any] = {"execute": command, "arguments": arguments, "id": rng.randrange(1000)}
    if rng.random() < 0.7:
        keys = (*arguments, "value", "size", "id", "cpu-index") if arguments else ("value", "size")
        data["arguments"] = _mutate_dict(rng, arguments, tuple(keys))
    if rng.random() < 0.15:
        data = _mutate_dict(rng, data, ("execute", "arguments", "id", "extra"))
    return _text(rng, data)


class FuzzContext:
    """A QMP command context over a VM the real engine negotiated; records what would be submitted."""

    vm = "fuzz"

    def __init__(self) -> None:
        state = initial_state(self.vm)
        tick = 0
        for record in (
            inp.ChannelOpened(tick=tick, boot_bytes=4 * GIB, maxmem_bytes=64 * GIB),
            inp.GuestMessage(tick=tick, raw=encode(VersionRequest(trans_id=1, version=0x20000))),
            inp.GuestMessage(
                tick=tick,
                raw=encode(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7)),
            ),
            inp.AddBackend(tick=tick, backend_id="mem1", size_bytes=GIB),
        ):
            process(state, record)
        self._state = state
        self.submitted: list[inp.Input] = []

    def state(self) -> VmState | None:
        return self._state

    async def submit(self, record: inp.Input) -> None:
        self.submitted.append(record)


async def check_request(ctx: FuzzContext, text: bytes) -> str | None:
    """The QMP edge's verdict on one request: None if accepted (and run), else the error class.
    Every input a command submits must be one the stored-record decoder reads back in bounds."""
    try:
        request = parse_request(text)
        if request.command in COMMANDS:
            before = len(ctx.submitted)
            result = await execute(ctx, request.command, request.arguments)
            json.dumps(result)  # the answer must be sendable
            for record in ctx.submitted[before:]:
                assert input_from_dict(json.loads(json.dumps(to_dict(record)))) == record, record
                if isinstance(record, inp.SetTarget):
                    assert 0 < record.target_bytes <= MAX_MEMORY_BYTES, record
                if isinstance(record, inp.AddBackend):
                    assert 0 < record.size_bytes <= MAX_BACKEND_BYTES, record
            if request.command == "human-monitor-command":
                assert isinstance(result, str), "HMP answers are text, errors included"
        elif request.command not in ("qmp_capabilities",):
            raise QmpError("CommandNotFound", f"The command {request.command} has not been found")
    except QmpError as e:
        # The desc may quote what the client sent (QEMU's texts do); JSON escapes it on the wire.
        json.dumps(e.desc)
        return e.error_class
    return None


# ---------------------------------------------------------------------------------- the run
def run_case(seed: int, case: int, report: GrammarReport, ctx: FuzzContext, loop: asyncio.AbstractEventLoop) -> None:
    rng = random.Random(seed * 2_000_003 + case)
    line = hello_line(rng)
    report.hellos += 1
    try:
        verdict = check_hello(line)
    except AssertionError as e:
        raise AssertionError(f"hello {line[:120]!r}: {e}") from None
    if isinstance(verdict, str):
        report.hello_rejections[verdict] += 1
    else:
        report.hellos_accepted += 1
    text = qmp_request(rng)
    report.requests += 1
    before = len(ctx.submitted)
    try:
        error_class = loop.run_until_complete(check_request(ctx, text))
    except AssertionError as e:
        raise AssertionError(f"qmp {text[:120]!r}: {e}") from None
    report.inputs_submitted += len(ctx.submitted) - before
    if error_class is None:
        report.requests_accepted += 1
    else:
        report.qmp_errors[error_class] += 1


def fuzz_grammars(cases: int, seed: int = 1, max_seconds: float | None = None) -> GrammarReport:
    report = GrammarReport()
    ctx = FuzzContext()
    started = time.perf_counter()
    loop = asyncio.new_event_loop()
    try:
        for case in range(cases):
            try:
                run_case(seed, case, report, ctx, loop)
            except Exception as e:  # a failure is data: report it with how to reproduce it
                report.failures.append(f"grammar seed={seed} case={case}: {type(e).__name__}: {e}")
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
    finally:
        loop.close()
    report.seconds = time.perf_counter() - started
    return report
