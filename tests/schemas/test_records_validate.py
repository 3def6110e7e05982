"""Every record the engine writes validates against its committed schema.

Three sources: every scripted scenario of the engine's own test suite (run again here with the
Harness instrumented, so a scenario added there is covered here for free), random adversarial
programs (the engine's fuzz strategy), and logs produced by the real ``EngineRunner`` over a
SQLite file, read back row by row.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dm_engine import events as ev
from services.dm_engine import initial_state
from services.dm_engine import inputs as inp
from services.dm_engine.step import read_input, step_vm
from services.dm_protocol import decode, to_json_dict
from services.event_log.sqlite_log import SqliteLog
from services.schemas import generate
from tests.audit.scripted_log import ScriptedLog, every_scenario
from tests.dm_engine import test_fuzz_properties as fuzz
from tests.dm_engine.harness import FAST, Harness
from tests.dm_engine.test_qemu_vm import qemu_scenario
from tests.schemas.records import assert_valid, validate_event, validate_input, validate_message

#: Short timeouts keep the scripted stalls (and the logs they produce) small.
QUICK = replace(FAST, hot_add_timeout_ticks=20, balloon_timeout_ticks=15)

ENGINE_SCENARIO_MODULES = (
    "tests.dm_engine.test_protocol_flows",
    "tests.dm_engine.test_guest_violations",
)


def engine_scenarios() -> Iterator[Any]:
    for name in ENGINE_SCENARIO_MODULES:
        module = importlib.import_module(name)
        for attr, fn in sorted(vars(module).items()):
            if attr.startswith("test_") and inspect.isfunction(fn) and not inspect.signature(fn).parameters:
                yield pytest.param(fn, id=f"{name.rsplit('.', 1)[1]}::{attr}")
    determinism = importlib.import_module("tests.dm_engine.test_determinism")
    yield pytest.param(determinism.scripted, id="test_determinism::scripted")


def validate_harness(h: Harness) -> set[str]:
    kinds: set[str] = set()
    for record in h.inputs:
        validate_input(record)
        kinds.add(f"inbox/{record.KIND}")
    for event in h.events:
        validate_event(event)
        kinds.add(f"events/{event.KIND}")
    for msg in h.sent:
        validate_message(msg)
        kinds.add(f"outbox/{msg.TYPE.name}")
    return kinds


def run_instrumented(fn: Callable[[], object], monkeypatch: pytest.MonkeyPatch) -> list[Harness]:
    made: list[Harness] = []
    original = Harness.__post_init__

    def post_init(self: Harness) -> None:
        original(self)
        made.append(self)

    monkeypatch.setattr(Harness, "__post_init__", post_init)
    fn()
    monkeypatch.undo()
    return made


@pytest.mark.parametrize("scenario", list(engine_scenarios()))
def test_engine_scenarios_write_only_valid_records(
    scenario: Callable[[], object], monkeypatch: pytest.MonkeyPatch
) -> None:
    harnesses = run_instrumented(scenario, monkeypatch)
    assert harnesses, "the scenario built no Harness"
    for h in harnesses:
        validate_harness(h)


def rejected_input() -> set[str]:
    """``InputRejected`` comes only from the step's safety net: make one as the runner does, from
    an inbox record that is not an input."""
    result = step_vm(
        "vm1",
        initial_state("vm1"),
        read_input({"type": "NoSuchInput", "tick": 3}),
        FAST,
        inbox_pos=7,
        rebuild=initial_state,
    )
    assert result.rejected
    for event in result.events:
        validate_event(event)
    return {f"events/{e.KIND}" for e in result.events}


def test_scenarios_cover_every_record_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation proves nothing for kinds no scenario produces: every kind must be seen."""
    seen: set[str] = rejected_input()
    for param in engine_scenarios():
        for h in run_instrumented(param.values[0], monkeypatch):
            seen |= validate_harness(h)
    for h in every_scenario(ScriptedLog(config=QUICK)):
        seen |= validate_harness(h)
    seen |= validate_qemu_scenario()
    assert {k for k in inp.INPUT_TYPES if f"inbox/{k}" not in seen} == set()
    assert {k for k in ev.EVENT_TYPES if f"events/{k}" not in seen} == set()
    # DM_INFO_MESSAGE has a schema (it is a host-to-guest type) but the engine never sends one.
    assert {p.removesuffix(".v1.json") for p in generate() if p.startswith("outbox/")} - seen == {
        "outbox/DM_INFO_MESSAGE"
    }


def validate_qemu_scenario() -> set[str]:
    """A QEMU-managed VM's whole life (tests/dm_engine/test_qemu_vm.py), records validated."""
    kinds: set[str] = set()
    inputs, events, outbox = qemu_scenario()
    for record in inputs:
        validate_input(record)
        kinds.add(f"inbox/{record.KIND}")
    for event in events:
        validate_event(event)
        kinds.add(f"events/{event.KIND}")
    for payload in outbox:
        assert_valid("outbox", "qmp_balloon", json.loads(payload))
        kinds.add("outbox/qmp_balloon")
    return kinds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fuzz.steps, max_size=40))
def test_adversarial_programs_write_only_valid_records(program: list[tuple[str, object]]) -> None:
    h = Harness(boot_bytes=fuzz.BOOT_PAGES << 12, maxmem_bytes=8 * fuzz.BOOT_PAGES << 12)
    h.handshake()
    fuzz.run(h, program)
    validate_harness(h)


# ---------------------------------------------------------------------------- the real runner
@pytest.fixture(scope="module")
def runner_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteLog]:
    fleet = ScriptedLog(config=QUICK)
    every_scenario(fleet)
    path = fleet.write(tmp_path_factory.mktemp("log") / "log.db", restart_every=4)
    log = SqliteLog(path)
    yield log
    log.close()


def test_every_event_row_validates(runner_log: SqliteLog) -> None:
    rows = list(runner_log.iter_events())
    assert len(rows) > 40
    for row in rows:
        record = json.loads(row.record)
        assert_valid("events", record["type"], record)
        assert_valid(
            "envelopes", "event_row", {"vm": row.vm, "seq": row.seq, "inbox_pos": row.inbox_pos, "record": record}
        )


def test_every_outbox_row_validates(runner_log: SqliteLog) -> None:
    seen = set()
    for vm in runner_log.vms():
        for row in runner_log.read_outbox(vm, 0, 10_000):
            data = json.loads(json.dumps(to_json_dict(decode(row.message))))
            assert_valid("outbox", data["type"], data)
            seen.add(data["type"])
    assert {"DM_VERSION_RESPONSE", "DM_BALLOON_REQUEST", "DM_UNBALLOON_REQUEST", "DM_MEM_HOT_ADD_REQUEST"} <= seen
    assert "DM_MEM_HOT_REMOVE_REQUEST" in seen


def test_every_inbox_row_validates(runner_log: SqliteLog) -> None:
    rows = list(runner_log.iter_inbox())
    assert any(r.vm == "*" for r in rows)
    for row in rows:
        assert_valid("inbox", row.record["type"], row.record)
        assert_valid("envelopes", "inbox_row", {"vm": row.vm, "pos": row.pos, "tick": row.tick, "record": row.record})
    assert runner_log.consumed_position() == runner_log.inbox_high_watermark() == len(rows)
