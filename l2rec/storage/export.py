"""``l2rec export``: any training table (old or new) to the archive's layout, as Parquet or CSV (gzip).

The same files the writer's archive makes (``{out}/{table}/date=YYYY-MM-DD/symbol=SYMBOL/HH.parquet``),
written the same way (durable, and merged with a file already there, deduplicated by the natural key), so
an export can fill or repair an archive, and an archive and an export can be read together.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2rec.runtime.config import ConfigError
from l2rec.storage.dburl import is_postgres_url, redact_url
from l2rec.storage.retention import archive_path

SUFFIX = {"parquet": "parquet", "csv": "csv.gz"}


@dataclass(slots=True)
class ExportProgress:
    """What an export did so far (given to the progress callback, returned at the end)."""

    rows: int = 0
    files: int = 0
    bytes: int = 0
    at: str = ""  # the file being written
    seconds: float = 0.0
    total_rows: int = 0  # rows in range, counted before the export starts (for the share done and the ETA)


def open_readonly(db: str, table: str) -> sqlite3.Connection:
    """The database, read-only (an export never creates or changes one); ConfigError naming ``db`` or
    ``table`` when it cannot be used."""
    if is_postgres_url(db):  # shown without its password
        raise ConfigError("db", redact_url(db), "l2rec export reads an SQLite database; for PostgreSQL use the "
                          "server's COPY (SELECT ...) TO or pg_dump")
    if not Path(db).is_file():
        raise ConfigError("db", db, "no such database file")
    try:
        # As a URI (mode=ro), so a path holding '?', '#' or '%' must be quoted: Path.as_uri() does it.
        conn = sqlite3.connect(f"{Path(db).absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
        cols = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    except sqlite3.Error as exc:
        raise ConfigError("db", db, f"cannot read the database: {exc}") from None
    missing = {"symbol", "exchange_timestamp"} - cols
    if missing:
        conn.close()
        raise ConfigError("table", table, "no such table" if not cols else
                          f"has no column {', '.join(sorted(missing))}: rows cannot be put into hours")
    return conn


def count_in_range(conn: sqlite3.Connection, table: str, symbols: Sequence[str] | None, since_ms: int | None,
                   until_ms: int | None) -> int:
    """The rows an export of this range writes (the recorder's time index covers the query: no table page
    is read), for the progress' share and ETA."""
    from l2rec.storage.sqlite import range_where

    where, params = range_where(symbols, since_ms, until_ms)
    return int(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", params).fetchone()[0])


def export(db: str, table: str, out: str, fmt: str = "parquet", symbols: Sequence[str] | None = None,
           since_ms: int | None = None, until_ms: int | None = None,
           progress: Callable[[ExportProgress], None] | None = None,
           clock: Callable[[], float] = time.monotonic) -> ExportProgress:
    """Write every (symbol, hour) of ``table`` in range to ``out``; returns the totals. Raises ConfigError
    (bad database or table, pyarrow missing) or ArchiveError (a file could not be written, with its path;
    the files written before it are complete)."""
    from l2rec.storage import schema
    from l2rec.storage.archive import to_arrow, write_file
    from l2rec.storage.sqlite import export_groups, table_columns

    if fmt not in SUFFIX:
        raise ConfigError("format", fmt, "must be parquet or csv")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("format", fmt, "export needs pyarrow: pip install 'bybit-l2-recorder[parquet]'") from None
    conn = open_readonly(db, table)
    t0 = clock()
    done = ExportProgress()
    key = tuple(schema.NATURAL_KEY)
    try:
        cols = table_columns(conn, table)
        if progress is not None:
            done.total_rows = count_in_range(conn, table, symbols, since_ms, until_ms)
        current: tuple[str, int] | None = None
        pieces: list[list[tuple[Any, ...]]] = []

        def flush() -> None:
            if current is None or not pieces:
                return
            path = archive_path(out, table, current[0], current[1], SUFFIX[fmt])
            done.at = str(path)
            written = write_file(path, to_arrow(cols, pieces), key, fmt)
            done.rows += written.rows_offered
            done.files += 1
            done.bytes += written.bytes
            done.seconds = clock() - t0
            if progress is not None:
                progress(done)

        for symbol, hour, rows in export_groups(conn, table, symbols, since_ms, until_ms):
            if (symbol, hour) != current:
                flush()
                current, pieces = (symbol, hour), []
            pieces.append(rows)
        flush()
    finally:
        conn.close()
    done.seconds = clock() - t0
    return done
