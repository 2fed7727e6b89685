"""What ``l2rec report`` reads: SQL aggregates of a training table, never its rows.

One pass over the table in rowid order, in blocks of ``BLOCK_ROWS`` rowids: each block is one
``GROUP BY symbol, minute`` query (count, first and last time, min / max / sum of mid price and imbalance,
sums of the best bid and ask), whose result (a few hundred rows at most) is folded into per-symbol
buckets of at most ``MAX_POINTS`` per chart and per-hour bitmaps of the minutes that hold rows. So memory is
bounded by symbols x buckets, whatever the number of rows.

Why blocks of rowids rather than one ``GROUP BY`` or the ``(symbol, exchange_timestamp)`` index: SQLite
groups by sorting, and an expression (the minute) cannot be read in order from any index, so one
``GROUP BY`` over 10 million rows sorts all of them (spilling to temporary files); going through the index
instead visits the table's pages once per symbol (a live recording interleaves the symbols on every
page). A scan in rowid order reads each page once, and sorting 20,000 rows at a time stays in memory.
Measured on a 9.6-million-row table (20 symbols, 6 hours, 6.2 GB): blocks of 20,000 rowids 14.9 s, of
50,000 15.8 s, of 200,000 20.4 s; the table alone (reading one column of every row) 4.3 s.

The receive latency histogram needs a second look at the rows; above ``LATENCY_SAMPLE_ROWS`` it reads an
evenly spaced subset of the blocks (every k-th), which gives the same shape for a fraction of the time.
Everything runs in one read transaction: the figures are those of one snapshot, even while a recorder
writes (its WAL waits for the report to finish before it restarts).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from l2rec.storage.sqlite import range_where, symbols_of

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
MAX_POINTS = 1_500  # buckets per chart: a chart 1,100 pixels wide shows no more
BLOCK_ROWS = 20_000
LATENCY_SAMPLE_ROWS = 2_000_000

# Receive latency in whole milliseconds, in bins that widen with it: 1 ms below 100 ms, 10 ms below 1 s,
# 100 ms below 10 s, then one bin for everything slower and one for a receive time before the exchange's.
LATENCY_NEGATIVE_BIN = -1
LATENCY_OVERFLOW_BIN = 280
_LAT = "(recv_time_ns / 1000000 - exchange_timestamp)"
LATENCY_BIN_SQL = (f"CASE WHEN {_LAT} < 0 THEN {LATENCY_NEGATIVE_BIN} WHEN {_LAT} < 100 THEN {_LAT} "
                   f"WHEN {_LAT} < 1000 THEN 90 + {_LAT} / 10 WHEN {_LAT} < 10000 THEN 180 + {_LAT} / 100 "
                   f"ELSE {LATENCY_OVERFLOW_BIN} END")


def latency_bin_edges(b: int) -> tuple[float, float]:
    """The [low, high) milliseconds of latency bin ``b`` (the overflow bin's high is infinite)."""
    if b == LATENCY_NEGATIVE_BIN:
        return -math.inf, 0.0
    if b < 100:
        return float(b), float(b + 1)
    if b < 190:
        return float((b - 90) * 10), float((b - 89) * 10)
    if b < LATENCY_OVERFLOW_BIN:
        return float((b - 180) * 100), float((b - 179) * 100)
    return 10_000.0, math.inf


class NoRows(Exception):
    """The table holds no row in the range asked for (or none with an ``exchange_timestamp``)."""


@dataclass(slots=True)
class Bucket:
    """One chart point of one symbol: the rows of ``bucket_minutes`` minutes, aggregated."""

    rows: int = 0
    mid_n: int = 0
    mid_sum: float = 0.0
    mid_min: float = math.inf
    mid_max: float = -math.inf
    bid_n: int = 0
    bid_sum: float = 0.0
    ask_n: int = 0
    ask_sum: float = 0.0
    imb_n: int = 0
    imb_sum: float = 0.0
    imb_min: float = math.inf
    imb_max: float = -math.inf


@dataclass(slots=True)
class Histogram:
    """Rows per latency bin (see :func:`latency_bin_edges`)."""

    counts: dict[int, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    def add(self, b: int, n: int) -> None:
        self.counts[b] = self.counts.get(b, 0) + n

    def percentile(self, q: float) -> float | None:
        """The upper edge (ms) of the bin holding the ``q`` quantile (0..1); None without rows, inf when it
        lies in the overflow bin. A bin's upper edge: the latency is at most that."""
        total = self.rows
        if not total:
            return None
        want = q * total
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= want:
                return latency_bin_edges(b)[1]
        return math.inf


@dataclass(slots=True)
class SymbolData:
    """Everything the report shows of one symbol, in the report's range. Its chart spans ``start_ms`` to
    ``end_ms`` (the symbol's own first and last minute, or the range given with --since/--until), in
    buckets of ``bucket_minutes``."""

    symbol: str
    start_ms: int
    end_ms: int
    bucket_minutes: int
    rows: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    buckets: dict[int, Bucket] = field(default_factory=dict)  # bucket index -> aggregates
    minutes: dict[int, int] = field(default_factory=dict)  # UTC hour (epoch hours) -> bitmap of its minutes with rows
    latency: Histogram = field(default_factory=Histogram)

    @property
    def minutes_with_rows(self) -> int:
        return sum(mask.bit_count() for mask in self.minutes.values())

    @property
    def buckets_in_chart(self) -> int:
        return -(-(self.end_ms - self.start_ms) // (self.bucket_minutes * MINUTE_MS))

    def bucket_start_ms(self, index: int) -> int:
        return self.start_ms + index * self.bucket_minutes * MINUTE_MS


@dataclass(frozen=True, slots=True)
class Gap:
    """A row of ``l2_gaps``: a loss of sync of one of the symbol's topics (times in ns of the recorder's clock;
    ``recovered_ns`` None while it lasts)."""

    symbol: str
    topic: str
    reason: str
    detected_ns: int
    recovered_ns: int | None


@dataclass(slots=True)
class ReportData:
    """What the charts, the page and ``summary.json`` are made from."""

    table: str
    start_ms: int  # the range's first minute (inclusive) ...
    end_ms: int  # ... and its end (exclusive), both on minute boundaries
    symbols: dict[str, SymbolData]
    gaps: list[Gap]
    has_receive_times: bool  # the table has a recv_time_ns column
    latency_rows_scanned: int = 0  # rows of the blocks the histogram read
    latency_sample_every: int = 1  # the histogram read every k-th block

    @property
    def span_minutes(self) -> int:
        return (self.end_ms - self.start_ms) // MINUTE_MS

    def hours(self) -> range:
        """The UTC hours (epoch hours) the range touches."""
        return range(self.start_ms // HOUR_MS, -(-self.end_ms // HOUR_MS))

    def minutes_in_hour(self, hour: int) -> int:
        """How many of the hour's minutes lie in the range (fewer than 60 at its edges)."""
        lo = max(hour * 60, self.start_ms // MINUTE_MS)
        hi = min(hour * 60 + 60, self.end_ms // MINUTE_MS)
        return max(0, hi - lo)

    def coverage(self, symbol: str, hour: int) -> float | None:
        """The share (0..1) of the hour's minutes in range that hold rows of ``symbol``; None outside it."""
        n = self.minutes_in_hour(hour)
        sd = self.symbols.get(symbol)
        if not n or sd is None:
            return None
        return sd.minutes.get(hour, 0).bit_count() / n


def table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The names of the table's columns."""
    return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}


def has_time_index(conn: sqlite3.Connection, table: str) -> bool:
    """Whether an index leads with (symbol, exchange_timestamp): then a symbol's first and last times are
    one seek each (the recorder makes one; a seed table may have none)."""
    for idx in conn.execute(f"PRAGMA index_list({table})").fetchall():
        cols = [str(r[2]) for r in conn.execute(f"PRAGMA index_info({idx[1]})").fetchall()]
        if cols[:2] == ["symbol", "exchange_timestamp"]:
            return True
    return False



@dataclass(frozen=True, slots=True)
class Extent:
    """Where the rows in range are: each symbol's first and last time, and the rowids to scan."""

    times: dict[str, tuple[int, int]]  # symbol -> (first, last) exchange_timestamp
    lo_rowid: int
    hi_rowid: int

    @property
    def first_ms(self) -> int:
        return min(first for first, _ in self.times.values())

    @property
    def last_ms(self) -> int:
        return max(last for _, last in self.times.values())


def extent(conn: sqlite3.Connection, table: str, symbols: Sequence[str] | None, since_ms: int | None,
           until_ms: int | None) -> Extent:
    """Each symbol's first and last times in range, and the rowid range of its rows; NoRows when there are
    none. With the recorder's time index: two seeks per symbol, plus, for a time range, a scan of that range
    of the index (which holds the rowids: no table page is read); without one, a single pass."""
    times: dict[str, tuple[int, int]] = {}
    los: list[int] = []
    his: list[int] = []
    if has_time_index(conn, table):
        for sym in list(symbols) if symbols else symbols_of(conn, table):
            w, p = range_where([sym], since_ms, until_ms)
            first = conn.execute(f"SELECT min(exchange_timestamp) FROM {table} WHERE {w}", p).fetchone()[0]
            if first is None:
                continue
            last = conn.execute(f"SELECT max(exchange_timestamp) FROM {table} WHERE {w}", p).fetchone()[0]
            times[sym] = (int(first), int(last))
            if since_ms is not None or until_ms is not None:
                lo, hi = conn.execute(f"SELECT min(rowid), max(rowid) FROM {table} WHERE {w}", p).fetchone()
                los.append(int(lo))
                his.append(int(hi))
        if times and not los:
            # Every row of these symbols: the table's rowid range, two seeks (one query with both min() and
            # max() would scan the whole table: SQLite seeks only for a lone min or max).
            los = [int(conn.execute(f"SELECT min(rowid) FROM {table}").fetchone()[0])]
            his = [int(conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0])]
    else:
        where, params = range_where(symbols, since_ms, until_ms)
        for sym, first, last, lo, hi in conn.execute(
                f"SELECT symbol, min(exchange_timestamp), max(exchange_timestamp), min(rowid), max(rowid) "
                f"FROM {table} WHERE {where} GROUP BY symbol", params):
            times[str(sym)] = (int(first), int(last))
            los.append(int(lo))
            his.append(int(hi))
    if not times:
        raise NoRows
    return Extent(times, min(los), max(his))


def _col(cols: set[str], name: str) -> str:
    """A column of the table, or NULL when an older table lacks it (its chart stays empty)."""
    return name if name in cols else "NULL"


def read_gaps(conn: sqlite3.Connection, symbols: Sequence[str]) -> list[Gap]:
    """The ``l2_gaps`` rows of these symbols, oldest first ([] when the database has no such table)."""
    if not symbols:
        return []
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'l2_gaps'").fetchone()
    if exists is None:
        return []
    out: list[Gap] = []
    for i in range(0, len(symbols), 500):  # SQLite's limit on variables is 999 in old builds
        part = list(symbols[i:i + 500])
        rows = conn.execute(
            f"SELECT symbol, topic, reason, detected_ns, recovered_ns FROM l2_gaps WHERE symbol IN "
            f"({', '.join('?' * len(part))}) ORDER BY detected_ns", part).fetchall()
        out += [Gap(str(s), str(t), str(r), int(d), None if rec is None else int(rec)) for s, t, r, d, rec in rows]
    out.sort(key=lambda g: g.detected_ns)
    return out


def gap_in_range(gap: Gap, start_ms: int | None, end_ms: int | None) -> bool:
    """Whether a gap overlaps [start_ms, end_ms) (either bound None: open). Gap times are the recorder's
    clock, rows' times the exchange's: the same instant for a live recording, not for a replay."""
    lo_ms = gap.detected_ns // 1_000_000
    hi_ms = None if gap.recovered_ns is None else gap.recovered_ns // 1_000_000
    if end_ms is not None and lo_ms >= end_ms:
        return False
    return start_ms is None or hi_ms is None or hi_ms >= start_ms


def read_report_data(conn: sqlite3.Connection, table: str, symbols: Sequence[str] | None = None,
                     since_ms: int | None = None, until_ms: int | None = None, max_points: int = MAX_POINTS,
                     progress: Callable[[int, int, int], None] | None = None,
                     block_rows: int = BLOCK_ROWS) -> ReportData:
    """Aggregate ``table`` (its rows of ``symbols`` with ``since_ms <= exchange_timestamp < until_ms``) for the
    report. ``progress(rows, rowids_done, rowids_total)`` is called after each block. Raises NoRows."""
    cols = table_columns(conn, table)
    conn.execute("BEGIN")  # one snapshot for every query below
    try:
        ext = extent(conn, table, symbols, since_ms, until_ms)
        start_ms, end_ms = _minutes(since_ms if since_ms is not None else ext.first_ms,
                                    until_ms if until_ms is not None else ext.last_ms + 1)
        data = ReportData(table, start_ms, end_ms, {}, [], "recv_time_ns" in cols)
        for sym, (first, last) in sorted(ext.times.items()):
            # A symbol's chart spans its own rows, unless a range was asked for: then every chart spans it.
            lo, hi = _minutes(first if since_ms is None else since_ms, last + 1 if until_ms is None else until_ms)
            data.symbols[sym] = SymbolData(sym, lo, hi, max(1, -(-((hi - lo) // MINUTE_MS) // max_points)))
        _scan(conn, table, cols, data, ext, symbols, since_ms, until_ms, progress, block_rows)
        if data.has_receive_times:
            _latency(conn, table, data, ext, symbols, since_ms, until_ms, block_rows)
        data.gaps = read_gaps(conn, sorted(data.symbols))
    finally:
        conn.rollback()
    return data


def _minutes(start_ms: int, end_ms: int) -> tuple[int, int]:
    """[start, end) widened to whole minutes (at least one)."""
    lo = start_ms // MINUTE_MS * MINUTE_MS
    return lo, max(lo + MINUTE_MS, -(-end_ms // MINUTE_MS) * MINUTE_MS)


def _scan(conn: sqlite3.Connection, table: str, cols: set[str], data: ReportData, ext: Extent,
          symbols: Sequence[str] | None, since_ms: int | None, until_ms: int | None,
          progress: Callable[[int, int, int], None] | None, block_rows: int) -> None:
    where, params = range_where(symbols, since_ms, until_ms)
    mid, imb = _col(cols, "mid_price"), _col(cols, "order_book_imbalance")
    bid, ask = _col(cols, "bid_price_1"), _col(cols, "ask_price_1")
    sql = (f"SELECT symbol, exchange_timestamp / {MINUTE_MS} AS m, count(*), min(exchange_timestamp), "
           f"max(exchange_timestamp), count({mid}), total({mid}), min({mid}), max({mid}), count({bid}), total({bid}), "
           f"count({ask}), total({ask}), count({imb}), total({imb}), min({imb}), max({imb}) "
           f"FROM {table} WHERE rowid BETWEEN ? AND ? AND {where} GROUP BY symbol, m")
    total = ext.hi_rowid - ext.lo_rowid + 1
    rows_seen = 0
    for lo in range(ext.lo_rowid, ext.hi_rowid + 1, block_rows):
        for (sym, m, n, first, last, mid_n, mid_sum, mid_min, mid_max, bid_n, bid_sum, ask_n, ask_sum, imb_n,
             imb_sum, imb_min, imb_max) in conn.execute(sql, [lo, lo + block_rows - 1, *params]):
            sd = data.symbols.get(sym)
            if sd is None:  # not in the extent read in this same snapshot: cannot be; never guess a chart
                continue
            sd.rows += n
            rows_seen += n
            sd.first_ms = first if sd.first_ms is None else min(sd.first_ms, first)
            sd.last_ms = last if sd.last_ms is None else max(sd.last_ms, last)
            hour, minute = divmod(m, 60)
            sd.minutes[hour] = sd.minutes.get(hour, 0) | (1 << minute)
            index = (m - sd.start_ms // MINUTE_MS) // sd.bucket_minutes
            b = sd.buckets.get(index)
            if b is None:
                b = sd.buckets[index] = Bucket()
            b.rows += n
            if mid_n:
                b.mid_n += mid_n
                b.mid_sum += mid_sum
                b.mid_min = min(b.mid_min, mid_min)
                b.mid_max = max(b.mid_max, mid_max)
            b.bid_n += bid_n
            b.bid_sum += bid_sum
            b.ask_n += ask_n
            b.ask_sum += ask_sum
            if imb_n:
                b.imb_n += imb_n
                b.imb_sum += imb_sum
                b.imb_min = min(b.imb_min, imb_min)
                b.imb_max = max(b.imb_max, imb_max)
        if progress is not None:
            progress(rows_seen, min(total, lo + block_rows - ext.lo_rowid), total)


def _latency(conn: sqlite3.Connection, table: str, data: ReportData, ext: Extent, symbols: Sequence[str] | None,
             since_ms: int | None, until_ms: int | None, block_rows: int) -> None:
    where, params = range_where(symbols, since_ms, until_ms)
    sql = (f"SELECT symbol, {LATENCY_BIN_SQL} AS b, count(*) FROM {table} WHERE rowid BETWEEN ? AND ? AND "
           f"recv_time_ns IS NOT NULL AND {where} GROUP BY symbol, b")
    blocks = range(ext.lo_rowid, ext.hi_rowid + 1, block_rows)
    rows = sum(sd.rows for sd in data.symbols.values())
    # Evenly spaced blocks (every k-th) keep the histogram's shape at a fraction of a second pass's cost.
    every = max(1, math.ceil(rows / LATENCY_SAMPLE_ROWS))
    data.latency_sample_every = every
    for lo in blocks[::every]:
        for sym, b, n in conn.execute(sql, [lo, lo + block_rows - 1, *params]):
            sd = data.symbols.get(sym)
            if sd is not None:
                sd.latency.add(int(b), int(n))
                data.latency_rows_scanned += int(n)
