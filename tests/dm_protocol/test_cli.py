"""``hvdm decode`` / ``hvdm encode`` run as real subprocesses, as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
V4 = "0700200008000000000000000500000000000400000002000002040000000200"
FIRST_PACKET = "06000200 04000000 0000000000000000 | 01001000 01000000 00000200 00000000"


def hvdm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], command: str, reason: str) -> None:
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"hvdm: {command} error {reason}: ")


def test_decode_prints_one_json_object() -> None:
    result = hvdm("decode", V4)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "type": "DM_BALLOON_RESPONSE",
        "trans_id": 8,
        "more_pages": True,
        "ranges": [[262144, 512], [262656, 512]],
    }


def test_decode_tolerates_spaces_and_colons() -> None:
    spaced = " ".join(V4[i : i + 2] for i in range(0, len(V4), 2))
    coloned = ":".join(V4[i : i + 2] for i in range(0, len(V4), 2)).upper()
    assert hvdm("decode", spaced).stdout == hvdm("decode", coloned).stdout == hvdm("decode", V4).stdout


def test_decode_framed_spec_example() -> None:
    result = hvdm("decode", "--framed", FIRST_PACKET)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "type": "DM_VERSION_REQUEST",
        "trans_id": 1,
        "version": 0x20000,
        "is_last_attempt": False,
    }
    with_trailer = hvdm("decode", "--framed", "--trailer", FIRST_PACKET + "0000000030120000")
    assert with_trailer.stdout == result.stdout


@pytest.mark.parametrize(
    "document",
    [
        {"type": "DM_BALLOON_RESPONSE", "trans_id": 8, "more_pages": True, "ranges": [[262144, 512]]},
        {"type": "DM_MEM_HOT_ADD_REQUEST", "trans_id": 0, "range": [1048576, 32768], "region": [1, 2]},
        {"type": "DM_INFO_MESSAGE", "trans_id": 3, "info_type": 0, "data": "0080000000000000"},
    ],
)
@pytest.mark.parametrize("framed", [[], ["--framed"]])
def test_encode_then_decode_gives_the_same_json(document: dict[str, object], framed: list[str]) -> None:
    encoded = hvdm("encode", json.dumps(document), *framed)
    assert encoded.returncode == 0, encoded.stderr
    hex_out = encoded.stdout.strip()
    assert hex_out == hex_out.lower()
    decoded = hvdm("decode", *framed, hex_out)
    assert decoded.returncode == 0, decoded.stderr
    assert json.loads(decoded.stdout) == document


def test_encode_matches_spec_vector_and_frame() -> None:
    doc = json.dumps({"type": "DM_VERSION_REQUEST", "trans_id": 1, "version": 131072})
    assert hvdm("encode", doc).stdout == "01001000010000000000020000000000\n"
    framed = hvdm("encode", "--trailer-offset", "0x1230", doc).stdout.strip()
    assert framed == FIRST_PACKET.replace(" ", "").replace("|", "") + "0000000030120000"


def test_stdin_and_several_frames() -> None:
    one = hvdm("encode", "--framed", '{"type": "DM_UNBALLOON_RESPONSE", "trans_id": 1}').stdout.strip()
    two = hvdm("encode", "--framed", '{"type": "DM_UNBALLOON_RESPONSE", "trans_id": 2}').stdout.strip()
    result = hvdm("decode", "--framed", "-", stdin=f"{one}\n{two}\n")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["trans_id"] for line in result.stdout.splitlines()] == [1, 2]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["decode", "0b00"], "TRUNCATED"),
        (["decode", "0b0010000b00000000800000010000"], "SIZE_MISMATCH"),
        (["decode", "0f00080000000000"], "UNKNOWN_TYPE"),
        (["decode", "07001800000000000000000004000000" + "00" * 8], "RANGE_COUNT_MISMATCH"),
        (["decode", "xyz"], "INVALID_HEX"),
        (["decode", "abc"], "INVALID_HEX"),
        (["decode", "--framed", "0600020004000000"], "TRUNCATED"),
        (["decode", "--framed", "0b00020003000000" + "00" * 8 + "0900080000000000"], "BAD_PACKET_TYPE"),
        (["decode", "--framed", "0600020001000000" + "00" * 8], "BAD_PACKET_LENGTH"),
        (["decode", "--framed", "0600020010270000" + "00" * 8], "FRAME_TOO_LARGE"),
        (["encode", "{not json"], "INVALID_JSON"),
        (["encode", "[1, 2]"], "INVALID_JSON"),
        (["encode", "[" * 100000], "INVALID_JSON"),
        (["encode", '{"type": "DM_VERSION_REQUEST"}'], "INVALID_JSON_FIELD"),
        (["encode", '{"type": "DM_FOO"}'], "UNKNOWN_TYPE"),
        (["encode", '{"type": "DM_VERSION_REQUEST", "version": -1}'], "FIELD_OUT_OF_BOUNDS"),
        (["encode", '{"type": "DM_MEM_HOT_ADD_REQUEST", "range": [1099511627776, 1]}'], "RANGE_OUT_OF_BOUNDS"),
    ],
)
def test_invalid_input_is_one_stderr_line_and_exit_1(args: list[str], reason: str) -> None:
    assert_one_line_error(hvdm(*args), args[0], reason)


def test_decode_reports_reserved_bits_as_anomalies() -> None:
    result = hvdm("decode", "06001000000000000500000001000000")
    assert result.returncode == 0
    assert json.loads(result.stdout)["anomalies"] == ["RESERVED_BITS_SET"]
