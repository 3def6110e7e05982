"""The fast event encoder writes exactly what the generic canonical encoder writes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.dm_engine import events as ev
from services.dm_engine import initial_state, process
from services.dm_engine.outbox import SENDS, outbox_messages
from services.dm_engine.records import _CANONICAL, compact_event, event_from_dict, event_json, stored_event, to_dict
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


def test_stored_form_and_outbox_shortcuts_agree_with_the_general_functions() -> None:
    """The runner's shortcuts: ``stored_event`` is ``compact_event or event_json``, and ``SENDS``
    names exactly the event types ``outbox_messages`` answers (a step skips the walk otherwise)."""
    seen: set[type] = set()
    h = scripted()
    events = [*h.events, ev.HotRemoveRequested(trans_id=9, page_count=512, tick=3)]
    for case in range(40):
        state = initial_state("f")
        for record in program(5, case):
            events.extend(process(state, record, CONFIG))
    for event in events:
        seen.add(type(event))
        assert stored_event(event) == (compact_event(event) or event_json(event))
        assert bool(outbox_messages(event)) == (type(event) in SENDS)
    assert seen >= SENDS  # every sending type was exercised
    for cls in ev.EVENT_TYPES.values():
        # ``type(e) in SENDS`` is exact; a subclass of a sending type would slip past it.
        assert all(cls is s or not issubclass(cls, s) for s in SENDS)


@given(
    st.lists(
        st.tuples(st.integers(-(2**64), 2**70), st.integers(-(2**64), 2**70))
        | st.tuples(st.booleans() | st.none() | st.floats(allow_nan=False), st.integers()),
        max_size=30,
    )
)
def test_page_ranges_are_written_like_the_reference_encoder(ranges: list[tuple[int, int]]) -> None:
    """``event_json`` hands all-int pairs to orjson; anything else (beyond 64 bits, bools) is
    written out pair by pair, exactly as before the shortcut."""
    event = ev.PagesBallooned(ranges=tuple(ranges), pages=1, tick=2)
    before = (
        '{"pages":1,"ranges":[' + ",".join([f"[{s},{c}]" for s, c in ranges]) + '],"tick":2,"type":"PagesBallooned"}'
    )
    assert event_json(event) == before
    if all(type(v) is int for pair in ranges for v in pair):
        assert event_json(event) == reference(event)
