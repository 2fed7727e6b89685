"""BookKeeper events a live shard relies on: disconnects, restarts, backpressure, and the accounting."""

from __future__ import annotations

from l2rec.book.keeper import BookKeeper
from l2rec.messages.book import BookUpdate

TOPIC = "orderbook.50.BTCUSDT"


def upd(u: int, snapshot: bool = False, bids=((100.0, 1.0),), asks=((101.0, 1.0),)) -> BookUpdate:
    return BookUpdate(TOPIC, "BTCUSDT", 50, snapshot, u, 1000 + u, 1_700_000_000_000 + u, None, 1, bids, asks)


def keeper() -> BookKeeper:
    clock = iter(range(1_000, 10**9, 1_000))
    return BookKeeper(category="linear", data_source="live_trading", clock_ns=lambda: next(clock))


def test_disconnect_opens_a_gap_that_the_next_snapshot_closes():
    k = keeper()
    assert k.on_update(upd(10, snapshot=True)) is not None
    assert k.on_update(upd(11)) is not None
    k.on_disconnect()
    assert k.on_update(upd(12)) is None  # a delta after the disconnect cannot be trusted
    assert k.on_update(upd(20, snapshot=True)) is not None
    gaps, resyncs, _ = k.take_events()
    assert [(g.reason, g.last_u, g.recovered_ns is not None) for g in gaps] == [
        ("disconnect", 11, False), ("disconnect", 11, True)]
    assert resyncs == []  # the reconnect resubscribes everything; no per-topic resync
    assert k.snapshot_stats()[TOPIC]["unaccounted"] == 0


def test_backpressure_sheds_rows_into_the_gap_and_keeps_the_identity():
    k = keeper()
    rows = [k.on_update(upd(10, snapshot=True)), k.on_update(upd(11)), k.on_update(upd(12))]
    k.shed_rows(rows[1:])
    k.on_backpressure()
    assert k.on_update(upd(13)) is None
    st = k.snapshot_stats()[TOPIC]
    assert (st["frames"], st["rows"], st["in_gap"], st["synced"]) == (4, 1, 3, False)
    assert st["unaccounted"] == 0
    gaps, _, _ = k.take_events()
    assert [g.reason for g in gaps] == ["backpressure"]


def test_a_restarted_shard_records_a_gap_until_its_first_snapshot():
    k = keeper()
    k.on_process_restart((TOPIC,))
    assert k.on_update(upd(5)) is None
    assert k.on_update(upd(6, snapshot=True)) is not None
    gaps, resyncs, _ = k.take_events()
    assert [(g.reason, g.last_u, g.recovered_ns is not None) for g in gaps] == [
        ("shard_restart", None, False), ("shard_restart", None, True)]
    assert resyncs == []
