"""The fast event encoder writes exactly what the generic canonical encoder writes."""

from __future__ import annotations

from services.dm_engine import events as ev
from services.dm_engine import initial_state, process
from services.dm_engine.records import _CANONICAL, event_from_dict, event_json, to_dict
from services.fuzz.engine_fuzz import CONFIG, program
from tests.dm_engine.test_determinism import scripted


def reference(event: ev.Event) -> str:
    return _CANONICAL.encode(to_dict(event))


def test_fast_encoder_matches_reference_on_a_scripted_scenario() -> None:
    h = scripted()
    assert len({type(e) for e in h.events}) >= 15
    for event in h.events:
        assert event_json(event) == reference(event)


def test_fast_encoder_matches_reference_on_fuzzed_events() -> None:
    seen: set[type] = set()
    for case in range(40):
        state = initial_state("f")
        for record in program(5, case):
            for event in process(state, record, CONFIG):
                seen.add(type(event))
                text = event_json(event)
                assert text == reference(event)
                assert event_from_dict(__import__("json").loads(text)) == event
    assert ev.GuestViolation in seen and ev.PagesBallooned in seen


def test_strings_with_quotes_and_non_ascii_are_escaped_like_json() -> None:
    event = ev.CommandRejected(command='obj"ect', error_class="GenericError", desc="caf\u00e9 \\ \n")
    assert event_json(event) == reference(event)
