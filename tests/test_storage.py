"""Storage: the seed's table is kept (every column, name and type), migrated by adding, idempotent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from l2rec.messages.writer import GapRecord
from l2rec.storage.schema import ADDED_COLUMNS, NATURAL_KEY, ROW_COLUMNS, SEED_COLUMNS, table_ddl
from l2rec.storage.sqlite import Store
from tests.helpers import wait_for

TABLE = "l2_training_data_practical"

# The seed's own DDL (create_fresh_database.py of the original project), abbreviated to its column list.
SEED_DDL = f"""
CREATE TABLE {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL, symbol TEXT NOT NULL,
    exchange TEXT DEFAULT 'bybit',
    {", ".join(f"{s}_{k}_{i} REAL" for s in ("bid", "ask") for i in range(1, 11) for k in ("price", "size"))},
    mid_price REAL, spread REAL, spread_bps REAL, total_bid_volume_10 REAL, total_ask_volume_10 REAL,
    weighted_bid_price REAL, weighted_ask_price REAL, order_book_imbalance REAL, microprice REAL,
    price_impact_bid REAL, price_impact_ask REAL, target_return_1min REAL, target_return_5min REAL,
    target_volatility REAL, target_direction INTEGER, update_id INTEGER, sequence_id INTEGER,
    data_quality_score REAL, data_source TEXT DEFAULT 'live_trading'
)
"""


def make_row(u: int, seq: int, ts: int, symbol: str = "BTCUSDT", depth: int = 50) -> tuple[object, ...]:
    values: dict[str, object] = dict.fromkeys(ROW_COLUMNS)
    values.update(timestamp="2024-12-01T00:00:00.000Z", symbol=symbol, exchange="bybit", bid_price_1=1.0,
                  ask_price_1=2.0, sequence=u, update_id=u, cross_sequence=seq, sequence_id=seq,
                  exchange_timestamp=ts, depth=depth, category="linear", data_source="test")
    return tuple(values[c] for c in ROW_COLUMNS)


def columns(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as c:
        return {r[1]: r[2] for r in c.execute(f"PRAGMA table_info({TABLE})")}


def test_new_database_has_every_seed_column_with_its_type_and_the_added_ones(tmp_path: Path):
    db = tmp_path / "t.db"
    store = Store(str(db), TABLE)
    store.close()
    cols = columns(db)
    for name, decl in SEED_COLUMNS:
        assert name in cols
        assert cols[name] == decl.split()[0]
    for name, decl in ADDED_COLUMNS:
        assert cols[name] == decl.split()[0]
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Two indexes: the natural key (unique; no timestamp in it), and (symbol, exchange_timestamp) for
        # time-range reads of a symbol.
        idx = dict((r[1], r[2]) for r in c.execute(f"PRAGMA index_list({TABLE})"))
        assert idx == {f"ux_{TABLE}_state_key": 1, f"ix_{TABLE}_symbol_exchange_ts": 0}
        info = c.execute(f"PRAGMA index_xinfo(ux_{TABLE}_state_key)").fetchall()
        key_cols = [r[2] for r in info if r[5]]  # key columns; an expression's name is None
        assert set(key_cols) - {None} == set(NATURAL_KEY) - {"cross_sequence"}
        assert "exchange_timestamp" not in NATURAL_KEY
        assert "COALESCE(cross_sequence" in c.execute(
            "SELECT sql FROM sqlite_master WHERE name = ?", (f"ux_{TABLE}_state_key",)).fetchone()[0]
        plan = c.execute(f"EXPLAIN QUERY PLAN SELECT * FROM {TABLE} WHERE symbol = 'X' AND exchange_timestamp"
                         " BETWEEN 1 AND 2").fetchall()
        assert f"ix_{TABLE}_symbol_exchange_ts" in str(plan)
        assert c.execute("SELECT name FROM sqlite_master WHERE name='l2_gaps'").fetchone()


def test_replaying_the_same_rows_adds_nothing_nor_does_a_restated_book_state(tmp_path: Path):
    store = Store(str(tmp_path / "t.db"), TABLE)
    rows = [make_row(10, 100, 1000), make_row(11, 101, 1020)]
    assert store.write(rows) == 2
    assert store.write(rows) == 0
    # orderbook.1 re-pushes an unchanged book with the same u and seq after 3 s: the same book state, one row
    # (the book keeper makes no row for it; the key refuses it too).
    assert store.write([make_row(11, 101, 4020, depth=1), make_row(11, 101, 7020, depth=1)]) == 1
    # a u=1 restart cannot collide with earlier rows: seq keeps rising
    assert store.write([make_row(1, 102, 1040)]) == 1
    store.close()


def test_existing_seed_database_is_migrated_without_losing_rows(tmp_path: Path):
    db = tmp_path / "seed.db"
    with sqlite3.connect(db) as c:
        c.execute(SEED_DDL)
        c.execute(f"INSERT INTO {TABLE} (timestamp, symbol, bid_price_1, data_source) "
                  "VALUES ('2024-01-01T00:00:00', 'BTCUSDT', 42000.5, 'live_trading')")
    store = Store(str(db), TABLE)
    assert set(store.migration.added_columns) == {"sequence", "exchange_timestamp",
                                                  *(n for n, _ in ADDED_COLUMNS)}
    assert store.write([make_row(5, 50, 123)]) == 1
    store.close()
    with sqlite3.connect(db) as c:
        rows = c.execute(f"SELECT symbol, bid_price_1, sequence FROM {TABLE} ORDER BY id").fetchall()
    assert rows == [("BTCUSDT", 42000.5, None), ("BTCUSDT", 1.0, 5)]
    # Opening again changes nothing.
    store = Store(str(db), TABLE)
    assert store.migration.added_columns == ()
    store.close()


def test_a_table_with_the_earliest_index_layout_gets_the_new_key(tmp_path: Path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.execute(table_ddl(TABLE))
        c.execute(f"CREATE UNIQUE INDEX ux_{TABLE}_natural_key ON {TABLE} (exchange, category, symbol, depth,"
                  " COALESCE(cross_sequence, -1), sequence, exchange_timestamp)")
        c.execute(f"CREATE INDEX ix_{TABLE}_symbol_exchange_ts ON {TABLE} (symbol, exchange_timestamp)")
    store = Store(str(db), TABLE)
    assert store.write([make_row(10, 100, 1000)]) == 1
    assert store.write([make_row(10, 100, 1000)]) == 0
    assert store.write([make_row(10, 100, 5000)]) == 0  # the same book state, pushed again
    store.close()
    with sqlite3.connect(db) as c:  # its time index kept; the old key replaced (tests/test_one_row_per_state.py)
        assert {r[1] for r in c.execute(f"PRAGMA index_list({TABLE})")} == {
            f"ux_{TABLE}_state_key", f"ix_{TABLE}_symbol_exchange_ts"}


def test_gaps_are_recorded_and_closed(tmp_path: Path):
    store = Store(str(tmp_path / "t.db"), TABLE)
    opened = GapRecord("linear", "orderbook.50.BTCUSDT", "BTCUSDT", 50, 10, 15, "u_jump", 1_700_000_000_123_000_000,
                       None)
    store.write([], [opened])
    closed = GapRecord(*[getattr(opened, f) for f in opened.__slots__][:-1], 1_700_000_001_456_000_000)
    store.write([], [closed])
    store.close()
    with sqlite3.connect(tmp_path / "t.db") as c:
        rows = c.execute("SELECT topic, last_u, got_u, reason, detected_at, recovered_at FROM l2_gaps").fetchall()
    assert rows == [("orderbook.50.BTCUSDT", 10, 15, "u_jump", "2023-11-14T22:13:20.123Z",
                     "2023-11-14T22:13:21.456Z")]


def spread_rows(start: int, n: int = 200) -> list[tuple[object, ...]]:
    """n rows from u = start on, over 50 symbols: each commit touches many index pages."""
    return [make_row(start + i, start + i, 1_000 + start + i, symbol=f"S{i % 50}") for i in range(n)]


class WalWriter:
    """A Store that restarts its WAL about every 128 KiB (32 pages), and a writer of 200 spread rows at a
    time that counts what it wrote: the set-up of the WAL tests."""

    RESTART_BYTES = 32 * 4096

    def __init__(self, db: Path) -> None:
        self.db = db
        self.wal = Path(f"{db}-wal")
        self.store = Store(str(db), TABLE, wal_restart_pages=32)
        self.written = 0

    def write(self) -> None:
        assert self.store.write(spread_rows(self.written)) == 200
        self.written += 200

    def close_and_count(self) -> int:
        """Close the store; the rows the table holds."""
        self.store.close()
        with sqlite3.connect(self.db) as c:
            return int(c.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])


def test_the_wal_is_copied_beside_the_commits_and_restarted_so_it_stays_small(tmp_path: Path):
    db = tmp_path / "t.db"
    w = WalWriter(db)
    ckpt = w.store.checkpointer
    wal_max = 0

    def write_more() -> bool:
        nonlocal wal_max
        w.write()
        wal_max = max(wal_max, w.wal.stat().st_size)
        return ckpt.restarts >= 5 and ckpt.turns >= 5 and db.stat().st_size > 4 * 2**20

    wait_for(write_more, 60, "five WAL restarts and a 4 MiB database")
    assert ckpt.last_error is None
    assert w.close_and_count() == w.written
    # Without restarts the WAL would hold every page ever written (more than the database); here it
    # stays within a few restart sizes (24 x 128 KiB = 3 MiB: each commit writes the pages of two indexes,
    # the natural key's and the time index; measured 2.2-2.7 MiB, 1.4-1.9 with the earlier single index).
    assert wal_max < 24 * 32 * 4096, wal_max


def test_a_long_reader_only_delays_the_wal_restart(tmp_path: Path):
    db = tmp_path / "t.db"
    w = WalWriter(db)
    ckpt = w.store.checkpointer
    write = w.write
    write()
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    seen = reader.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]  # holds its snapshot
    restarts = ckpt.restarts

    def wal_grew() -> bool:
        write()
        return w.wal.stat().st_size > 8 * w.RESTART_BYTES

    wait_for(wal_grew, 60, "the WAL to grow past 8 restart sizes while the reader holds its snapshot")
    assert ckpt.restarts == restarts  # nothing could restart under the reader
    assert reader.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == seen
    reader.execute("COMMIT")
    reader.close()

    def restarted() -> bool:
        write()
        return ckpt.restarts > restarts

    wait_for(restarted, 60, "a WAL restart once the reader is gone")
    assert ckpt.last_error is None
    assert w.close_and_count() == w.written
