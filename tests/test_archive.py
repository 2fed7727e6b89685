"""The Parquet archive (``archive_dir``): closed hours to Hive-partitioned files, a row leaves SQLite only once
its file is durable, idempotent rewrites, failures that never stop recording or lose a row."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
ds = pytest.importorskip("pyarrow.dataset")

from l2rec.storage import schema  # noqa: E402
from l2rec.storage.archive import to_arrow, write_file  # noqa: E402
from l2rec.storage.archive_jobs import ArchiveRound, run_round  # noqa: E402
from l2rec.storage.retention import HOUR_MS, archive_path  # noqa: E402
from l2rec.storage.sqlite import Store, table_columns  # noqa: E402
from tests.helpers import TABLE, clean_env, run_supervisor, wait_for  # noqa: E402
from tests.test_retention import T0, hours_of_rows, make_row, run_cleanup  # noqa: E402

TS = schema.ROW_COLUMNS.index("exchange_timestamp")
SEQ = schema.ROW_COLUMNS.index("sequence")


def sqlite_keys(db: Path) -> set[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return set(c.execute(f"SELECT symbol, sequence, exchange_timestamp FROM {TABLE}"))


def archive_rows(archive: Path) -> list[tuple[object, ...]]:
    table = ds.dataset(str(archive / TABLE), format="parquet", partitioning="hive").to_table()
    return list(zip(*(table.column(c).to_pylist() for c in ("symbol", "sequence", "exchange_timestamp")),
                    strict=True))


def archived_store(tmp_path: Path, **kw: object) -> tuple[Store, Path, Path]:
    db, archive = tmp_path / "r.db", tmp_path / "archive"
    store = Store(str(db), TABLE, retention_hours=1, archive_dir=str(archive), archive_grace_s=60, **kw)  # type: ignore[arg-type]
    return store, db, archive


def test_closed_hours_go_to_parquet_and_leave_sqlite_only_once_archived(tmp_path: Path):
    store, db, archive = archived_store(tmp_path)
    rows = hours_of_rows(2000, 4 * HOUR_MS)  # 00:00 .. 03:59:52.8, two symbols
    store.write(rows)
    run_cleanup(store, final=True)  # archive every closed hour, then clean up: what the writer does at close
    store.close()
    newest = max(r[TS] for r in rows)  # type: ignore[type-var]
    horizon = newest - HOUR_MS  # type: ignore[operator]
    keys = {(r[1], r[SEQ], r[TS]) for r in rows}
    # Hours 00..02 are closed (03 is not: the newest row is not 60 s past its end); 03 stays in SQLite.
    closed = {k for k in keys if k[2] < T0 + 3 * HOUR_MS}  # type: ignore[operator]
    got = archive_rows(archive)
    assert len(got) == len(set(got)) and set(got) == closed
    assert sqlite_keys(db) == {k for k in keys if k[2] >= horizon}  # type: ignore[operator]
    files = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*.parquet"))
    assert files == [f"{TABLE}/date=2024-12-01/symbol={s}/{h:02d}.parquet" for s in ("BTCUSDT", "ETHUSDT")
                     for h in range(3)]
    # Columns: the table's, same names and types (REAL float64, INTEGER int64, TEXT string), NULLs kept,
    # rows sorted by (exchange_timestamp, sequence).
    f = pq.read_table(archive / files[0])
    with sqlite3.connect(db) as c:
        cols = table_columns(c, TABLE)
    assert f.column_names == [n for n, _ in cols]
    assert f.schema.field("bid_price_1").type == pa.float64() and f.schema.field("sequence").type == pa.int64()
    assert f.schema.field("symbol").type == pa.string() and f.schema.field("timestamp").type == pa.string()
    assert f.column("ask_price_5").null_count == f.num_rows  # NULL stays NULL
    ts = f.column("exchange_timestamp").to_pylist()
    assert ts == sorted(ts)


def test_crash_between_the_archive_write_and_the_delete_loses_nothing_and_doubles_nothing(tmp_path: Path):
    store, db, archive = archived_store(tmp_path)
    rows = hours_of_rows(500, 3 * HOUR_MS)
    store.write(rows)
    # The writer's order: plan the round, write its files durably, record it, delete. Stop after the files
    # ("crash").
    job = store.retention._next_round(0, final=True)
    assert job is not None and job.old_cut_ms == 0 and job.cut_ms == T0 + HOUR_MS  # one hour at a time
    done = run_round(job)
    assert done.rows == sum(w.rows_in_file for w in done.written) > 0
    store.close()  # the bookkeeping never happened
    assert len(sqlite_keys(db)) == len(rows)  # nothing left SQLite
    # Next start: the hour is written again (the union with the file already there), then deleted.
    store, db, archive = archived_store(tmp_path)
    run_cleanup(store, final=True)
    store.close()
    got = archive_rows(archive)
    assert len(got) == len(set(got))  # nothing doubled
    everything = {(r[1], r[SEQ], r[TS]) for r in rows}
    assert set(got) | sqlite_keys(db) == everything  # nothing lost
    assert set(got) & sqlite_keys(db) == {k for k in set(got) if k[2] >= max(r[TS] for r in rows) - HOUR_MS}  # type: ignore[operator]


def key_of(r: tuple[object, ...]) -> tuple[object, ...]:
    return (r[1], r[SEQ], r[TS])


def archive_files(archive: Path) -> list[str]:
    return sorted(p.relative_to(archive / TABLE).as_posix() for p in archive.rglob("*.parquet"))


def test_a_retention_shorter_than_an_hour_moves_old_rows_to_parts_then_the_closed_hour_to_one_file(tmp_path: Path):
    """Retention of 3 minutes with an archive: rows older than the horizon leave SQLite before their hour
    closes (the database stops growing), through part files; when the hour closes, its parts and its
    last rows become its one file."""
    db, archive = tmp_path / "r.db", tmp_path / "archive"
    store = Store(str(db), TABLE, retention_hours=0.05, archive_dir=str(archive), archive_grace_s=60)
    first = hours_of_rows(3000, 50 * 60_000)  # 00:00 .. 00:50 of two symbols: hour 00 is open
    store.write(first)
    run_cleanup(store, final=True)
    horizon = max(r[TS] for r in first) - 180_000  # type: ignore[type-var, operator]
    everything = {key_of(r) for r in first}
    assert sqlite_keys(db) == {k for k in everything if k[2] >= horizon}  # type: ignore[operator]
    got = archive_rows(archive)
    assert len(got) == len(set(got)) and set(got) == {k for k in everything if k[2] < horizon}  # type: ignore[operator]
    assert archive_files(archive) == [f"date=2024-12-01/symbol={s}/00.part-{horizon}.parquet"
                                      for s in ("BTCUSDT", "ETHUSDT")]
    assert store.status()["archive"]["hours_with_parts"] == 2  # type: ignore[index]
    # Replaying the same rows changes nothing: those that had left SQLite come back as late rows, merged.
    store.write(first)
    run_cleanup(store, final=True)
    assert sorted(archive_rows(archive)) == sorted(got)
    assert sqlite_keys(db) == {k for k in everything if k[2] >= horizon}  # type: ignore[operator]
    # Hour 01 goes past the grace: hour 00 is closed, one file per symbol, its parts gone.
    second = [make_row(10_000 + i, T0 + HOUR_MS + i * 1000, s) for s in ("BTCUSDT", "ETHUSDT") for i in range(600)]
    store.write(second)
    run_cleanup(store, final=True)
    store.close()
    everything |= {key_of(r) for r in second}
    horizon = T0 + HOUR_MS + 599_000 - 180_000
    got = archive_rows(archive)
    assert len(got) == len(set(got))
    assert sqlite_keys(db) == {k for k in everything if k[2] >= horizon}  # type: ignore[operator]
    assert set(got) == {k for k in everything if k[2] < horizon}  # type: ignore[operator]
    assert archive_files(archive) == sorted(
        [f"date=2024-12-01/symbol={s}/00.parquet" for s in ("BTCUSDT", "ETHUSDT")]
        + [f"date=2024-12-01/symbol={s}/01.part-{horizon}.parquet" for s in ("BTCUSDT", "ETHUSDT")])
    f = pq.read_table(archive / TABLE / "date=2024-12-01" / "symbol=BTCUSDT" / "00.parquet")
    assert f.num_rows == 3000 and f.column("exchange_timestamp").to_pylist() == sorted(
        f.column("exchange_timestamp").to_pylist())


def test_a_crash_after_a_part_is_written_redoes_the_same_round_and_doubles_nothing(tmp_path: Path):
    db, archive = tmp_path / "r.db", tmp_path / "archive"
    store = Store(str(db), TABLE, retention_hours=0.05, archive_dir=str(archive), archive_grace_s=60)
    rows = hours_of_rows(2000, 40 * 60_000)
    store.write(rows)
    job = store.retention._next_round(0, final=True)
    assert job is not None
    run_round(job)  # the files are durable; the round is not recorded ("crash")
    store.close()
    store = Store(str(db), TABLE, retention_hours=0.05, archive_dir=str(archive), archive_grace_s=60)
    store.write([make_row(50_000, T0 + 45 * 60_000)])  # the horizon moves: a new round would cut elsewhere
    run_cleanup(store, final=True)
    store.close()
    got = archive_rows(archive)
    assert len(got) == len(set(got))
    everything = {key_of(r) for r in rows} | {("BTCUSDT", 50_000, T0 + 45 * 60_000)}
    assert set(got) | sqlite_keys(db) == everything and not set(got) & sqlite_keys(db)
    assert {p.name for p in (archive / TABLE).rglob("*.parquet")} == {f"00.part-{job.cut_ms}.parquet",
                                                                       f"00.part-{T0 + 42 * 60_000}.parquet"}


def test_rows_of_an_archived_hour_recorded_later_are_merged_into_its_file(tmp_path: Path):
    store, db, archive = archived_store(tmp_path)
    rows = hours_of_rows(500, 3 * HOUR_MS)
    store.write(rows)
    run_cleanup(store, final=True)
    late = [make_row(90_000 + i, T0 + 7 + i, "BTCUSDT") for i in range(5)]  # hour 00, archived and gone
    store.write(late)
    run_cleanup(store, final=True)
    store.close()
    f = pq.read_table(archive / TABLE / "date=2024-12-01" / "symbol=BTCUSDT" / "00.parquet")
    hour_00 = [r for r in rows if r[1] == "BTCUSDT" and r[TS] < T0 + HOUR_MS]  # type: ignore[operator]
    assert f.num_rows == len(hour_00) + 5
    assert {key_of(r) for r in late} <= set(archive_rows(archive)) and not {key_of(r) for r in late} & sqlite_keys(db)


def test_an_hour_written_twice_is_one_file_with_the_union_deduplicated_by_the_natural_key(tmp_path: Path):
    db = tmp_path / "r.db"
    Store(str(db), TABLE).close()
    with sqlite3.connect(db) as c:
        cols = table_columns(c, TABLE)
    names = [n for n, _ in cols]

    def table_of(us: range) -> object:
        return to_arrow(cols, [[tuple(dict(zip(schema.ROW_COLUMNS, make_row(u, T0 + u), strict=True)).get(n)
                                      for n in names) for u in us]])

    path = archive_path(tmp_path / "a", TABLE, "BTCUSDT", T0)
    write_file(path, table_of(range(1, 101)), schema.NATURAL_KEY)
    w = write_file(path, table_of(range(51, 151)), schema.NATURAL_KEY)  # 50 again, 50 new
    assert w.rows_in_file == 150
    f = pq.read_table(path)
    assert f.column("sequence").to_pylist() == list(range(1, 151))
    assert [p.name for p in path.parent.iterdir()] == ["00.parquet"]  # no temp file left behind


def test_an_archive_dir_that_cannot_be_written_is_an_error_rows_stay_and_recording_goes_on(tmp_path: Path, caplog):
    store, db, archive = archived_store(tmp_path, cleanup_interval_s=60)
    archive.mkdir()
    if os.geteuid() == 0:  # root writes through any mode bits: a file where the table's directory goes
        blocker = archive / TABLE
        blocker.write_text("")
    else:
        blocker = archive
        archive.chmod(0o500)
    rows = hours_of_rows(300, 3 * HOUR_MS)
    with caplog.at_level(logging.ERROR, logger="recorder.storage"):
        store.write(rows)
        wait_for(lambda: store.cleanup_step(1) and store.retention.archive_failures, 10, "the archive failure")
    errors = [r for r in caplog.records if "archive write failed" in r.getMessage()]
    assert errors and errors[0].levelno == logging.ERROR
    assert str(archive / TABLE) in str(errors[0].fields["path"])  # type: ignore[attr-defined]
    assert len(sqlite_keys(db)) == len(rows)  # older than the horizon, but not archived: kept
    store.write([make_row(10_000, T0 + 3 * HOUR_MS)])  # recording goes on
    assert store.status()["archive"]["failures"] >= 1  # type: ignore[index]
    # Fixed: the next attempt (after cleanup_interval_s) archives, and only then do rows leave.
    if blocker == archive:
        archive.chmod(0o700)
    else:
        blocker.unlink()
    later = 61 * 10**9
    wait_for(lambda: store.cleanup_step(later) and store.retention.files_written >= 2, 20, "the retried archive")
    run_cleanup(store, now_ns=later, final=True)
    store.close()
    assert len(archive_rows(archive)) + len(sqlite_keys(db)) - len(
        set(archive_rows(archive)) & sqlite_keys(db)) == len(rows) + 1


def test_a_full_disk_in_the_archive_is_critical_with_the_path_and_loses_nothing(tmp_path: Path, caplog):
    """The archive's disk is full (its temporary file is /dev/full, which refuses every write with ENOSPC):
    CRITICAL naming the file, every row stays in SQLite, and the next start archives them all, once."""
    store, db, archive = archived_store(tmp_path)
    rows = hours_of_rows(300, 3 * HOUR_MS)
    store.write(rows)
    target = archive_path(archive, TABLE, "BTCUSDT", T0)
    target.parent.mkdir(parents=True)
    full = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # at close the writer's own process writes
    full.symlink_to("/dev/full")
    with caplog.at_level(logging.ERROR, logger="recorder.storage"):
        run_cleanup(store, final=True)
    store.close()
    critical = [r for r in caplog.records if "archive write failed" in r.getMessage()]
    assert critical and critical[0].levelno == logging.CRITICAL
    assert str(target) == critical[0].fields["path"]  # type: ignore[attr-defined]
    assert len(sqlite_keys(db)) == len(rows)  # nothing left SQLite
    assert not full.exists()  # the failed write's temporary name is gone (here: the link to /dev/full)
    store, db, archive = archived_store(tmp_path)
    run_cleanup(store, final=True)
    store.close()
    got = archive_rows(archive)
    assert len(got) == len(set(got)) and set(got) | sqlite_keys(db) == {key_of(r) for r in rows}


def test_archive_dir_without_pyarrow_exits_78_naming_the_extra(tmp_path: Path):
    # A pyarrow that cannot be imported, ahead of the real one on the path: as if it were not installed.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pyarrow.py").write_text("raise ModuleNotFoundError(\"No module named 'pyarrow'\")\n")
    env = clean_env(L2REC_ARCHIVE_DIR=str(tmp_path / "a"), PYTHONPATH=str(shim))
    res = run_supervisor("--db", str(tmp_path / "r.db"), "--replay", "tests/data/"
                         "nautilus_trader__2024-12-01_XRPUSDT_ob500.data", env=env, timeout=60)
    assert res.returncode == 78, res.stderr[-2000:]
    assert "archive_dir" in res.stderr and "bybit-l2-recorder[parquet]" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_replay_with_an_archive_is_readable_as_one_dataset_with_the_hot_table(tmp_path: Path):
    from tests.test_retention import stream_over_hours

    stream = tmp_path / "s.jsonl"
    stream_over_hours(stream, symbols=2, frames=1500, span_ms=4 * HOUR_MS)
    db, archive = tmp_path / "r.db", tmp_path / "archive"
    res = run_supervisor("--replay", str(stream), "--category", "linear", "--db", str(db), "--health-file",
                         str(tmp_path / "h.json"),
                         env=clean_env(L2REC_DATA_RETENTION_HOURS="1", L2REC_ARCHIVE_DIR=str(archive)), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    got = archive_rows(archive)
    hot = sqlite_keys(db)
    assert len(got) == len(set(got))
    # Every row is in the archive or SQLite (the overlap: archived hours not yet past the horizon).
    full = tmp_path / "full.db"
    res = run_supervisor("--replay", str(stream), "--category", "linear", "--db", str(full), "--health-file",
                         str(tmp_path / "h2.json"), env=clean_env(), timeout=120)
    assert res.returncode == 0
    assert set(got) | hot == sqlite_keys(full)
    newest = max(k[2] for k in hot)  # type: ignore[type-var]
    # SQLite holds exactly the rows at or after the horizon (newest - 1 h) ...
    assert hot == {k for k in sqlite_keys(full) if k[2] >= newest - HOUR_MS}  # type: ignore[operator]
    # ... and the archive every row of each closed hour (its end + the 60 s grace <= the newest row)
    closed = {k for k in sqlite_keys(full)
              if (k[2] // HOUR_MS + 1) * HOUR_MS + 60_000 <= newest}  # type: ignore[operator]
    assert closed and closed <= set(got)
    # replaying the same file again changes nothing in either place
    res = run_supervisor("--replay", str(stream), "--category", "linear", "--db", str(db), "--health-file",
                         str(tmp_path / "h3.json"),
                         env=clean_env(L2REC_DATA_RETENTION_HOURS="1", L2REC_ARCHIVE_DIR=str(archive)), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(archive_rows(archive)) == sorted(got) and sqlite_keys(db) == hot


def test_a_round_over_a_table_without_rows_writes_nothing(tmp_path: Path):
    db = tmp_path / "r.db"
    Store(str(db), TABLE).close()
    job = ArchiveRound(str(db), TABLE, str(tmp_path / "a"), tuple(schema.NATURAL_KEY), 0, 0, T0 + HOUR_MS, 0,
                       T0 + HOUR_MS)
    assert run_round(job).written == () and not (tmp_path / "a").exists()


# -- l2rec export ----------------------------------------------------------------------------------------

def l2rec(*args: str) -> object:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "l2rec", *args], capture_output=True, text=True, timeout=120,
                          env=clean_env())


def test_export_writes_an_old_seed_table_in_the_archive_layout_as_parquet_or_csv(tmp_path: Path):
    from tests.test_storage import SEED_DDL

    db = tmp_path / "seed.db"
    with sqlite3.connect(db) as c:
        c.execute(SEED_DDL)  # the seed's table, as data_ingestor.py left it: no index, no key
        c.execute(f"ALTER TABLE {TABLE} ADD COLUMN sequence INTEGER")
        c.execute(f"ALTER TABLE {TABLE} ADD COLUMN exchange_timestamp INTEGER")
        c.executemany(f"INSERT INTO {TABLE} (timestamp, symbol, bid_price_1, sequence, exchange_timestamp) "
                      "VALUES (?,?,?,?,?)", [("t", s, 1.5, u, T0 + u * 60_000) for s in ("BTCUSDT", "ETHUSDT")
                                             for u in range(120)])
        c.execute(f"INSERT INTO {TABLE} (timestamp, symbol) VALUES ('no exchange time', 'BTCUSDT')")
    out = tmp_path / "out"
    res = l2rec("export", "--db", str(db), "--out", str(out), "--symbols", "BTCUSDT")
    assert res.returncode == 0, res.stderr  # type: ignore[attr-defined]
    assert res.stderr == ""  # type: ignore[attr-defined]  # progress only on a terminal
    assert "exported 120 rows to 2 files" in res.stdout  # type: ignore[attr-defined]
    t = ds.dataset(str(out / TABLE), format="parquet", partitioning="hive").to_table()
    assert t.column("sequence").to_pylist() == list(range(120))
    assert set(t.column("symbol").to_pylist()) == {"BTCUSDT"}
    res = l2rec("export", "--db", str(db), "--out", str(out), "--format", "csv", "--since", "2024-12-01T01:00Z",
                "--until", "2024-12-01T01:30")
    assert res.returncode == 0, res.stderr  # type: ignore[attr-defined]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.csv.gz"))
    assert files == [f"{TABLE}/date=2024-12-01/symbol={s}/01.csv.gz" for s in ("BTCUSDT", "ETHUSDT")]
    import pyarrow.csv as pcsv

    with pa.CompressedInputStream(pa.OSFile(str(out / files[0])), "gzip") as fh:
        rows = pcsv.read_csv(fh)
    assert rows.column("sequence").to_pylist() == list(range(60, 90))


def test_export_twice_and_over_an_archive_doubles_nothing(tmp_path: Path):
    store, db, archive = archived_store(tmp_path)
    rows = hours_of_rows(400, 3 * HOUR_MS)
    store.write(rows)
    run_cleanup(store, final=True)
    store.close()
    for _ in range(2):  # the archive's hours again, plus what is still only in SQLite
        res = l2rec("export", "--db", str(db), "--out", str(archive))
        assert res.returncode == 0, res.stderr  # type: ignore[attr-defined]
    got = archive_rows(archive)
    assert len(got) == len(set(got)) == len(rows)


def test_export_with_a_bad_flag_exits_78_naming_it(tmp_path: Path):
    res = l2rec("export", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path))
    assert res.returncode == 78 and "'db'" in res.stderr  # type: ignore[attr-defined]
    Store(str(tmp_path / "r.db"), TABLE).close()
    res = l2rec("export", "--db", str(tmp_path / "r.db"), "--out", str(tmp_path), "--until", "soon")
    assert res.returncode == 78 and "'until'" in res.stderr  # type: ignore[attr-defined]
    res = l2rec("export", "--db", str(tmp_path / "r.db"), "--out", str(tmp_path), "--table", "nope")
    assert res.returncode == 78 and "'table'" in res.stderr  # type: ignore[attr-defined]


# -- the README's readers ----------------------------------------------------------------------------------

def readme_sql() -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index("CREATE VIEW l2 AS")
    return text[start:text.index("```", start)]


def archive_with_parts(tmp_path: Path) -> tuple[Path, Path, set[tuple[object, ...]]]:
    """An archive holding a closed hour (00.parquet) and parts of an open one, and its hot table."""
    db, archive = tmp_path / "r.db", tmp_path / "archive"
    store = Store(str(db), TABLE, retention_hours=0.05, archive_dir=str(archive), archive_grace_s=60)
    rows = [make_row(i + 1, T0 + i * 2000, s) for s in ("BTCUSDT", "ETHUSDT") for i in range(2400)]  # 00:00-01:20
    for i in range(0, len(rows), 600):
        store.write(rows[i:i + 600])
        run_cleanup(store, final=True)
    store.close()
    names = {p.name for p in archive.rglob("*.parquet")}
    assert "00.parquet" in names and any(n.startswith("01.part-") for n in names)
    return db, archive, {key_of(r) for r in rows}


def test_duckdb_reads_the_archive_and_the_readme_query_gives_every_row_once(tmp_path: Path):
    duckdb = pytest.importorskip("duckdb")
    db, archive, everything = archive_with_parts(tmp_path)
    con = duckdb.connect()
    files = f"{archive}/{TABLE}/*/*/*.parquet"
    n, dates = con.execute(f"SELECT count(*), min(date) FROM read_parquet('{files}', hive_partitioning = true, "
                           "union_by_name = true)").fetchone()
    assert n == len(archive_rows(archive)) and str(dates) == "2024-12-01"
    # The README's view over the archive and the hot table (ATTACHed there with DuckDB's sqlite extension,
    # which needs the internet to install: here the same rows are handed over as an Arrow table).
    with sqlite3.connect(db) as c:
        cols = table_columns(c, TABLE)
        hot_rows = to_arrow(cols, [c.execute(f"SELECT * FROM {TABLE}").fetchall()])  # noqa: F841 (read by duckdb)
    sql = readme_sql().replace("archive/l2_training_data_practical", f"{archive}/{TABLE}").replace(
        "hot.l2_training_data_practical", "hot_rows")
    con.execute(sql)
    got = con.execute("SELECT symbol, sequence, exchange_timestamp FROM l2").fetchall()
    assert len(got) == len(set(got)) and set(got) == everything


def test_polars_scans_the_archive_as_one_dataset(tmp_path: Path):
    pl = pytest.importorskip("polars")
    _, archive, _ = archive_with_parts(tmp_path)
    frame = pl.scan_parquet(f"{archive}/{TABLE}/**/*.parquet", hive_partitioning=True).collect()
    assert sorted(zip(frame["symbol"], frame["sequence"], frame["exchange_timestamp"], strict=True)) == sorted(
        archive_rows(archive))


ORPHAN_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tests.test_retention import hours_of_rows
from l2rec.storage.sqlite import Store
from l2rec.storage.retention import HOUR_MS
store = Store({db!r}, {table!r}, retention_hours=1, archive_dir={archive!r})
store.write(hours_of_rows(200, 3 * HOUR_MS))
store.cleanup_step(1)  # submits a round: the archive process starts
print(*store.retention._executor._processes, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the writer killed (a hang the root ended)
"""


def test_the_archive_process_ends_with_a_killed_writer(tmp_path: Path):
    import subprocess
    import sys

    import psutil

    root = str(Path(__file__).resolve().parent.parent)
    script = ORPHAN_SCRIPT.format(root=root, db=str(tmp_path / "r.db"), table=TABLE, archive=str(tmp_path / "a"))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root)
    pids = [int(p) for p in res.stdout.split()]
    assert len(pids) == 1, res.stderr[-2000:]
    wait_for(lambda: not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == psutil.STATUS_ZOMBIE,
             15, "the archive process to end")


def _round_files(tmp_path: Path, name: str, arrow_reader: bool) -> tuple[int, dict[str, object]]:
    """Every hour of the table at tmp_path/r.db archived by one round into tmp_path/name; the fallbacks and
    each file's table."""
    archive = tmp_path / name
    job = ArchiveRound(str(tmp_path / "r.db"), TABLE, str(archive), tuple(schema.NATURAL_KEY), 0, 0,
                       T0 + 3 * HOUR_MS, 10**9, T0 + 3 * HOUR_MS)
    done = run_round(job, arrow_reader=arrow_reader)
    files = sorted(archive.rglob("*.parquet"))
    return done.fallbacks, {p.relative_to(archive).as_posix(): pq.read_table(p) for p in files}


def test_the_archive_process_reader_writes_the_same_files_as_sqlite3(tmp_path: Path) -> None:
    """The archive process reads SQLite straight into Arrow (ADBC): the same files, bit for bit in content,
    as through Python's sqlite3, including columns NULL in an hour's first rows and filled later (the
    driver infers types from what it sees first) and rows stored out of time order."""
    store, db, _ = archived_store(tmp_path)
    rows = hours_of_rows(9000, 3 * HOUR_MS)  # 3,000 rows an hour a symbol
    late = [make_row(10**6 + i, T0 + 17 * i, "BTCUSDT") for i in range(50)]  # hour 0, recorded last
    store.write(rows + late)
    store.close()
    with sqlite3.connect(db) as c:  # a feature NULL in each hour's first 2,000 rows, filled after them
        c.execute(f"UPDATE {TABLE} SET microprice = 1.25 + sequence / 1e6 WHERE sequence % 3000 > 2000 "
                  "AND sequence < 10000")
    fallbacks, fast = _round_files(tmp_path, "fast", arrow_reader=True)
    assert fallbacks == 0
    _, plain = _round_files(tmp_path, "plain", arrow_reader=False)
    assert list(fast) == list(plain) and len(fast) == 6
    for path, table in plain.items():
        assert fast[path].schema == table.schema and fast[path].equals(table), path
    microprice = pa.concat_tables(list(fast.values())).column("microprice")
    assert 0 < microprice.null_count < len(microprice)


def test_without_the_adbc_driver_the_archive_process_reads_with_sqlite3(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, _ = archived_store(tmp_path)
    store.write(hours_of_rows(200, 3 * HOUR_MS))
    store.close()
    monkeypatch.setitem(__import__("sys").modules, "adbc_driver_sqlite.dbapi", None)  # import fails
    fallbacks, fast = _round_files(tmp_path, "fast", arrow_reader=True)
    _, plain = _round_files(tmp_path, "plain", arrow_reader=False)
    assert fallbacks == 6  # every hour, counted (the dump's archive.reader_fallbacks)
    assert list(fast) == list(plain) and all(fast[p].equals(t) for p, t in plain.items())
