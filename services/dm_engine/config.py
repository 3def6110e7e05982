"""Engine policy knobs; part of what a log is replayed with, so they are recorded beside it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: QEMU's "HR chunk": Windows stops honouring balloon requests larger than this (hv-balloon.c).
BALLOON_REQUEST_MAX_PAGES = 585_728
#: (4096 - 16) / 8: the most ranges that fit a 4 KiB DM message, the Linux guest's receive buffer.
MAX_RANGES_PER_MESSAGE = 510
#: A page range's count is a 24-bit field on the wire.
MAX_RANGE_PAGES = (1 << 24) - 1


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything that shapes the engine's decisions besides its input log.

    Ticks are the engine's only clock: the runners append one ``Tick`` per ``tick_seconds`` of
    wall (or simulated) time, so every duration below is a number of ticks and replay never
    depends on when it runs.
    """

    tick_seconds: float = 1.0
    #: QEMU waits 50 s after the caps report before its first request: some Windows versions
    #: crash on DM requests (notably hot-add) right after boot.
    post_init_wait_ticks: int = 50
    #: A transaction with no guest answer for this long is abandoned (QEMU waits forever; a
    #: hibernation-capable Linux guest never answers balloon or unballoon requests).
    balloon_timeout_ticks: int = 60
    unballoon_timeout_ticks: int = 60
    #: Hot-add answers can take minutes (up to 5 s per 128 MiB block when not auto-onlined).
    hot_add_timeout_ticks: int = 600
    hot_remove_timeout_ticks: int = 600
    #: Back-off after a timeout: first retry after this many ticks, doubling up to the maximum.
    retry_backoff_ticks: int = 30
    retry_backoff_max_ticks: int = 960
    #: Linux reports at most once per second; more than this many in one tick is a flood.
    max_status_reports_per_tick: int = 4
    balloon_request_max_pages: int = BALLOON_REQUEST_MAX_PAGES
    unballoon_max_ranges: int = MAX_RANGES_PER_MESSAGE
    #: Ask the guest to stop status reports (Linux ignores the bit; Windows honours it).
    suppress_status_reports: bool = False
    #: Use protocol 2.0 hot-remove for hot-added memory when the guest advertises it.
    use_hot_remove: bool = True
    #: At most this many separate ranges in one VM's ballooned set (about 50 bytes each, in memory
    #: and in snapshots): a guest returning scattered single pages could otherwise make it grow
    #: without bound. 2**18 ranges hold 1 GiB of isolated 4 KiB pages; a real guest returns 2 MiB
    #: blocks and runs of pages, far fewer ranges.
    max_ballooned_ranges: int = 1 << 18
    #: A QEMU-managed VM whose actual size has not moved toward its target for this many ticks
    #: has a stalled target (recorded once per target; the target stays in force).
    qemu_stall_ticks: int = 30
    #: A VM without a channel (or QEMU monitor) for this many ticks is forgotten (``VmForgotten``,
    #: reason "retention"): its state, metric series and QMP socket go. 0 keeps every VM forever
    #: (the default, so existing logs replay unchanged).
    retention_ticks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
