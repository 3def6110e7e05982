"""The committed ``schemas/`` tree is exactly what the generator writes from the current code, so
a record type changed without regenerating its schema fails here (and in ``--check`` in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.schemas import SCHEMA_ROOT, check, generate, schema_id, write
from services.schemas.generator import record_schema

REPO = Path(__file__).resolve().parents[2]


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.schemas", *args], cwd=REPO, capture_output=True, text=True)


def test_committed_files_equal_the_generated_ones() -> None:
    drift = check()
    assert not drift, "\n".join(["schemas/ is stale; run `python -m services.schemas`:", *drift.lines()])


def test_check_command_passes_on_the_repository() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_check_command_names_every_stale_file(tmp_path: Path) -> None:
    assert run_generator("--root", str(tmp_path)).returncode == 0
    assert run_generator("--check", "--root", str(tmp_path)).returncode == 0
    changed = tmp_path / "events" / "PagesBallooned.v1.json"
    changed.write_text(changed.read_text().replace('"minimum": 0', '"minimum": 1', 1))
    (tmp_path / "inbox" / "Tick.v1.json").unlink()
    (tmp_path / "events" / "Retired.v1.json").write_text("{}\n")
    result = run_generator("--check", "--root", str(tmp_path))
    assert result.returncode == 1
    assert "changed    events/PagesBallooned.v1.json" in result.stderr
    assert "missing    inbox/Tick.v1.json" in result.stderr
    assert "unexpected events/Retired.v1.json" in result.stderr
    # Regenerating repairs all three.
    drift = write(tmp_path)
    assert drift.changed == ("events/PagesBallooned.v1.json",)
    assert not check(tmp_path)
    assert not (tmp_path / "events" / "Retired.v1.json").exists()


def test_one_schema_per_record_kind() -> None:
    files = set(generate())
    assert {f"inbox/{k}.v1.json" for k in inp.INPUT_TYPES} <= files
    assert {f"events/{k}.v1.json" for k in ev.EVENT_TYPES} <= files
    outbox = {p for p in files if p.startswith("outbox/")}
    assert outbox == {
        f"outbox/DM_{name}.v1.json"
        for name in (
            "VERSION_RESPONSE",
            "CAPABILITIES_RESPONSE",
            "BALLOON_REQUEST",
            "UNBALLOON_REQUEST",
            "MEM_HOT_ADD_REQUEST",
            "MEM_HOT_REMOVE_REQUEST",
            "INFO_MESSAGE",
        )
    } | {"outbox/qmp_balloon.v1.json"}
    assert {p for p in files if p.startswith("envelopes/")} == {
        "envelopes/event_row.v1.json",
        "envelopes/inbox_row.v1.json",
    }
    assert len(files) == len(inp.INPUT_TYPES) + len(ev.EVENT_TYPES) + 8 + 2


@pytest.mark.parametrize("path", sorted(generate()))
def test_every_file_is_a_valid_draft_2020_12_schema_with_its_id(path: str) -> None:
    schema = json.loads((SCHEMA_ROOT / path).read_text())
    Draft202012Validator.check_schema(schema)
    family, name = path.split("/")
    kind = name.removesuffix(".v1.json")
    assert schema["$id"] == schema_id(family, kind) == f"https://hvdm.dev/schemas/{path}"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    if path == "outbox/qmp_balloon.v1.json":
        # A QMP command, not an hvdm record: QEMU's own shape ({"execute", "arguments"}).
        assert schema["properties"]["execute"] == {"const": "balloon"}
    elif family != "envelopes":
        assert schema["properties"]["type"] == {"const": kind}
        assert schema["required"] == list(schema["properties"])


def test_shapes_follow_the_type_hints() -> None:
    balloon = generate()["events/PagesBallooned.v1.json"]["properties"]
    page_range = balloon["ranges"]["items"]
    assert page_range["prefixItems"] == [{"type": "integer", "minimum": 0}] * 2
    assert (page_range["minItems"], page_range["maxItems"], page_range["items"]) == (2, 2, False)
    raw = generate()["inbox/GuestMessage.v1.json"]["properties"]["raw"]
    assert raw["type"] == "string" and raw["pattern"] == "^(?:[0-9a-f]{2})*$"
    reason = generate()["events/GuestViolation.v1.json"]["properties"]["reason"]
    assert set(reason["enum"]) == {r.value for r in ev.ViolationReason}
    # Operator-typed sizes are judged by the engine (CommandRejected), so any integer is valid.
    assert generate()["inbox/SetTarget.v1.json"]["properties"]["target_bytes"] == {"type": "integer"}
    hot_add = generate()["outbox/DM_MEM_HOT_ADD_REQUEST.v1.json"]["properties"]
    assert hot_add["trans_id"] == {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
    assert hot_add["range"]["prefixItems"][1]["maximum"] == 2**24 - 1


def test_an_unknown_field_type_is_a_loud_error() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Odd(ev.EventBase):
        KIND = "Odd"
        ratio: float

    with pytest.raises(TypeError, match=r"Odd\.ratio"):
        record_schema("events", Odd)
