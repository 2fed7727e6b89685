"""Retention (``data_retention_hours``) and the archive (``archive_dir``) of one SQLite Store, a step at a time.

The plan (horizon, closed hours, the archive's cut) is in ``l2rec.storage.retention``, an archive round in
``l2rec.storage.archive_jobs``, the Parquet side in ``l2rec.storage.archive``; here are the statements and
the bookkeeping, run by the writer between commits in steps of at most CLEANUP_BUDGET_S.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from l2rec.runtime.logs import RateLimited
from l2rec.storage.archive_jobs import ArchiveRound, RoundDone, dirty_closed, oldest_hour, run_round
from l2rec.storage.retention import (
    DELETE_CHUNK_ROWS,
    HOUR_MS,
    VACUUM_CHUNK_PAGES,
    ArchivedThrough,
    DeleteRange,
    archive_target,
    cleanup_due,
    closed_until,
    delete_bound,
    horizon_ms,
    next_cut,
    plan_deletes,
)
from l2rec.storage.schema import GAPS_TABLE, ROW_COLUMNS, SESSIONS_TABLE
from l2rec.storage.sqlite import AUTO_VACUUM_MODES, is_transient, newest_ts, symbols_of

if TYPE_CHECKING:
    from l2rec.storage.sqlite import Store

log = logging.getLogger("recorder.storage")

ARCHIVE_TABLE = "l2_archive"
# One row per (table, symbol, hour) the archive has a file for: `dirty` = the hour has part files (written
# while it was open) not yet merged into its HH.parquet.
ARCHIVE_DDL = f"""
CREATE TABLE IF NOT EXISTS {ARCHIVE_TABLE} (
    tbl TEXT NOT NULL,
    symbol TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    max_id INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    path TEXT NOT NULL,
    archived_ns INTEGER NOT NULL,
    dirty INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, symbol, hour_ms)
)
"""
ARCHIVE_STATE_TABLE = "l2_archive_state"
# One row per table: what the archive holds (retention.ArchivedThrough), and the round under way, so that a
# round retried after a failure or a crash writes the same file names (merged, not doubled).
ARCHIVE_STATE_DDL = f"""
CREATE TABLE IF NOT EXISTS {ARCHIVE_STATE_TABLE} (
    tbl TEXT PRIMARY KEY,
    cut_ms INTEGER NOT NULL,
    max_id INTEGER NOT NULL,
    pending_cut_ms INTEGER,
    pending_max_id INTEGER,
    updated_ns INTEGER NOT NULL
)
"""
# One cleanup step (a Tick of the writer) starts chunks for this long; a chunk (4,000 rows, or 2,048 pages
# vacuumed) took up to 23 ms on a 400k-row, 50-symbol table, so a commit waits at most ~50 ms behind one.
CLEANUP_BUDGET_S = 0.025
# Head-of-table deletes: rows per transaction, and how far past the head a chunk looks (so a row newer than
# the horizon near the head never makes it scan the whole table).
HEAD_CHUNK_ROWS = 8_000
HEAD_WINDOW_ROWS = 20_000
# The archive process runs below the recorder's priority: it has minutes of slack (the retention), the
# shards and the writer have a latency target.
ARCHIVE_NICE = 10
# Archive rounds start at most this often (unless catching up, or at close), however short the cleanup
# interval: each round writes a part file per symbol of an open hour (500 files and their fsyncs at 500
# symbols), and with retention shorter than an hour the database holds the retention plus one interval.
ARCHIVE_ROUND_MIN_S = 60.0
_TS = ROW_COLUMNS.index("exchange_timestamp")


def _archive_process_init(writer_pid: int) -> None:
    """In the archive process: run below the recorder's priority, and end with the writer. A pool worker
    whose parent was killed (SIGKILL by the root after a hang) would otherwise wait for work forever."""
    with contextlib.suppress(OSError):
        os.nice(ARCHIVE_NICE)

    def watch() -> None:
        while os.getppid() == writer_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="writer-watch", daemon=True).start()


class Retainer:
    """Retention and the archive of one Store.

    Cleanup: every ``cleanup_interval_s`` (and once more at close) it removes the rows older than the
    horizon (with an archive: only those its durable files hold), from the table's head first, then per
    symbol for rows recorded late; then ``l2_gaps`` and ``l2_sessions`` rows that ended before the horizon;
    then returns free pages to the file system (``incremental_vacuum``); each in transactions of a few
    thousand rows, for at most CLEANUP_BUDGET_S per step.
    Archive: every ``cleanup_interval_s`` (at least ARCHIVE_ROUND_MIN_S apart) a round
    (``l2rec.storage.archive_jobs``) runs in a separate process (reading rows back and writing Parquet cost
    ~45 us a row, which must not hold the writer's GIL); the writer only plans the round and records it
    once its files are durable. A failed round is logged with its path and retried after the interval
    with the same bounds; the rows stay in SQLite meanwhile. At close the rounds run in the writer
    itself, until the archive has caught up.
    """

    def __init__(self, store: Store, retention_hours: float, interval_s: float, archive_dir: str | None,
                 grace_s: float, *, budget_s: float = CLEANUP_BUDGET_S,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.store = store
        self.conn = store.conn
        self.table = store.table
        self.retention_hours = retention_hours
        self.interval_s = interval_s
        self.archive_dir = archive_dir
        self.grace_s = grace_s
        self.budget_s = budget_s
        self.clock = clock
        self.enabled = retention_hours > 0 or archive_dir is not None
        self.newest_ms = newest_ts(self.conn, self.table) if self.enabled else None
        # cleanup
        self._tasks: deque[DeleteRange | str] | None = None
        self._bound: tuple[int, int | None] | None = None
        self._horizon: int | None = None
        self._last_start_ns: int | None = None
        self._started_at = 0.0
        self._busy_s = 0.0
        self._final_done = False
        self.cleanups = 0
        self.rows_removed = 0
        self.gaps_removed = 0
        self.sessions_removed = 0
        self.pages_vacuumed = 0
        self.last_cleanup_ms: float | None = None
        self.last_cleanup_busy_ms: float | None = None
        self.max_step_ms = 0.0
        self.last_error: str | None = None
        self._rate = RateLimited(60.0)
        # archive
        self.archived: ArchivedThrough | None = None
        self._pending: tuple[int, int] | None = None
        self.dirty: set[tuple[str, int]] = set()
        if archive_dir is not None:
            self._load_archive_state()
        self._executor: ProcessPoolExecutor | None = None
        self._future: Future[RoundDone] | None = None
        self._last_round_ns: int | None = None
        self._retry_at_ns: int | None = None
        self._final_failed = False
        self.rounds = 0
        self.reader_fallbacks = 0  # hours the archive process read with sqlite3, not the ADBC driver
        self.files_written = 0
        self.parts_written = 0
        self.rows_archived = 0
        self.archive_bytes = 0
        self.archive_failures = 0
        self.last_round_ms: float | None = None
        self.last_archive_error: str | None = None
        self.last_archive_path: str | None = None

    def _load_archive_state(self) -> None:
        conn = self.conn
        conn.execute(ARCHIVE_DDL)
        conn.execute(ARCHIVE_STATE_DDL)
        row = conn.execute(f"SELECT cut_ms, max_id, pending_cut_ms, pending_max_id FROM {ARCHIVE_STATE_TABLE} "
                           "WHERE tbl = ?", (self.table,)).fetchone()
        # A database archived before this table existed starts from nothing: its rows still in SQLite are
        # written again, merged with the files already there.
        self.archived = ArchivedThrough() if row is None else ArchivedThrough(int(row[0]), int(row[1]))
        if row is not None and row[2] is not None:
            self._pending = (int(row[2]), int(row[3]))
        self.dirty = {(str(s), int(h)) for s, h in conn.execute(
            f"SELECT symbol, hour_ms FROM {ARCHIVE_TABLE} WHERE tbl = ? AND dirty = 1", (self.table,))}

    # -- called by Store ------------------------------------------------------------------------------
    def saw(self, rows: Sequence[Sequence[object]]) -> None:
        """Rows just committed: the newest exchange_timestamp moves the horizon and closes hours."""
        if not self.enabled:
            return
        self._final_done = False  # rows after a final cleanup (a store used on): the next one runs again
        newest = self.newest_ms
        for r in rows:
            ts = r[_TS]
            if isinstance(ts, int) and (newest is None or ts > newest):
                newest = ts
        self.newest_ms = newest

    def step(self, now_ns: int, *, final: bool = False) -> bool:
        """One step of the archive and one of the cleanup; True when neither has anything left to do now.
        ``final`` (at close): archive rounds here rather than in the archive process, then one last
        cleanup."""
        if not self.enabled:
            return True
        try:
            archived = self._archive_step(now_ns, final) if self.archive_dir is not None else True
            if final and not archived:
                return False  # the last cleanup comes after the last round, so that it can remove those rows
            cleaned = self._cleanup_step(now_ns, final)
            return cleaned and archived
        except sqlite3.Error as exc:
            # Planning or recording a round met a lock or a full disk: never fatal to the writer. A round
            # whose files were written but not recorded is written again (merged) at the next attempt.
            self.last_error = str(exc)
            ok, suppressed = self._rate.allow("step")
            if ok:
                log.warning("retention/archive step failed; retried later", extra={"fields": {
                    "error": str(exc), "suppressed_since_last": suppressed}})
            return True

    # -- cleanup --------------------------------------------------------------------------------------
    def _cleanup_step(self, now_ns: int, final: bool) -> bool:
        if self.retention_hours <= 0:
            return True
        if self._tasks is None:
            if final:
                if self._final_done:
                    return True
                self._final_done = True
            elif not cleanup_due(now_ns, self._last_start_ns, self.interval_s):
                return True
            horizon = horizon_ms(self.newest_ms, self.retention_hours)
            if horizon is None:
                return True
            self._start(now_ns, horizon)
        tasks = self._tasks
        assert tasks is not None
        t0 = self.clock()
        while tasks:
            try:
                self._run(tasks)
            except sqlite3.Error as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                self.last_error = str(exc)
                ok, suppressed = self._rate.allow("cleanup")
                if ok:
                    log.warning("cleanup step failed; retried at the next step", extra={"fields": {
                        "error": str(exc), "suppressed_since_last": suppressed}})
                if not is_transient(exc):
                    self._tasks = None  # not going away by itself: the next interval starts afresh
                break
            if self.clock() - t0 >= self.budget_s:
                break
        spent = self.clock() - t0
        self._busy_s += spent
        self.max_step_ms = max(self.max_step_ms, spent * 1000)
        if self._tasks is not None and not self._tasks:
            self._tasks = None
            self.cleanups += 1
            self.last_cleanup_ms = round((self.clock() - self._started_at) * 1000, 3)
            self.last_cleanup_busy_ms = round(self._busy_s * 1000, 3)
        if self.store.checkpointer.restart_due.is_set():
            self.store.checkpointer.take_turn(self.conn)
        return self._tasks is None

    def _start(self, now_ns: int, horizon: int) -> None:
        self._last_start_ns = now_ns
        self._started_at = self.clock()
        self._busy_s = 0.0
        self._horizon = horizon
        self._bound = delete_bound(horizon, self.archived)
        # Live rows arrive in time order, so the oldest are the lowest rowids: deleting from the head of the
        # table rewrites each table page once, where a symbol at a time rewrites every page once per symbol
        # on it (rows of all symbols are interleaved). The per-symbol pass after it is then one index seek
        # per symbol, for the stragglers (older rows recorded late, e.g. a replay).
        tasks: deque[DeleteRange | str] = deque(["head"])
        tasks.extend(plan_deletes(symbols_of(self.conn, self.table), horizon, self.archived))
        tasks.extend(("gaps", "sessions"))
        if self.store.auto_vacuum == 2:
            tasks.append("vacuum")
        self._tasks = tasks

    def _run(self, tasks: deque[DeleteRange | str]) -> None:
        """One chunk of the first task, in its own transaction; the task is dropped once finished."""
        conn, table, horizon, bound = self.conn, self.table, self._horizon, self._bound
        assert horizon is not None and bound is not None
        task = tasks[0]
        if task == "vacuum":
            before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            if before:
                # executescript: this pragma frees one page per step of its statement, and execute() steps
                # a statement without result columns only once; sqlite3_exec steps it to the end.
                conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_CHUNK_PAGES});")
            after = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            self.pages_vacuumed += max(0, before - after)
            if after == 0 or after >= before:
                tasks.popleft()
            return
        hi_ms, max_id = bound
        id_cond = "" if max_id is None else f" AND rowid <= {int(max_id)}"
        limit = DELETE_CHUNK_ROWS
        if task == "head":
            # The next HEAD_WINDOW_ROWS rowids from the table's head; the task ends at the first chunk that
            # removes fewer than a full chunk (the head is then at the horizon).
            limit = HEAD_CHUNK_ROWS
            sql = (f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE rowid <= "
                   f"(SELECT min(rowid) FROM {table}) + {HEAD_WINDOW_ROWS} AND exchange_timestamp < ?{id_cond} "
                   f"LIMIT {limit})")
            params: list[object] = [hi_ms]
        elif isinstance(task, DeleteRange):
            sql = (f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE symbol = ? AND "
                   f"exchange_timestamp < ?{id_cond} LIMIT {limit})")
            params = [task.symbol, task.hi_ms]
        elif task == "gaps":
            sql = (f"DELETE FROM {GAPS_TABLE} WHERE id IN (SELECT id FROM {GAPS_TABLE} WHERE recovered_ns IS NOT "
                   f"NULL AND recovered_ns < ? LIMIT {limit})")
            params = [horizon * 1_000_000]
        else:
            sql = (f"DELETE FROM {SESSIONS_TABLE} WHERE id IN (SELECT id FROM {SESSIONS_TABLE} WHERE ended_ns IS "
                   f"NOT NULL AND ended_ns < ? LIMIT {limit})")
            params = [horizon * 1_000_000]
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = conn.execute(sql, params).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if task == "gaps":
            self.gaps_removed += n
        elif task == "sessions":
            self.sessions_removed += n
        else:
            self.rows_removed += n
        if n < limit:
            tasks.popleft()

    # -- archive --------------------------------------------------------------------------------------
    def _archive_step(self, now_ns: int, final: bool) -> bool:
        fut = self._future
        if fut is not None:
            if not fut.done() and not final:
                return False
            self._future = None
            try:
                self._record(fut.result(), now_ns)
            except Exception as exc:
                self._failed(exc, now_ns, final)
        if final and self._final_failed:
            return True  # it failed at close: the rows stay, the next start tries again
        if not final and self._retry_at_ns is not None and now_ns < self._retry_at_ns:
            return True
        job = self._next_round(now_ns, final)
        if job is None:
            return True
        self._last_round_ns = now_ns
        if final:
            try:
                self._record(run_round(job), now_ns)
            except Exception as exc:
                self._failed(exc, now_ns, final)
            return False
        if self._executor is None:
            self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_archive_process_init, initargs=(os.getpid(),))
        # In its own process the round reads through the ADBC driver (the writer's final round, beside the
        # writer's own connections, must not: archive_jobs.read_hour_adbc).
        self._future = self._executor.submit(run_round, job, 5.0, True)
        return False

    def _next_round(self, now_ns: int, final: bool) -> ArchiveRound | None:
        """The next round: the one that failed (same bounds), else one from the archive's cut towards the
        target, when the interval is up (at once while catching up, and at close)."""
        from l2rec.storage import schema  # the natural key as it is now (it may change between versions)

        archived, archive_dir = self.archived, self.archive_dir
        target = archive_target(self.newest_ms, self.retention_hours, self.grace_s)
        if archived is None or archive_dir is None or target is None:
            return None
        closed = closed_until(self.newest_ms, self.grace_s)
        assert closed is not None
        if self._pending is not None:
            cut, max_id = self._pending
        else:
            catching_up = target - archived.cut_ms > HOUR_MS
            every_s = max(self.interval_s, ARCHIVE_ROUND_MIN_S)
            if not (final or catching_up or self._last_round_ns is None
                    or now_ns - self._last_round_ns >= every_s * 1e9):
                return None
            row = self.conn.execute(f"SELECT max(rowid) FROM {self.table}").fetchone()
            # Every row up to this id is committed and seen: rows committed later have larger ids.
            max_id = max(archived.max_id, int(row[0] or 0))
            dirty = dirty_closed(sorted(self.dirty), closed)
            if target <= archived.cut_ms and max_id <= archived.max_id and not dirty:
                return None
            oldest = oldest_hour(self.conn, self.table) if catching_up else None
            cut = next_cut(archived.cut_ms, target, oldest)
            self._pending = (cut, max_id)
            self.conn.execute(
                f"INSERT INTO {ARCHIVE_STATE_TABLE} (tbl, cut_ms, max_id, pending_cut_ms, pending_max_id, "
                "updated_ns) VALUES (?,?,?,?,?,?) ON CONFLICT (tbl) DO UPDATE SET pending_cut_ms = "
                "excluded.pending_cut_ms, pending_max_id = excluded.pending_max_id, updated_ns = excluded.updated_ns",
                (self.table, archived.cut_ms, archived.max_id, cut, max_id, time.time_ns()))
        return ArchiveRound(self.store.path, self.table, archive_dir, tuple(schema.NATURAL_KEY), archived.cut_ms,
                            archived.max_id, cut, max_id, closed, dirty_closed(sorted(self.dirty), closed))

    def _record(self, done: RoundDone, now_ns: int) -> None:
        """The round's files are durable: its rows may now leave SQLite (once older than the horizon)."""
        job = done.job
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for w in done.written:
                conn.execute(
                    f"INSERT INTO {ARCHIVE_TABLE} (tbl, symbol, hour_ms, max_id, rows, path, archived_ns, dirty) "
                    "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (tbl, symbol, hour_ms) DO UPDATE SET "
                    "max_id = max(max_id, excluded.max_id), rows = excluded.rows, path = excluded.path, "
                    "archived_ns = excluded.archived_ns, dirty = excluded.dirty",
                    (job.table, w.symbol, w.hour_ms, job.max_id, w.rows_in_file, w.path, now_ns, int(w.part)))
            merged = {(w.symbol, w.hour_ms) for w in done.written if not w.part} | set(job.dirty)
            conn.executemany(f"UPDATE {ARCHIVE_TABLE} SET dirty = 0 WHERE tbl = ? AND symbol = ? AND hour_ms = ?",
                             [(job.table, s, h) for s, h in merged])
            conn.execute(
                f"INSERT INTO {ARCHIVE_STATE_TABLE} (tbl, cut_ms, max_id, pending_cut_ms, pending_max_id, updated_ns)"
                " VALUES (?,?,?,NULL,NULL,?) ON CONFLICT (tbl) DO UPDATE SET cut_ms = excluded.cut_ms, "
                "max_id = excluded.max_id, pending_cut_ms = NULL, pending_max_id = NULL, "
                "updated_ns = excluded.updated_ns", (job.table, job.cut_ms, job.max_id, now_ns))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.archived = ArchivedThrough(job.cut_ms, job.max_id)
        self._pending = None
        self._retry_at_ns = None
        self.dirty -= merged
        self.dirty |= {(w.symbol, w.hour_ms) for w in done.written if w.part}
        self.rounds += 1
        self.reader_fallbacks += done.fallbacks
        self.files_written += sum(1 for w in done.written if not w.part)
        self.parts_written += sum(1 for w in done.written if w.part)
        self.rows_archived += done.rows
        self.archive_bytes += done.bytes
        self.last_round_ms = round(done.seconds * 1000, 3)
        if done.written:
            self.last_archive_path = done.written[-1].path

    def _failed(self, exc: Exception, now_ns: int, final: bool) -> None:
        """Logged with the path; the rows stay in SQLite and the round is tried again after the interval."""
        from l2rec.storage.archive import ArchiveError

        if isinstance(exc, BrokenProcessPool) and self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None  # the archive process died (killed, out of memory): a new one next time
        cause = exc.cause if isinstance(exc, ArchiveError) else exc
        path = str(exc.path) if isinstance(exc, ArchiveError) else None
        full = isinstance(cause, OSError) and cause.errno == errno.ENOSPC
        missing = isinstance(cause, ImportError)
        self.archive_failures += 1
        self.last_archive_error = str(exc)
        self._retry_at_ns = now_ns + int(self.interval_s * 1e9)
        self._final_failed = self._final_failed or final
        hint = "pip install 'bybit-l2-recorder[parquet]'" if missing else None
        log.log(logging.CRITICAL if full or missing else logging.ERROR,
                "archive write failed; its rows stay in SQLite and it is retried", extra={"fields": {
                    "path": path, "error": str(cause), "retry_in_s": self.interval_s, "install": hint}})

    # -- health ---------------------------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        """The health dump's ``db``, ``retention`` and ``archive`` sections."""
        conn = self.store.conn
        try:
            pages, free, size = (int(conn.execute(f"PRAGMA {p}").fetchone()[0])
                                 for p in ("page_count", "freelist_count", "page_size"))
        except sqlite3.Error:
            pages = free = size = 0
        out: dict[str, object] = {"db": {"file_bytes": pages * size, "free_pages": free,
                                         "auto_vacuum": AUTO_VACUUM_MODES.get(self.store.auto_vacuum, "?")}}
        if self.retention_hours > 0:
            out["retention"] = {
                "hours": self.retention_hours, "horizon_ms": horizon_ms(self.newest_ms, self.retention_hours),
                "running": self._tasks is not None, "cleanups": self.cleanups, "rows_removed": self.rows_removed,
                "gaps_removed": self.gaps_removed, "sessions_removed": self.sessions_removed,
                "pages_vacuumed": self.pages_vacuumed, "last_cleanup_ms": self.last_cleanup_ms,
                "last_cleanup_busy_ms": self.last_cleanup_busy_ms, "max_step_ms": round(self.max_step_ms, 3),
                "last_error": self.last_error}
        if self.archive_dir is not None:
            a = self.archived or ArchivedThrough()
            out["archive"] = {
                "dir": self.archive_dir, "closed_until_ms": closed_until(self.newest_ms, self.grace_s),
                "cut_ms": a.cut_ms, "max_id": a.max_id, "rounds": self.rounds,
                "hour_files_written": self.files_written, "parts_written": self.parts_written,
                "hours_with_parts": len(self.dirty), "rows_written": self.rows_archived,
                "bytes_written": self.archive_bytes, "in_flight": self._future is not None,
                "last_round_ms": self.last_round_ms, "last_path": self.last_archive_path,
                "failures": self.archive_failures, "last_error": self.last_archive_error,
                "reader_fallbacks": self.reader_fallbacks}
        return out

    def close(self) -> None:
        """Wait for a round under way (its files complete; recorded at the next start's retry), then stop the
        archive process."""
        if self._future is not None:
            with contextlib.suppress(Exception):
                self._future.result()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
