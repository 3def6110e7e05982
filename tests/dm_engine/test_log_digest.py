"""The engine's output, pinned: structure changes must leave the event logs byte-identical.

Two workloads are replayed and their logs hashed:

* the fuzz programs of ``hvdm fuzz --cases 2000 --seed 1``, each fed through ``process`` (what the
  fuzzer checks replays against), hashing every event's canonical JSON and every outbox message;
* the demo story (handshake, shrink, hot-add, shrink, reboot, grow) in lockstep through the real
  SQLite runner, for a Linux, a Windows and a malicious fleet, hashing the event and outbox logs.

A refactoring that changes a single byte of any event fails here. When a change of behaviour is
*meant* (e.g. a new event, a new field, a fixed decision), update the constants deliberately:

    .venv/bin/python -m tests.dm_engine.test_log_digest

prints the current digests; paste them below and say in the commit message which behaviour changed
and why, so the next reader knows the old logs are expected to differ.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from services.dm_engine import initial_state, outbox_messages, process
from services.dm_engine.records import event_json
from services.dm_protocol import encode
from services.fuzz.engine_fuzz import CONFIG, program
from tests.embedded.fleet_scenario import build_fleet, run_story

FUZZ_CASES = 2000
FUZZ_SEED = 1
STORY_PROFILES = ("linux", "windows", "malicious")

FUZZ_DIGEST = "2155eef23393bf07a017e0bf76431526cc0d28151bd875b7f4e201dd241c45e2"
STORY_DIGESTS = {
    "linux": "48106f7797375b5e5d0826a36f20e681d0772875b7d5e21a700757941bf402ff",
    "windows": "30c76011a46a7ced429eaf1de11ce9d445e744a55144c3ee4141c787ba016f63",
    "malicious": "020813de4b4f2a0cd44849ac9fe288494f0f0106b94bd999851bfad009171747",
}


def fuzz_digest(cases: int = FUZZ_CASES, seed: int = FUZZ_SEED) -> str:
    h = hashlib.sha256()
    for case in range(cases):
        state = initial_state("fuzz")
        h.update(f"case {case}\n".encode())
        for record in program(seed, case):
            for event in process(state, record, CONFIG):
                h.update(event_json(event).encode())
                h.update(b"\n")
                for message in outbox_messages(event):
                    h.update(encode(message).hex().encode())
                    h.update(b"\n")
    return h.hexdigest()


def story_digest(db: Path, profile: str) -> str:
    fleet = build_fleet(db, profile=profile)
    run_story(fleet)
    h = hashlib.sha256()
    for row in fleet.log.iter_events():
        h.update(f"{row.vm} {row.seq} {row.inbox_pos} {row.record}\n".encode())
    for vm in sorted(fleet.vms):
        for out in fleet.log.read_outbox(vm, 0, 1 << 30):
            h.update(f"{out.vm} {out.seq} {out.event_seq} {out.message.hex()}\n".encode())
    fleet.log.close()
    return h.hexdigest()


def test_fuzz_event_log_is_unchanged() -> None:
    assert fuzz_digest() == FUZZ_DIGEST


def test_demo_story_logs_are_unchanged(tmp_path: Path) -> None:
    got = {profile: story_digest(tmp_path / f"{profile}.db", profile) for profile in STORY_PROFILES}
    assert got == STORY_DIGESTS


if __name__ == "__main__":
    print(f'FUZZ_DIGEST = "{fuzz_digest()}"')
    with tempfile.TemporaryDirectory() as d:
        print("STORY_DIGESTS = {")
        for profile in STORY_PROFILES:
            print(f'    "{profile}": "{story_digest(Path(d) / f"{profile}.db", profile)}",')
        print("}")
