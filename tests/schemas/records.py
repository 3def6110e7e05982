"""Validation helpers shared by the schema tests: one call per record, readable failures."""

from __future__ import annotations

import json
from typing import Any

from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.records import to_dict
from services.dm_protocol import Message, to_json_dict
from services.schemas import validator_for


def assert_valid(family: str, kind: str, document: Any) -> None:
    errors = sorted(validator_for(kind, family).iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, f"{family}/{kind}: {errors[0].message} at {list(errors[0].absolute_path)} in {document}"


def validate_input(record: inp.Input) -> None:
    # Through JSON text, as the log stores it: tuples become lists, bytes hex.
    data = json.loads(json.dumps(to_dict(record)))
    assert_valid("inbox", record.KIND, data)


def validate_event(event: ev.Event) -> None:
    assert_valid("events", event.KIND, json.loads(json.dumps(to_dict(event))))


def validate_message(msg: Message) -> None:
    data = json.loads(json.dumps(to_json_dict(msg)))
    assert_valid("outbox", msg.TYPE.name, data)
