"""When the guest posts a STATUS_REPORT (guest-behaviour.md 3).

Why this is its own small state machine: the timing rules are easy to get subtly wrong and hosts
depend on them. Linux's ``post_status`` is called from three places (the 1-second status thread, the
balloon worker after every send, the hot-add worker after every block); the first
``pressure_report_delay`` = 45 *calls* are swallowed, whoever makes them; afterwards a report goes out
only if strictly more than HZ jiffies passed since the previous one. The thread sleeps up to 1 s
and is woken early by unballoon; we model its wake-up jitter as one jiffy, so it fires every
HZ + 1 jiffies and passes the strict test each time (intervals "never shorter than 1 s + 1 jiffy").

Calibrated against a real Linux 6.1 guest (``../shared/realguest/example-trace-basic.log``): its
first report came about 45 s after the driver bound (six reports, trans_ids 3..8, before QEMU's
first balloon request 50.4 s after the handshake), so the thread's first call is at its start and
the 46th call, 45 periods later, is the first report. A thread that could not run when due (a
busy single vCPU) runs late and then sleeps a full period from when it ran.

Time is simulated seconds converted to integer jiffies, so the comparison is exact and runs are
deterministic. Race drops between threads cannot happen in a single-threaded simulator, so ids are
strictly increasing (section 2.1).
"""

from __future__ import annotations

import math

from .profiles import Profile


class StatusReporter:
    """The delay counter, the rate limit and the status thread's schedule, in jiffies."""

    def __init__(self, profile: Profile, hz: int) -> None:
        self.hz = hz
        self.period = profile.status_period_jiffies(hz)
        self.min_gap = profile.status_min_gap_jiffies(hz)
        #: Both flavours call once at thread start (Linux: the delay's first call, see above).
        self.first_tick_immediate = True
        #: ``pressure_report_delay``: global, not reset on resume (reset on reboot: a new kernel).
        self.delay_left = profile.status_delay_calls
        self.last_post: int | None = None
        self.next_tick: int | None = None
        #: Set by a caps response with suppress_pressure_reports, for profiles that honour it.
        self.suppressed = False
        self.sent = 0

    def jiffies(self, t: float) -> int:
        # The epsilon absorbs float error so that t = j / hz maps back to j.
        return math.floor(t * self.hz + 1e-6)

    # ------------------------------------------------------------------ the status thread

    def start_thread(self, t: float) -> None:
        now = self.jiffies(t)
        self.next_tick = now if self.first_tick_immediate else now + self.period

    def stop_thread(self) -> None:
        self.next_tick = None

    def next_tick_time(self) -> float | None:
        return None if self.next_tick is None else self.next_tick / self.hz

    def tick_done(self, t: float | None = None) -> None:
        """The thread posted (or tried to) at ``t`` and goes back to sleep for a period; a thread
        that ran late (``t`` after its due time) sleeps a period from when it ran."""
        if self.next_tick is not None:
            ran = self.next_tick if t is None else max(self.next_tick, self.jiffies(t))
            self.next_tick = ran + self.period

    def wake(self, t: float) -> None:
        """Unballoon completes the thread's wait early (section 5: after each range)."""
        if self.next_tick is not None:
            self.next_tick = min(self.next_tick, self.jiffies(t))

    # ------------------------------------------------------------------ post_status

    def attempt(self, t: float) -> bool:
        """One call of ``post_status`` at ``t``: True when a report must be sent now."""
        if self.delay_left > 0:
            self.delay_left -= 1
            return False
        if self.suppressed:
            return False
        now = self.jiffies(t)
        if self.last_post is not None and now - self.last_post < self.min_gap:
            return False
        self.last_post = now
        self.sent += 1
        return True
