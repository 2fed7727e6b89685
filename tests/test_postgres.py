"""Issue 14: the PostgreSQL sink, against a real throwaway server (tests/pg_server.py), never a mock.

Without PostgreSQL's server binaries these tests skip, saying why; with ``L2REC_REQUIRE_POSTGRES=1`` (set by
``.ci/run``) that skip is a failure, so CI always runs them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest

from bench.make_stream import write_stream
from l2rec.messages.writer import GapRecord
from l2rec.runtime.config import ConfigError, build_config
from l2rec.storage.dburl import redact_url, scrub
from l2rec.storage.schema import ROW_COLUMNS
from tests.fakes.bybit_server import FakeBybit
from tests.helpers import DATA, ROOT, TABLE, clean_env, query, run_supervisor, wait_for
from tests.pg_server import PASSWORD, PgServer, unavailable_reason
from tests.recorder_process import RecorderProcess
from tests.reference import diff_row, expected_rows

NAUTILUS = DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data"
REQUIRED = os.environ.get("L2REC_REQUIRE_POSTGRES") == "1"
RETRIED = "database write failed; batch kept and retried"


def _need_server() -> None:
    reason = unavailable_reason()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"L2REC_REQUIRE_POSTGRES=1 but no PostgreSQL server can be started: {reason}")
        pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One throwaway server for the session (fsync off: a test server, speed over durability)."""
    _need_server()
    srv = PgServer(fsync=False)
    try:
        yield srv.start()
    finally:
        srv.close()


@pytest.fixture
def pg_url(pg: PgServer, request: pytest.FixtureRequest) -> str:
    """A fresh database of the session's server, named after the test; its URL holds the password."""
    return pg.create_database(re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:60])


def pg_query(url: str, sql: str, args: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


def pg_count(url: str) -> int:
    """Rows in the table; 0 while it does not exist yet (or the server is starting)."""
    import psycopg

    try:
        return int(pg_query(url, f"SELECT count(*) FROM {TABLE}")[0][0])
    except (psycopg.errors.UndefinedTable, psycopg.OperationalError):
        return 0


def iso(dt: object) -> str:
    """A timestamptz as SQLite's text (``2024-12-01T00:00:00.691Z``)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"  # type: ignore[attr-defined]


def pg_rows(url: str) -> dict[tuple, dict[str, object]]:
    """The table's rows as column -> value dicts (timestamp as SQLite's text), keyed by (symbol, sequence,
    exchange_timestamp)."""
    out = {}
    for row in pg_query(url, f"SELECT {', '.join(ROW_COLUMNS)} FROM {TABLE}"):
        d = dict(zip(ROW_COLUMNS, row, strict=True))
        d["timestamp"] = iso(d["timestamp"])
        out[(d["symbol"], d["sequence"], d["exchange_timestamp"])] = d
    return out


def no_password(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text


# -- no server needed -----------------------------------------------------------------------------------------

def test_urls_are_shown_without_their_password() -> None:
    url = "postgresql://rec:p%40ss-1@db.example:5432/l2?sslmode=require&password=other"
    shown = redact_url(url)
    assert shown == "postgresql://rec:***@db.example:5432/l2?sslmode=require&password=***"
    assert scrub(f"failed for {url}: p@ss-1 / other", url) == f"failed for {shown}: *** / ***"
    assert redact_url("postgres://rec@h/db") == "postgres://rec@h/db" and redact_url("./x.db") == "./x.db"


def test_rows_lost_at_a_stop_are_kept_in_the_working_directory_without_the_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from l2rec.storage.sidecar import read_sidecars, write_sidecar

    monkeypatch.chdir(tmp_path)
    url = f"postgresql://rec:{PASSWORD}@db.example/l2"
    gap = GapRecord("linear", "orderbook.50.BTCUSDT", "BTCUSDT", 50, 7, 9, "lost_at_stop", 1, 2)
    path = write_sidecar(url, 0, [gap])
    assert path is not None and path.parent == tmp_path and PASSWORD not in path.name
    assert path.name.startswith("l2rec-pg-") and PASSWORD not in path.read_text()
    assert read_sidecars(url) == ([gap], [path])
    assert read_sidecars(url.replace(PASSWORD, "other")) == ([gap], [path])  # the same server, whatever the password
    assert read_sidecars("postgresql://rec@elsewhere/l2") == ([], [])


def test_an_archive_dir_or_an_export_with_a_postgres_url_is_refused_naming_the_key() -> None:
    from l2rec.storage.export import open_readonly

    with pytest.raises(ConfigError) as err:
        build_config({}, {}, {"db_path": f"postgresql://u:{PASSWORD}@h/db", "archive_dir": "/tmp/a"})
    assert err.value.key == "archive_dir" and "SQLite" in str(err.value) and PASSWORD not in str(err.value)
    with pytest.raises(ConfigError) as err:
        open_readonly(f"postgresql://u:{PASSWORD}@h/db", TABLE)
    assert err.value.key == "db" and "SQLite" in str(err.value) and PASSWORD not in str(err.value)


def test_a_postgres_url_without_psycopg_exits_78_naming_the_extra(tmp_path: Path) -> None:
    # A psycopg that cannot be imported, ahead of the real one on the path: as if it were not installed.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "psycopg.py").write_text("raise ModuleNotFoundError(\"No module named 'psycopg'\")\n")
    url = f"postgresql://rec:{PASSWORD}@127.0.0.1:1/l2"
    res = run_supervisor("--replay", str(NAUTILUS), "--db", url, env=clean_env(PYTHONPATH=str(shim)))
    assert res.returncode == 78, res.stderr[-2000:]
    assert "db_path" in res.stderr and "pip install 'bybit-l2-recorder[postgres]'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and PASSWORD not in res.stderr


# -- a real server --------------------------------------------------------------------------------------------

def test_a_replay_into_postgres_holds_sqlites_rows_and_a_second_replay_adds_nothing(tmp_path: Path,
                                                                                      pg_url: str) -> None:
    stream = tmp_path / "linear" / "s.jsonl"
    write_stream(stream, 3, 6000, 5)  # 3 symbols, 6,000 frames
    for path in (NAUTILUS, stream):
        db = tmp_path / f"{path.stem}.db"
        assert run_supervisor("--replay", str(path), "--db", str(db)).returncode == 0
        res = run_supervisor("--replay", str(path), "--db", pg_url, "--health-file", str(tmp_path / "h.json"))
        assert res.returncode == 0, res.stderr[-3000:]
        no_password(res.stderr, (tmp_path / "h.json").read_text())
        assert "db=postgresql://postgres:***@127.0.0.1" in res.stderr  # the start line shows where, redacted
    want = {}
    for path in (NAUTILUS, stream):
        cols = ", ".join(ROW_COLUMNS)
        for row in query(tmp_path / f"{path.stem}.db", f"SELECT {cols} FROM {TABLE}"):
            d = dict(zip(ROW_COLUMNS, row, strict=True))
            want[(d["symbol"], d["sequence"], d["exchange_timestamp"])] = d
    got = pg_rows(pg_url)
    assert len(got) == len(want) == 6050
    assert got == want  # every column, bit for bit (floats as float64, the timestamp the same instant)
    assert pg_query(pg_url, f"SELECT count(*) FROM {TABLE}") == [(6050,)]

    again = run_supervisor("--replay", str(stream), "--db", pg_url, "--health-file", str(tmp_path / "h2.json"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rows written 0, already present 6000" in again.stderr
    assert pg_query(pg_url, f"SELECT count(*) FROM {TABLE}") == [(6050,)]
    writer = json.loads((tmp_path / "h2.json").read_text())["actors"]["writer:writer"]
    assert writer["rows_committed"] == 0 and writer["rows_offered"] == 6000
    assert writer["db_path"].startswith("postgresql://postgres:***@")


def test_the_password_can_come_from_pgpassword(pg: PgServer, pg_url: str) -> None:
    bare = pg_url.replace(f":{PASSWORD}@", "@")
    res = run_supervisor("--replay", str(NAUTILUS), "--db", bare, env=clean_env(PGPASSWORD=PASSWORD))
    assert res.returncode == 0, res.stderr[-2000:]
    assert pg_query(pg_url, f"SELECT count(*) FROM {TABLE}") == [(50,)]


def test_a_refused_login_exits_78_without_the_password(pg: PgServer, pg_url: str) -> None:
    wrong = pg_url.replace(PASSWORD, "Wr0ng-" + PASSWORD)
    res = run_supervisor("--replay", str(NAUTILUS), "--db", wrong)
    assert res.returncode == 78, res.stderr[-2000:]
    assert "config error: config key 'db_path'" in res.stderr and "password authentication failed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "***" in res.stderr
    no_password(res.stderr)


def test_a_table_of_incompatible_types_exits_78_naming_the_column(pg_url: str) -> None:
    pg_query(pg_url, f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, timestamp timestamptz NOT NULL, "
                     "symbol text NOT NULL, recv_time_ns integer)")
    res = run_supervisor("--replay", str(NAUTILUS), "--db", pg_url)
    assert res.returncode == 78, res.stderr[-2000:]
    assert "config key 'table_name'" in res.stderr and "column recv_time_ns is integer" in res.stderr
    no_password(res.stderr)
    cols = [c for (c,) in pg_query(pg_url, "SELECT column_name FROM information_schema.columns WHERE "
                                           "table_name = %s ORDER BY ordinal_position", (TABLE,))]
    assert cols == ["id", "timestamp", "symbol", "recv_time_ns"]  # refused before anything was changed


def test_an_older_table_gets_the_missing_columns_and_rows_a_check_refuses_are_counted(pg_url: str) -> None:
    from l2rec.storage.postgres import PgStore

    pg_query(pg_url, f"CREATE TABLE {TABLE} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
                     "timestamp text NOT NULL, symbol text NOT NULL, sequence bigint CHECK (sequence %% 2 = 0))")
    store = PgStore(pg_url, TABLE, recorder_id="t")
    try:
        assert "cross_sequence" in store.migration.added_columns and not store.migration.created_table
        assert store.write([row("BTCUSDT", u, 1_733_011_200_000 + u) for u in range(1, 11)]) == 5
        assert (store.rows_failed, store.rows_inserted) == (5, 5) and "check" in (store.last_row_error or "")
    finally:
        store.close()
    assert pg_query(pg_url, f"SELECT min(timestamp) FROM {TABLE}") == [("2024-12-01T00:00:00.002Z",)]


def test_a_lock_held_by_someone_else_is_a_warning_and_the_batch_is_retried(pg_url: str) -> None:
    import logging

    import psycopg

    from l2rec.storage.postgres import PgStore
    from l2rec.storage.sink import SinkUnavailable

    store = PgStore(pg_url, TABLE, recorder_id="t")
    other = psycopg.connect(pg_url)
    try:
        store.connection().execute("SET lock_timeout = '200ms'")  # 10 s in service
        other.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")  # a DBA's ALTER TABLE, say
        rows = [row("BTCUSDT", u, 1_733_011_200_000 + u) for u in range(1, 6)]
        with pytest.raises(SinkUnavailable) as err:
            store.write(rows)
        assert store.is_transient(err.value) and err.value.log_level == logging.WARNING
        assert "lock timeout" in str(err.value) and PASSWORD not in str(err.value)
        other.rollback()
        assert store.write(rows) == 5 and store.rows_inserted == 5
    finally:
        other.close()
        store.close()


def row(symbol: str, u: int, ts_ms: int) -> tuple[object, ...]:
    """A row as the book actor makes it (the columns a test needs; the rest NULL)."""
    from l2rec.book.rows import IsoMillis

    values: dict[str, object] = {
        "timestamp": IsoMillis()(ts_ms), "symbol": symbol, "exchange": "bybit", "bid_price_1": 100.0 + u % 7,
        "ask_price_1": 101.0 + u % 7, "update_id": u, "sequence_id": 10 * u, "data_quality_score": 1.0,
        "data_source": "live_trading", "sequence": u, "exchange_timestamp": ts_ms, "cross_sequence": 10 * u,
        "recv_time_ns": ts_ms * 1_000_000 + 5, "depth": 50, "category": "linear"}
    return tuple(values.get(c) for c in ROW_COLUMNS)


# The README's coverage query (section PostgreSQL): each recorder's gaps, and the rows the table holds
# inside each one, which another recorder recorded.
COVERAGE_SQL = """\
SELECT g.recorder_id, g.topic, g.reason, g.detected_at, g.recovered_at,
       (SELECT count(*) FROM l2_training_data_practical t
         WHERE t.symbol = g.symbol AND t.category = g.category AND t.depth = g.depth
           AND t.exchange_timestamp > g.detected_ns / 1000000
           AND t.exchange_timestamp < g.recovered_ns / 1000000) AS rows_from_others
FROM l2_gaps g
ORDER BY g.detected_ns"""


def test_two_sinks_on_one_table_keep_one_row_per_state_and_the_readme_query_shows_coverage(pg_url: str) -> None:
    from l2rec.storage.postgres import PgStore

    t0 = 1_733_011_200_000
    a = PgStore(pg_url, TABLE, recorder_id="host-a")
    b = PgStore(pg_url, TABLE, recorder_id="host-b")
    try:
        # B records u 1..100; A the same but for a u_jump gap between u 40 and 60 (detected at 40, recovered
        # by the snapshot at 60), interleaved as two live recorders' commits are
        gap = GapRecord("linear", "orderbook.50.BTCUSDT", "BTCUSDT", 50, 40, 45, "u_jump",
                        (t0 + 40) * 1_000_000, (t0 + 60) * 1_000_000)
        assert a.write([row("BTCUSDT", u, t0 + u) for u in range(1, 41)]) == 40
        assert b.write([row("BTCUSDT", u, t0 + u) for u in range(1, 71)]) == 30
        assert a.write([row("BTCUSDT", u, t0 + u) for u in range(60, 101)], [gap]) == 30
        assert b.write([row("BTCUSDT", u, t0 + u) for u in range(71, 101)]) == 0
        assert (a.rows_inserted, b.rows_inserted, a.rows_offered + b.rows_offered) == (70, 30, 181)
    finally:
        a.close()
        b.close()
    assert pg_query(pg_url, f"SELECT count(*), count(DISTINCT sequence), min(sequence), max(sequence) FROM {TABLE}"
                    ) == [(100, 100, 1, 100)]
    readme = (ROOT / "README.md").read_text()
    assert COVERAGE_SQL in readme
    got = pg_query(pg_url, COVERAGE_SQL)
    assert [(r[0], r[1], r[2], r[5]) for r in got] == [("host-a", "orderbook.50.BTCUSDT", "u_jump", 19)]


def test_the_sink_counts_the_rows_and_gap_rows_it_inserted_per_topic(pg_url: str) -> None:
    """What /metrics serves as l2rec_rows_total and l2rec_gaps_total: only what this sink's transactions
    inserted (not rows another recorder stored first, not a closing record that updated its gap's row)."""
    from l2rec.storage.postgres import PgStore

    t0 = 1_733_011_200_000
    a = PgStore(pg_url, TABLE, recorder_id="host-a")
    b = PgStore(pg_url, TABLE, recorder_id="host-b")
    try:
        opened = GapRecord("linear", "orderbook.50.ETHUSDT", "ETHUSDT", 50, 7, 9, "u_jump", t0 * 1_000_000, None)
        closed = GapRecord(*[getattr(opened, f) for f in opened.__slots__][:-1], (t0 + 5) * 1_000_000)
        downtime = GapRecord("linear", "orderbook.50.BTCUSDT", "BTCUSDT", 50, 1, 2, "downtime", 5, 6)
        b.write([row("BTCUSDT", u, t0 + u) for u in range(1, 11)])
        a.write([*(row("BTCUSDT", u, t0 + u) for u in range(1, 21)), *(row("ETHUSDT", u, t0 + u) for u in range(1, 6))],
                [opened])
        a.write([], [closed, downtime, opened])  # the closing record updates its row; the open one adds nothing
        # a constraint of the user's refusing some rows: the group is redone a row at a time
        pg_query(pg_url, f"ALTER TABLE {TABLE} ADD CONSTRAINT no_seven CHECK (sequence <> 27)")
        assert a.write([row("ETHUSDT", u, t0 + u) for u in range(26, 29)]) == 2
        assert a.committed.status() == {
            "rows_by_topic": {"orderbook.50.BTCUSDT": 10, "orderbook.50.ETHUSDT": 7},
            "gaps_by_topic": {"orderbook.50.ETHUSDT": {"u_jump": 1}, "orderbook.50.BTCUSDT": {"downtime": 1}}}
        assert b.committed.rows == {"orderbook.50.BTCUSDT": 10} and b.committed.gaps == {}
    finally:
        a.close()
        b.close()
    assert pg_query(pg_url, "SELECT recorder_id, topic, reason, recovered_ns IS NOT NULL FROM l2_gaps ORDER BY topic"
                    ) == [("host-a", "orderbook.50.BTCUSDT", "downtime", True),
                          ("host-a", "orderbook.50.ETHUSDT", "u_jump", True)]


def test_retention_deletes_old_rows_gaps_and_sessions_in_chunks(pg_url: str) -> None:
    from l2rec.storage.postgres import PgStore
    from l2rec.storage.retention import DELETE_CHUNK_ROWS, HOUR_MS

    t0 = 1_733_011_200_000
    step = 4 * HOUR_MS // 6000  # 6,000 rows a symbol over 4 hours
    store = PgStore(pg_url, TABLE, recorder_id="r", retention_hours=1.0, cleanup_interval_s=3600)
    try:
        rows = [row(sym, u, t0 + u * step) for u in range(1, 6001) for sym in ("BTCUSDT", "ETHUSDT")]
        old_gap = GapRecord("linear", "orderbook.50.BTCUSDT", "BTCUSDT", 50, 5, 9, "u_jump",
                            (t0 + 5 * step) * 1_000_000, (t0 + 9 * step) * 1_000_000)
        open_gap = GapRecord("linear", "orderbook.50.ETHUSDT", "ETHUSDT", 50, 7, None, "disconnect",
                             (t0 + 7 * step) * 1_000_000, None)
        store.write(rows, [old_gap, open_gap])
        steps = 1
        while not store.cleanup_step(t0 * 1_000_000, final=True):
            steps += 1
        status = store.status()["retention"]
    finally:
        store.close()
    horizon = t0 + 6000 * step - HOUR_MS
    kept = sum(1 for r in rows if r[ROW_COLUMNS.index("exchange_timestamp")] >= horizon)  # type: ignore[operator]
    assert pg_query(pg_url, f"SELECT count(*), min(exchange_timestamp) >= %s FROM {TABLE}", (horizon,)) == [
        (kept, True)]
    assert status["rows_removed"] == len(rows) - kept > 2 * DELETE_CHUNK_ROWS  # several chunks per symbol
    assert status["horizon_ms"] == horizon and status["cleanups"] == 1 and status["last_error"] is None
    assert pg_query(pg_url, "SELECT reason FROM l2_gaps") == [("disconnect",)]  # an open gap stays
    assert status["max_step_ms"] < 1000


def test_two_recorders_on_the_same_symbols_store_each_book_state_once(tmp_path: Path, pg_url: str) -> None:
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=5, seed=7) as srv:
        (tmp_path / "a").mkdir()
        a = RecorderProcess(tmp_path / "a", srv.url, "BTCUSDT,ETHUSDT", "--db", pg_url,
                            env={"L2REC_RECORDER_ID": "host-a"})
        b = None
        try:
            wait_for(lambda: pg_count(pg_url) >= 100, 60, "A's rows")
            (tmp_path / "b").mkdir()
            b = RecorderProcess(tmp_path / "b", srv.url, "BTCUSDT,ETHUSDT", "--db", pg_url,
                                env={"L2REC_RECORDER_ID": "host-b"})
            wait_for(lambda: b.log_events("shard started"), 60, "B's shard")
            wait_for(lambda: srv.total_connections >= 2, 60, "B's connection")
            sent = srv.sent_count()
            wait_for(lambda: srv.sent_count() > sent + 600, 60, "frames to both")
            assert a.stop() == 0  # B goes on alone: its rows are new again
            sent = srv.sent_count()
            wait_for(lambda: srv.sent_count() > sent + 200, 60, "frames to B alone")
            assert b.stop() == 0
        finally:
            a.kill()
            if b is not None:
                b.kill()
        records = srv.records()
    got = pg_rows(pg_url)
    by_conn: dict[str, list] = {}
    for r in records:
        by_conn.setdefault(r.conn_id, []).append(r)
    assert len(by_conn) == 2, "one connection per recorder"
    wants = [expected_rows(recs) for recs in by_conn.values()]  # each recorder's rows, recomputed
    states = {(k[0], k[1]) for want in wants for k in want}
    assert {(k[0], k[1]) for k in got} == states
    assert pg_query(pg_url, f"SELECT count(*), count(DISTINCT (symbol, sequence, cross_sequence)) FROM {TABLE}"
                    ) == [(len(states), len(states))]  # none doubled
    for key, g in got.items():
        matching = [w[key] for w in wants if key in w]
        assert matching and diff_row(g, matching[0]) == [], (key, matching and diff_row(g, matching[0]))
    sessions = pg_query(pg_url, "SELECT recorder_id, count(*), bool_and(ended_ns IS NOT NULL), bool_and(graceful = 1)"
                                " FROM l2_sessions GROUP BY recorder_id ORDER BY recorder_id")
    assert sessions == [("host-a", 1, True, True), ("host-b", 1, True, True)]
    # B's own gaps: at its start, from the table's last row (A's) to B's first row, one per topic; A
    # recorded that stretch, which the README's coverage query shows
    coverage = pg_query(pg_url, COVERAGE_SQL)
    assert sorted((r[0], r[1], r[2]) for r in coverage) == [
        ("host-b", "orderbook.50.BTCUSDT", "downtime"), ("host-b", "orderbook.50.ETHUSDT", "downtime")]
    assert all(r[5] > 0 for r in coverage), coverage


def test_a_server_unreachable_at_start_and_restarted_mid_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    _need_server()
    with PgServer(fsync=False) as own:  # a server of its own: this test stops it
        url = own.create_database("restart")
        own.stop()
        with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=5, seed=11) as srv:
            rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT,ETHUSDT", "--db", url,
                                  env={"L2REC_RECORDER_ID": "solo"})
            try:
                down = wait_for(lambda: rec.log_events("database unreachable at start; retrying"), 60, "start retries")
                assert down[0]["level"] == "ERROR" and "Connection refused" in str(down[0]["error"])
                own.start()
                wait_for(lambda: pg_count(url) >= 200, 60, "rows")
                own.stop("immediate")  # as a crash: the writer's connection is cut mid-stream
                failed = wait_for(lambda: rec.log_events(RETRIED), 60, "the writer's retries")
                assert failed[0]["level"] == "ERROR" and "***@127.0.0.1" in str(failed[0]["error"])
                sent = srv.sent_count()
                wait_for(lambda: srv.sent_count() > sent + 400, 60, "frames while the server is down")
                dump_down = rec.dump()
                assert dump_down["actors"]["writer:writer"]["state"] == "retrying"
                own.start()
                wait_for(lambda: rec.log_events("database writes resumed"), 60, "the writer to resume")
                sent = srv.sent_count()
                wait_for(lambda: srv.sent_count() > sent + 200, 60, "frames after the restart")
                assert rec.stop() == 0
            finally:
                rec.kill()
            records = srv.records()
        want = expected_rows(records)
        got = pg_rows(url)
        assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
        for key, w in want.items():
            assert diff_row(got[key], w) == [], key
        assert pg_query(url, f"SELECT count(*) FROM {TABLE}") == [(len(want),)]  # nothing doubled
        assert pg_query(url, "SELECT count(*) FROM l2_gaps") == [(0,)]
        assert pg_query(url, "SELECT recorder_id, graceful FROM l2_sessions") == [("solo", 1)]
    no_password(rec.stderr_text(), rec.log_file.read_text(), rec.health_file.read_text(), json.dumps(dump_down))
