"""Balloon / unballoon transactions folded from events: outcomes and throughput edge cases."""

from __future__ import annotations

import pytest

from services.audit.transactions import TransactionLog
from services.dm_engine import events as ev


def fold(*events: ev.Event) -> TransactionLog:
    log = TransactionLog()
    for e in events:
        log.apply(e)
    return log


def test_unballoon_spanning_several_messages_then_timing_out() -> None:
    log = fold(
        ev.UnballoonRequested(trans_id=4, ranges=((0, 10),), pages=10, more_pages=True, tick=3),
        ev.UnballoonRequested(trans_id=4, ranges=((20, 5),), pages=5, more_pages=False, tick=3),
        ev.TransactionTimedOut(kind="unballoon", trans_id=4, waited_ticks=60, retry_at_tick=93, tick=63),
    )
    [txn] = log.unballoon
    doc = txn.to_dict(tick_seconds=2.0)
    assert (doc["outcome"], doc["pages"], doc["messages"], doc["requested_pages"]) == ("timeout", 15, 2, 15)
    assert (doc["ticks"], doc["seconds"], doc["instant"]) == (60, 120.0, False)


def test_a_closed_channel_abandons_the_transaction_in_flight() -> None:
    log = fold(
        ev.BalloonRequested(trans_id=0, num_pages=100, tick=1),
        ev.PagesBallooned(ranges=((0, 40),), pages=40, tick=2),
        ev.ChannelClosed(reason="closed"),
        ev.PagesBallooned(ranges=((50, 10),), pages=10, tick=9),  # late, outside any transaction
    )
    doc = log.balloon[0].to_dict(tick_seconds=1.0)
    assert (doc["outcome"], doc["pages"], doc["end_tick"], doc["gb_per_min"]) == ("abandoned", 40, None, None)


def test_a_transaction_still_in_flight_is_open() -> None:
    log = fold(ev.BalloonRequested(trans_id=0, num_pages=100, tick=1))
    assert log.balloon[0].to_dict(1.0)["outcome"] == "open"


@pytest.mark.parametrize("tick_seconds", [0.0, 0.25])
def test_instant_transactions_use_one_tick_as_the_duration(tick_seconds: float) -> None:
    log = fold(
        ev.BalloonRequested(trans_id=0, num_pages=262_144, tick=5),
        ev.PagesBallooned(ranges=((0, 262_144),), pages=262_144, tick=5),
        ev.BalloonTransactionEnded(
            trans_id=0, requested_pages=262_144, received_pages=262_144, outcome="complete", tick=5
        ),
    )
    doc = log.balloon[0].to_dict(tick_seconds)
    assert doc["instant"] is True and doc["seconds"] == 0.0
    if tick_seconds:
        assert doc["gb_per_min"] == pytest.approx((1 << 30) / 1e9 * 60 / tick_seconds)
        assert doc["gb_per_min_is_lower_bound"] is True
    else:  # a log without a clock has no rate to give
        assert doc["gb_per_min"] is None and doc["gb_per_min_is_lower_bound"] is False
