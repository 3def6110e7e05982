"""A standalone fuzzer for decode + decide: many random, adversarial programs per second.

Each case is a program of inputs for one VM: random bytes, bit-flipped valid messages, valid
messages with hostile ranges (outside RAM, repeated, huge, zero-length), responses in the wrong
state, operator commands, resets and ticks. After every event the accounting invariants are
checked, and each case is replayed to prove the events are reproduced byte for byte. Cases are
derived from (seed, case number), so a failure is reproducible from the line that reports it.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..dm_engine import EngineConfig, VmState, check_invariants, initial_state, process
from ..dm_engine import events as ev
from ..dm_engine import inputs as inp
from ..dm_engine.records import event_json
from ..dm_protocol import (
    BalloonResponse,
    CapabilitiesReport,
    DecodeError,
    HotAddResponse,
    HotRemoveResponse,
    Message,
    StatusReport,
    UnballoonResponse,
    VersionRequest,
    decode,
    encode,
)
from ..vdimm_allocator.ram_layout import FOUR_GIB_PAGE

CONFIG = EngineConfig(
    post_init_wait_ticks=2,
    balloon_timeout_ticks=8,
    unballoon_timeout_ticks=8,
    hot_add_timeout_ticks=8,
    hot_remove_timeout_ticks=8,
    retry_backoff_ticks=2,
)
BOOT_PAGES = 1 << 18


@dataclass
class FuzzReport:
    cases: int = 0
    inputs: int = 0
    events: int = 0
    violations: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _ranges(rng: random.Random) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for _ in range(rng.choice([0, 1, 2, 5, 30, 510])):
        kind = rng.random()
        if kind < 0.5:
            start = rng.randrange(0, BOOT_PAGES)
            count = rng.choice([1, 512, rng.randrange(1, 4096)])
        elif kind < 0.7:
            start = rng.randrange(0, 1 << 40)
            count = rng.randrange(0, 1 << 24)
        elif kind < 0.85 and out:
            start, count = rng.choice(out)  # repeat: a double free within the message
        else:
            start = rng.randrange(BOOT_PAGES - 100, BOOT_PAGES + 100)
            count = rng.randrange(0, 300)
        out.append((start, min(count, (1 << 24) - 1)))
    return tuple(out)


def _message(rng: random.Random) -> Message:
    kind = rng.randrange(8)
    tid = rng.randrange(0, 1 << 32)
    if kind == 0:
        return VersionRequest(trans_id=tid, version=rng.choice([3, 0x10000, 0x20000, 0x30000, rng.randrange(1 << 32)]))
    if kind == 1:
        return CapabilitiesReport(
            trans_id=tid,
            balloon=rng.random() < 0.9,
            hot_add=rng.random() < 0.8,
            hot_add_alignment=rng.randrange(16),
            hot_remove=rng.random() < 0.3,
        )
    if kind == 2:
        return StatusReport(trans_id=tid, num_avail=rng.randrange(1 << 64), num_committed=rng.randrange(1 << 20))
    if kind in (3, 4):
        return BalloonResponse(trans_id=tid, more_pages=rng.random() < 0.5, ranges=_ranges(rng))
    if kind == 5:
        return UnballoonResponse(trans_id=tid)
    if kind == 6:
        return HotAddResponse(
            trans_id=tid, page_count=rng.choice([0, 32768, 524288, rng.randrange(1 << 32)]), result=rng.randrange(3)
        )
    return HotRemoveResponse(trans_id=tid, result=rng.randrange(2), more_pages=rng.random() < 0.5, ranges=_ranges(rng))


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(3)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del buf[rng.randrange(len(buf) + 1) :]
        else:
            buf += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    return bytes(buf)


def program(seed: int, case: int, length: int = 60) -> Iterator[inp.Input]:
    rng = random.Random(seed * 1_000_003 + case)
    tick = 0
    # Half the cases split RAM around a PCI hole as x86 machines do (half of it from 4 GiB up).
    ram = ((0, BOOT_PAGES // 2), (FOUR_GIB_PAGE, BOOT_PAGES // 2)) if rng.random() < 0.5 else ()
    yield inp.ChannelOpened(tick=0, boot_bytes=BOOT_PAGES << 12, maxmem_bytes=8 * BOOT_PAGES << 12, ram=ram)
    # Usually negotiate properly first, so the hostile part reaches the deeper states.
    if rng.random() < 0.8:
        yield inp.GuestMessage(tick=0, raw=encode(VersionRequest(trans_id=1, version=0x20000)))
        yield inp.GuestMessage(
            tick=0,
            raw=encode(
                CapabilitiesReport(
                    trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7, hot_remove=rng.random() < 0.5
                )
            ),
        )
        tick = 3
        yield inp.Tick(tick=tick)
    for _ in range(length):
        r = rng.random()
        if r < 0.35:
            yield inp.GuestMessage(tick=tick, raw=encode(_message(rng)))
        elif r < 0.5:
            yield inp.GuestMessage(tick=tick, raw=_mutate(encode(_message(rng)), rng))
        elif r < 0.55:
            yield inp.GuestMessage(tick=tick, raw=bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
        elif r < 0.7:
            tick += rng.randrange(1, 12)
            yield inp.Tick(tick=tick)
        elif r < 0.8:
            yield inp.SetTarget(tick=tick, target_bytes=rng.randrange(-1, 3 * BOOT_PAGES) << 12)
        elif r < 0.86:
            yield inp.AddBackend(
                tick=tick, backend_id=rng.choice("ab"), size_bytes=rng.choice([1 << 30, 1 << 27, 5000])
            )
        elif r < 0.92:
            yield inp.PlugBackend(tick=tick, backend_id=rng.choice("abc"))
        elif r < 0.94:
            yield inp.RemoveBackend(tick=tick, backend_id=rng.choice("ab"))
        elif r < 0.96:
            yield inp.VmbusReset(tick=tick)
        elif r < 0.98:
            yield inp.SystemReset(tick=tick)
        elif r < 0.99:
            yield inp.ChannelClosed(tick=tick)
        else:
            yield inp.ChannelOpened(
                tick=tick,
                boot_bytes=BOOT_PAGES << 12,
                maxmem_bytes=8 * BOOT_PAGES << 12,
                ram=ram,
                reset=rng.choice(("", "vmbus", "system")),
            )


def run_case(seed: int, case: int, report: FuzzReport) -> None:
    state = initial_state("fuzz")
    recorded: list[str] = []
    inputs = list(program(seed, case))

    def observe(state: VmState, e: ev.Event) -> None:
        problems = check_invariants(state)
        if problems:
            raise AssertionError(f"after {e.KIND}: {problems}")
        recorded.append(event_json(e))
        if isinstance(e, ev.GuestViolation):
            report.violations[e.reason] += 1

    for record in inputs:
        if isinstance(record, inp.GuestMessage):
            with contextlib.suppress(DecodeError):  # the only exception decode may raise
                decode(record.raw)
        process(state, record, CONFIG, observe)
    # Determinism: a fresh replay of the same inputs decides the same bytes.
    replay_state = initial_state("fuzz")
    replayed = [event_json(e) for record in inputs for e in process(replay_state, record, CONFIG)]
    if replayed != recorded:
        raise AssertionError("replay diverged")
    report.inputs += len(inputs)
    report.events += len(recorded)


def fuzz(cases: int, seed: int = 1, max_seconds: float | None = None) -> FuzzReport:
    report = FuzzReport()
    started = time.perf_counter()
    for case in range(cases):
        try:
            run_case(seed, case, report)
        except Exception as e:  # a failure is data: report it with how to reproduce it
            report.failures.append(f"seed={seed} case={case}: {type(e).__name__}: {e}")
        report.cases += 1
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
    report.seconds = time.perf_counter() - started
    return report
