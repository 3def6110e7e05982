"""Read QEMU's ``hv_balloon_*`` trace of a real conversation (``tests/data/realguest``).

Each trace line is ``PID@SECONDS.MICROSECONDS:EVENT TEXT``. The events kept here are the ones that
say what crossed the channel: the guest's version, caps, balloon and unballoon answers, QEMU's
balloon and unballoon requests, and how QEMU merged the returned pages into runs
(``hv_balloon_remove_response``: adjacent guest ranges joined, in the order they arrived).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

TRACE_DIR = Path(__file__).resolve().parent.parent / "data" / "realguest"
BASIC_TRACE = TRACE_DIR / "example-trace-basic.log"

_LINE = re.compile(r"^\d+@(?P<t>\d+\.\d+):(?P<event>\w+) (?P<text>.*)$")


@dataclass(frozen=True, slots=True)
class BalloonPost:
    time: float
    trans_id: int
    num_pages: int
    remaining: int


@dataclass(frozen=True, slots=True)
class BalloonAnswer:
    time: float
    trans_id: int
    range_count: int
    more_pages: bool
    #: The runs QEMU formed from this answer's ranges, in processing order: (start_page, count).
    runs: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UnballoonPost:
    time: float
    trans_id: int
    start_page: int
    page_count: int
    remaining: int


@dataclass(slots=True)
class Trace:
    """The conversation, times in seconds since the channel opened (QEMU's ``-> S_VERSION``)."""

    open_time: float = 0.0
    version: tuple[float, str] | None = None
    caps: tuple[float, int] | None = None
    idle_time: float | None = None
    balloon_posts: list[BalloonPost] = field(default_factory=list)
    balloon_answers: list[BalloonAnswer] = field(default_factory=list)
    unballoon_posts: list[UnballoonPost] = field(default_factory=list)
    unballoon_answers: list[tuple[float, int]] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)


def parse_trace(path: Path = BASIC_TRACE) -> Trace:
    trace = Trace()
    opened: float | None = None
    for raw in path.read_text().splitlines():
        m = _LINE.match(raw.strip())
        if m is None:
            continue
        t, event, text = float(m["t"]), m["event"], m["text"]
        if event == "hv_balloon_state_change":
            state = text.removeprefix("-> ")
            if state == "S_VERSION" and opened is None:
                opened = t
            trace.states.append((t, state))
            if state == "S_IDLE" and trace.idle_time is None:
                trace.idle_time = t
        elif event == "hv_balloon_incoming_version":
            trace.version = (t, text.split()[-1])
        elif event == "hv_balloon_incoming_caps":
            trace.caps = (t, int(text.split()[-1], 16))
        elif event == "hv_balloon_outgoing_balloon":
            n = _ints(text)  # posting balloon T for N, remaining R
            trace.balloon_posts.append(BalloonPost(t, n[0], n[1], n[2]))
        elif event == "hv_balloon_incoming_balloon":
            n = _ints(text)  # incoming balloon response T, ranges K, more M
            trace.balloon_answers.append(BalloonAnswer(t, n[0], n[1], bool(n[2])))
        elif event == "hv_balloon_remove_response":
            count, start = _count_at(text)
            trace.balloon_answers[-1].runs.append((start, count))
        elif event == "hv_balloon_outgoing_unballoon":
            trans_id = _ints(text)[0]
            count, start = _count_at(text)
            remaining = int(text.rsplit(" ", 1)[-1])
            trace.unballoon_posts.append(UnballoonPost(t, trans_id, start, count, remaining))
        elif event == "hv_balloon_incoming_unballoon":
            trace.unballoon_answers.append((t, _ints(text)[0]))
    if opened is None:
        raise ValueError(f"{path}: no channel open (-> S_VERSION) in the trace")
    return _relative(trace, opened)


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"(?<![\w@])(\d+)(?![\w.])", text)]


def _count_at(text: str) -> tuple[int, int]:
    m = re.search(r"(\d+) @ 0x([0-9a-fA-F]+)", text)
    if m is None:
        raise ValueError(f"no 'COUNT @ 0xPFN' in {text!r}")
    return int(m[1]), int(m[2], 16)


def _relative(trace: Trace, t0: float) -> Trace:
    """Shift every time so that the channel opened at 0."""
    from dataclasses import replace

    out = Trace(open_time=t0)
    out.version = None if trace.version is None else (trace.version[0] - t0, trace.version[1])
    out.caps = None if trace.caps is None else (trace.caps[0] - t0, trace.caps[1])
    out.idle_time = None if trace.idle_time is None else trace.idle_time - t0
    out.balloon_posts = [replace(p, time=p.time - t0) for p in trace.balloon_posts]
    out.balloon_answers = [replace(a, time=a.time - t0) for a in trace.balloon_answers]
    out.unballoon_posts = [replace(p, time=p.time - t0) for p in trace.unballoon_posts]
    out.unballoon_answers = [(t - t0, tid) for t, tid in trace.unballoon_answers]
    out.states = [(t - t0, s) for t, s in trace.states]
    return out


def qemu_runs(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """How QEMU's ``hv_balloon_remove_response_handle_pages`` groups a response's ranges into runs:
    a range adjacent to the run being built (on either side) joins it, any other range closes it.

    >>> qemu_runs([(10, 2), (12, 2), (8, 2), (100, 1), (101, 1)])
    [(8, 6), (100, 2)]
    """
    runs: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None
    for start, count in ranges:
        if cur is not None and start + count == cur[0]:
            cur = (start, cur[1] + count)
        elif cur is not None and cur[0] + cur[1] == start:
            cur = (cur[0], cur[1] + count)
        else:
            if cur is not None:
                runs.append(cur)
            cur = (start, count)
    if cur is not None:
        runs.append(cur)
    return runs
