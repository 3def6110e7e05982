"""Balloon and unballoon transactions recovered from a VM's events, with their throughput.

Why it is worth reporting: how fast a guest gives memory back (or takes it again) is what decides
whether a rebalance finishes in time, and a guest that is slow, partial or silent is visible here
per transaction.

Time is measured in ticks, the engine's only clock, and converted with the log's
``tick_seconds``. Events carry the tick of the inbox record that caused them, so a duration is
known to one tick: a transaction that starts and ends within the same tick is reported as
``instant`` and its rate is computed over one whole tick -- a lower bound of the true rate.
GB means 10**9 bytes, as the unit says; ``bytes`` is given too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from ..dm_engine import events as ev
from ..dm_engine.machine import TxnKind
from ..units import PAGE_SIZE

GB: Final = 10**9

#: Outcomes besides the engine's own (complete / partial / timeout).
ABANDONED: Final = "abandoned"  # the channel closed or the VM reset with the transaction in flight
OPEN: Final = "open"  # still in flight when the log ends


@dataclass(slots=True)
class Transaction:
    """One balloon or unballoon transaction; mutable only while the events are being folded."""

    kind: str  # balloon | unballoon
    trans_id: int
    start_tick: int
    requested_pages: int
    pages: int = 0
    #: DM messages that carried pages: balloon responses with new pages / unballoon requests.
    messages: int = 0
    end_tick: int | None = None
    outcome: str = OPEN

    def to_dict(self, tick_seconds: float) -> dict[str, Any]:
        """The JSON form, throughput included; ``None`` where the transaction has no end."""
        nbytes = self.pages * PAGE_SIZE
        ticks = None if self.end_tick is None else self.end_tick - self.start_tick
        instant = ticks == 0
        seconds = None if ticks is None else ticks * tick_seconds
        rate_seconds = tick_seconds if instant else seconds
        rate = None
        if rate_seconds:  # neither None nor 0 (a log made with tick_seconds = 0 has no clock)
            rate = (nbytes / GB) / (rate_seconds / 60.0)
        return {
            "trans_id": self.trans_id,
            "outcome": self.outcome,
            "requested_pages": self.requested_pages,
            "pages": self.pages,
            "bytes": nbytes,
            "messages": self.messages,
            "start_tick": self.start_tick,
            "end_tick": self.end_tick,
            "ticks": ticks,
            "seconds": seconds,
            "instant": instant,
            "gb_per_min": rate,
            "gb_per_min_is_lower_bound": instant and rate is not None,
        }


class TransactionLog:
    """Folds events into the list of balloon and unballoon transactions of one VM."""

    def __init__(self) -> None:
        self.balloon: list[Transaction] = []
        self.unballoon: list[Transaction] = []
        self._open: Transaction | None = None

    def _close(self, outcome: str, end_tick: int | None) -> None:
        txn = self._open
        if txn is not None:
            txn.outcome = outcome
            txn.end_tick = end_tick
            self._open = None

    def _start(self, txn: Transaction) -> None:
        self._close(ABANDONED, None)  # the engine never overlaps transactions; be safe if it did
        self._open = txn
        (self.balloon if txn.kind == TxnKind.BALLOON else self.unballoon).append(txn)

    def apply(self, event: ev.Event) -> None:
        txn = self._open
        match event:
            case ev.BalloonRequested():
                self._start(Transaction(TxnKind.BALLOON, event.trans_id, event.tick, event.num_pages))
            case ev.PagesBallooned():
                if txn is not None and txn.kind == TxnKind.BALLOON:
                    txn.pages += event.pages
                    txn.messages += 1
            case ev.BalloonTransactionEnded():
                if txn is not None and txn.kind == TxnKind.BALLOON:
                    txn.pages = event.received_pages
                    self._close(event.outcome, event.tick)
            case ev.UnballoonRequested():
                if txn is not None and txn.kind == TxnKind.UNBALLOON and txn.trans_id == event.trans_id:
                    txn.requested_pages += event.pages
                else:
                    self._start(Transaction(TxnKind.UNBALLOON, event.trans_id, event.tick, event.pages))
                    txn = self._open
                assert txn is not None
                txn.pages += event.pages
                txn.messages += 1
            case ev.UnballoonCompleted():
                if txn is not None and txn.kind == TxnKind.UNBALLOON:
                    txn.pages = event.pages
                    self._close("complete", event.tick)
            case ev.TransactionTimedOut():
                if txn is not None and txn.kind == event.kind:
                    self._close("timeout", event.tick)
            case ev.ChannelClosed() | ev.VmbusReset() | ev.SystemReset():
                self._close(ABANDONED, None)
            case (
                ev.HotAddRequested() | ev.HotRemoveRequested()
            ):  # another kind of transaction started: ours cannot still be open
                self._close(ABANDONED, None)
            case _:
                pass
