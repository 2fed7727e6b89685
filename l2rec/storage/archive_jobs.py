"""One archive round: the rows of a table the archive does not hold yet, from SQLite to Parquet files.

A plain function that runs in the writer's archive process (``l2rec.storage.retainer`` submits it; at close
the writer runs it itself). It opens its own read connection, so the writer's commits never wait for it.

A round moves the table's :class:`~l2rec.storage.retention.ArchivedThrough` pair from (old cut, old max id)
to (new cut, new max id): it writes every row with ``exchange_timestamp < new cut`` and ``id <= new max
id`` that the old pair did not cover, i.e. the rows between the two cuts and the rows older than the old
cut recorded since the last round (a replay of old data). It works one (symbol, UTC hour) at a time:
- an hour that is closed goes to ``HH.parquet``, merged with what that file and the hour's parts held;
- an hour still open (retention shorter than the hour: its old rows must leave SQLite before it closes)
  goes to a part ``HH.part-CUT.parquet``; late rows for it are merged with its earlier parts into that one.
A round that fails raises; the writer retries the same round (same bounds, so the same file names), and the
files already written are merged again, never doubled.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2rec.storage.retention import HOUR_MS, archive_path, hour_start, hours_between, part_path, parts_of
from l2rec.storage.sqlite import symbols_of, table_columns

# Rows handed from SQLite to Arrow at a time (a busy symbol-hour is ~180k rows).
FETCH_ROWS = 20_000


@dataclass(frozen=True, slots=True)
class ArchiveRound:
    """What one round writes. ``dirty``: (symbol, hour) pairs with part files, merged into ``HH.parquet`` by
    this round if their hour is closed (``hour + 1 h <= closed_until_ms``)."""

    db_path: str
    table: str
    archive_dir: str
    key: tuple[str, ...]
    old_cut_ms: int
    old_max_id: int
    cut_ms: int
    max_id: int
    closed_until_ms: int
    dirty: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class HourWritten:
    """One file a round wrote: ``part`` when the hour is still open."""

    symbol: str
    hour_ms: int
    path: str
    part: bool
    rows: int  # rows this round took from SQLite
    rows_in_file: int
    bytes: int


@dataclass(frozen=True, slots=True)
class RoundDone:
    job: ArchiveRound
    written: tuple[HourWritten, ...] = field(default=())
    seconds: float = 0.0
    fallbacks: int = 0  # hours the ADBC reader could not read, read with sqlite3 instead

    @property
    def rows(self) -> int:
        return sum(w.rows for w in self.written)

    @property
    def bytes(self) -> int:
        return sum(w.bytes for w in self.written)


def _groups(conn: sqlite3.Connection, job: ArchiveRound) -> list[tuple[str, int]]:
    """The (symbol, hour) pairs that may hold rows of this round, plus the dirty pairs, in order."""
    out: set[tuple[str, int]] = set(job.dirty)
    oldest = oldest_hour(conn, job.table)
    if job.cut_ms > job.old_cut_ms and oldest is not None:
        hours = hours_between(max(job.old_cut_ms, oldest), job.cut_ms)
        for symbol in symbols_of(conn, job.table):
            for hour in hours:
                out.add((symbol, hour))
    if job.max_id > job.old_max_id and job.old_cut_ms > 0:
        # Rows older than the old cut recorded since the last round: a scan of the new ids only.
        for symbol, ts in conn.execute(
                f"SELECT DISTINCT symbol, exchange_timestamp - exchange_timestamp % {HOUR_MS} FROM {job.table} "
                "WHERE rowid > ? AND rowid <= ? AND exchange_timestamp < ?",
                (job.old_max_id, job.max_id, job.old_cut_ms)):
            out.add((str(symbol), int(ts)))
    return sorted(out, key=lambda g: (g[1], g[0]))


def _hour_sql(job: ArchiveRound, columns: Sequence[tuple[str, str]], symbol: str,
              hour: int) -> tuple[str, tuple[object, ...]]:
    """The query of the rows of (symbol, hour) this round covers and the old pair did not, in file order."""
    return (f"SELECT {', '.join(name for name, _ in columns)} FROM {job.table} WHERE symbol = ? AND "
            "exchange_timestamp >= ? AND exchange_timestamp < ? AND rowid <= ? AND (exchange_timestamp >= ? OR "
            "rowid > ?) ORDER BY exchange_timestamp, sequence",
            (symbol, hour, min(hour + HOUR_MS, job.cut_ms), job.max_id, job.old_cut_ms, job.old_max_id))


def read_hour_sqlite3(job: ArchiveRound, columns: Sequence[tuple[str, str]], symbol: str, hour: int,
                      busy_timeout_s: float = 5.0) -> Any:
    """The rows of (symbol, hour) of this round as an Arrow table, through Python's sqlite3 (~30 us a row:
    every value becomes a Python object on its way to Arrow)."""
    from l2rec.storage.archive import to_arrow

    sql, params = _hour_sql(job, columns, symbol, hour)
    with contextlib.closing(sqlite3.connect(job.db_path, timeout=busy_timeout_s)) as conn:
        cur = conn.execute(sql, params)

        def batches() -> Iterator[list[tuple[Any, ...]]]:
            while rows := cur.fetchmany(FETCH_ROWS):
                yield rows

        return to_arrow(columns, batches())


_ADBC_FIRST = "__l2rec_first"


def read_hour_adbc(job: ArchiveRound, columns: Sequence[tuple[str, str]], symbol: str, hour: int) -> Any:
    """The rows of (symbol, hour) of this round as an Arrow table, read by the ADBC SQLite driver straight
    into Arrow (~3x less CPU than :func:`read_hour_sqlite3`: no Python object per value).

    The driver infers each column's type from the first rows it sees, and a column NULL there (a feature
    the recorder does not fill yet) would be taken as int64 and refuse a double later: a first row of
    typed literals, marked and dropped, fixes every column's type. Rows are sorted in Arrow (stable), so
    the SQL needs no ORDER BY. Raises on anything unexpected; the caller then reads with sqlite3.

    Its SQLite is a second copy of the library: only for a process that has no other connection to the
    database open (the archive process), never the writer's (sqlite.org/howtocorrupt.html 2.2.1)."""
    import adbc_driver_sqlite.dbapi as adbc  # the parquet extra; ImportError means: read with sqlite3
    import pyarrow as pa
    import pyarrow.compute as pc

    from l2rec.storage.archive import arrow_type_name

    literal = {"int64": "0", "float64": "0.0", "string": "''"}
    names = [name for name, _ in columns]
    first = ", ".join(f"{literal[arrow_type_name(decl)]} AS {name}" for name, decl in columns)
    sql = (f"SELECT 1 AS {_ADBC_FIRST}, {first} UNION ALL SELECT 0, {', '.join(names)} FROM {job.table} "
           "WHERE symbol = ? AND exchange_timestamp >= ? AND exchange_timestamp < ? AND rowid <= ? AND "
           "(exchange_timestamp >= ? OR rowid > ?)")
    params = (symbol, hour, min(hour + HOUR_MS, job.cut_ms), job.max_id, job.old_cut_ms, job.old_max_id)
    with contextlib.closing(adbc.connect(job.db_path)) as conn, contextlib.closing(conn.cursor()) as cur:
        cur.execute(sql, params)
        table = cur.fetch_arrow_table()
    marks = table.column(_ADBC_FIRST)
    if table.num_rows == 0 or marks[0].as_py() != 1 or marks.null_count or pc.sum(marks).as_py() != 1:
        raise RuntimeError("the typed first row did not come first")
    schema = pa.schema([(name, getattr(pa, arrow_type_name(decl))()) for name, decl in columns])
    rows = table.slice(1).drop_columns([_ADBC_FIRST]).cast(schema)
    return rows.sort_by([("exchange_timestamp", "ascending"), ("sequence", "ascending")])


def run_round(job: ArchiveRound, busy_timeout_s: float = 5.0, arrow_reader: bool = False) -> RoundDone:
    """Write one round's files durably (``l2rec.storage.archive.write_file``); raises ArchiveError naming
    the path that failed (the files written before it stay: the retried round merges them again).

    ``arrow_reader`` (the archive process only, see :func:`read_hour_adbc`): read each hour through the
    ADBC SQLite driver, falling back to Python's sqlite3 for an hour it cannot read (counted in
    ``RoundDone.fallbacks``). Not connectorx, though it reads SQLite into Arrow at 40 % of the CPU too: it
    left ~3 threads behind per query (184 after 60 reads; 575 in the archive process of a live run), and
    read beside sqlite3 in one process, its second SQLite library broke the other's POSIX locks
    (sqlite.org/howtocorrupt.html 2.2.1; a test saw "disk I/O error")."""
    from l2rec.storage.archive import ArchiveError, write_file

    t0 = time.perf_counter()
    try:
        with contextlib.closing(sqlite3.connect(job.db_path, timeout=busy_timeout_s)) as conn:
            columns = table_columns(conn, job.table)
            groups = _groups(conn, job)
    except sqlite3.Error as exc:
        raise ArchiveError(Path(job.db_path), exc) from exc
    written: list[HourWritten] = []
    fallbacks = 0
    for symbol, hour in groups:
        final = archive_path(job.archive_dir, job.table, symbol, hour)
        table = None
        if arrow_reader:
            try:
                table = read_hour_adbc(job, columns, symbol, hour)
            except Exception:  # any failure of the fast path: the sqlite3 path below decides
                fallbacks += 1
        if table is None:
            try:
                table = read_hour_sqlite3(job, columns, symbol, hour, busy_timeout_s)
            except (ImportError, sqlite3.Error) as exc:
                raise ArchiveError(final, exc) from exc
        parts = parts_of(final)
        closed = hour + HOUR_MS <= job.closed_until_ms
        if closed:
            if not table.num_rows and not parts:
                continue
            target, consume = final, parts  # the hour's one file: what it held, its parts, the new rows
        else:
            if not table.num_rows:
                continue
            target = part_path(final, job.cut_ms)
            late = job.old_cut_ms > hour and _older_than(table, job.old_cut_ms)
            # Late rows may repeat rows of earlier parts (a replay): merged with them, deduplicated.
            consume = parts if late else [p for p in parts if p == target]
        w = write_file(target, table, job.key, consume=consume)
        written.append(HourWritten(symbol, hour, str(target), not closed, table.num_rows, w.rows_in_file, w.bytes))
    return RoundDone(job, tuple(written), time.perf_counter() - t0, fallbacks)


def _older_than(table: Any, cut_ms: int) -> bool:
    import pyarrow.compute as pc

    return bool(pc.any(pc.less(table.column("exchange_timestamp"), cut_ms)).as_py())


def dirty_closed(dirty: Sequence[tuple[str, int]], closed_until_ms: int | None) -> tuple[tuple[str, int], ...]:
    """The dirty (symbol, hour) pairs whose hour is closed: their parts are merged by the next round."""
    if closed_until_ms is None:
        return ()
    return tuple(sorted(g for g in dirty if g[1] + HOUR_MS <= closed_until_ms))


def oldest_hour(conn: sqlite3.Connection, table: str) -> int | None:
    """The hour of the table's oldest exchange_timestamp (one index seek per symbol)."""
    best: int | None = None
    for symbol in symbols_of(conn, table):
        row = conn.execute(f"SELECT min(exchange_timestamp) FROM {table} WHERE symbol = ? AND "
                           "exchange_timestamp IS NOT NULL", (symbol,)).fetchone()
        if row[0] is not None and (best is None or int(row[0]) < best):
            best = int(row[0])
    return None if best is None else hour_start(best)
