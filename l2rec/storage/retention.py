"""Retention and archive planning: which rows may leave SQLite, and which hours go to the archive.

Plain functions, no database and no threads (``l2rec.storage.sqlite.Store`` runs the statements, the writer
actor calls it between commits). Times are the exchange's (``exchange_timestamp``, ms), never the local
clock: the horizon is the newest recorded ``exchange_timestamp`` minus the retention, so a replay of old
data keeps and removes the same rows a live run of that day would have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HOUR_MS = 3_600_000
# Rows per DELETE transaction: a few thousand rows cost a few ms to delete with their index entries, so a
# commit of new rows never waits long behind one (see cleanup_budget_s in Store).
DELETE_CHUNK_ROWS = 4000
# Pages returned to the file system per incremental_vacuum call (4 KiB pages: 8 MiB).
VACUUM_CHUNK_PAGES = 2048


def horizon_ms(newest_ms: int | None, retention_hours: float) -> int | None:
    """The oldest ``exchange_timestamp`` kept: rows strictly older may go. None: keep everything
    (retention 0, or nothing recorded yet)."""
    if retention_hours <= 0 or newest_ms is None:
        return None
    return newest_ms - round(retention_hours * HOUR_MS)


def cleanup_due(now_ns: int, last_start_ns: int | None, interval_s: float) -> bool:
    """A cleanup starts ``interval_s`` after the previous one started (at once after a start)."""
    return last_start_ns is None or now_ns - last_start_ns >= interval_s * 1e9


def hour_start(ms: int) -> int:
    """The UTC hour holding ``ms`` (its first millisecond)."""
    return ms - ms % HOUR_MS


def closed_until(newest_ms: int | None, grace_s: float) -> int | None:
    """Hours starting before the returned time are closed: the newest recorded ``exchange_timestamp`` is at
    least ``grace_s`` past their end, so no row of them is still on its way (a late shard, a slow batch)."""
    if newest_ms is None:
        return None
    return hour_start(newest_ms - round(grace_s * 1000))


@dataclass(frozen=True, slots=True)
class DeleteRange:
    """Rows of one symbol with ``lo_ms <= exchange_timestamp < hi_ms`` (no lower bound when ``lo_ms`` is
    None) and, with an archive, ``id <= max_id``: the rows the archive file of that hour holds. Rows of
    the hour recorded after the file was written have larger ids and stay until the hour is archived
    again."""

    symbol: str
    lo_ms: int | None
    hi_ms: int
    max_id: int | None = None


def plan_deletes(symbols: Iterable[str], horizon: int, archived: Mapping[tuple[str, int], int] | None,
                 oldest: Mapping[str, int] | None = None) -> list[DeleteRange]:
    """What a cleanup removes, in order. Without an archive: every row of each symbol older than
    ``horizon``. With one (``archived`` maps (symbol, hour start) to the largest id its file holds): only
    the archived hours' rows, each hour cut at the horizon; an hour not archived yet keeps its rows.
    ``oldest`` (symbol -> its oldest recorded exchange_timestamp) only skips hours with nothing left."""
    out: list[DeleteRange] = []
    for symbol in symbols:
        if archived is None:
            out.append(DeleteRange(symbol, None, horizon))
            continue
        first = hour_start(oldest[symbol]) if oldest and symbol in oldest else None
        for (sym, hour), max_id in sorted(archived.items()):
            if sym != symbol or hour >= horizon or (first is not None and hour < first):
                continue
            out.append(DeleteRange(symbol, hour, min(hour + HOUR_MS, horizon), max_id))
    return out


def next_hour_to_archive(oldest_ms: int, archived_through: int | None, until: int) -> int | None:
    """The first hour of a symbol to archive: at or after its oldest row, after the last hour it has in the
    archive, and closed (starting before ``until``). None when there is none yet. The caller moves on to
    the next hour that has rows."""
    start = hour_start(oldest_ms)
    if archived_through is not None:
        start = max(start, archived_through + HOUR_MS)
    return start if start < until else None


def archive_path(archive_dir: str | Path, table: str, symbol: str, hour_ms: int, suffix: str = "parquet") -> Path:
    """``{archive_dir}/{table}/date=YYYY-MM-DD/symbol=SYMBOL/HH.{suffix}``: Hive partitions (``date``,
    ``symbol``) that pyarrow, DuckDB and polars read as columns; one file per UTC hour."""
    t = datetime.fromtimestamp(hour_ms / 1000, tz=UTC)
    return Path(archive_dir) / table / f"date={t:%Y-%m-%d}" / f"symbol={symbol}" / f"{t:%H}.{suffix}"
