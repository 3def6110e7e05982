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

FUZZ_DIGEST = "e5a7a9e91799e5b0724dd248b7e626ebf66d2577ba2c5ca9aeff551ae99ce3d7"
STORY_DIGESTS = {
    "linux": "dbd738c2e1a0474433dc865bba815393adc14f66dd6c55b836d31d2458f6718e",
    "windows": "7eb4a46882292e5f5b176677a28a27d4d9fcb6620108689410b553cd29fac61a",
    "malicious": "0c1f108990c6e82f947f1a0f742312578ad6e988b93dd98ae36ff8e6700c4d0b",
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
