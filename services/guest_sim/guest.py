"""``SimulatedGuest``: a sans-IO Hyper-V Dynamic Memory guest, by default upstream Linux hv_balloon.

Why sans-IO: the same guest must drive unit tests, the socket gateway and the engine's scenario
tests, deterministically. So it takes bytes and simulated time in and gives bytes out; it never
reads a clock, never sleeps, never touches a socket. ``now`` is seconds chosen by the caller and
must not go backwards.

How one call runs: first everything that was due up to ``now`` (status-thread ticks, worker steps,
handshake timeouts) in time order, then the host message (for ``receive``), then whatever became due
at ``now`` because of it. With ``instant=True`` workers take no time, so a request is answered in the
same ``receive`` call; otherwise their steps are spread over time and come out of ``poll``.

What is modelled where:

* ``handshake.py`` - version fallback and caps (guest-behaviour.md 2);
* ``status.py`` - when status reports go out (section 3); the values come from ``memory.py``;
* ``balloon.py`` - balloon-up (section 4); unballoon (section 5) is handled right here, synchronously,
  as Linux does in the channel callback;
* ``hot_add.py`` - hot-add (section 6); ``hot_remove.py`` - the Windows profile's hot-remove;
* ``misbehaviour.py`` - the malicious profiles.

Decisions where the spec leaves a choice:

* ``reboot`` is a new kernel: the trans_id counter restarts (first message id 1), the 45-call status
  delay is armed again, hot-added memory is gone and ballooned pages are back. ``reboot`` returns
  the new boot's first message (the 2.0 version request), since a rebooted guest reopens the channel.
* ``resume`` is hibernate/resume: the counter keeps rising, no new status delay, memory unchanged.
* A guest->host ring never fills (the caller drains everything we return), so no message is lost
  or retried and every id is used.
* Host messages that a real guest would misread (malformed, over 4096 bytes, unballoon of pages never
  ballooned) are recorded in ``host_violations`` and not acted on; the guest never raises for them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Final

from ..dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    DecodeError,
    DmError,
    HotAddRequest,
    HotAddResponse,
    HotRemoveRequest,
    InfoMessage,
    Message,
    StatusReport,
    UnballoonRequest,
    UnballoonResponse,
    VersionResponse,
    decode,
    encode,
)
from ..range_store import PageRangeSet
from .balloon import MAX_RANGES_PER_MESSAGE, linux_balloon_up, windows_balloon_up
from .config import GuestConfig
from .handshake import Handshake
from .hot_add import HotAdder, HotAddWork
from .hot_remove import hot_remove, hot_remove_responses
from .memory import GuestMemory
from .misbehaviour import Saboteur, malformed_message, wrong_state_message
from .profiles import get_profile
from .status import StatusReporter
from .workload import make_workload

#: A Linux guest receives into a 4096-byte buffer (section 9 item 12).
MAX_HOST_MESSAGE: Final = 4096
_U16: Final = struct.Struct("<H")
_TRANS_ID_MASK: Final = 0xFFFFFFFF

#: Something the guest sends: a message, or raw bytes built around a trans_id (malformed ones).
Outgoing = Message | Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a worker: ``messages`` go out ``delay`` seconds after the step started, then a
    status attempt if ``post_status``."""

    delay: float
    messages: tuple[Outgoing, ...] = ()
    post_status: bool = False
    misbehaviour: tuple[str, ...] = ()


@dataclass(slots=True)
class Job:
    """A running worker (balloon-up, hot-add, hot-remove) and its next step."""

    kind: str
    steps: Iterator[Step]
    pending: Step
    due: float


@dataclass(slots=True)
class BalloonTransaction:
    """Bookkeeping of one balloon-up, for the misbehaviours that tamper with its messages."""

    requested: int
    mode: str | None
    messages: int = 0
    pages: int = 0
    beyond_recorded: bool = False


@dataclass(slots=True)
class BootState:
    """Everything a reboot resets: the memory, hot-add bookkeeping, the driver's counters."""

    memory: GuestMemory
    hot_adder: HotAdder
    status: StatusReporter
    handshake: Handshake
    saboteur: Saboteur
    boot_time: float | None = None
    dm_state: str = "initialized"
    jobs: dict[str, Job] = field(default_factory=dict)
    queued_balloon: int | None = None
    queued_hot_add: HotAddRequest | None = None
    queued_hot_remove: int | None = None
    unballoon_active: bool = False
    silent_unballoon: bool = False
    reported: list[tuple[int, int]] = field(default_factory=list)
    flood_next: float | None = None
    flood_start: float = 0.0
    flood_sent: int = 0
    swallow_version_response: bool = False
    max_page_count: int | None = None


class SimulatedGuest:
    """A simulated DM guest. See the module docstring; public API in ``services.guest_sim``."""

    def __init__(self, config: GuestConfig) -> None:
        self.config = config
        self.profile = get_profile(config.profile)
        #: ACPI S4 offered: Linux's hv_balloon then disables hot-add and ignores balloon and
        #: unballoon requests ("Ignore balloon-up request!"), what the realguest rig had to switch off.
        self.hibernation_capable = config.hibernation_capable or self.profile.hibernation_capable
        self.workload = make_workload(config.workload, config.boot_pages, config.seed)
        self.host_violations: list[dict[str, Any]] = []
        self.misbehaviour_sent: list[str] = []
        self.boot_count = 0
        self._trans_id = 0
        self._clock: float | None = None
        self._out: list[bytes] = []
        self._boot = self._new_boot()

    # ================================================================== public API

    @property
    def closed(self) -> bool:
        """True once the channel is closed: handshake given up or timed out, or ``close()``."""
        return self._boot.handshake.phase == "closed"

    @property
    def memory(self) -> GuestMemory:
        """The guest's memory model (tests use ``memory.set_free_layout`` to build scenarios)."""
        return self._boot.memory

    @property
    def hot_adder(self) -> HotAdder:
        return self._boot.hot_adder

    def connect(self, now: float) -> list[bytes]:
        """The channel was opened: the guest boots (if not yet) and sends VERSION_REQUEST 2.0."""
        self._enter(now)
        boot = self._boot
        if boot.handshake.phase != "off":
            raise RuntimeError("connect() is for the first channel open; use reboot() or resume()")
        if boot.boot_time is None:
            boot.boot_time = now
            self.boot_count += 1
        self._send(boot.handshake.open(now, first_probe=True))
        self._run_until(now)
        return self._take()

    def receive(self, data: bytes | bytearray | memoryview, now: float) -> list[bytes]:
        """One host->guest DM message (unframed). Returns what the guest sends up to ``now``."""
        self._enter(now)
        self._run_until(now)
        self._handle(bytes(data), now)
        self._run_until(now)
        return self._take()

    def poll(self, now: float) -> list[bytes]:
        """Simulated time moved to ``now``: status reports, workload changes, delayed work."""
        self._enter(now)
        self._run_until(now)
        return self._take()

    def next_deadline(self) -> float | None:
        """When ``poll`` next has something to do (None: nothing scheduled); for event loops."""
        due = self._next_due()
        return None if due is None else due[0]

    def reboot(self, now: float) -> list[bytes]:
        """Reboot into a new kernel at ``now``; returns the new boot's first message."""
        self._enter(now)
        self._trans_id = 0
        self._boot = self._new_boot()
        self._boot.boot_time = now
        self.boot_count += 1
        self._send(self._boot.handshake.open(now, first_probe=True))
        self._run_until(now)
        return self._take()

    def resume(self, now: float) -> list[bytes]:
        """Hibernate/resume: reopen the channel and renegotiate; counters and memory are kept."""
        self._enter(now)
        boot = self._boot
        boot.jobs.clear()
        boot.status.stop_thread()
        boot.flood_next = None
        boot.dm_state = "initialized"
        self._send(boot.handshake.open(now, first_probe=False))
        self._run_until(now)
        return self._take()

    def close(self) -> None:
        """The host closed the channel: the guest stops all DM activity."""
        self._close("closed by host")

    def snapshot(self) -> dict[str, Any]:
        """The guest's own view of itself, as plain JSON-compatible values."""
        boot = self._boot
        memory = boot.memory
        adder = boot.hot_adder
        return {
            "profile": self.profile.name,
            "state": self._state_name(),
            "closed": self.closed,
            "close_reason": boot.handshake.close_reason,
            "negotiated_version": boot.handshake.negotiated,
            "trans_id": self._trans_id,
            "boot_count": self.boot_count,
            "boot_pages": memory.boot_pages,
            "total_ram_pages": memory.online_pages,
            "managed_pages": memory.managed_pages,
            "free_pages": memory.free.page_count,
            "used_pages": memory.used.page_count,
            "cache_pages": memory.cache_pages,
            "reserved_pages": memory.reserved_pages,
            "ballooned_pages": memory.ballooned.page_count,
            "hot_added_pages": adder.num_pages_added,
            "onlined_pages": adder.num_pages_onlined,
            "hot_add_enabled": adder.do_hot_add,
            "hot_add_regions": len(adder.regions),
            "available_pages": memory.available_pages,
            "committed_pages": memory.committed_pages,
            "floor_pages": memory.floor_pages(),
            "status_reports_sent": boot.status.sent,
            "max_page_count": boot.max_page_count,
            "host_violations": [dict(v) for v in self.host_violations],
            "misbehaviour_sent": list(self.misbehaviour_sent),
        }

    # ================================================================== boot and time

    def _new_boot(self) -> BootState:
        cfg = self.config
        memory = GuestMemory(cfg.boot_pages, cfg.reserved_pages, cfg.page_cache_fraction, cfg.ram_ranges())
        hot_adder = HotAdder(
            memory,
            cfg.chunk_pages,
            enabled=cfg.hot_add_enabled and not self.hibernation_capable,
            faults=dict(cfg.add_memory_faults),
            max_phys_page=cfg.max_phys_page,
        )
        return BootState(
            memory=memory,
            hot_adder=hot_adder,
            status=StatusReporter(self.profile, cfg.hz),
            handshake=Handshake(),
            saboteur=Saboteur(self.profile),
        )

    def _enter(self, now: float) -> None:
        if self._clock is not None and now < self._clock - 1e-9:
            raise ValueError(f"simulated time went backwards: {now} after {self._clock}")

    def _take(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def _next_due(self) -> tuple[float, str] | None:
        boot = self._boot
        candidates: list[tuple[float, str]] = []
        if boot.handshake.deadline is not None:
            candidates.append((boot.handshake.deadline, "deadline"))
        for kind, job in boot.jobs.items():
            candidates.append((job.due, kind))
        tick = boot.status.next_tick_time()
        if tick is not None:
            balloon = boot.jobs.get("balloon")
            if balloon is not None and self.config.vcpus == 1 and tick < balloon.due:
                # One vCPU: the balloon worker allocates without sleeping, so the status thread
                # only runs once the worker sends (the real 1-vCPU guest posted no report during
                # its 2.8 s balloon-up); it runs right after the worker's step at the same time.
                tick = balloon.due
            candidates.append((tick, "status"))
        if boot.flood_next is not None:
            candidates.append((boot.flood_next, "flood"))
        # min() keeps the first of equal times: deadline, jobs, status thread, flood.
        return min(candidates, key=lambda c: c[0]) if candidates else None

    def _run_until(self, now: float) -> None:
        while True:
            due = self._next_due()
            if due is None or due[0] > now + 1e-9:
                break
            t, kind = due
            t = max(t, self._clock if self._clock is not None else t)
            self._clock = t
            self._fire(kind, t)
        self._clock = now
        self._settle_workload(now)
        self._settle_handshake(now)

    def _fire(self, kind: str, t: float) -> None:
        boot = self._boot
        if kind == "deadline":
            boot.handshake.timed_out()
            self._close("ETIMEDOUT")
        elif kind == "status":
            self._settle_workload(t)
            self._post_status(t)
            boot.status.tick_done(t)
        elif kind == "flood":
            self._flood(t)
        else:
            self._advance_job(boot.jobs[kind], t)

    def _settle_workload(self, t: float) -> None:
        boot = self._boot
        if boot.boot_time is not None:
            boot.memory.settle(self.workload.committed_pages(t - boot.boot_time))

    def _settle_handshake(self, t: float) -> None:
        boot = self._boot
        if not boot.handshake.host_event:
            return
        messages, ready = boot.handshake.settle(t, self._caps_report())
        for message in messages:
            self._send(message)
        if boot.handshake.phase == "closed":
            self._close(boot.handshake.close_reason or "EPROTO")
        if ready:
            boot.dm_state = "initialized"
            boot.status.start_thread(t)
            if boot.saboteur.current == "wrong_state":
                self._send_wrong_state()
            if boot.saboteur.flooding():
                self._start_flood(t)
            self._run_until(t)

    def _close(self, reason: str) -> None:
        boot = self._boot
        if boot.handshake.phase != "closed":
            boot.handshake.close(reason)
        boot.jobs.clear()
        boot.status.stop_thread()
        boot.flood_next = None

    # ================================================================== sending

    def _next_id(self) -> int:
        self._trans_id = (self._trans_id + 1) & _TRANS_ID_MASK
        return self._trans_id

    def _send(self, message: Outgoing) -> None:
        """Every guest message takes a fresh id from the one global counter (section 2.1)."""
        if callable(message):
            self._out.append(message(self._next_id()))
        else:
            self._out.append(encode(replace(message, trans_id=self._next_id())))

    def _caps_report(self) -> CapabilitiesReport:
        """Section 2.3: balloon 1, hot_add 1 (even when disabled at run time), alignment, bit 6 only
        for profiles that know hot-remove, min_page_cnt 0, max_page_number all ones."""
        return CapabilitiesReport(
            balloon=True,
            hot_add=True,
            hot_add_alignment=self.config.effective_alignment(),
            hot_remove=self.profile.supports_hot_remove,
            min_page_cnt=0,
            max_page_number=0xFFFFFFFFFFFFFFFF,
        )

    def _status_report(self) -> StatusReport:
        """num_avail = MemAvailable; num_committed = Committed_AS + ballooned +
        max(0, added - onlined) + floor; the other four fields 0 (section 3)."""
        memory = self._boot.memory
        adder = self._boot.hot_adder
        committed = (
            memory.committed_pages
            + memory.ballooned.page_count
            + max(0, adder.num_pages_added - adder.num_pages_onlined)
            + memory.floor_pages()
        )
        return StatusReport(num_avail=memory.available_pages, num_committed=committed)

    def _post_status(self, t: float) -> None:
        if self._boot.status.attempt(t):
            self._send(self._status_report())

    def _flood(self, t: float) -> None:
        boot = self._boot
        if not boot.saboteur.flooding() or boot.handshake.phase != "ready":
            boot.flood_next = None
            return
        self._send(self._status_report())
        self.misbehaviour_sent.append("status_flood")
        boot.flood_sent += 1
        # From the start time and a count, not by summing 1/rate, so floats do not drift.
        boot.flood_next = boot.flood_start + boot.flood_sent / self.config.flood_reports_per_second

    def _violation(self, reason: str, detail: str, **extra: Any) -> None:
        record: dict[str, Any] = {"reason": reason, "detail": detail, "at": self._clock}
        record.update(extra)
        self.host_violations.append(record)

    # ================================================================== receiving

    def _handle(self, data: bytes, now: float) -> None:
        boot = self._boot
        if boot.handshake.phase in ("off", "closed"):
            self._violation("channel_not_open", f"{len(data)} bytes while the channel is {boot.handshake.phase}")
            return
        if len(data) > MAX_HOST_MESSAGE:
            # A real guest fails to receive it and loops on a zeroed "type 0" message (section 9.12).
            self._violation("oversized", f"{len(data)} bytes; a Linux guest receives at most 4096")
            return
        if len(data) >= 8:
            (size,) = _U16.unpack_from(data, 2)
            if 8 <= size < len(data):
                # Linux reads hdr.size bytes; zero padding from VMBus framing is normal.
                if any(data[size:]):
                    self._violation("trailing_bytes", f"header size {size}, {len(data)} bytes received")
                data = data[:size]
        try:
            message = decode(data)
        except DecodeError as err:
            self._violation(f"malformed:{err.reason}", err.detail)
            return
        if message.anomalies:
            self._violation("reserved_bits", f"{type(message).__name__} has non-zero reserved bits")
        handler = _HANDLERS.get(type(message))
        if handler is None:
            self._violation("unexpected_type", f"{type(message).__name__} is never sent by a host")
            return
        handler(self, message, now)

    def _on_version_response(self, message: Message, now: float) -> None:
        assert isinstance(message, VersionResponse)
        boot = self._boot
        if boot.swallow_version_response:
            boot.swallow_version_response = False  # the answer to our own misbehaviour
            return
        if boot.handshake.phase != "version":
            self._violation("unsolicited_version_response", f"in phase {boot.handshake.phase}")
        reply = boot.handshake.on_version_response(message.is_accepted)
        if reply is not None:
            self._send(reply)
        if boot.handshake.init_error and boot.handshake.phase == "ready":
            boot.dm_state = "init_error"  # Linux sets DM_INIT_ERROR; nothing else stops

    def _on_caps_response(self, message: Message, now: float) -> None:
        assert isinstance(message, CapabilitiesResponse)
        boot = self._boot
        if boot.handshake.phase != "caps":
            self._violation("unsolicited_caps_response", f"in phase {boot.handshake.phase}")
        if self.profile.honours_suppress_pressure_reports:
            boot.status.suppressed = message.suppress_pressure_reports
        boot.handshake.on_caps_response(message.is_accepted)

    def _check_initialised(self, what: str) -> None:
        if self._boot.handshake.phase != "ready":
            self._violation("request_before_initialised", f"{what} in phase {self._boot.handshake.phase}")

    # ------------------------------------------------------------------ balloon

    def _on_balloon_request(self, message: Message, now: float) -> None:
        assert isinstance(message, BalloonRequest)
        boot = self._boot
        if self.hibernation_capable:
            return  # ignored, no response at all (section 4)
        self._check_initialised("BALLOON_REQUEST")
        mode = boot.saboteur.next_transaction()
        if mode == "silent":
            self.misbehaviour_sent.append("silent")
            return
        if "balloon" in boot.jobs:
            self._violation("balloon_request_overlap", "a balloon transaction is still running")
            boot.queued_balloon = message.num_pages
            return
        self._start_balloon(message.num_pages, mode, now)

    def _start_balloon(self, num_pages: int, mode: str | None, now: float) -> None:
        boot = self._boot
        boot.dm_state = "balloon_up"
        txn = BalloonTransaction(requested=num_pages, mode=mode)
        if self.profile.is_windows:
            responses = windows_balloon_up(boot.memory, num_pages)
        elif mode == "beyond_request":
            responses = linux_balloon_up(boot.memory, num_pages + 512, clamp=False)
        else:
            responses = linux_balloon_up(boot.memory, num_pages)
        self._start_job("balloon", self._balloon_steps(responses, txn), now)

    def _balloon_steps(self, responses: Iterator[BalloonResponse], txn: BalloonTransaction) -> Iterator[Step]:
        rate = self.config.balloon_pages_per_second
        for response in responses:
            pages = sum(c for _, c in response.ranges)
            delay = 0.0 if self.config.instant else pages / rate
            extra, response, names = self._tamper_balloon(response, txn)
            txn.messages += 1
            txn.pages += sum(c for _, c in response.ranges)
            if txn.mode == "beyond_request" and not txn.beyond_recorded and txn.pages > txn.requested:
                txn.beyond_recorded = True
                names += ("beyond_request",)
            if response.ranges:
                reported = self._boot.reported
                reported.append(response.ranges[0])
                del reported[:-64]  # only recent ranges are needed, for double_free
            if not response.more_pages:
                self._boot.dm_state = "initialized"
            yield Step(delay, (*extra, response), post_status=True, misbehaviour=names)

    def _tamper_balloon(
        self, response: BalloonResponse, txn: BalloonTransaction
    ) -> tuple[tuple[Outgoing, ...], BalloonResponse, tuple[str, ...]]:
        """Apply the transaction's misbehaviour to its first message (see ``misbehaviour.py``)."""
        if txn.mode is None or txn.messages:
            return (), response, ()
        boot = self._boot
        fake = self._not_owned_start()
        if txn.mode == "malformed":
            variant = boot.saboteur.next_malformed_variant()
            return (lambda tid: malformed_message(variant, tid, fake),), response, (f"malformed_{variant}",)
        if txn.mode == "not_owned":
            variant = boot.saboteur.next_not_owned_variant()
            start = fake if variant == "beyond_ram" else self._hole_start()
            extra = BalloonResponse(more_pages=True, ranges=((start, 512),))
            return (extra,), response, ("not_owned",)
        if txn.mode == "double_free":
            extras: list[Outgoing] = []
            names: list[str] = []
            earlier = [r for r in boot.reported if boot.memory.ballooned.overlap_count(*r) == r[1]]
            if earlier:
                extras.append(BalloonResponse(more_pages=True, ranges=(earlier[-1],)))
                names.append("double_free")
            if response.ranges:
                ranges = response.ranges
                if len(ranges) >= MAX_RANGES_PER_MESSAGE:
                    dropped = ranges[-1]
                    boot.memory.release_ballooned(*dropped)  # keep the accounting honest
                    ranges = ranges[:-1]
                response = replace(response, ranges=(*ranges, ranges[0]))
                names.append("double_free")
            return tuple(extras), response, tuple(names)
        return (), response, ()

    def _hole_start(self) -> int:
        """512 pages the guest does not own close to what it does: hot-add space that is not online
        (not yet added, unbacked, a gap), else the pages right after the end of RAM."""
        boot = self._boot
        for region in boot.hot_adder.regions:
            for start, count in boot.memory.online.difference([(region.start, region.end - region.start)]):
                if count >= 512:
                    return start
        top = 0
        for start, count in reversed(boot.memory.online):
            top = start + count
            break
        return top

    def _not_owned_start(self) -> int:
        """A page range start well beyond anything the guest owns or reserved for hot-add."""
        boot = self._boot
        top = boot.memory.boot_end_page
        for region in boot.hot_adder.regions:
            top = max(top, region.end)
        for start, count in reversed(boot.memory.online):
            top = max(top, start + count)
            break
        chunk = self.config.chunk_pages
        return (top + chunk - 1) // chunk * chunk + chunk

    # ------------------------------------------------------------------ unballoon

    def _on_unballoon_request(self, message: Message, now: float) -> None:
        assert isinstance(message, UnballoonRequest)
        boot = self._boot
        if self.hibernation_capable:
            return  # ignored, no response at all (section 5)
        if not boot.unballoon_active:
            self._check_initialised("UNBALLOON_REQUEST")
            boot.unballoon_active = True
            boot.silent_unballoon = boot.saboteur.next_transaction() == "silent"
            if boot.silent_unballoon:
                self.misbehaviour_sent.append("silent")
        if not boot.silent_unballoon:
            boot.dm_state = "balloon_down"
            unsent = self._unsent_balloon_pages()
            for start, count in message.ranges:
                pieces = [(start, count)]
                if unsent.overlap_count(start, count):
                    # Taken by the balloon worker but not reported yet: no host can know them.
                    early = unsent.intersection(pieces)
                    self._violation("unballoon_not_ballooned", "pages the guest has not reported yet", ranges=early)
                    rest = PageRangeSet(pieces)
                    rest.remove_many(early)
                    pieces = rest.to_list()
                for piece_start, piece_count in pieces:
                    self._release(piece_start, piece_count)
                boot.status.wake(now)
        if message.more_pages:
            return
        boot.unballoon_active = False
        if boot.silent_unballoon:
            return
        boot.dm_state = "initialized"
        self._send(UnballoonResponse())
        self._after_transaction()

    def _release(self, start: int, count: int) -> None:
        """Free one unballoon range; pages that were never ballooned are recorded, not freed."""
        memory = self._boot.memory
        _, stray = memory.release_ballooned(start, count)
        if stray:
            outside = memory.online.difference(stray)
            inside = memory.online.intersection(stray)
            if inside:
                self._violation("unballoon_not_ballooned", "pages were never ballooned", ranges=inside)
            if outside:
                self._violation("unballoon_outside_ram", "pages are not guest RAM", ranges=outside)

    def _unsent_balloon_pages(self) -> PageRangeSet:
        """Pages the running balloon worker has taken for its next, not yet sent, message."""
        job = self._boot.jobs.get("balloon")
        unsent = PageRangeSet()
        if job is not None:
            for message in job.pending.messages:
                if isinstance(message, BalloonResponse):
                    unsent.add_many(message.ranges)
        return unsent

    # ------------------------------------------------------------------ hot-add

    def _on_hot_add_request(self, message: Message, now: float) -> None:
        assert isinstance(message, HotAddRequest)
        boot = self._boot
        self._check_initialised("MEM_HOT_ADD_REQUEST")
        mode = boot.saboteur.next_transaction()
        if mode == "silent":
            self.misbehaviour_sent.append("silent")
            return
        start, count = message.range
        if boot.memory.online.overlap_count(start, count):
            self._violation("hot_add_already_online", "the range overlaps memory that is already online")
        if "hot_add" in boot.jobs:
            self._violation("hot_add_request_overlap", "a hot-add transaction is still running")
            boot.queued_hot_add = message
            return
        self._start_hot_add(message, mode, now)

    def _start_hot_add(self, message: HotAddRequest, mode: str | None, now: float) -> None:
        boot = self._boot
        boot.dm_state = "hot_add"
        work = boot.hot_adder.accept(message.range, message.region)
        self._start_job("hot_add", self._hot_add_steps(work, mode, message.range[1]), now)

    def _hot_add_steps(self, work: HotAddWork, mode: str | None, requested: int) -> Iterator[Step]:
        adder = self._boot.hot_adder
        delay = 0.0 if self.config.instant else self.config.hot_add_seconds_per_block
        runner = adder.run(work)
        while True:
            try:
                next(runner)
            except StopIteration as stop:
                page_count: int = stop.value
                break
            yield Step(delay, post_status=True)
        result = adder.result_for(page_count)
        names: tuple[str, ...] = ()
        if mode == "beyond_request":
            page_count = requested + self.config.chunk_pages
            names = ("beyond_request",)
        self._boot.dm_state = "initialized"
        yield Step(0.0, (HotAddResponse(page_count=page_count, result=result),), misbehaviour=names)

    # ------------------------------------------------------------------ hot-remove, info, others

    def _on_hot_remove_request(self, message: Message, now: float) -> None:
        assert isinstance(message, HotRemoveRequest)
        boot = self._boot
        if not self.profile.supports_hot_remove:
            # Upstream Linux: "Unhandled message: type: 13", no response (section 8).
            self._violation("hot_remove_not_advertised", "the guest did not advertise hot-remove")
            return
        self._check_initialised("MEM_HOT_REMOVE_REQUEST")
        if "hot_remove" in boot.jobs:
            self._violation("hot_remove_request_overlap", "a hot-remove transaction is still running")
            return
        if "hot_add" in boot.jobs:
            # Memory blocks cannot be removed while blocks are being added: wait for the hot-add.
            boot.queued_hot_remove = message.page_count
            return
        self._start_job("hot_remove", self._hot_remove_steps(message.page_count), now)

    def _hot_remove_steps(self, page_count: int) -> Iterator[Step]:
        boot = self._boot
        ranges = hot_remove(boot.memory, boot.hot_adder, page_count)
        pages = sum(c for _, c in ranges)
        delay = 0.0 if self.config.instant else pages / self.config.balloon_pages_per_second
        yield Step(delay, tuple(hot_remove_responses(ranges)))

    def _on_info(self, message: Message, now: float) -> None:
        """Section 7: type 0 with 8 bytes is the max dynamic page count; no reply either way."""
        assert isinstance(message, InfoMessage)
        if message.info_type == 0 and len(message.data) == 8:
            (self._boot.max_page_count,) = struct.unpack("<Q", message.data)

    def _on_dm_error(self, message: Message, now: float) -> None:
        self._violation("dm_error_received", "type 0 is unhandled by a Linux guest")

    # ================================================================== jobs

    def _start_job(self, kind: str, steps: Iterator[Step], now: float) -> None:
        first = next(steps, None)
        if first is None:
            return
        self._boot.jobs[kind] = Job(kind, steps, first, now + first.delay)

    def _advance_job(self, job: Job, t: float) -> None:
        boot = self._boot
        step = job.pending
        for message in step.messages:
            self._send(message)
        self.misbehaviour_sent.extend(step.misbehaviour)
        if step.post_status:
            self._post_status(t)
        following = next(job.steps, None)
        if following is not None:
            job.pending = following
            job.due = t + following.delay
            return
        del boot.jobs[job.kind]
        self._after_transaction()
        if job.kind == "balloon" and boot.queued_balloon is not None:
            queued, boot.queued_balloon = boot.queued_balloon, None
            self._start_balloon(queued, boot.saboteur.current, t)
        elif job.kind == "hot_add" and boot.queued_hot_add is not None:
            request, boot.queued_hot_add = boot.queued_hot_add, None
            self._start_hot_add(request, boot.saboteur.current, t)
        elif job.kind == "hot_add" and boot.queued_hot_remove is not None:
            pages, boot.queued_hot_remove = boot.queued_hot_remove, None
            self._start_job("hot_remove", self._hot_remove_steps(pages), t)

    def _after_transaction(self) -> None:
        """End of a host transaction: the wrong-state and flood misbehaviours act here."""
        boot = self._boot
        if boot.saboteur.current == "wrong_state" and boot.saboteur.transactions:
            self._send_wrong_state()
        if boot.saboteur.flooding() and boot.flood_next is None and boot.handshake.phase == "ready":
            self._start_flood(self._clock or 0.0)

    def _start_flood(self, t: float) -> None:
        boot = self._boot
        boot.flood_start, boot.flood_sent, boot.flood_next = t, 0, t

    def _send_wrong_state(self) -> None:
        boot = self._boot
        variant = boot.saboteur.next_wrong_state_variant()
        spans = boot.memory.free.peek_highest(512, 1)
        fake = spans[0][0] if spans else self._not_owned_start()
        self._send(wrong_state_message(variant, fake, self.config.chunk_pages))
        self.misbehaviour_sent.append(variant)
        if variant == "version_request_after_negotiation":
            boot.swallow_version_response = True

    # ================================================================== reporting

    def _state_name(self) -> str:
        phase = self._boot.handshake.phase
        if phase == "off":
            return "disconnected"
        if phase == "version":
            return "negotiating_version"
        if phase == "caps":
            return "awaiting_caps_response"
        if phase == "closed":
            return "closed"
        return self._boot.dm_state


_HANDLERS: Final[dict[type[Any], Callable[[SimulatedGuest, Message, float], None]]] = {
    VersionResponse: SimulatedGuest._on_version_response,
    CapabilitiesResponse: SimulatedGuest._on_caps_response,
    BalloonRequest: SimulatedGuest._on_balloon_request,
    UnballoonRequest: SimulatedGuest._on_unballoon_request,
    HotAddRequest: SimulatedGuest._on_hot_add_request,
    HotRemoveRequest: SimulatedGuest._on_hot_remove_request,
    InfoMessage: SimulatedGuest._on_info,
    DmError: SimulatedGuest._on_dm_error,
}
