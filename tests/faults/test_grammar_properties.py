"""Property tests for the two text grammars at the edge: whatever a peer sends as a hello or a QMP
request is either accepted with every number inside ``dm_engine.limits`` or refused with the
grammar's own error (``HelloError`` / ``QmpError``), never another exception. The oracle is the
one ``hvdm fuzz`` uses (``services.fuzz.grammar_fuzz``); here hypothesis drives it and shrinks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.fuzz.grammar_fuzz import HMP_LINES, HOSTILE_IDS, HOSTILE_NUMBERS, FuzzContext, check_hello, check_request
from services.qmp.commands import COMMANDS
from services.vmbus_gateway.hello import Hello

GIB = 1 << 30

SCALARS = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS),
    st.sampled_from(HOSTILE_IDS),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
SIZES = st.one_of(st.integers(min_value=1, max_value=1 << 14).map(lambda n: n << 20), SCALARS)

HELLOS = st.fixed_dictionaries(
    {
        "hello": st.sampled_from(["hvdm/1", "hvdm/1", "hvdm/2", 1]),
        "vm": st.one_of(st.sampled_from(["vm1", "a.b-c_d"]), SCALARS),
    },
    optional={
        "boot_bytes": SIZES,
        "maxmem_bytes": SIZES,
        "hot_add_base_page": st.one_of(st.integers(min_value=0, max_value=2**41), SCALARS),
        "status_reports": st.one_of(st.booleans(), SCALARS),
        "resume_after": st.one_of(st.integers(min_value=0, max_value=2**65), SCALARS),
        "machine": st.one_of(st.sampled_from(["q35", "pc"]), SCALARS),
        "ram": st.one_of(
            st.lists(st.lists(st.integers(min_value=-1, max_value=2**41), max_size=3), max_size=4), VALUES
        ),
        "reset": st.one_of(st.sampled_from(["vmbus", "system"]), SCALARS),
        "extra": VALUES,
    },
)


@settings(max_examples=500, deadline=None)
@given(hello=HELLOS, nesting=st.sampled_from([0, 0, 0, 300, 3000]))
def test_a_hello_is_accepted_in_bounds_or_refused_with_a_hello_error(hello: dict[str, Any], nesting: int) -> None:
    line = (b"[" * nesting + json.dumps(hello).encode() + b"]" * nesting) + b"\n"
    verdict = check_hello(line)  # raises on anything but a HelloError or an in-bounds Hello
    assert isinstance(verdict, (Hello, str))


def test_the_hello_property_sees_both_outcomes() -> None:
    ok = {"hello": "hvdm/1", "vm": "vm1", "boot_bytes": 4 * GIB, "maxmem_bytes": 8 * GIB}
    assert isinstance(check_hello(json.dumps(ok).encode()), Hello)
    assert check_hello(json.dumps({**ok, "maxmem_bytes": 2**64}).encode()) == "bad_number"


ARGUMENTS = st.dictionaries(
    st.sampled_from(["value", "size", "id", "qom-type", "command-line", "cpu-index", "enable", "x"]),
    st.one_of(
        SIZES,
        st.sampled_from(["mem1", "memory-backend-ram", "m\n", *HMP_LINES]),
        VALUES,
    ),
    max_size=4,
)
REQUESTS = st.fixed_dictionaries(
    {"execute": st.one_of(st.sampled_from([*COMMANDS, "qmp_capabilities", "nope"]), SCALARS)},
    optional={"arguments": st.one_of(ARGUMENTS, VALUES), "id": VALUES, "extra": VALUES},
)


@settings(max_examples=500, deadline=None)
@given(request=REQUESTS, nesting=st.sampled_from([0, 0, 0, 300, 100_000]))
def test_a_qmp_request_is_run_in_bounds_or_refused_with_a_qmp_error(request: dict[str, Any], nesting: int) -> None:
    text = b"[" * nesting + json.dumps(request).encode() + b"]" * nesting
    ctx = FuzzContext()
    verdict = asyncio.run(check_request(ctx, text))  # raises on anything but QmpError or in-bounds inputs
    assert verdict is None or isinstance(verdict, str)


NUMBERS_AS_TEXT = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text("0123456789", min_size=1, max_size=6000),
    st.text("0123456789.eE+-kKmMgGtTpP", max_size=40),
)
HMP = st.one_of(
    st.sampled_from(HMP_LINES),
    st.builds("balloon {}".format, NUMBERS_AS_TEXT),
    st.builds("object_add memory-backend-ram,id=m{},size={}".format, st.integers(0, 9), NUMBERS_AS_TEXT),
    st.text(max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(line=HMP)
def test_an_hmp_line_through_qmp_is_text_never_an_exception(line: str) -> None:
    request = json.dumps({"execute": "human-monitor-command", "arguments": {"command-line": line}}).encode()
    assert asyncio.run(check_request(FuzzContext(), request)) is None  # HMP errors are printed text
