"""``hvdm audit`` on logs of simulated guests driven by the real engine: honest runs are clean,
each malicious profile is flagged with its reason codes and the exact pages involved, and the
behaviour report (latencies, throughput, cadence, protocol over time) says what happened."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from services.range_store import PageRangeSet
from tests.audit.cli import hvdm, hvdm_json
from tests.audit.guest_fleet import BOOT, story

PAGE = 4096
BOOT_PAGES = BOOT // PAGE


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[str]]]:
    """One log per profile (built once: each is a few seconds of lockstep simulation)."""
    out = {}
    for profile in (
        "linux",
        "windows",
        "not_owned",
        "double_free",
        "beyond_request",
        "malformed",
        "wrong_state",
        "silent",
        "status_flood",
    ):
        db = tmp_path_factory.mktemp(profile) / "log.db"
        fleet = story(db, profile)
        out[profile] = (db, list(fleet.vms["vm1"].guest.misbehaviour_sent))  # type: ignore[attr-defined]
        fleet.log.close()
    return out


def audit_vm(db: Path) -> dict[str, Any]:
    doc = hvdm_json("audit", "--db", db)
    assert doc["replay_matches"] is True  # a lying guest does not make the log lie
    vm: dict[str, Any] = doc["vms"]["vm1"]
    return vm


def owned_ranges(db: Path) -> PageRangeSet:
    """Boot RAM plus every hot-added range, from the recorded HotAddCompleted events."""
    owned = PageRangeSet([(0, BOOT_PAGES)])
    with sqlite3.connect(db) as con:
        for (record,) in con.execute("SELECT record FROM events WHERE kind = 'HotAddCompleted'"):
            import json

            e = json.loads(record)
            if e["accepted_pages"]:
                owned.add(e["start_page"], e["accepted_pages"])
    return owned


@pytest.mark.parametrize("profile", ["linux", "windows"])
def test_honest_guests_are_clean(logs: dict[str, tuple[Path, list[str]]], profile: str) -> None:
    db, sent = logs[profile]
    assert sent == []
    vm = audit_vm(db)
    assert vm["violations"] == {}
    assert vm["behaviour"]["violations"] == {}
    b = vm["behaviour"]
    # Every transaction kind of the story happened and was answered.
    for kind in ("balloon", "unballoon", "hot_add"):
        assert b["latencies"][kind]["completion"]["count"] >= 1, kind
        assert b["throughput"][kind]["pages"] > 0, kind
    assert "timeout" not in b["latencies"]["balloon"]["outcomes"]
    st = b["status_reports"]
    assert st["count"] > 100 and st["gaps"] == 0 and st["max_in_one_tick"] <= 2
    assert st["interval"]["ticks"]["median"] == 1  # about one report a second
    # Handshake latencies and the protocol over time.
    assert b["latencies"]["version"]["count"] == 1 and b["latencies"]["capabilities"]["count"] == 1
    events = [e["event"] for e in b["protocol"]]
    assert events[:3] == ["channel_opened", "version_accepted", "capabilities_accepted"]
    caps = b["protocol"][2]["capabilities"]
    assert caps["balloon"] and caps["hot_add"] and caps["hot_remove"] is (profile == "windows")
    if profile == "linux":
        # Linux waits ~45 status calls before its first report (guest-behaviour.md 3).
        assert 40 <= b["latencies"]["first_status_report"]["ticks"]["min"] <= 50


def test_not_owned_is_flagged_with_the_pages_outside_ram(logs: dict[str, tuple[Path, list[str]]]) -> None:
    db, sent = logs["not_owned"]
    vm = audit_vm(db)
    assert set(vm["violations"]) == {"PAGES_NOT_OWNED"}
    detail = vm["behaviour"]["violations"]["PAGES_NOT_OWNED"]
    assert detail["count"] == vm["violations"]["PAGES_NOT_OWNED"] == sent.count("not_owned")
    assert detail["first"]["tick"] <= detail["last"]["tick"]
    assert detail["first"]["message_type"] == "DM_BALLOON_RESPONSE"
    owned = owned_ranges(db)
    flagged = PageRangeSet(tuple(r) for r in detail["ranges"])
    assert flagged.page_count == detail["pages"] > 0
    assert owned.intersection(list(flagged)) == []  # every flagged page is outside the guest's RAM
    # Nothing flagged was accounted: the ballooned set stays inside RAM.
    assert vm["ballooned_bytes"] // PAGE <= BOOT_PAGES


def test_double_free_is_flagged_with_the_repeated_pages(logs: dict[str, tuple[Path, list[str]]]) -> None:
    db, sent = logs["double_free"]
    vm = audit_vm(db)
    assert set(vm["violations"]) == {"DOUBLE_FREE"}
    detail = vm["behaviour"]["violations"]["DOUBLE_FREE"]
    assert detail["pages"] > 0 and detail["ranges"]
    owned = owned_ranges(db)
    # The repeated pages are real RAM pages (given once, counted once).
    assert sum(c for _, c in owned.intersection([tuple(r) for r in detail["ranges"]])) == detail["pages"]
    assert "double_free" in sent


def test_beyond_request_is_flagged_with_the_accounted_pages(logs: dict[str, tuple[Path, list[str]]]) -> None:
    db, _ = logs["beyond_request"]
    vm = audit_vm(db)
    assert set(vm["violations"]) == {"PAGES_BEYOND_REQUEST", "HOT_ADD_OVERCLAIM"}
    beyond = vm["behaviour"]["violations"]["PAGES_BEYOND_REQUEST"]
    assert beyond["first"]["accounted_ranges"] and beyond["pages"] > 0
    assert "beyond the" in beyond["first"]["detail"]
    overclaim = vm["behaviour"]["violations"]["HOT_ADD_OVERCLAIM"]
    assert overclaim["first"]["message_type"] == "DM_MEM_HOT_ADD_RESPONSE"


def test_malformed_messages_are_flagged_by_decode_reason(logs: dict[str, tuple[Path, list[str]]]) -> None:
    db, sent = logs["malformed"]
    vm = audit_vm(db)
    reasons = set(vm["violations"])
    assert {"TRUNCATED", "SIZE_MISMATCH"} <= reasons
    # The oversized message decodes without the gateway's framing limit; its fake pages are not
    # the guest's, and the honest answers after it arrive once the transaction has ended.
    assert reasons <= {"TRUNCATED", "SIZE_MISMATCH", "RANGE_COUNT_MISMATCH", "PAGES_NOT_OWNED", "UNEXPECTED_MESSAGE"}
    assert "malformed_truncated" in sent and "malformed_header_size" in sent
    truncated = vm["behaviour"]["violations"]["TRUNCATED"]
    assert "got 12" in truncated["first"]["detail"]


def test_wrong_state_messages_are_flagged_as_unexpected(logs: dict[str, tuple[Path, list[str]]]) -> None:
    db, sent = logs["wrong_state"]
    vm = audit_vm(db)
    assert "UNEXPECTED_MESSAGE" in vm["violations"]
    assert set(vm["violations"]) <= {"UNEXPECTED_MESSAGE", "PAGES_NOT_OWNED"}
    types = {
        vm["behaviour"]["violations"]["UNEXPECTED_MESSAGE"]["first"]["message_type"],
        vm["behaviour"]["violations"]["UNEXPECTED_MESSAGE"]["last"]["message_type"],
    }
    assert types <= {"DM_BALLOON_RESPONSE", "DM_UNBALLOON_RESPONSE", "DM_MEM_HOT_ADD_RESPONSE", "DM_VERSION_REQUEST"}
    assert len(sent) >= 3


def test_silent_guest_times_out_and_its_latencies_say_so(logs: dict[str, tuple[Path, list[str]]]) -> None:
    db, _ = logs["silent"]
    vm = audit_vm(db)
    assert set(vm["violations"]) == {"TIMEOUT"}
    balloon = vm["behaviour"]["latencies"]["balloon"]
    assert balloon["outcomes"].get("timeout", 0) >= 1
    assert balloon["first_answer"]["count"] == 0
    assert balloon["completion"]["ticks"]["min"] >= 20  # the configured balloon timeout


def test_status_flood_is_flagged_and_seen_in_the_cadence(logs: dict[str, tuple[Path, list[str]]]) -> None:
    db, _ = logs["status_flood"]
    vm = audit_vm(db)
    assert set(vm["violations"]) == {"STATUS_REPORT_FLOOD"}
    assert vm["behaviour"]["status_reports"]["max_in_one_tick"] == 4  # the engine keeps 4, flags the rest


def test_human_and_html_reports(logs: dict[str, tuple[Path, list[str]]], tmp_path: Path) -> None:
    db, _ = logs["not_owned"]
    page = tmp_path / "report.html"
    result = hvdm("audit", "--db", db, "--html", page)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "vm1 violations in detail" in out and "PAGES_NOT_OWNED" in out
    assert "vm1 response latencies" in out and "vm1 status reports" in out and "protocol over time" in out
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html and "PAGES_NOT_OWNED" in html
    assert "Violations in detail" in html and "Balloon transactions" in html
    assert "<script" not in html and "http" not in html


def test_progress_bar_goes_to_stderr_only_when_asked(logs: dict[str, tuple[Path, list[str]]]) -> None:
    db, _ = logs["linux"]
    quiet = hvdm("audit", "--db", db, "--json")
    assert quiet.stderr == ""
    loud = hvdm("audit", "--db", db, "--json", "--progress")
    assert loud.returncode == 0 and "reading log [" in loud.stderr and "100.0%" in loud.stderr
    assert loud.stdout.count("\n") == 1  # stdout stays one JSON document


def test_from_tick_reports_only_the_later_part(logs: dict[str, tuple[Path, list[str]]]) -> None:
    db, _ = logs["not_owned"]
    whole = audit_vm(db)
    last = whole["behaviour"]["violations"]["PAGES_NOT_OWNED"]["last"]
    later = hvdm_json("audit", "--db", db, "--from-tick", str(last["tick"]))
    assert later["replay_matches"] is True and later["from_position"] > 0
    vm = later["vms"]["vm1"]
    assert vm["violations"] == {"PAGES_NOT_OWNED": 1}
    assert vm["behaviour"]["violations"]["PAGES_NOT_OWNED"]["first"]["seq"] == last["seq"]
    # The state is the whole log's: accounting does not depend on the window.
    assert vm["current_bytes"] == whole["current_bytes"]
    by_pos = hvdm_json("audit", "--db", db, "--from", str(last["inbox_pos"]))
    assert by_pos["vms"]["vm1"]["violations"] == {}  # records after that position only
