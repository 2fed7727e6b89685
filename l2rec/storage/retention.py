"""Retention and archive planning: which rows may leave SQLite, and which hours go to the archive.

Plain functions, no database and no threads (``l2rec.storage.sqlite.Store`` runs the statements, the writer
actor calls it between commits). Times are the exchange's (``exchange_timestamp``, ms), never the local
clock: the horizon is the newest recorded ``exchange_timestamp`` minus the retention, so a replay of old
data keeps and removes the same rows a live run of that day would have.
"""

from __future__ import annotations

from collections.abc import Iterable
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
    """Rows of one symbol older than ``hi_ms`` and, with an archive, with ``id <= max_id``: rows the archive's
    durable files hold (see :class:`ArchivedThrough`). Rows recorded after the archive's last round have
    larger ids and stay until a round has written them."""

    symbol: str
    hi_ms: int
    max_id: int | None = None


@dataclass(frozen=True, slots=True)
class ArchivedThrough:
    """What the archive holds: every row with ``exchange_timestamp < cut_ms`` and ``id <= max_id`` is in a
    durable file. One pair per table, moved forward by each archive round (a round writes the rows with
    ``exchange_timestamp < new cut`` and ``id <= new max_id`` that the old pair did not cover, which
    includes old rows recorded late), so that retention can delete with one condition, from the table's
    head (``l2rec.storage.retainer``)."""

    cut_ms: int = 0
    max_id: int = 0


def delete_bound(horizon: int, archived: ArchivedThrough | None) -> tuple[int, int | None]:
    """(exchange_timestamp bound, id bound) of what a cleanup may remove: older than the horizon and, with
    an archive, held by its files."""
    if archived is None:
        return horizon, None
    return min(horizon, archived.cut_ms), archived.max_id


def plan_deletes(symbols: Iterable[str], horizon: int, archived: ArchivedThrough | None) -> list[DeleteRange]:
    """The per-symbol pass of a cleanup: every row of each symbol older than ``horizon`` and, with an
    archive, held by its files (``archived``). The head-of-table pass before it removes most of them."""
    hi, max_id = delete_bound(horizon, archived)
    return [DeleteRange(symbol, hi, max_id) for symbol in symbols]


def archive_target(newest_ms: int | None, retention_hours: float, grace_s: float) -> int | None:
    """How far the archive should reach (a cut: rows older go to files): every closed hour, and with a
    retention, everything older than the horizon too (those rows are about to leave SQLite; in an hour
    still open they go to part files until it closes)."""
    until = closed_until(newest_ms, grace_s)
    horizon = horizon_ms(newest_ms, retention_hours)
    if until is None:
        return None
    return until if horizon is None else max(until, horizon)


def next_cut(cut_ms: int, target_ms: int, oldest_ms: int | None) -> int:
    """The cut of the next archive round: the target, but at most one hour past the oldest row not yet
    covered, so that a round's work (and its memory: one symbol-hour at a time, but every symbol) stays
    bounded when a large table is archived for the first time."""
    lo = cut_ms if oldest_ms is None else max(cut_ms, oldest_ms)
    return max(cut_ms, min(target_ms, hour_start(lo) + HOUR_MS))


def hours_between(lo_ms: int, hi_ms: int) -> list[int]:
    """The UTC hours overlapping ``[lo_ms, hi_ms)``, oldest first."""
    return list(range(hour_start(lo_ms), hi_ms, HOUR_MS)) if hi_ms > lo_ms else []


def archive_path(archive_dir: str | Path, table: str, symbol: str, hour_ms: int, suffix: str = "parquet") -> Path:
    """``{archive_dir}/{table}/date=YYYY-MM-DD/symbol=SYMBOL/HH.{suffix}``: Hive partitions (``date``,
    ``symbol``) that pyarrow, DuckDB and polars read as columns; one file per UTC hour."""
    t = datetime.fromtimestamp(hour_ms / 1000, tz=UTC)
    return Path(archive_dir) / table / f"date={t:%Y-%m-%d}" / f"symbol={symbol}" / f"{t:%H}.{suffix}"


def part_path(hour_path: Path, cut_ms: int) -> Path:
    """A part of an hour still open: ``HH.part-CUT.parquet`` beside the hour's file, holding rows older than
    the cut that had to leave SQLite (retention shorter than the hour) before the hour closed. A reader
    of the directory sees parts like any file of the dataset; when the hour closes its parts are merged
    into ``HH.parquet`` and removed."""
    stem, _, suffix = hour_path.name.partition(".")
    return hour_path.with_name(f"{stem}.part-{cut_ms}.{suffix}")


def parts_of(hour_path: Path) -> list[Path]:
    """The parts of an hour's file now on disk, oldest cut first."""
    stem, _, suffix = hour_path.name.partition(".")
    if not hour_path.parent.is_dir():
        return []
    found = [p for p in hour_path.parent.iterdir()
             if p.name.startswith(f"{stem}.part-") and p.name.endswith(f".{suffix}")]
    return sorted(found, key=lambda p: int(p.name[len(stem) + 6:-len(suffix) - 1]))
