"""SQLite storage: open (WAL, synchronous=NORMAL), create or migrate the schema, write batches.

One process holds the only connection. Every batch is one transaction; ``ON CONFLICT (natural key) DO
NOTHING`` makes a replay of the same frames add nothing, and only that: a row that breaks another
constraint (NOT NULL, CHECK) is an error, counted and logged, never silently skipped (``INSERT OR
IGNORE`` would skip it). An existing database is migrated by adding
missing columns and indexes only; nothing is ever dropped.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2rec.book.rows import IsoMillis
from l2rec.messages.writer import GapRecord, SessionRecord
from l2rec.runtime.config import ConfigError
from l2rec.storage.retention import (
    hour_start,
)
from l2rec.storage.schema import (
    ADDED_COLUMNS,
    ALWAYS_SET,
    BOOK_COLUMNS,
    COL,
    GAPS_DDL,
    GAPS_TABLE,
    ROW_COLUMNS,
    SEED_COLUMNS,
    SESSIONS_DDL,
    SESSIONS_TABLE,
    conflict_target,
    index_ddl,
    state_key_index,
    superseded_indexes,
    table_ddl,
)
from l2rec.storage.sink import CommitCounts, LastRow, rows_by_key

log = logging.getLogger("recorder.storage")

_DEPTH, _SYMBOL = COL["depth"], COL["symbol"]


class SchemaError(RuntimeError):
    """The existing table cannot hold our rows without dropping data (e.g. a required column is missing
    and cannot be added, or a NOT NULL column the rows do not fill). ``column`` names it."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True, slots=True)
class Migration:
    created_table: bool
    added_columns: tuple[str, ...]
    restatements_removed: int = 0  # rows of an earlier version that repeated a book state (one row per state)


def connect(path: str, *, busy_timeout_s: float = 1.0, max_pages: int = 0) -> sqlite3.Connection:
    """Open the database for writing: WAL, synchronous=NORMAL, explicit transactions.

    ``busy_timeout_s`` is how long SQLite itself waits on another process's lock before it reports
    ``database is locked``; the writer then retries with backoff, and logs while it does.
    """
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        # A new database: incremental auto_vacuum lets retention give space back. It must be chosen before
        # anything writes the file's header, which journal_mode=WAL does (see prepare_auto_vacuum).
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # Each symbol appends at its own spot of every index: with hundreds of symbols the hot pages are
    # several MiB, past SQLite's 2 MiB default cache, and every insert then reads and writes pages.
    conn.execute("PRAGMA cache_size=-32768")
    # The Checkpointer copies the WAL into the database from its own thread; SQLite's own checkpoint
    # (inside a commit, so every row waiting meanwhile waits for it) is only the safety net.
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_NET_PAGES}")
    if max_pages:
        conn.execute(f"PRAGMA max_page_count={int(max_pages)}")
    return conn


# Pages of 4 KiB. The WAL is restarted (reused from its start) about every RESTART_PAGES; SQLite's own
# checkpoint inside a commit only happens if the Checkpointer stopped keeping up.
WAL_RESTART_PAGES = 8192
WAL_SAFETY_NET_PAGES = 65536
# The -wal file is cut back to this many restart sizes when the WAL restarts (``journal_size_limit``).
# SQLite reuses the file from its start rather than shrinking it, so after a long reader held restarts off
# the file kept its peak size (244 MB after a 60 s export at 2,000 rows/s) until exit. Twice the restart
# size: a WAL restarted on time never reaches it, so the file is not shrunk and regrown every cycle.
WAL_FILE_LIMIT_RESTARTS = 2


class Checkpointer:
    """Copies the WAL into the database file from a thread with its own connection, so that commits
    never wait for the copy and its fsyncs.

    Why: SQLite's automatic checkpoint runs inside the commit that crosses the threshold, and every row
    that arrives meanwhile waits for it (at 25k rows/s a 64 MiB checkpoint held commits for ~1 s, the
    p99 of receive-to-commit). A PASSIVE checkpoint from another connection runs beside the commits, but
    then the WAL is never fully copied at the moment a commit starts, so it is never restarted and grows
    without bound (and every page lookup searches it). So: this thread checkpoints whatever is new, again
    and again; once the WAL holds ``restart_pages`` it stops and asks the writer (``restart_due``) to copy
    the last few frames itself between two commits, after which SQLite restarts the WAL at the next write.
    """

    def __init__(self, path: str, *, restart_pages: int = WAL_RESTART_PAGES, idle_s: float = 0.05) -> None:
        self.wal_path = path + "-wal"
        self.restart_pages = restart_pages
        self.idle_s = idle_s
        self.restart_due = threading.Event()
        self.checkpoints = 0
        self.restarts = 0
        self.turns = 0
        self.last_error: str | None = None
        self._failing: str | None = None  # the error of the current run of failures, logged once
        self._stop = threading.Event()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
        self._thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = self._conn
        last_log_pages = 0
        # After the writer's turn the next request waits until the WAL was restarted or, if a reader kept
        # it from restarting, until it grew by restart_pages more (then the turn is tried again).
        turn_log_pages: int | None = None
        while not self._stop.wait(self.idle_s):
            if self.restart_due.is_set():
                turn_log_pages = last_log_pages
                continue  # the writer has not taken its turn yet
            try:
                # fetchall: the statement must finish, or this connection keeps a read lock on the WAL
                busy, log_pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            except sqlite3.Error as exc:
                self._error(exc)
                continue
            if busy or log_pages < 0:
                continue
            self._failing = None
            self.checkpoints += 1
            if log_pages < last_log_pages:
                self.restarts += 1
                turn_log_pages = None
            last_log_pages = log_pages
            if log_pages >= self.restart_pages and (
                    turn_log_pages is None or log_pages >= turn_log_pages + self.restart_pages):
                self.restart_due.set()

    def take_turn(self, conn: sqlite3.Connection) -> None:
        """Called by the writer between commits when ``restart_due``: copy the frames written since this
        thread's last checkpoint (a fraction of a second's worth), so the next write restarts the WAL."""
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.turns += 1
        except sqlite3.Error as exc:  # the commit before it stands; the next turn tries again
            self._error(exc)
        finally:
            self.restart_due.clear()

    def _error(self, exc: sqlite3.Error) -> None:
        if str(exc) != self._failing:  # once per run of the same error, not once per attempt
            log.warning("WAL checkpoint failed; retrying", extra={"fields": {"error": str(exc)}})
        self._failing = self.last_error = str(exc)

    def status(self) -> dict[str, object]:
        try:
            file_bytes = os.stat(self.wal_path).st_size
        except OSError:
            file_bytes = 0  # no WAL file (yet, or any more)
        return {"checkpoints": self.checkpoints, "writer_turns": self.turns, "wal_restarts": self.restarts,
                "file_bytes": file_bytes, "last_error": self.last_error}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        if not self._thread.is_alive():  # never close a connection under a running checkpoint
            self._conn.close()


TRANSIENT_ERRORS = ("database is locked", "database table is locked", "database or disk is full", "disk i/o error",
                    "unable to open database file")


def is_transient(exc: BaseException) -> bool:
    """Errors that go away by themselves (a lock released, disk space freed): retry, never drop the batch."""
    return isinstance(exc, sqlite3.OperationalError) and any(t in str(exc).lower() for t in TRANSIENT_ERRORS)


def ensure_schema(conn: sqlite3.Connection, table: str) -> Migration:
    """Create the tables, or bring an existing training table up to date by adding columns."""
    existing = {row[1]: row for row in conn.execute(f"PRAGMA table_info({table})")}
    created = not existing
    check_constraints(table, existing.values())
    added: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        if created:
            conn.execute(table_ddl(table))
        else:
            for name, decl in (*SEED_COLUMNS, *ADDED_COLUMNS):
                if name in existing:
                    continue
                if "PRIMARY KEY" in decl:
                    raise SchemaError(f"table {table} has no column {name}; it cannot be added in place")
                # ADD COLUMN cannot add NOT NULL without a default; old rows get NULL.
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl.replace(' NOT NULL', '')}")
                added.append(name)
        indexes = frozenset(r[1] for r in conn.execute(f"PRAGMA index_list({table})"))
        # A table of an earlier version may hold several rows of one book state, which the new key's
        # unique index refuses: they are removed first, in transactions of their own (below).
        new_key = state_key_index(table) not in indexes
        if not new_key:
            _make_indexes(conn, table, indexes)
        conn.execute(GAPS_DDL)
        conn.execute(SESSIONS_DDL)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if added:
        log.warning("migrated table %s: added columns %s", table, ", ".join(added))
    removed = 0
    if new_key:
        removed = 0 if created else remove_restatements(conn, table)
        conn.execute("BEGIN IMMEDIATE")
        try:
            _make_indexes(conn, table, frozenset(r[1] for r in conn.execute(f"PRAGMA index_list({table})")))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return Migration(created, tuple(added), removed)


def _make_indexes(conn: sqlite3.Connection, table: str, existing: frozenset[str]) -> None:
    for ddl in index_ddl(table, existing):
        conn.execute(ddl)
    for name in superseded_indexes(table, existing):
        conn.execute(f"DROP INDEX IF EXISTS {name}")
        log.warning("table %s: dropped index %s (the new key's index makes it redundant; no row is touched)",
                    table, name)


RESTATEMENT_CHUNK = 10_000  # rows deleted per transaction: bounds the WAL and the time the lock is held


def remove_restatements(conn: sqlite3.Connection, table: str, chunk: int = RESTATEMENT_CHUNK) -> int:
    """Make an earlier version's table fit the key of one row per book state: of the rows of each (topic,
    u, seq), keep the earliest (by exchange_timestamp, then id) and delete the later ones, which restate
    it (orderbook.1's 3 s re-push, the fresh snapshot after a reconnect). Returns the rows deleted.

    Nothing is deleted if any of them holds a book different from the row it would be folded into (then
    they are not restatements of one state): SchemaError, and the table is left as it was. Rows with a
    NULL in the key (the seed's, say) are never part of a group, as in the unique index. The chunks are
    transactions of their own; a crash between two leaves every state with its earliest row, and the
    next start finishes the work."""
    key = "exchange, category, symbol, depth, COALESCE(cross_sequence, -1), sequence"
    conn.execute("DROP TABLE IF EXISTS temp.l2rec_restated")
    conn.execute("CREATE TEMP TABLE l2rec_restated (id INTEGER PRIMARY KEY, kept INTEGER NOT NULL)")
    try:
        conn.execute(
            f"INSERT INTO temp.l2rec_restated (id, kept) SELECT id, kept FROM (SELECT rowid AS id,"
            " FIRST_VALUE(rowid) OVER w AS kept, ROW_NUMBER() OVER w AS n"
            f" FROM {table} WHERE exchange IS NOT NULL AND category IS NOT NULL AND symbol IS NOT NULL"
            " AND depth IS NOT NULL AND sequence IS NOT NULL"
            f" WINDOW w AS (PARTITION BY {key} ORDER BY exchange_timestamp IS NULL, exchange_timestamp, rowid))"
            " WHERE n > 1")
        found, states = conn.execute("SELECT COUNT(*), COUNT(DISTINCT kept) FROM temp.l2rec_restated").fetchone()
        if not found:
            return 0
        differs = " OR ".join(f"a.{c} IS NOT b.{c}" for c in BOOK_COLUMNS)
        (different,) = conn.execute(
            f"SELECT COUNT(*) FROM temp.l2rec_restated r JOIN {table} a ON a.rowid = r.id"
            f" JOIN {table} b ON b.rowid = r.kept WHERE {differs}").fetchone()
        if different:
            raise SchemaError(
                f"table {table}: {different} rows have the topic, u and seq of an earlier row but a different "
                "book, so they are not restatements of it; the recorder keeps one row per book state (u, seq) "
                "and cannot add that key to this table. Nothing was deleted; check those rows (same exchange, "
                "category, symbol, depth, sequence, cross_sequence) or use another table_name",
                column="sequence")
        log.warning("table %s: %d rows restate the book state of an earlier row (same topic, u and seq; %d "
                    "states); deleting them, keeping the earliest row of each state", table, found, states)
        removed, last = 0, 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT MAX(id) FROM (SELECT id FROM temp.l2rec_restated WHERE id > ?"
                                   " ORDER BY id LIMIT ?)", (last, chunk)).fetchone()
                if row[0] is None:
                    conn.execute("COMMIT")
                    break
                before = conn.total_changes
                conn.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT id FROM temp.l2rec_restated"
                             " WHERE id > ? AND id <= ?)", (last, row[0]))
                removed += conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            last = row[0]
        log.warning("table %s: deleted %d rows restating an earlier row's book state; %d states keep one row "
                    "each", table, removed, states)
        return removed
    finally:
        conn.execute("DROP TABLE IF EXISTS temp.l2rec_restated")


def check_constraints(table: str, columns: Iterable[tuple[object, ...]]) -> None:
    """Refuse a table our rows cannot be stored in: a column NOT NULL without a default that the rows do
    not always fill (``PRAGMA table_info`` rows: cid, name, type, notnull, default, pk)."""
    for _cid, name, _type, notnull, default, pk in columns:
        if notnull and default is None and not pk and name not in ALWAYS_SET:
            raise SchemaError(f"table {table}: column {name} is NOT NULL without a default, and the recorder's "
                              "rows do not fill it (add a DEFAULT, drop the constraint, or use another table)",
                              column=str(name))


def preflight(path: str, table: str) -> None:
    """Check, before any process starts, that the database can be used: raises ConfigError naming
    ``db_path`` (a directory, a parent that cannot be made, not writable, not a database) or
    ``table_name`` (a table our rows cannot be stored in). A missing parent directory is created."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError("db_path", path, "is a directory; give a file path, e.g. ./data/l2.db")
    parent = p.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError("db_path", path, f"its directory {parent} does not exist and cannot be "
                              f"created: {exc.strerror or exc}") from None
        log.info("created the database's directory", extra={"fields": {"dir": str(parent)}})
    elif not parent.is_dir():
        raise ConfigError("db_path", path, f"{parent} is not a directory")
    if p.exists() and not os.access(p, os.R_OK | os.W_OK):
        raise ConfigError("db_path", path, "the file is not readable and writable by this user")
    if not p.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError("db_path", path, f"the directory {parent} is not writable by this user")
    try:
        conn = sqlite3.connect(path, timeout=1.0)
    except sqlite3.Error as exc:
        raise ConfigError("db_path", path, f"cannot open the database: {exc}") from None
    try:
        columns = list(conn.execute(f"PRAGMA table_info({table})"))
    except sqlite3.DatabaseError as exc:
        raise ConfigError("db_path", path, f"cannot use the database: {exc}") from None
    finally:
        conn.close()
    try:
        check_constraints(table, columns)
    except SchemaError as exc:
        raise ConfigError("table_name", table, str(exc)) from None


def last_rows(path: str, table: str, category: str, topics: Sequence[str]) -> tuple[LastRow, ...]:
    """The last live row of each topic (read-only; the natural key's index leads with (symbol,
    exchange_timestamp), so each is one index seek). Topics without one, or a database that cannot be
    read, give nothing: the caller then knows no more than before."""
    out: list[LastRow] = []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return ()
    try:
        for topic in topics:
            _, depth, symbol = topic.split(".", 2)
            row = conn.execute(
                f"SELECT sequence, exchange_timestamp, recv_time_ns FROM {table} WHERE symbol = ? AND "
                "category = ? AND depth = ? AND data_source = 'live_trading' ORDER BY exchange_timestamp DESC "
                "LIMIT 1", (symbol, category, int(depth))).fetchone()
            if row is not None and row[0] is not None and row[1] is not None:
                out.append(LastRow(topic, int(row[0]), int(row[2]) if row[2] is not None else int(row[1]) * 1_000_000))
    except (sqlite3.Error, ValueError):
        return tuple(out)
    finally:
        conn.close()
    return tuple(out)


def insert_sql(table: str) -> str:
    cols = ", ".join(ROW_COLUMNS)
    marks = ", ".join("?" * len(ROW_COLUMNS))
    return f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({conflict_target()}) DO NOTHING"


class Store:
    """The SQLite sink (:class:`l2rec.storage.sink.Sink`): the writer's handle on the database; counts what
    it committed."""

    def __init__(self, path: str, table: str, *, busy_timeout_s: float = 1.0, max_pages: int = 0,
                 wal_restart_pages: int = WAL_RESTART_PAGES, retention_hours: float = 0.0,
                 cleanup_interval_s: float = 60.0, archive_dir: str | None = None,
                 archive_grace_s: float = 60.0) -> None:
        self.path = path
        self.table = table
        self.conn = connect(path, busy_timeout_s=busy_timeout_s, max_pages=max_pages)
        try:
            self._open(path, table, wal_restart_pages, retention_hours, cleanup_interval_s, archive_dir,
                       archive_grace_s)
        except BaseException:
            # The writer retries an open that met a held lock: leave no connection or thread behind.
            checkpointer = getattr(self, "checkpointer", None)
            if checkpointer is not None:
                checkpointer.close()
            self.conn.close()
            raise

    def _open(self, path: str, table: str, wal_restart_pages: int, retention_hours: float,
              cleanup_interval_s: float, archive_dir: str | None, archive_grace_s: float) -> None:
        # Before ensure_schema: on an existing database without auto_vacuum, the WARNING comes first.
        self.auto_vacuum = prepare_auto_vacuum(self.conn, path, warn=retention_hours > 0)
        self.migration = ensure_schema(self.conn, table)
        self.checkpointer = Checkpointer(path, restart_pages=wal_restart_pages)
        # The first commit after a WAL restart truncates the -wal file to this size (SQLite's
        # journal_size_limit, which applies to the WAL when it is reset), on this connection: the writer's
        # is the one that restarts the WAL.
        page_size = int(self.conn.execute("PRAGMA page_size").fetchone()[0])
        self.conn.execute(f"PRAGMA journal_size_limit={WAL_FILE_LIMIT_RESTARTS * wal_restart_pages * page_size}")
        self._insert = insert_sql(table)
        self._iso = IsoMillis()
        self.rows_offered = 0
        self.rows_inserted = 0
        self.rows_failed = 0  # rows the table refused (a constraint other than the natural key)
        self.last_row_error: str | None = None
        self.batches = 0
        self.last_commit_s = 0.0
        self.committed = CommitCounts()
        from l2rec.storage.retainer import Retainer  # it builds on this module's helpers

        self.retention = Retainer(self, retention_hours, cleanup_interval_s, archive_dir, archive_grace_s)

    def write(self, rows: Sequence[Sequence[object]], gaps: Iterable[GapRecord] = (),
              sessions: Iterable[SessionRecord] = ()) -> int:
        """Write rows, gap and session records in one transaction; returns the rows actually inserted."""
        t0 = time.perf_counter()
        conn = self.conn
        gaps, sessions = tuple(gaps), tuple(sessions)
        try:
            inserted, failed, by_key, gap_rows = self._transaction(rows, gaps, sessions, one_by_one=False)
        except sqlite3.IntegrityError:
            # A row broke a constraint other than the natural key: redo the group a row at a time, so that
            # every other row is stored and each refused one is counted.
            inserted, failed, by_key, gap_rows = self._transaction(rows, gaps, sessions, one_by_one=True)
        self.committed.add_rows(by_key)
        self.committed.add_gaps(gap_rows)
        self.rows_failed += failed
        if self.checkpointer.restart_due.is_set():
            self.checkpointer.take_turn(conn)
        self.rows_offered += len(rows)
        self.rows_inserted += inserted
        if rows:
            self.retention.saw(rows)
        self.batches += 1
        self.last_commit_s = time.perf_counter() - t0
        return inserted

    def _transaction(self, rows: Sequence[Sequence[object]], gaps: Sequence[GapRecord],
                     sessions: Iterable[SessionRecord], *, one_by_one: bool,
                     ) -> tuple[int, int, Mapping[tuple[object, object], int], list[tuple[str, str, int]]]:
        """One transaction; returns (rows inserted, rows refused by a constraint, rows inserted per
        (depth, symbol), gap rows inserted as (topic, reason, n))."""
        conn = self.conn
        failed = 0
        by_key: Mapping[tuple[object, object], int] = {}
        gap_rows: list[tuple[str, str, int]] = []
        conn.execute("BEGIN")
        try:
            before = conn.total_changes
            if one_by_one:
                counted: Counter[tuple[object, object]] = Counter()
                for row in rows:
                    changes = conn.total_changes
                    try:
                        conn.execute(self._insert, row)
                    except sqlite3.IntegrityError as exc:
                        failed += 1
                        self.last_row_error = str(exc)
                        continue
                    if conn.total_changes != changes:
                        counted[(row[_DEPTH], row[_SYMBOL])] += 1
                by_key = counted
            elif rows:
                conn.executemany(self._insert, rows)
            inserted = conn.total_changes - before
            if not one_by_one and rows and inserted == len(rows):
                by_key = rows_by_key(rows)  # the usual case: every row was new
            elif not one_by_one and inserted:
                # Some were already present (a batch resent after a writer restart, a restated snapshot):
                # the ones this transaction inserted are the table's newest rowids (AUTOINCREMENT, and this
                # is the only connection that writes), read back from the pages just written.
                by_key = {(d, s): n for d, s, n in conn.execute(
                    f"SELECT depth, symbol, count(*) FROM (SELECT depth, symbol FROM {self.table}"
                    " ORDER BY rowid DESC LIMIT ?) GROUP BY depth, symbol", (inserted,))}
            if gaps:
                # A closed gap's record inserts its row or updates the open one: the new rows are those
                # above the largest rowid before (AUTOINCREMENT never reuses one).
                (last_id,) = conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {GAPS_TABLE}").fetchone()
                for gap in gaps:
                    self._write_gap(gap)
                gap_rows = conn.execute(f"SELECT topic, reason, count(*) FROM {GAPS_TABLE} WHERE rowid > ?"
                                        " GROUP BY topic, reason", (last_id,)).fetchall()
            for session in sessions:
                self._write_session(session)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return inserted, failed, by_key, gap_rows

    def _write_gap(self, gap: GapRecord) -> None:
        detected_at = self._iso(gap.detected_ns // 1_000_000)
        if gap.recovered_ns is None:
            self.conn.execute(
                f"INSERT OR IGNORE INTO {GAPS_TABLE} (category, topic, symbol, depth, last_u, got_u, reason,"
                " detected_at, detected_ns) VALUES (?,?,?,?,?,?,?,?,?)",
                (gap.category, gap.topic, gap.symbol, gap.depth, gap.last_u, gap.got_u, gap.reason,
                 detected_at, gap.detected_ns),
            )
        else:
            recovered_at = self._iso(gap.recovered_ns // 1_000_000)
            self.conn.execute(
                f"INSERT INTO {GAPS_TABLE} (category, topic, symbol, depth, last_u, got_u, reason, detected_at,"
                " detected_ns, recovered_at, recovered_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (category, topic, detected_ns) DO UPDATE SET"
                " recovered_at = excluded.recovered_at, recovered_ns = excluded.recovered_ns,"
                f" got_u = COALESCE({GAPS_TABLE}.got_u, excluded.got_u)",
                (gap.category, gap.topic, gap.symbol, gap.depth, gap.last_u, gap.got_u, gap.reason,
                 detected_at, gap.detected_ns, recovered_at, gap.recovered_ns),
            )

    def _write_session(self, s: SessionRecord) -> None:
        iso = self._iso
        self.conn.execute(
            f"INSERT INTO {SESSIONS_TABLE} (shard, session, url, topics, connected_at, connected_ns, ended_at,"
            " ended_ns, reason, graceful) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (shard, connected_ns) DO UPDATE SET ended_at = excluded.ended_at,"
            " ended_ns = excluded.ended_ns, reason = excluded.reason, graceful = excluded.graceful",
            (s.shard_id, s.session_id, s.url, s.topics, iso(s.connected_ns // 1_000_000), s.connected_ns,
             None if s.ended_ns is None else iso(s.ended_ns // 1_000_000), s.ended_ns, s.reason,
             None if s.graceful is None else int(s.graceful)),
        )

    def is_transient(self, exc: BaseException) -> bool:
        """``database is locked`` or full: retry the same batch."""
        return is_transient(exc)

    def cleanup_step(self, now_ns: int, *, final: bool = False) -> bool:
        """Retention and archive, a step at a time (see :class:`Retainer`); True when nothing is left."""
        return self.retention.step(now_ns, final=final)

    def status(self) -> dict[str, object]:
        """The WAL checkpointer's figures, and retention's."""
        return {"wal": self.checkpointer.status(), **self.retention.status()}

    def close(self) -> None:
        self.retention.close()
        self.checkpointer.close()
        self.conn.close()


# --- Retention and archive: l2rec.storage.retainer (the writer's steps), archive_jobs (a round) ---------

VACUUM_COMMAND = "PRAGMA auto_vacuum=INCREMENTAL; VACUUM;"
AUTO_VACUUM_MODES = {0: "none", 1: "full", 2: "incremental"}


def prepare_auto_vacuum(conn: sqlite3.Connection, path: str, *, warn: bool) -> int:
    """A new database got ``auto_vacuum=INCREMENTAL`` in :func:`connect`, so that the pages retention frees
    go back to the file system (``incremental_vacuum``). An existing one keeps its mode: converting it is a
    VACUUM, a full rewrite that would hold the writer for minutes on a large file, so it gets one WARNING
    with the command instead (``warn``: only when retention frees pages). Returns the mode (0, 1, 2)."""
    mode = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    if mode != 2 and warn:
        log.warning("the database was created without auto_vacuum=INCREMENTAL: the space of removed rows is "
                    "reused, never given back to the file system. To convert it (a full rewrite, minutes on a "
                    "large file; with the recorder stopped): sqlite3 %s '%s'", path, VACUUM_COMMAND,
                    extra={"fields": {"db_path": path, "auto_vacuum": AUTO_VACUUM_MODES.get(mode, str(mode)),
                                      "command": VACUUM_COMMAND}})
    return mode


def symbols_of(conn: sqlite3.Connection, table: str) -> list[str]:
    """Every symbol of the table, one index seek each (the key's index leads with symbol)."""
    out: list[str] = []
    row = conn.execute(f"SELECT min(symbol) FROM {table}").fetchone()
    while row is not None and row[0] is not None:
        out.append(str(row[0]))
        row = conn.execute(f"SELECT min(symbol) FROM {table} WHERE symbol > ?", (row[0],)).fetchone()
    return out


def oldest_ts(conn: sqlite3.Connection, table: str, symbol: str, at_or_after: int | None = None) -> int | None:
    """The oldest exchange_timestamp of ``symbol`` (at or after ``at_or_after``): one index seek."""
    if at_or_after is None:
        row = conn.execute(f"SELECT min(exchange_timestamp) FROM {table} WHERE symbol = ? AND "
                           "exchange_timestamp IS NOT NULL", (symbol,)).fetchone()
    else:
        row = conn.execute(f"SELECT min(exchange_timestamp) FROM {table} WHERE symbol = ? AND "
                           "exchange_timestamp >= ?", (symbol, at_or_after)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def newest_ts(conn: sqlite3.Connection, table: str) -> int | None:
    """The newest exchange_timestamp of the table: one index seek per symbol."""
    best: int | None = None
    for symbol in symbols_of(conn, table):
        row = conn.execute(f"SELECT max(exchange_timestamp) FROM {table} WHERE symbol = ?", (symbol,)).fetchone()
        if row[0] is not None and (best is None or int(row[0]) > best):
            best = int(row[0])
    return best


def table_columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, str]]:
    """(name, declared type) of every column of the table, in its order: what the archive's files hold."""
    return [(str(r[1]), str(r[2])) for r in conn.execute(f"PRAGMA table_info({table})")]


def range_where(symbols: Sequence[str] | None, since_ms: int | None,
                until_ms: int | None) -> tuple[str, list[object]]:
    """The WHERE clause (and its parameters) of the rows an export or a report covers: of ``symbols`` (all
    when None), with ``since_ms <= exchange_timestamp < until_ms``; rows without an exchange time never."""
    where = ["exchange_timestamp IS NOT NULL"]
    params: list[object] = []
    if symbols:
        where.append(f"symbol IN ({', '.join('?' * len(symbols))})")
        params += list(symbols)
    if since_ms is not None:
        where.append("exchange_timestamp >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("exchange_timestamp < ?")
        params.append(until_ms)
    return " AND ".join(where), params


def export_groups(conn: sqlite3.Connection, table: str, symbols: Sequence[str] | None, since_ms: int | None,
                  until_ms: int | None, batch: int = 20_000,
                  ) -> Iterator[tuple[str, int, list[tuple[Any, ...]]]]:
    """Every row of ``table`` (of ``symbols``, with ``since_ms <= exchange_timestamp < until_ms``) in one
    pass, as (symbol, UTC hour, rows) pieces in (symbol, exchange_timestamp, sequence) order: a piece never
    spans two hours, and the pieces of one hour follow each other. Works on any table with ``symbol`` and
    ``exchange_timestamp`` (an old one without the key's index is sorted once by SQLite). Rows without an
    ``exchange_timestamp`` (the seed's oldest) belong to no hour and are not exported."""

    cols = table_columns(conn, table)
    names = [n for n, _ in cols]
    where, params = range_where(symbols, since_ms, until_ms)
    order = ", ".join(c for c in ("symbol", "exchange_timestamp", "sequence") if c in names)
    cur = conn.execute(f"SELECT {', '.join(names)} FROM {table} WHERE {where} ORDER BY {order}", params)
    i_sym, i_ts = names.index("symbol"), names.index("exchange_timestamp")
    while rows := cur.fetchmany(batch):
        start = 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i][i_sym] != rows[start][i_sym] or \
                    hour_start(int(rows[i][i_ts])) != hour_start(int(rows[start][i_ts])):
                yield str(rows[start][i_sym]), hour_start(int(rows[start][i_ts])), rows[start:i]
                start = i
