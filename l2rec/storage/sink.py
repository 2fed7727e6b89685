"""The interface every sink implements: the one thing the writer actor knows of where rows go.

Two sinks: SQLite (:class:`l2rec.storage.sqlite.Store`, ``db_path`` a file) and PostgreSQL
(:class:`l2rec.storage.postgres.PgStore`, ``db_path`` a ``postgresql://`` URL); the functions below
choose. The contract the rest of the recorder relies on:

- ``write`` commits the rows, gap records and session records of one group of batches in ONE
  transaction, or raises; the writer acknowledges the batches to the shards only after it returned, so a
  batch is never lost between a shard and the sink;
- a row already present (same natural key) is skipped, never doubled: batches are resent after a writer
  restart, and replays may run twice;
- ``is_transient`` says which errors go away by themselves (a lock released, disk space freed, a server
  back): the writer keeps the batch at the head of its backlog and retries it with backoff, and no later
  batch overtakes it; any other error fails the writer process (the supervisor restarts it);
- the counters are cumulative over the sink's life, for the health dump.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from l2rec.messages.writer import GapRecord, SessionRecord
from l2rec.runtime.config import RecorderConfig
from l2rec.storage.dburl import is_postgres_url


class SinkUnavailable(Exception):
    """The sink cannot take the batch now but will (a server down or restarting, a network cut, another
    transaction in the way): the writer keeps the batch and retries with backoff, logging at
    ``log_level``. Its text is safe to show (no password)."""

    def __init__(self, message: str, *, log_level: int = logging.ERROR) -> None:
        super().__init__(message)
        self.log_level = log_level


class Sink(Protocol):
    """Where committed rows go (see the module docstring for the contract)."""

    path: str  # where it writes, safe to show (a file path; a URL without its password)
    table: str
    rows_offered: int  # rows handed to write()
    rows_inserted: int  # rows that were new
    rows_failed: int  # rows refused by a constraint other than the natural key: not stored, an error
    last_row_error: str | None
    batches: int  # transactions committed
    last_commit_s: float

    def write(self, rows: Sequence[Sequence[object]], gaps: Iterable[GapRecord] = (),
              sessions: Iterable[SessionRecord] = ()) -> int:
        """Commit everything in one transaction; returns the rows actually inserted. A row that breaks a
        constraint other than the natural key is not stored and counted in ``rows_failed``; the others are."""
        ...

    def is_transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` from ``write`` is worth retrying with the same batch."""
        ...

    def cleanup_step(self, now_ns: int, *, final: bool = False) -> bool:
        """One short step of retention and archive work (``data_retention_hours``, ``archive_dir``), called
        by the writer between commits; never raises (failures are logged and retried). True when nothing is
        left to do for now. ``final``: the last call(s) before ``close``: archive every closed hour and run
        one last cleanup."""
        ...

    def status(self) -> dict[str, object]:
        """Sink-specific figures for the writer's part of the health dump."""
        ...

    def close(self) -> None:
        """Flush and release everything; the sink is not used again."""
        ...


@dataclass(frozen=True, slots=True)
class LastRow:
    """Where a topic's recorded data stops: its last live row's ``u`` and time (receive time, else the
    exchange's), so that a gap for the time the recorder (or a shard) was down starts where the data
    does."""

    topic: str
    last_u: int
    at_ns: int


def last_recorded(cfg: RecorderConfig, topics: Sequence[str]) -> tuple[LastRow, ...]:
    """The last live row of each of ``topics`` in the sink (none for a topic it has no live row of)."""
    if is_postgres_url(cfg.db_path):
        from l2rec.storage import postgres

        return postgres.last_rows(cfg.db_path, cfg.table_name, cfg.category, topics)
    from l2rec.storage.sqlite import last_rows

    return last_rows(cfg.db_path, cfg.table_name, cfg.category, topics)


def check_sink(cfg: RecorderConfig) -> None:
    """Before anything starts: can the sink ``cfg.db_path`` names be used? Raises ConfigError naming the
    key (``db_path``, ``table_name``) with what is wrong, so a bad path is one line and exit 78."""
    if is_postgres_url(cfg.db_path):
        from l2rec.storage import postgres

        postgres.preflight(cfg.db_path, cfg.table_name)
        return
    from l2rec.storage.sqlite import preflight

    preflight(cfg.db_path, cfg.table_name)


def open_error_is_transient(cfg: RecorderConfig, exc: BaseException) -> bool:
    """Whether ``open_sink`` failing with ``exc`` is worth retrying (another process holds the lock, the
    server cannot be reached now)."""
    if isinstance(exc, SinkUnavailable):
        return True
    from l2rec.storage.sqlite import is_transient

    return is_transient(exc)


def open_sink(cfg: RecorderConfig) -> Sink:
    """The sink ``cfg.db_path`` names, opened and its tables checked (and migrated: columns are added,
    never dropped). Raises on a database that cannot be opened or used."""
    if is_postgres_url(cfg.db_path):
        from l2rec.storage.postgres import PgStore, default_recorder_id

        return PgStore(cfg.db_path, cfg.table_name, recorder_id=cfg.recorder_id or default_recorder_id(),
                       retention_hours=cfg.data_retention_hours, cleanup_interval_s=cfg.cleanup_interval_s)
    from l2rec.storage.sqlite import Store

    return Store(cfg.db_path, cfg.table_name, busy_timeout_s=cfg.db_busy_timeout_s, max_pages=cfg.db_max_pages,
                 retention_hours=cfg.data_retention_hours, cleanup_interval_s=cfg.cleanup_interval_s,
                 archive_dir=cfg.archive_dir, archive_grace_s=cfg.archive_grace_s)
