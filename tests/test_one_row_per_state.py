"""One row per book state (issue 12, item 4): a frame that restates the state of its topic's last row (same
``u`` and ``seq``) writes no row and is counted as ``restated``; a table of an earlier version, whose key
held the timestamp, is migrated by keeping the earliest row of each state."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from l2rec.book.keeper import GAP_DISCONNECT, GAP_U_JUMP, BookKeeper
from l2rec.messages.book import BookUpdate
from l2rec.storage.schema import ROW_COLUMNS, table_ddl
from l2rec.storage.sqlite import SchemaError, Store
from tests.fakes.bybit_server import FakeBybit
from tests.helpers import wait_for
from tests.recorder_process import TABLE, RecorderProcess

TOPIC = "orderbook.50.BTCUSDT"
OB1 = "orderbook.1.BTCUSDT"


def upd(u: int, seq: int | None, ts: int, *, snapshot: bool = False, depth: int = 50,
        bid: float = 100.0, ask: float = 101.0) -> BookUpdate:
    return BookUpdate(f"orderbook.{depth}.BTCUSDT", "BTCUSDT", depth, snapshot, u, seq, ts, ts - 5, None,
                      ((bid, 1.0),), ((ask, 1.0),))


def keeper() -> BookKeeper:
    return BookKeeper(category="linear", data_source="live_trading", clock_ns=lambda: 1)


def identity_holds(stats: dict[str, object]) -> bool:
    parts = ("rows", "stale", "in_gap", "gaps", "rejected", "restated")
    return stats["frames"] == sum(stats[p] for p in parts) and stats["unaccounted"] == 0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ keeper


def test_a_snapshot_restating_the_last_row_after_a_reconnect_is_no_row_and_is_counted():
    bk = keeper()
    assert bk.on_update(upd(10, 500, 1_000, snapshot=True)) is not None
    assert bk.on_update(upd(11, 501, 1_020)) is not None
    bk.on_disconnect()
    # the fresh snapshot of the new session: the book did not move (same u, same seq), only ts is new
    assert bk.on_update(upd(11, 501, 5_000, snapshot=True)) is None
    st = bk.snapshot_stats()[TOPIC]
    assert (st["rows"], st["restated"], st["synced"]) == (2, 1, True)
    assert identity_holds(st)
    gaps, _, _ = bk.take_events()  # the disconnect gap is closed by that snapshot all the same
    assert [(g.reason, g.recovered_ns is not None) for g in gaps] == [(GAP_DISCONNECT, False), (GAP_DISCONNECT, True)]
    # and the book goes on from it
    assert bk.on_update(upd(12, 502, 5_020, bid=100.5)) is not None


def test_orderbook_1_repush_with_the_same_u_and_seq_is_no_row_a_new_seq_is_one():
    bk = keeper()
    assert bk.on_update(upd(7, 900, 1_000, snapshot=True, depth=1)) is not None
    assert bk.on_update(upd(7, 900, 4_000, snapshot=True, depth=1)) is None  # 3 s re-push, unchanged
    assert bk.on_update(upd(7, 905, 7_000, snapshot=True, depth=1)) is not None  # seq moved: another state
    assert bk.on_update(upd(8, 906, 7_010, snapshot=True, depth=1, bid=100.5)) is not None
    st = bk.snapshot_stats()[OB1]
    assert (st["frames"], st["rows"], st["restated"]) == (4, 3, 1)
    assert identity_holds(st)


def test_a_restating_snapshot_after_a_gap_closes_it_and_replaces_the_book():
    bk = keeper()
    assert bk.on_update(upd(10, 500, 1_000, snapshot=True)) is not None
    assert bk.on_update(upd(15, 505, 1_020)) is None  # u jump: out of sync, the book cleared
    assert bk.topics[TOPIC].book.bid_px == []
    assert bk.on_update(upd(10, 500, 2_000, snapshot=True, bid=99.0)) is None  # restates the last row
    st = bk.snapshot_stats()[TOPIC]
    assert (st["synced"], st["rows"], st["gaps"], st["restated"]) == (True, 1, 1, 1)
    assert identity_holds(st)
    assert bk.topics[TOPIC].book.bid_px == [99.0]  # replaced by the snapshot, as any snapshot does
    gaps, resyncs, _ = bk.take_events()
    assert [(g.reason, g.recovered_ns is not None) for g in gaps] == [(GAP_U_JUMP, False), (GAP_U_JUMP, True)]
    assert resyncs == [(TOPIC, GAP_U_JUMP)]


def test_a_state_whose_row_was_shed_is_written_by_the_snapshot_that_restates_it():
    bk = keeper()
    row = bk.on_update(upd(10, 500, 1_000, snapshot=True))
    assert row is not None
    bk.on_backpressure()
    bk.shed_rows([row])  # the row never reached the table
    assert bk.on_update(upd(10, 500, 2_000, snapshot=True)) is not None
    st = bk.snapshot_stats()[TOPIC]
    assert (st["rows"], st["in_gap"], st["restated"]) == (1, 1, 0)
    assert identity_holds(st)


# -------------------------------------------------------------------------------------------- migration


def row(u: int, seq: int | None, ts: int, *, depth: int = 50, bid: float = 1.0) -> tuple[object, ...]:
    values: dict[str, object] = dict.fromkeys(ROW_COLUMNS)
    values.update(timestamp="2024-12-01T00:00:00.000Z", symbol="BTCUSDT", exchange="bybit", bid_price_1=bid,
                  ask_price_1=2.0, sequence=u, update_id=u, cross_sequence=seq, sequence_id=seq,
                  exchange_timestamp=ts, depth=depth, category="linear", data_source="live_trading")
    return tuple(values[c] for c in ROW_COLUMNS)


def old_table(db: Path, layout: str, rows: list[tuple[object, ...]]) -> None:
    """A table as an earlier version made it: its unique key held exchange_timestamp."""
    with sqlite3.connect(db) as c:
        c.execute(table_ddl(TABLE))
        if layout == "natural_key":
            c.execute(f"CREATE UNIQUE INDEX ux_{TABLE}_natural_key ON {TABLE} (exchange, category, symbol, depth,"
                      " COALESCE(cross_sequence, -1), sequence, exchange_timestamp)")
            c.execute(f"CREATE INDEX ix_{TABLE}_symbol_exchange_ts ON {TABLE} (symbol, exchange_timestamp)")
        else:
            c.execute(f"CREATE UNIQUE INDEX ux_{TABLE}_symbol_exchange_ts_key ON {TABLE} (symbol, exchange_timestamp,"
                      " category, depth, sequence, COALESCE(cross_sequence, -1), exchange)")
        cols = ", ".join(ROW_COLUMNS)
        c.executemany(f"INSERT INTO {TABLE} ({cols}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})", rows)


def table_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(f"SELECT depth, sequence, cross_sequence, exchange_timestamp FROM {TABLE} "
                         "ORDER BY id").fetchall()


@pytest.mark.parametrize("layout", ["natural_key", "symbol_exchange_ts_key"])
def test_an_old_table_keeps_the_earliest_row_of_each_state(tmp_path: Path, layout: str,
                                                           caplog: pytest.LogCaptureFixture):
    db = tmp_path / "old.db"
    old_table(db, layout, [
        row(10, 500, 1_000), row(11, 501, 1_020),
        row(11, 501, 5_000),  # the reconnect's snapshot: the same state again
        row(7, 900, 1_000, depth=1), row(7, 900, 4_000, depth=1), row(7, 900, 7_000, depth=1),  # ob1 re-pushes
        row(7, 905, 9_000, depth=1),  # same u, newer seq: another state
        row(3, None, 1_000), row(3, None, 2_000),  # no seq (option frames): COALESCE(seq, -1) as in the key
    ])
    with caplog.at_level(logging.WARNING, logger="recorder.storage"):
        store = Store(str(db), TABLE)
    assert store.migration.restatements_removed == 4
    assert store.write([row(11, 501, 9_999), row(12, 502, 1_040)]) == 1  # a restatement conflicts now
    store.close()
    assert table_rows(db) == [(50, 10, 500, 1_000), (50, 11, 501, 1_020), (1, 7, 900, 1_000), (1, 7, 905, 9_000),
                              (50, 3, None, 1_000), (50, 12, 502, 1_040)]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("4 rows restate" in m and "3 states" in m for m in warned), warned
    assert any("deleted 4 rows" in m for m in warned), warned
    with sqlite3.connect(db) as c:
        names = {r[1] for r in c.execute(f"PRAGMA index_list({TABLE})")}
        plan = str(c.execute(f"EXPLAIN QUERY PLAN SELECT * FROM {TABLE} WHERE symbol = 'X' AND "
                             "exchange_timestamp BETWEEN 1 AND 2").fetchall())
    assert f"ux_{TABLE}_state_key" in names and f"ux_{TABLE}_natural_key" not in names  # redundant: dropped
    assert ("ix_" if layout == "natural_key" else "ux_") + f"{TABLE}_symbol_exchange_ts" in plan
    # Opened again: nothing more to do.
    store = Store(str(db), TABLE)
    assert store.migration.restatements_removed == 0
    store.close()


def test_a_new_table_has_the_state_key_and_a_time_index(tmp_path: Path):
    db = tmp_path / "new.db"
    store = Store(str(db), TABLE)
    assert store.write([row(11, 501, 1_020), row(11, 501, 5_000), row(11, 502, 5_000)]) == 2
    store.close()
    with sqlite3.connect(db) as c:
        names = {r[1]: r[2] for r in c.execute(f"PRAGMA index_list({TABLE})")}
        plan = str(c.execute(f"EXPLAIN QUERY PLAN SELECT * FROM {TABLE} WHERE symbol = 'X' AND "
                             "exchange_timestamp BETWEEN 1 AND 2").fetchall())
    assert names == {f"ux_{TABLE}_state_key": 1, f"ix_{TABLE}_symbol_exchange_ts": 0}
    assert f"ix_{TABLE}_symbol_exchange_ts" in plan


def test_rows_of_one_key_with_different_books_are_never_deleted(tmp_path: Path):
    db = tmp_path / "odd.db"
    old_table(db, "natural_key", [row(10, 500, 1_000), row(10, 500, 2_000, bid=1.5), row(10, 500, 3_000)])
    with pytest.raises(SchemaError, match="1 rows have the topic, u and seq of an earlier row but a different book"):
        Store(str(db), TABLE)
    assert len(table_rows(db)) == 3  # nothing deleted, not even the true restatement


# ------------------------------------------------------------------------------------------- end to end


def test_a_reconnect_to_an_unmoved_book_writes_one_row_per_book_state(tmp_path: Path):
    """Each subscription of the fake gets 30 frames, then the book stops (it moves only while it streams);
    the connection is dropped, the recorder reconnects, and the new session's snapshot carries the state
    already written: 60 frames, 59 book states, 59 rows (the key with the timestamp stored 60)."""
    srv = FakeBybit(symbols=["BTCUSDT"], interval_ms=5, seed=12, max_frames_per_topic=30)
    srv.start()
    rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT")
    try:
        rec.wait_rows(30)
        assert srv.drop_connections() == 1
        wait_for(lambda: srv.total_connections >= 2 and srv.sent_count(TOPIC) >= 60, 60, "the second session")
        rec.wait_rows(59)
        wait_for(lambda: (d := rec.dump()) and d["topics"][TOPIC]["frames"] == 60, 30, "every frame handled")
        assert rec.stop() == 0, rec.stderr_text()[-2000:]
    finally:
        rec.kill()
        srv.stop()
    sent = [json.loads(t) for t in srv.sent_frames(TOPIC)]
    states = {(m["data"]["u"], m["data"]["seq"]) for m in sent}
    assert (len(sent), len(states)) == (60, 59)  # the second session's snapshot restated the first's last state
    assert [m["type"] for m in sent].count("snapshot") == 2
    got = rec.query(f"SELECT sequence, cross_sequence FROM {TABLE}")
    assert len(got) == len(set(got)) == 59
    assert set(got) == states
    dump = json.loads(rec.health_file.read_text())
    topic = dump["topics"][TOPIC]
    assert (topic["frames"], topic["rows"], topic["restated"], topic["unaccounted"]) == (60, 59, 1, 0)
    assert "already present 0" in rec.stderr_text()  # no duplicate even reached the table
    assert rec.query("SELECT reason, recovered_at IS NOT NULL FROM l2_gaps") == [("disconnect", 1)]
