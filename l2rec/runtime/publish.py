"""Rows to an embedding host: a shard's book actor hands the rows it made to a :class:`RowPublisher`, which
sends them up the shard's uplink to the root in batches, only while the host has an update callback.

Batching: a batch leaves once its oldest row is ``hold_s`` old or it holds ``max_rows``, checked on every
parsed batch the book actor applies and on every tick (50 ms). A continuous stream therefore sees about
``hold_s`` of added latency and one pipe send per ``hold_s``, not one per message; a lone update waits for
the next frame or tick.

Also :class:`UpdateLog`, the seed's ``log_updates``: one line per update, rate-limited per symbol like every
repeated line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from l2rec.messages.book import Level, RowsPublished
from l2rec.runtime.logs import RateLimited
from l2rec.runtime.uplink import Uplink
from l2rec.storage.schema import COL, N_LEVELS

if TYPE_CHECKING:
    from l2rec.book.orderbook import OrderBook

PUBLISH_HOLD_S = 0.005  # a batch of rows waits at most this long for more (plus a tick when nothing follows)
PUBLISH_MAX_ROWS = 500  # ... or leaves at this size

_SYMBOL, _U, _B1, _A1, _MID = COL["symbol"], COL["sequence"], COL["bid_price_1"], COL["ask_price_1"], COL["mid_price"]


class Flag(Protocol):
    """A shared switch set by the root (a ``multiprocessing`` Value): non-zero while the host has a callback."""

    value: int


class RowPublisher:
    """Collects the rows a shard made and sends them up ``uplink`` as :class:`RowsPublished` batches."""

    def __init__(self, uplink: Uplink, flag: Flag, shard_id: int, levels_wanted: int,
                 hold_s: float = PUBLISH_HOLD_S, max_rows: int = PUBLISH_MAX_ROWS) -> None:
        self.uplink = uplink
        self.flag = flag
        self.shard_id = shard_id
        self.levels_wanted = levels_wanted
        # A row holds the best 10 levels a side; more are read from the book as each row is made.
        self.deep = levels_wanted > N_LEVELS
        self.hold_s = hold_s
        self.max_rows = max_rows
        self.rows: list[tuple[object, ...]] = []
        self.levels: list[tuple[tuple[Level, ...], tuple[Level, ...]]] = []
        self.first_s = 0.0
        self.batches = 0
        self.rows_published = 0

    @property
    def enabled(self) -> bool:
        """Whether the host wants rows now (read once per parsed batch: a shared-memory byte)."""
        return bool(self.flag.value)

    def add_levels(self, book: OrderBook) -> None:
        """The book's best ``levels_wanted`` levels a side, for the row just made (only when ``deep``)."""
        n = self.levels_wanted
        self.levels.append((tuple(book.top_bids(n)), tuple(book.top_asks(n))))

    def add(self, rows: Sequence[tuple[object, ...]], now_s: float) -> None:
        """Rows just made, in order; sends the batch when it is due."""
        if not self.rows:
            self.first_s = now_s
        self.rows.extend(rows)
        if len(self.rows) >= self.max_rows or now_s - self.first_s >= self.hold_s:
            self.flush()

    def flush_due(self, now_s: float) -> None:
        """On a tick: send what waited ``hold_s`` or more."""
        if self.rows and now_s - self.first_s >= self.hold_s:
            self.flush()

    def flush(self) -> None:
        """Send every row held (nothing when none)."""
        if not self.rows:
            return
        levels = tuple(self.levels) if self.deep else None
        self.uplink.put(RowsPublished(self.shard_id, tuple(self.rows), levels, time.time_ns()))
        self.batches += 1
        self.rows_published += len(self.rows)
        self.rows = []
        self.levels = []

    def status(self) -> dict[str, object]:
        """For the book actor's part of the health dump."""
        return {"batches": self.batches, "rows": self.rows_published, "enabled": self.enabled}


class UpdateLog:
    """``log_updates``: an INFO line per update, at most one per symbol per ``interval_s`` (with the count
    of the lines held back), as every repeated line of the recorder."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.log = logger
        self.rate = RateLimited(interval_s)

    def rows(self, rows: Sequence[tuple[object, ...]]) -> None:
        """Log the rows just made (rate-limited)."""
        allow = self.rate.allow
        for row in rows:
            ok, suppressed = allow(f"update:{row[_SYMBOL]}")
            if ok:
                self.log.info("update", extra={"fields": {
                    "symbol": row[_SYMBOL], "u": row[_U], "bid": row[_B1], "ask": row[_A1], "mid": row[_MID],
                    "suppressed_since_last": suppressed}})
