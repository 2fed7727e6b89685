"""PostgreSQL storage: the same table as SQLite's, on a server many recorders share.

Writes: one transaction per group of batches. The rows go by binary COPY into a temporary staging table
(``ON COMMIT DELETE ROWS``, made once per connection), then ``INSERT ... SELECT ... ON CONFLICT (natural
key) DO NOTHING`` moves them into the table: a row already there (a resent batch, a second replay, the
same book state recorded by another recorder) is skipped, and only that; a row another constraint refuses
makes the group be redone a row at a time (savepoints), so that every other row is stored and each refused
one counted, as SQLite's sink does. Peers build multi-row INSERT strings and lose a whole batch on one
duplicate key; COPY is also the cheapest way in (no SQL text per row, no per-row round trip).

Types: ``REAL`` columns are ``double precision``, ``INTEGER`` ``bigint`` and ``timestamp`` (the seed's
``DATETIME``, an ISO string in SQLite) is ``timestamptz``: the same instant, with time arithmetic and
8 bytes instead of 24. An existing table is checked: a column whose type cannot hold our values exactly
(``integer`` for ``recv_time_ns``, ``real`` for prices) is refused with exit 78; missing columns are added,
nothing is dropped.

Connections fail: a server restarting, a network cut. Every such error becomes
:class:`~l2rec.storage.sink.SinkUnavailable` (transient; the writer keeps the batch and retries with
backoff, reconnecting here), with the server's message scrubbed of the password. A refused login is a
configuration error (exit 78).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from l2rec.book.rows import IsoMillis
from l2rec.messages.writer import GapRecord, SessionRecord
from l2rec.runtime.config import ConfigError
from l2rec.runtime.logs import RateLimited
from l2rec.storage.dburl import redact_url, scrub
from l2rec.storage.retention import DELETE_CHUNK_ROWS, cleanup_due, horizon_ms
from l2rec.storage.schema import (
    ADDED_COLUMNS,
    ALWAYS_SET,
    GAPS_TABLE,
    ROW_COLUMNS,
    SEED_COLUMNS,
    SESSIONS_TABLE,
    conflict_target,
    index_ddl,
)
from l2rec.storage.sink import CommitCounts, LastRow, SinkUnavailable
from l2rec.storage.sqlite import SchemaError

log = logging.getLogger("recorder.storage")

Conn = psycopg.Connection[tuple[Any, ...]]

# SQLite's declared type (first word) -> the PostgreSQL type a new table gets.
PG_TYPES = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text", "DATETIME": "timestamptz"}
# The types an existing column may have for each kind: they hold every value of ours exactly. Refused, for
# example: integer (recv_time_ns is ~1.7e18), real (float4 rounds prices), double precision for an INTEGER
# column (nanoseconds past 2^53 lose their last digits), numbers for text.
ACCEPTED_TYPES = {
    "INTEGER": ("bigint", "numeric"),
    "REAL": ("double precision", "numeric"),
    "TEXT": ("text", "character varying"),
    "DATETIME": ("timestamp with time zone", "timestamp without time zone", "text", "character varying"),
}
# The staging table's types: what COPY sends (binary), per kind. The timestamp goes as the row's ISO text
# and is cast by the server on the way into the table.
STAGE_TYPES = {"INTEGER": "int8", "REAL": "float8", "TEXT": "text", "DATETIME": "text"}
STAGE_TABLE = "l2rec_stage"
QUOTED_COLUMNS = ", ".join(f'"{c}"' for c in ROW_COLUMNS)

DECLARED = {name: decl.split()[0] for name, decl in (*SEED_COLUMNS, *ADDED_COLUMNS)}

# libpq's defaults are no connect timeout and no keepalives: a server gone without a word (a host down,
# a cut cable) would hold the writer in a read forever. Used unless the URL says otherwise.
CONNECT_TIMEOUT_S = 10
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3"}

# What a server says when it refuses the login or the database itself: no retry will change that.
REFUSED = ("password authentication failed", "no password supplied", "authentication failed",
           "no pg_hba.conf entry", "does not exist", "permission denied", "password is required",
           "server does not support ssl", "certificate")
# Statements a concurrent transaction can make fail, that succeed when retried.
RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.LockNotAvailable)
# A row the table refuses (a CHECK, a NOT NULL, another unique index, a value its column cannot hold).
ROW_REFUSALS = (psycopg.IntegrityError, psycopg.DataError)

CLEANUP_BUDGET_S = 0.025  # as SQLite's: a commit never waits long behind retention
LOCK_TIMEOUT = "1s"  # a cleanup chunk never waits long for another recorder's delete of the same rows
WRITE_LOCK_TIMEOUT = "10s"  # below heartbeat_timeout_s (30 s by default)


def default_recorder_id() -> str:
    """``host:pid`` of the recorder: the writer's parent is the root process (the pid its start line logs)."""
    return f"{socket.gethostname()}:{os.getppid()}"


def one_line(text: str) -> str:
    """A server's message (several lines: ERROR, DETAIL, HINT) as one log-friendly line."""
    return re.sub(r"\s+", " ", text).strip()


def _is_refusal(message: str) -> bool:
    low = message.lower()
    return ("connection failed" in low and any(r in low for r in REFUSED)) or "password authentication" in low


def connect(url: str, *, connect_timeout_s: float | None = None) -> Conn:
    """A connection to the server ``url`` names, in autocommit mode: every transaction is an explicit
    ``conn.transaction()`` block, so none is ever left open by a lone query. Raises ConfigError (naming
    ``db_path``, the URL without its password) when the server refuses the login or the database,
    :class:`SinkUnavailable` when it cannot be reached now."""
    shown = redact_url(url)
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError("db_path", shown, f"not a valid PostgreSQL URL: {one_line(scrub(str(exc), url))}") from None
    extra: dict[str, Any] = {k: v for k, v in KEEPALIVES.items() if k not in given}
    if "connect_timeout" not in given or connect_timeout_s is not None:
        # libpq waits at least 2 s; a given timeout (the root's quick checks) wins over the URL's
        extra["connect_timeout"] = max(2, round(connect_timeout_s or CONNECT_TIMEOUT_S))
    if "application_name" not in given:
        extra["application_name"] = "l2rec"
    try:
        return psycopg.connect(url, autocommit=True, **extra)
    except psycopg.Error as exc:
        message = one_line(scrub(str(exc), url))
        if _is_refusal(message):
            raise ConfigError("db_path", shown, f"the server refused the connection: {message}") from None
        raise SinkUnavailable(f"cannot connect to {shown}: {message}") from None


# --- schema ------------------------------------------------------------------------------------------------

def table_ddl(table: str) -> str:
    """The training table, SQLite's columns with PostgreSQL's types."""
    cols = []
    for name, decl in (*SEED_COLUMNS, *ADDED_COLUMNS):
        kind, _, rest = decl.partition(" ")
        if "PRIMARY KEY" in rest:
            cols.append(f"{name} bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        else:
            cols.append(f"{name} {PG_TYPES[kind]} {rest}".rstrip())
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    " + ",\n    ".join(cols) + "\n)"


# l2_gaps and l2_sessions as in SQLite, plus the recorder that wrote each row: many recorders share them,
# and each one's gaps and sessions are its own (their unique keys lead with recorder_id).
GAPS_DDL = f"""
CREATE TABLE IF NOT EXISTS {GAPS_TABLE} (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    recorder_id text NOT NULL,
    exchange text NOT NULL DEFAULT 'bybit',
    category text NOT NULL,
    topic text NOT NULL,
    symbol text NOT NULL,
    depth bigint NOT NULL,
    last_u bigint,
    got_u bigint,
    reason text NOT NULL,
    detected_at timestamptz NOT NULL,
    detected_ns bigint NOT NULL,
    recovered_at timestamptz,
    recovered_ns bigint
)"""
SESSIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SESSIONS_TABLE} (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    recorder_id text NOT NULL,
    shard bigint NOT NULL,
    session bigint NOT NULL,
    url text NOT NULL,
    topics bigint NOT NULL,
    connected_at timestamptz NOT NULL,
    connected_ns bigint NOT NULL,
    ended_at timestamptz,
    ended_ns bigint,
    reason text,
    graceful bigint
)"""
SIDE_INDEXES = (
    f"CREATE UNIQUE INDEX IF NOT EXISTS ux_{GAPS_TABLE}_recorder ON {GAPS_TABLE} "
    "(recorder_id, category, topic, detected_ns)",
    f"CREATE UNIQUE INDEX IF NOT EXISTS ux_{SESSIONS_TABLE}_recorder ON {SESSIONS_TABLE} "
    "(recorder_id, shard, connected_ns)",
    f"CREATE INDEX IF NOT EXISTS ix_{GAPS_TABLE}_topic ON {GAPS_TABLE} (topic, detected_ns)",
)
# Columns of l2_gaps / l2_sessions a table made elsewhere may lack (added; the rest must be there).
SIDE_COLUMNS = {GAPS_TABLE: ("recorder_id text NOT NULL DEFAULT ''",),
                SESSIONS_TABLE: ("recorder_id text NOT NULL DEFAULT ''",)}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # format_type(): 'bigint', 'double precision', 'timestamp with time zone', ...
    not_null: bool
    has_default: bool  # a DEFAULT or an identity


@dataclass(frozen=True, slots=True)
class PgMigration:
    created_table: bool
    added_columns: tuple[str, ...]
    column_types: dict[str, str]  # the table's type of each row column, after the migration


def table_columns(conn: Conn, table: str) -> dict[str, Column]:
    """The columns of ``table`` (resolved by the search path); empty when it does not exist."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef OR a.attidentity <> ''"
        " FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum", (table,)).fetchall()
    return {str(n): Column(str(n), str(t), bool(nn), bool(d)) for n, t, nn, d in rows}


def type_fits(kind: str, pg_type: str) -> bool:
    """Whether a column of ``pg_type`` holds every value of our ``kind`` (SQLite's declared type) exactly."""
    base = re.sub(r"\(\d+(,\s*\d+)?\)", "", pg_type)
    if base not in ACCEPTED_TYPES[kind]:
        return False
    if base == "numeric":
        return base == pg_type  # numeric(p, s) rounds
    precision = re.search(r"timestamp\((\d+)\)", pg_type)
    return precision is None or int(precision.group(1)) >= 3  # milliseconds


def check_columns(table: str, columns: dict[str, Column]) -> None:
    """Refuse a table our rows cannot be stored in exactly: a column of ours with a type that cannot hold
    its values, or a column NOT NULL without a default that the rows do not fill. SchemaError naming it."""
    for col in columns.values():
        kind = DECLARED.get(col.name)
        if kind is not None and col.name != "id" and not type_fits(kind, col.type):
            raise SchemaError(
                f"table {table}: column {col.name} is {col.type}, which cannot hold the recorder's values exactly "
                f"(it writes {PG_TYPES[kind]}; accepted: {', '.join(ACCEPTED_TYPES[kind])}); change the column's "
                "type or use another table_name", column=col.name)
        if col.not_null and not col.has_default and col.name not in ALWAYS_SET and col.name != "id":
            raise SchemaError(f"table {table}: column {col.name} is NOT NULL without a default, and the recorder's "
                              "rows do not fill it (add a DEFAULT, drop the constraint, or use another table)",
                              column=col.name)


def ensure_schema(conn: Conn, table: str) -> PgMigration:
    """Create the tables, or check and bring an existing training table up to date by adding columns
    (never dropping). One transaction, under an advisory lock: recorders starting together take turns
    (concurrent ``CREATE TABLE IF NOT EXISTS`` of one name can fail in PostgreSQL)."""
    added: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('l2rec schema'))")
        existing = table_columns(conn, table)
        created = not existing
        check_columns(table, existing)
        if created:
            conn.execute(table_ddl(table))
        else:
            if "id" not in existing:
                raise SchemaError(f"table {table} has no column id; it cannot be added in place", column="id")
            for name, decl in (*SEED_COLUMNS, *ADDED_COLUMNS):
                if name not in existing:
                    kind, _, rest = decl.partition(" ")
                    rest = rest.replace("NOT NULL", "").strip()
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {PG_TYPES[kind]} {rest}".rstrip())
                    added.append(name)
        try:
            with conn.transaction():
                for ddl in index_ddl(table):
                    conn.execute(ddl)
        except pg_errors.UniqueViolation:
            raise SchemaError(
                f"table {table} holds several rows of one book state (same exchange, category, symbol, depth, "
                "cross_sequence, sequence), so the recorder's key (one row per book state) cannot be added; "
                "remove them or use another table_name", column="sequence") from None
        conn.execute(GAPS_DDL)
        conn.execute(SESSIONS_DDL)
        for side, cols in SIDE_COLUMNS.items():
            for col in cols:
                conn.execute(f"ALTER TABLE {side} ADD COLUMN IF NOT EXISTS {col}")
        for ddl in SIDE_INDEXES:
            conn.execute(ddl)
        types = {c.name: c.type for c in table_columns(conn, table).values()}
    if added:
        log.warning("migrated table %s: added columns %s", table, ", ".join(added))
    return PgMigration(created, tuple(added), types)


def stage_ddl() -> str:
    """The session's staging table: the row columns in COPY's types, emptied by every commit."""
    cols = ", ".join(f'"{c}" {STAGE_TYPES[DECLARED[c]]}' for c in ROW_COLUMNS)
    return f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} ({cols}) ON COMMIT DELETE ROWS"


def _value_expr(col: str, target_type: str) -> str:
    """The staging column as the table's column wants it: the ISO text cast to a timestamp column's type
    (PostgreSQL has no implicit cast from text); numbers and text go in by assignment, which refuses a
    value that does not fit (an explicit cast to ``varchar(n)`` would cut it silently)."""
    if DECLARED[col] == "DATETIME" and target_type.startswith("timestamp"):
        return f'CAST("{col}" AS {target_type})'
    return f'"{col}"'


def insert_sql(table: str, types: dict[str, str]) -> str:
    """Staging -> table, skipping rows whose natural key is there (in the order they were copied: see
    ``key_order``); its result is the rows inserted per (depth, symbol), for ``l2rec_rows_total``."""
    cols = QUOTED_COLUMNS
    values = ", ".join(_value_expr(c, types[c]) for c in ROW_COLUMNS)
    return (f"WITH ins AS (INSERT INTO {table} ({cols}) SELECT {values} FROM {STAGE_TABLE}"
            f" ON CONFLICT ({conflict_target()}) DO NOTHING RETURNING depth, symbol)"
            " SELECT depth, symbol, count(*) FROM ins GROUP BY depth, symbol")


_SYMBOL, _CATEGORY, _DEPTH, _SEQUENCE = (ROW_COLUMNS.index(c) for c in ("symbol", "category", "depth", "sequence"))


def key_order(row: Sequence[object]) -> tuple[Any, ...]:
    """The order rows are inserted in: two recorders writing the same book states at once then meet them in
    the same order, so neither waits on the other in a cycle (a deadlock, which PostgreSQL breaks after
    ``deadlock_timeout`` by failing one transaction). Sorted here rather than by ``ORDER BY`` in the INSERT:
    the server sorts whole 72-column tuples, measured at ~16 us of its CPU a row, this ~0.5 us of ours.
    Rows of one topic that tie (a ``u = 1`` restart) keep their arrival order, the same for every
    recorder."""
    return (row[_SYMBOL], row[_DEPTH], row[_SEQUENCE], row[_CATEGORY])


def insert_one_sql(table: str) -> str:
    """One row from parameters (the redo of a group a row at a time)."""
    cols = QUOTED_COLUMNS
    marks = ", ".join(["%s"] * len(ROW_COLUMNS))
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({conflict_target()}) DO NOTHING"


GAP_OPEN_SQL = (
    f"INSERT INTO {GAPS_TABLE} (recorder_id, category, topic, symbol, depth, last_u, got_u, reason, detected_at,"
    " detected_ns) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (recorder_id, category, topic, detected_ns) DO NOTHING")
GAP_CLOSED_SQL = (
    f"INSERT INTO {GAPS_TABLE} (recorder_id, category, topic, symbol, depth, last_u, got_u, reason, detected_at,"
    " detected_ns, recovered_at, recovered_ns) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (recorder_id, category, topic, detected_ns) DO UPDATE SET"
    " recovered_at = EXCLUDED.recovered_at, recovered_ns = EXCLUDED.recovered_ns,"
    f" got_u = COALESCE({GAPS_TABLE}.got_u, EXCLUDED.got_u)"
    # xmax is 0 in a row version this statement inserted (not in one it updated): a new gap row or not
    " RETURNING (xmax = 0)")
SESSION_SQL = (
    f"INSERT INTO {SESSIONS_TABLE} (recorder_id, shard, session, url, topics, connected_at, connected_ns, ended_at,"
    " ended_ns, reason, graceful) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (recorder_id, shard, connected_ns) DO UPDATE SET ended_at = EXCLUDED.ended_at,"
    " ended_ns = EXCLUDED.ended_ns, reason = EXCLUDED.reason, graceful = EXCLUDED.graceful")


# --- before the processes start ----------------------------------------------------------------------------

def preflight(url: str, table: str, connect_timeout_s: float = 5.0) -> None:
    """The root's check before anything starts: a URL that is not one, a login the server refuses, a table
    of incompatible types or one this user may not write are ConfigError (exit 78). A server that cannot
    be reached now is not: the writer keeps trying (and logs why)."""
    try:
        conn = connect(url, connect_timeout_s=connect_timeout_s)
    except SinkUnavailable as exc:
        log.warning("PostgreSQL is not reachable now; the writer will keep trying: %s", exc)
        return
    try:
        columns = table_columns(conn, table)
        if columns:
            (can_write,) = conn.execute("SELECT has_table_privilege(to_regclass(%s), 'INSERT, SELECT')",
                                        (table,)).fetchone() or (False,)
            if not can_write:
                raise ConfigError("table_name", table, f"the user of {redact_url(url)} may not insert into it")
        else:
            (can_create,) = conn.execute(
                "SELECT has_schema_privilege(current_schema(), 'CREATE')").fetchone() or (False,)
            if not can_create:
                raise ConfigError("table_name", table, f"the table does not exist and the user of {redact_url(url)} "
                                  "may not create tables in its schema")
        check_columns(table, columns)
    except SchemaError as exc:
        raise ConfigError("table_name", table, str(exc)) from None
    except psycopg.Error as exc:
        log.warning("PostgreSQL check failed; the writer will keep trying: %s", one_line(scrub(str(exc), url)))
    finally:
        conn.close()


def last_rows(url: str, table: str, category: str, topics: Sequence[str]) -> tuple[LastRow, ...]:
    """The last live row of each topic in the table, whichever recorder wrote it (a hole in the table is
    what a gap masks). Nothing when the server cannot be reached now or the table is not there yet."""
    out: list[LastRow] = []
    try:
        conn = connect(url, connect_timeout_s=2)
    except (SinkUnavailable, ConfigError):
        return ()
    try:
        for topic in topics:
            _, depth, symbol = topic.split(".", 2)
            row = conn.execute(
                f"SELECT sequence, exchange_timestamp, recv_time_ns FROM {table} WHERE symbol = %s AND "
                "category = %s AND depth = %s AND data_source = 'live_trading' AND exchange_timestamp IS NOT NULL "
                "ORDER BY exchange_timestamp DESC LIMIT 1", (symbol, category, int(depth))).fetchone()
            if row is not None and row[0] is not None:
                out.append(LastRow(topic, int(row[0]), int(row[2]) if row[2] is not None else int(row[1]) * 1_000_000))
    except (psycopg.Error, ValueError):
        return tuple(out)
    finally:
        conn.close()
    return tuple(out)


# --- the sink ----------------------------------------------------------------------------------------------

class PgStore:
    """The PostgreSQL sink (:class:`l2rec.storage.sink.Sink`): one connection, reopened after a failure."""

    def __init__(self, url: str, table: str, *, recorder_id: str, retention_hours: float = 0.0,
                 cleanup_interval_s: float = 60.0) -> None:
        self.url = url
        self.path = redact_url(url)
        self.table = table
        self.recorder_id = recorder_id
        self.rows_offered = 0
        self.rows_inserted = 0
        self.rows_failed = 0
        self.last_row_error: str | None = None
        self.batches = 0
        self.last_commit_s = 0.0
        self.committed = CommitCounts()
        self.connects = 0
        self.connection_losses = 0
        self._iso = IsoMillis()
        self._conn: Conn | None = None
        conn = self.connection()
        try:
            self.migration = ensure_schema(conn, table)
        except psycopg.Error as exc:
            error = self.translate(exc)
            self.close()
            raise error from None
        except BaseException:
            self.close()
            raise
        self._insert = insert_sql(table, self.migration.column_types)
        self._insert_one = insert_one_sql(table)
        self._copy = f"COPY {STAGE_TABLE} ({QUOTED_COLUMNS}) FROM STDIN (FORMAT BINARY)"
        self._stage_types = [STAGE_TYPES[DECLARED[c]] for c in ROW_COLUMNS]
        self.retention = PgRetention(self, retention_hours, cleanup_interval_s)

    # -- connection ---------------------------------------------------------------------------------------
    def connection(self) -> Conn:
        """The open connection, or a new one (with its staging table). Raises SinkUnavailable / ConfigError."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
            self._conn = None
        conn = connect(self.url)
        self._conn = conn
        try:
            # a group of 20,000 rows stages ~15 MB: keep it in memory (the default is 8 MB; settable only
            # before the session's first temporary table)
            conn.execute("SET temp_buffers = '64MB'")
            # a lock held for long by someone else (an ALTER TABLE, a VACUUM FULL) fails the write after 10 s:
            # a WARNING and a retry with backoff, rather than a writer silent until the supervisor kills it
            conn.execute(f"SET lock_timeout = '{WRITE_LOCK_TIMEOUT}'")
            conn.execute(stage_ddl())
        except psycopg.Error as exc:
            error = self.translate(exc)
            self.close()
            raise error from None
        self.connects += 1
        return conn

    def translate(self, exc: psycopg.Error) -> Exception:
        """What the writer is told of a failed statement: SinkUnavailable (retried) when the connection is
        gone or another transaction was in the way; otherwise the error, its text scrubbed of the password."""
        message = one_line(scrub(str(exc), self.url))
        conn = self._conn
        lost = conn is None or conn.closed or conn.broken
        if not lost and isinstance(exc, RETRYABLE):  # (psycopg makes them OperationalErrors too)
            return SinkUnavailable(f"{self.path}: {message}", log_level=logging.WARNING)
        if lost or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            if lost and self._conn is not None:
                self.connection_losses += 1
                self._conn.close()
                self._conn = None
            full = isinstance(exc, pg_errors.DiskFull | pg_errors.OutOfMemory)
            return SinkUnavailable(f"{self.path}: {message}", log_level=logging.CRITICAL if full else logging.ERROR)
        return RuntimeError(f"{self.path}: {type(exc).__name__}: {message}")

    # -- writes -------------------------------------------------------------------------------------------
    def write(self, rows: Sequence[Sequence[object]], gaps: Iterable[GapRecord] = (),
              sessions: Iterable[SessionRecord] = ()) -> int:
        """Write rows, gap and session records in one transaction; returns the rows actually inserted."""
        t0 = time.perf_counter()
        gaps, sessions = tuple(gaps), tuple(sessions)
        conn = self.connection()
        try:
            try:
                inserted, failed, by_key, gap_rows = self._transaction(conn, rows, gaps, sessions, one_by_one=False)
            except ROW_REFUSALS:
                # A row broke a constraint other than the natural key: redo the group a row at a time, so that
                # every other row is stored and each refused one is counted.
                inserted, failed, by_key, gap_rows = self._transaction(conn, rows, gaps, sessions, one_by_one=True)
        except psycopg.Error as exc:
            raise self.translate(exc) from None
        self.committed.add_rows(by_key)
        self.committed.add_gaps(gap_rows)
        self.rows_failed += failed
        self.rows_offered += len(rows)
        self.rows_inserted += inserted
        if rows:
            self.retention.saw(rows)
        self.batches += 1
        self.last_commit_s = time.perf_counter() - t0
        return inserted

    def _transaction(self, conn: Conn, rows: Sequence[Sequence[object]], gaps: tuple[GapRecord, ...],
                     sessions: tuple[SessionRecord, ...], *, one_by_one: bool,
                     ) -> tuple[int, int, Counter[tuple[object, object]], list[tuple[str, str, int]]]:
        """One transaction; returns (rows inserted, rows refused by a constraint, rows inserted per
        (depth, symbol), gap rows inserted as (topic, reason, n))."""
        inserted = failed = 0
        by_key: Counter[tuple[object, object]] = Counter()
        gap_rows: list[tuple[str, str, int]] = []
        with conn.transaction(), conn.cursor() as cur:
            if rows and one_by_one:
                for row in rows:
                    try:
                        with conn.transaction():  # a savepoint: a refused row undoes itself only
                            cur.execute(self._insert_one, row)
                            if cur.rowcount > 0:
                                inserted += cur.rowcount
                                by_key[(row[_DEPTH], row[_SYMBOL])] += cur.rowcount
                    except ROW_REFUSALS as exc:
                        failed += 1
                        # the first line: the DETAIL after it repeats the whole row
                        self.last_row_error = scrub((str(exc).splitlines() or [""])[0], self.url)
            elif rows:
                with cur.copy(self._copy) as copy:
                    copy.set_types(self._stage_types)
                    for row in sorted(rows, key=key_order):
                        copy.write_row(row)
                cur.execute(self._insert)
                for depth, symbol, n in cur.fetchall():
                    by_key[(depth, symbol)] += n
                    inserted += n
            if gaps:
                gap_rows = self._write_gaps(cur, gaps)
            if sessions:
                self._write_sessions(cur, sessions)
        return inserted, failed, by_key, gap_rows

    def _write_gaps(self, cur: psycopg.Cursor[tuple[Any, ...]],
                    gaps: tuple[GapRecord, ...]) -> list[tuple[str, str, int]]:
        """Write the gap records; returns the rows they inserted as (topic, reason, 1) (a closing record
        whose gap's row is there updates it: no new row)."""
        iso, rid = self._iso, self.recorder_id
        new: list[tuple[str, str, int]] = []
        for g in gaps:  # in the records' order: a gap opened and closed in one group is inserted, then closed
            head = (rid, g.category, g.topic, g.symbol, g.depth, g.last_u, g.got_u, g.reason,
                    iso(g.detected_ns // 1_000_000), g.detected_ns)
            if g.recovered_ns is None:
                cur.execute(GAP_OPEN_SQL, head)
                if cur.rowcount > 0:
                    new.append((g.topic, g.reason, 1))
            else:
                cur.execute(GAP_CLOSED_SQL, (*head, iso(g.recovered_ns // 1_000_000), g.recovered_ns))
                row = cur.fetchone()
                if row is not None and row[0]:
                    new.append((g.topic, g.reason, 1))
        return new

    def _write_sessions(self, cur: psycopg.Cursor[tuple[Any, ...]], sessions: tuple[SessionRecord, ...]) -> None:
        iso = self._iso
        for s in sessions:
            cur.execute(SESSION_SQL, (
                self.recorder_id, s.shard_id, s.session_id, s.url, s.topics, iso(s.connected_ns // 1_000_000),
                s.connected_ns, None if s.ended_ns is None else iso(s.ended_ns // 1_000_000), s.ended_ns, s.reason,
                None if s.graceful is None else int(s.graceful)))

    def is_transient(self, exc: BaseException) -> bool:
        """The server gone or restarting, a deadlock or serialization failure: retry the same batch."""
        return isinstance(exc, SinkUnavailable)

    def cleanup_step(self, now_ns: int, *, final: bool = False) -> bool:
        """Retention, a chunk at a time (see :class:`PgRetention`); True when nothing is left for now."""
        return self.retention.step(now_ns, final=final)

    def status(self) -> dict[str, object]:
        """The connection's figures, and retention's."""
        conn = self._conn
        return {"db": {"server": self.path, "recorder_id": self.recorder_id,
                       "connected": conn is not None and not conn.closed and not conn.broken,
                       "connects": self.connects, "connection_losses": self.connection_losses},
                **self.retention.status()}

    def close(self) -> None:
        """Close the connection (the sink is not used again; a new write would reconnect)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PgRetention:
    """``data_retention_hours`` on PostgreSQL: rows older than the horizon (the newest recorded
    ``exchange_timestamp`` minus the retention) are deleted symbol by symbol, a few thousand at a time,
    each chunk its own short transaction (``lock_timeout`` 1 s), for at most CLEANUP_BUDGET_S per writer
    step; then the gaps and sessions that ended before the horizon. A DELETE takes row locks only, so the
    recorders' inserts never wait for it. The space is PostgreSQL's autovacuum's to reuse."""

    def __init__(self, store: PgStore, retention_hours: float, interval_s: float) -> None:
        self.store = store
        self.table = store.table
        self.retention_hours = retention_hours
        self.interval_s = interval_s
        self.newest_ms: int | None = None
        self._looked = False  # the table's newest row read once (the rows written since move it on)
        self._tasks: deque[str | tuple[str, str]] | None = None
        self._horizon: int | None = None
        self._last_start_ns: int | None = None
        self._started_at = 0.0
        self._busy_s = 0.0
        self._final_done = False
        self.cleanups = 0
        self.rows_removed = 0
        self.gaps_removed = 0
        self.sessions_removed = 0
        self.last_cleanup_ms: float | None = None
        self.last_cleanup_busy_ms: float | None = None
        self.max_step_ms = 0.0
        self.last_error: str | None = None
        self._rate = RateLimited(60.0)

    def saw(self, rows: Sequence[Sequence[object]]) -> None:
        """Rows just committed: the newest exchange_timestamp moves the horizon."""
        if self.retention_hours <= 0:
            return
        self._final_done = False
        newest = self.newest_ms
        ts_i = ROW_COLUMNS.index("exchange_timestamp")
        for r in rows:
            ts = r[ts_i]
            if isinstance(ts, int) and (newest is None or ts > newest):
                newest = ts
        self.newest_ms = newest

    def _symbols(self, conn: Conn) -> list[str]:
        """Every symbol of the table: one index seek each (a skip scan of the key's index)."""
        rows = conn.execute(
            f"WITH RECURSIVE s(sym) AS (SELECT min(symbol) FROM {self.table} UNION ALL "
            f"SELECT (SELECT min(symbol) FROM {self.table} WHERE symbol > s.sym) FROM s WHERE s.sym IS NOT NULL) "
            "SELECT sym FROM s WHERE sym IS NOT NULL").fetchall()
        return [str(r[0]) for r in rows]

    def _newest(self, conn: Conn, symbols: list[str]) -> int | None:
        best: int | None = None
        for sym in symbols:
            row = conn.execute(f"SELECT max(exchange_timestamp) FROM {self.table} WHERE symbol = %s",
                               (sym,)).fetchone()
            if row is not None and row[0] is not None and (best is None or int(row[0]) > best):
                best = int(row[0])
        return best

    def step(self, now_ns: int, *, final: bool = False) -> bool:
        """One step of at most CLEANUP_BUDGET_S; never raises. True when nothing is left for now."""
        if self.retention_hours <= 0:
            return True
        try:
            return self._step(now_ns, final)
        except (psycopg.Error, SinkUnavailable, ConfigError) as exc:
            # a lost connection is dropped here and reopened at the next step (or write)
            shown = self.store.translate(exc) if isinstance(exc, psycopg.Error) else exc
            self.last_error = str(shown)
            ok, suppressed = self._rate.allow("cleanup")
            if ok:
                log.warning("cleanup step failed; retried at the next step", extra={"fields": {
                    "error": str(shown), "suppressed_since_last": suppressed}})
            return True

    def _step(self, now_ns: int, final: bool) -> bool:
        conn = self.store.connection()
        if self._tasks is None:
            if final:
                if self._final_done:
                    return True
                self._final_done = True
            elif not cleanup_due(now_ns, self._last_start_ns, self.interval_s):
                return True
            self._last_start_ns = now_ns
            symbols = self._symbols(conn)
            if not self._looked:
                self._looked = True
                newest = self._newest(conn, symbols)
                if newest is not None and (self.newest_ms is None or newest > self.newest_ms):
                    self.newest_ms = newest
            horizon = horizon_ms(self.newest_ms, self.retention_hours)
            if horizon is None:
                return True
            self._horizon = horizon
            self._started_at = time.perf_counter()
            self._busy_s = 0.0
            self._tasks = deque([*(("symbol", s) for s in symbols), "gaps", "sessions"])
        tasks = self._tasks
        t0 = time.perf_counter()
        while tasks and time.perf_counter() - t0 < CLEANUP_BUDGET_S:
            self._run(conn, tasks)
        spent = time.perf_counter() - t0
        self._busy_s += spent
        self.max_step_ms = max(self.max_step_ms, spent * 1000)
        if not tasks:
            self._tasks = None
            self.cleanups += 1
            self.last_cleanup_ms = round((time.perf_counter() - self._started_at) * 1000, 3)
            self.last_cleanup_busy_ms = round(self._busy_s * 1000, 3)
            return True
        return False

    def _run(self, conn: Conn, tasks: deque[str | tuple[str, str]]) -> None:
        """One chunk of the first task in its own transaction; the task is dropped once finished."""
        horizon = self._horizon
        assert horizon is not None
        task = tasks[0]
        limit = DELETE_CHUNK_ROWS
        # ctid: the rows found by the index are deleted where they lie, without a second lookup by id
        if isinstance(task, tuple):
            sql = (f"DELETE FROM {self.table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {self.table} WHERE "
                   f"symbol = %s AND exchange_timestamp < %s LIMIT {limit}))")
            params: tuple[object, ...] = (task[1], horizon)
        elif task == "gaps":
            sql = (f"DELETE FROM {GAPS_TABLE} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {GAPS_TABLE} WHERE "
                   f"recovered_ns IS NOT NULL AND recovered_ns < %s LIMIT {limit}))")
            params = (horizon * 1_000_000,)
        else:
            sql = (f"DELETE FROM {SESSIONS_TABLE} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {SESSIONS_TABLE} WHERE "
                   f"ended_ns IS NOT NULL AND ended_ns < %s LIMIT {limit}))")
            params = (horizon * 1_000_000,)
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            n = max(conn.execute(sql, params).rowcount, 0)
        if task == "gaps":
            self.gaps_removed += n
        elif task == "sessions":
            self.sessions_removed += n
        else:
            self.rows_removed += n
        if n < limit:
            tasks.popleft()

    def status(self) -> dict[str, object]:
        """The health dump's ``retention`` section (the keys of SQLite's)."""
        if self.retention_hours <= 0:
            return {}
        return {"retention": {
            "hours": self.retention_hours, "horizon_ms": horizon_ms(self.newest_ms, self.retention_hours),
            "running": self._tasks is not None, "cleanups": self.cleanups, "rows_removed": self.rows_removed,
            "gaps_removed": self.gaps_removed, "sessions_removed": self.sessions_removed,
            "last_cleanup_ms": self.last_cleanup_ms, "last_cleanup_busy_ms": self.last_cleanup_busy_ms,
            "max_step_ms": round(self.max_step_ms, 3), "last_error": self.last_error}}
