"""Retention (``data_retention_hours``): the horizon follows the newest exchange time, rows older than it
leave SQLite in small steps, space goes back to the file system, readers are never blocked."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import orjson
import pytest

from l2rec.messages.writer import GapRecord, SessionRecord
from l2rec.storage.retention import (
    DELETE_CHUNK_ROWS,
    HOUR_MS,
    ArchivedThrough,
    DeleteRange,
    archive_path,
    archive_target,
    closed_until,
    horizon_ms,
    next_cut,
    part_path,
    parts_of,
    plan_deletes,
)
from l2rec.storage.schema import ROW_COLUMNS
from l2rec.storage.sqlite import VACUUM_COMMAND, Store
from tests.helpers import TABLE, clean_env, run_supervisor

T0 = 1_733_011_200_000  # 2024-12-01T00:00:00Z


def make_row(u: int, ts: int, symbol: str = "BTCUSDT") -> tuple[object, ...]:
    values: dict[str, object] = dict.fromkeys(ROW_COLUMNS)
    values.update(timestamp="2024-12-01T00:00:00.000Z", symbol=symbol, exchange="bybit", bid_price_1=1.0,
                  ask_price_1=2.0, bid_size_1=3.5, sequence=u, update_id=u, cross_sequence=u, sequence_id=u,
                  exchange_timestamp=ts, depth=50, category="linear", data_source="test")
    return tuple(values[c] for c in ROW_COLUMNS)


def hours_of_rows(n: int, span_ms: int, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")) -> list[tuple[object, ...]]:
    """n rows per symbol, evenly over span_ms from T0."""
    return [make_row(i + 1, T0 + i * span_ms // n, s) for s in symbols for i in range(n)]


def run_cleanup(store: Store, now_ns: int = 10**18, final: bool = False) -> int:
    steps = 1
    while not store.cleanup_step(now_ns, final=final):
        steps += 1
        assert steps < 100_000
    return steps


def keys(db: Path, where: str = "") -> set[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return set(c.execute(f"SELECT symbol, sequence, exchange_timestamp FROM {TABLE} {where}"))


# -- plain functions -------------------------------------------------------------------------------------

def test_horizon_is_the_newest_exchange_time_minus_the_retention_fractions_allowed():
    assert horizon_ms(T0 + 10 * HOUR_MS, 1) == T0 + 9 * HOUR_MS
    assert horizon_ms(T0, 0.05) == T0 - 180_000  # 3 minutes
    assert horizon_ms(T0, 0) is None  # keep everything
    assert horizon_ms(None, 1) is None  # nothing recorded yet


def test_an_hour_is_closed_once_the_newest_row_is_the_grace_past_its_end():
    assert closed_until(T0 + HOUR_MS + 59_999, 60) == T0  # 00:00 hour not closed yet
    assert closed_until(T0 + HOUR_MS + 60_000, 60) == T0 + HOUR_MS  # now it is


def test_the_archive_reaches_every_closed_hour_and_with_a_short_retention_the_horizon():
    newest = T0 + 2 * HOUR_MS + 30 * 60_000  # 02:30
    assert archive_target(newest, 0, 60) == T0 + 2 * HOUR_MS  # archive only: closed hours (00, 01)
    assert archive_target(newest, 24, 60) == T0 + 2 * HOUR_MS  # a long retention: the same
    assert archive_target(newest, 0.05, 60) == newest - 180_000  # 3 minutes: rows leave hour 02 as parts
    assert archive_target(None, 1, 60) is None


def test_a_round_moves_the_cut_at_most_an_hour_past_the_oldest_row_not_archived():
    assert next_cut(0, T0 + 5 * HOUR_MS, T0 + 5) == T0 + HOUR_MS  # first round on an old table: one hour
    assert next_cut(T0 + HOUR_MS, T0 + 5 * HOUR_MS, None) == T0 + 2 * HOUR_MS
    assert next_cut(T0 + HOUR_MS, T0 + HOUR_MS + 7, None) == T0 + HOUR_MS + 7  # live: up to the target
    assert next_cut(T0 + HOUR_MS, T0, None) == T0 + HOUR_MS  # never backwards


def test_with_an_archive_only_rows_its_files_hold_are_planned():
    horizon = T0 + 2 * HOUR_MS + 5
    assert plan_deletes(["A"], horizon, None) == [DeleteRange("A", horizon)]
    # the archive reaches 01:00 with ids up to 30: rows newer than that, or recorded later, stay
    assert plan_deletes(["A", "B"], horizon, ArchivedThrough(T0 + HOUR_MS, 30)) == [
        DeleteRange("A", T0 + HOUR_MS, 30), DeleteRange("B", T0 + HOUR_MS, 30)]
    # the archive is ahead of the horizon: the horizon decides
    assert plan_deletes(["A"], horizon, ArchivedThrough(T0 + 3 * HOUR_MS, 99)) == [DeleteRange("A", horizon, 99)]


def test_parts_of_an_open_hour_sit_beside_its_file_oldest_cut_first(tmp_path: Path):
    hour = archive_path(tmp_path, "t", "BTCUSDT", T0 + 13 * HOUR_MS)
    assert part_path(hour, 1234) == hour.with_name("13.part-1234.parquet")
    assert parts_of(hour) == []
    hour.parent.mkdir(parents=True)
    for cut in (20_000, 3_000):
        part_path(hour, cut).touch()
    (hour.parent / "12.part-1.parquet").touch()  # another hour's
    hour.touch()
    assert parts_of(hour) == [part_path(hour, 3_000), part_path(hour, 20_000)]


def test_archive_paths_are_hive_partitions_of_date_and_symbol():
    assert archive_path("/a", "t", "BTCUSDT", T0 + 13 * HOUR_MS) == Path(
        "/a/t/date=2024-12-01/symbol=BTCUSDT/13.parquet")


# -- the store -------------------------------------------------------------------------------------------

def test_cleanup_keeps_exactly_the_rows_at_or_after_the_horizon_and_gives_space_back(tmp_path: Path):
    db = tmp_path / "r.db"
    store = Store(str(db), TABLE, retention_hours=1)
    rows = hours_of_rows(6000, 4 * HOUR_MS)  # 4 hours, 2 symbols: several chunks per symbol
    for i in range(0, len(rows), 1000):
        store.write(rows[i:i + 1000])
    newest = max(r[ROW_COLUMNS.index("exchange_timestamp")] for r in rows)
    horizon = newest - HOUR_MS
    expected = {(r[1], r[ROW_COLUMNS.index("sequence")], r[ROW_COLUMNS.index("exchange_timestamp")])
                for r in rows if r[ROW_COLUMNS.index("exchange_timestamp")] >= horizon}  # type: ignore[operator]
    pages_before = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.retention.budget_s = 0.0  # one chunk per step: shows how the work is cut
    steps = run_cleanup(store)
    status = store.status()
    pages_after = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.close()
    assert keys(db) == expected
    ret = status["retention"]
    assert isinstance(ret, dict)
    assert ret["rows_removed"] == len(rows) - len(expected) > 2 * DELETE_CHUNK_ROWS
    assert ret["cleanups"] == 1 and ret["horizon_ms"] == horizon
    # Interleaved: a step is one transaction of at most DELETE_CHUNK_ROWS rows, never one long DELETE.
    assert steps >= ret["rows_removed"] / DELETE_CHUNK_ROWS
    assert status["db"] == {"file_bytes": pages_after * 4096, "free_pages": 0, "auto_vacuum": "incremental"}
    assert pages_after < pages_before * 0.5  # the space went back to the file system


def test_old_rows_recorded_late_behind_the_head_are_removed_too(tmp_path: Path):
    """The head of the table goes first (live rows arrive in time order); rows older than the horizon that
    were recorded later (a replay), far behind the head, are found by the per-symbol pass."""
    db = tmp_path / "late.db"
    store = Store(str(db), TABLE, retention_hours=1)
    new = [make_row(i + 1, T0 + 2 * HOUR_MS + i, "BTCUSDT") for i in range(25_000)]  # all at/after the horizon
    late = [make_row(100_000 + i, T0 + i, "ETHUSDT") for i in range(10)]  # hours older, recorded last
    for i in range(0, len(new), 5000):
        store.write(new[i:i + 5000])
    store.write(late)
    run_cleanup(store)
    store.close()
    assert keys(db, "WHERE symbol = 'ETHUSDT'") == set()
    assert len(keys(db)) == 25_000


def test_cleanup_runs_every_interval_and_once_more_at_close(tmp_path: Path):
    store = Store(str(tmp_path / "r.db"), TABLE, retention_hours=1, cleanup_interval_s=60)
    store.write([make_row(1, T0), make_row(2, T0 + 2 * HOUR_MS)])
    run_cleanup(store, now_ns=0)
    assert store.retention.rows_removed == 1
    store.write([make_row(3, T0 + 2 * HOUR_MS + 1), make_row(4, T0 + 4 * HOUR_MS)])
    assert store.cleanup_step(30 * 10**9) is True  # not due yet: nothing done
    assert store.retention.rows_removed == 1
    run_cleanup(store, now_ns=60 * 10**9)
    assert store.retention.rows_removed == 3
    store.write([make_row(5, T0 + 6 * HOUR_MS)])
    run_cleanup(store, now_ns=61 * 10**9, final=True)  # at close: not waiting for the interval
    assert store.retention.rows_removed == 4
    store.close()


def test_gaps_and_sessions_that_ended_before_the_horizon_go_open_ones_stay(tmp_path: Path):
    db = tmp_path / "r.db"
    store = Store(str(db), TABLE, retention_hours=1)
    ns = 1_000_000
    old_gap = GapRecord("linear", "orderbook.50.BTCUSDT", "BTCUSDT", 50, 1, 5, "u_jump", T0 * ns, (T0 + 10) * ns)
    open_gap = GapRecord("linear", "orderbook.50.BTCUSDT", "BTCUSDT", 50, 7, None, "disconnect", (T0 + 20) * ns, None)
    new_gap = GapRecord("linear", "orderbook.50.BTCUSDT", "BTCUSDT", 50, 8, 9, "u_jump", (T0 + 3 * HOUR_MS) * ns,
                        (T0 + 3 * HOUR_MS + 5) * ns)
    old_session = SessionRecord(0, 1, "ws://x", 1, T0 * ns, (T0 + 60_000) * ns, "closed", True)
    open_session = SessionRecord(0, 2, "ws://x", 1, (T0 + 61_000) * ns, None, None, None)
    store.write([make_row(1, T0), make_row(2, T0 + 4 * HOUR_MS)], [old_gap, open_gap, new_gap],
                [old_session, open_session])
    run_cleanup(store)
    store.close()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT last_u FROM l2_gaps ORDER BY last_u").fetchall() == [(7,), (8,)]
        assert c.execute("SELECT session FROM l2_sessions").fetchall() == [(2,)]
    assert store.retention.gaps_removed == 1 and store.retention.sessions_removed == 1


def test_a_reader_holding_a_snapshot_neither_blocks_nor_breaks_the_cleanup(tmp_path: Path):
    db = tmp_path / "r.db"
    store = Store(str(db), TABLE, retention_hours=1)
    rows = hours_of_rows(3000, 4 * HOUR_MS)
    store.write(rows)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0] == len(rows)  # snapshot taken
    run_cleanup(store)
    store.write([make_row(99_999, T0 + 5 * HOUR_MS)])  # recording goes on meanwhile
    # The reader still sees its snapshot, whole; the cleanup is done.
    assert reader.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0] == len(rows)
    assert store.retention.cleanups == 1 and store.retention.rows_removed > 0
    reader.execute("COMMIT")
    left = reader.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]
    assert left == len(rows) - store.retention.rows_removed + 1
    reader.close()
    store.close()


def test_an_old_database_without_auto_vacuum_gets_one_warning_with_the_command(tmp_path: Path, caplog):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as c:
        c.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL, "
                  "symbol TEXT NOT NULL)")
    with caplog.at_level(logging.WARNING, logger="recorder.storage"):
        store = Store(str(db), TABLE, retention_hours=1)
        store.write([make_row(1, T0), make_row(2, T0 + 2 * HOUR_MS)])
        run_cleanup(store)
        store.close()
    warnings = [r for r in caplog.records if "auto_vacuum" in r.getMessage()]
    assert len(warnings) == 1 and VACUUM_COMMAND in warnings[0].getMessage() and str(db) in warnings[0].getMessage()
    assert store.retention.rows_removed == 1  # retention still works; the space is reused, not returned
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # never a silent VACUUM at start


def test_retention_zero_keeps_everything(tmp_path: Path):
    store = Store(str(tmp_path / "r.db"), TABLE)
    store.write([make_row(1, T0), make_row(2, T0 + 100 * HOUR_MS)])
    assert store.cleanup_step(10**18, final=True) is True
    assert store.conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0] == 2
    store.close()


# -- end to end ------------------------------------------------------------------------------------------

def stream_over_hours(path: Path, symbols: int, frames: int, span_ms: int) -> None:
    """A generated Bybit stream (bench/make_stream.py) whose exchange times are spread over span_ms."""
    from bench.make_stream import messages

    with path.open("wb") as fh:
        for i, line in enumerate(messages(symbols, frames, seed=3)):
            msg = orjson.loads(line)
            msg["ts"] = T0 + i * span_ms // frames
            if "cts" in msg:
                msg["cts"] = msg["ts"] - 1
            fh.write(orjson.dumps(msg) + b"\n")


@pytest.fixture(scope="module")
def hours_stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "five_hours.jsonl"
    stream_over_hours(path, symbols=3, frames=3000, span_ms=5 * HOUR_MS)
    return path


def test_a_replay_over_several_hours_keeps_exactly_the_last_hour(tmp_path: Path, hours_stream: Path):
    full, kept = tmp_path / "full.db", tmp_path / "kept.db"
    for db, env in ((full, clean_env()), (kept, clean_env(L2REC_DATA_RETENTION_HOURS="1"))):
        res = run_supervisor("--replay", str(hours_stream), "--category", "linear", "--db", str(db),
                             "--health-file", str(db) + ".json", env=env, timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
    everything = keys(full)
    newest = max(ts for _, _, ts in everything)  # type: ignore[type-var]
    horizon = newest - HOUR_MS  # type: ignore[operator]
    expected = {k for k in everything if k[2] >= horizon}  # type: ignore[operator]
    assert 0 < len(expected) < len(everything) / 3
    assert keys(kept) == expected
    health = orjson.loads((Path(str(kept) + ".json")).read_bytes())
    writer = next(a for name, a in health["actors"].items() if name.startswith("writer"))
    assert writer["retention"]["rows_removed"] == len(everything) - len(expected)
    assert writer["db"]["auto_vacuum"] == "incremental"


def test_retention_keys_are_checked_and_named():
    from l2rec.runtime.config import ConfigError, build_config

    assert build_config({"data_retention_hours": "0.05"}, {}, {}).data_retention_hours == 0.05
    for bad in (-1, "nan", "a day", True):
        with pytest.raises(ConfigError) as err:
            build_config({"data_retention_hours": bad}, {}, {})
        assert err.value.key == "data_retention_hours"
    with pytest.raises(ConfigError) as err:
        build_config({}, {"cleanup_interval_s": "0"}, {})
    assert err.value.key == "cleanup_interval_s"
