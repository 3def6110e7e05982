"""Cached validators for the committed schemas, with ``$ref`` between them resolved locally.

Why from the committed files: they are the published contract, so tests that validate records
with :func:`validator_for` test the files themselves. When the package runs without a source
checkout (no ``schemas/`` beside it) the generator's output is used instead; CI pins the two
equal, so both give the same answers.
"""

from __future__ import annotations

import functools
import json

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012, SchemaRegistry

from .files import SCHEMA_ROOT
from .generator import FAMILIES, Schema, generate, relative_path


@functools.cache
def _schemas() -> dict[str, Schema]:
    generated = generate()
    if not SCHEMA_ROOT.is_dir():
        return generated
    out: dict[str, Schema] = {}
    for path, schema in generated.items():
        file = SCHEMA_ROOT / path
        out[path] = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else schema
    return out


@functools.cache
def _registry() -> SchemaRegistry:
    """Every schema under its ``$id``, so the envelopes' references never touch the network."""
    registry: SchemaRegistry = Registry()
    return registry.with_resources(
        (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012))
        for schema in _schemas().values()
    )


@functools.cache
def validator_for(kind: str, family: str) -> Draft202012Validator:
    """The validator of one record kind, built once.

    ``family`` is ``inbox``, ``events``, ``outbox`` or ``envelopes``; ``kind`` is the record's
    ``type`` (``PagesBallooned``, ``DM_BALLOON_REQUEST``) or an envelope name (``event_row``).

    >>> validator_for("TargetSet", "events").is_valid({"type": "TargetSet", "target_pages": 5})
    True
    >>> validator_for("TargetSet", "events").is_valid({"type": "TargetSet", "target_pages": -5})
    False
    """
    if family not in FAMILIES:
        raise KeyError(f"unknown schema family {family!r}; one of {', '.join(FAMILIES)}")
    path = relative_path(family, kind)
    schema = _schemas().get(path)
    if schema is None:
        raise KeyError(f"no schema for {family} record kind {kind!r}")
    return Draft202012Validator(schema, registry=_registry())
