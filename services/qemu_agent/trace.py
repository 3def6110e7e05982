"""QEMU's ``hv_balloon_*`` trace lines -> exact page changes (the §2 shadow account).

QEMU writes, with ``-trace 'hv_balloon_*' -D FILE``, one line per trace event:
``PID@SECONDS.MICROSECONDS:EVENT TEXT``. Pages are 4 KiB guest page frame numbers. The lines
used, and what they mean for the page sets:

=================================  ==========================================================
``hv_balloon_remove_response``     ``processing remove response range N @ 0xPFN, both B``:
                                   N pages from PFN left the guest (ballooned). The
                                   ``_hole``/``_common``/``_remainder`` lines that follow split
                                   the same run against QEMU's hot-add range and are not
                                   counted again.
``hv_balloon_outgoing_unballoon``  ``posting unballoon T for N @ 0xPFN, remaining R``: the pages
                                   go back to the guest (QEMU counts them returned on posting).
``hv_balloon_outgoing_hot_add``    ``posting hot add T for N @ 0xPFN``: a hot-add offer...
``hv_balloon_incoming_hot_add``    ``incoming hot add response T, result 1, count C``: ...of
                                   which the first C pages are now guest memory.
``hv_balloon_state_change``        ``-> S_POST_RESET_CLOSED``: the device was reset (guest
                                   reboot): ballooned and hot-added pages are forgotten.
=================================  ==========================================================

Every other line (other events, other ``hv_balloon_*`` events, garbage, a line cut by a
rotation) is ignored and counted, never an error: the trace is a debugging stream whose format
QEMU does not promise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PageRanges = tuple[tuple[int, int], ...]
#: A page number or count beyond 2^40 pages (4 PiB) is no real machine's.
MAX_PAGE = 1 << 40

_LINE = re.compile(r"^(?P<pid>\d+)@(?P<secs>\d+\.\d+):(?P<event>[a-z0-9_]+) ?(?P<text>.*)$")
_REMOVE = re.compile(r"^processing remove response range (\d+) @ 0x([0-9a-f]+), both [01]$")
_UNBALLOON = re.compile(r"^posting unballoon \d+ for (\d+) @ 0x([0-9a-f]+), remaining \d+$")
_HOT_ADD_POST = re.compile(r"^posting hot add \d+ for (\d+) @ 0x([0-9a-f]+)$")
_HOT_ADD_ANSWER = re.compile(r"^incoming hot add response \d+, result (\d+), count (\d+)$")
_STATE = re.compile(r"^-> (S_[A-Z_]+)$")


@dataclass(frozen=True, slots=True)
class TraceChange:
    """One page-set change: op is ``ballooned``, ``unballooned``, ``hot_added`` or ``reset``."""

    op: str
    ranges: PageRanges
    seconds: float


@dataclass(slots=True)
class TraceInterpreter:
    """Turns trace lines into page changes; keeps the one thing a line needs from the past (the
    hot-add offer an answer refers to). Feed lines in file order."""

    lines: int = 0
    used: int = 0
    ignored: int = 0
    states: list[str] = field(default_factory=list)
    _hot_add_offer: tuple[int, int] | None = None

    def feed(self, line: str) -> TraceChange | None:
        self.lines += 1
        m = _LINE.match(line.strip())
        if m is None:
            self.ignored += 1
            return None
        event, text, secs = m["event"], m["text"], float(m["secs"])
        change = self._interpret(event, text, secs)
        if change is None and event != "hv_balloon_state_change":
            self.ignored += 1
        else:
            self.used += 1
        return change

    def _range(self, count: str, pfn: str) -> tuple[int, int] | None:
        n, start = int(count), int(pfn, 16)
        if n <= 0 or start + n > MAX_PAGE:
            return None
        return (start, n)

    def _interpret(self, event: str, text: str, secs: float) -> TraceChange | None:
        if event == "hv_balloon_remove_response":
            m = _REMOVE.match(text)
            rng = self._range(m[1], m[2]) if m else None
            return TraceChange("ballooned", (rng,), secs) if rng else None
        if event == "hv_balloon_outgoing_unballoon":
            m = _UNBALLOON.match(text)
            rng = self._range(m[1], m[2]) if m else None
            return TraceChange("unballooned", (rng,), secs) if rng else None
        if event == "hv_balloon_outgoing_hot_add":
            m = _HOT_ADD_POST.match(text)
            self._hot_add_offer = self._range(m[1], m[2]) if m else None
            return None
        if event == "hv_balloon_incoming_hot_add":
            m = _HOT_ADD_ANSWER.match(text)
            offer, self._hot_add_offer = self._hot_add_offer, None
            if m is None or offer is None or int(m[1]) == 0:
                return None
            count = min(int(m[2]), offer[1])
            return TraceChange("hot_added", ((offer[0], count),), secs) if count > 0 else None
        if event == "hv_balloon_state_change":
            m = _STATE.match(text)
            if m is None:
                return None
            self.states.append(m[1])
            if m[1] == "S_POST_RESET_CLOSED":
                self._hot_add_offer = None
                return TraceChange("reset", (), secs)
        return None
