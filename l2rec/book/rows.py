"""Microstructure features of a maintained book, as one row tuple in ``schema.ROW_COLUMNS`` order.

Definitions (architecture.md, invariant), with N = ``feature_levels`` (10 by default), b1/a1 the best bid
and ask and bs1/as1 their sizes:
  mid_price = (b1 + a1) / 2;  spread = a1 - b1;  spread_bps = spread / mid_price * 10_000
  microprice = (b1 * as1 + a1 * bs1) / (bs1 + as1)
  total_bid_volume_10 / total_ask_volume_10 = sum of the sizes of the best N levels of the side
  order_book_imbalance = (tbv - tav) / (tbv + tav)
  data_quality_score = min(1, bid_levels / N, ask_levels / N), *_levels = levels the side holds
  timestamp = exchange ``ts`` as ISO-8601 UTC with milliseconds; exchange_timestamp = ts; sequence = u.
Not in the architecture, defined here: weighted_bid_price / weighted_ask_price = size-weighted mean price
of the best N levels of the side; update_id = u; sequence_id = seq (the seed's columns).
A side with no levels leaves the features that need it NULL.
"""

from __future__ import annotations

import time
from operator import mul

from l2rec.book.orderbook import OrderBook
from l2rec.messages.book import BookUpdate
from l2rec.storage.schema import N_LEVELS

_MS_SUFFIX = tuple(f".{ms:03d}Z" for ms in range(1000))


class IsoMillis:
    """``ts_ms`` -> ``2024-12-01T00:00:00.691Z``; caches the per-second prefix (rows come in time order)."""

    __slots__ = ("_prefix", "_sec")

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def __call__(self, ts_ms: int) -> str:
        sec, ms = divmod(ts_ms, 1000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return self._prefix + _MS_SUFFIX[ms]


# A side's part of the row, kept on the book between rows: (level columns, size sum, weighted price,
# best price, best size, level count).
SideColumns = tuple[list[object], float, "float | None", float, float, int]


def _side(px: list[float], levels: dict[float, float], best_first: bool, n: int) -> SideColumns:
    """(level columns, n-level size sum, n-level size-weighted price, best price, best size, count).

    An empty side's best price and size are 0.0: never used, since features that need both sides are
    made only when both have levels (a float keeps the row maths free of None checks)."""
    p = px[:-N_LEVELS - 1:-1] if best_first else px[:N_LEVELS]
    sz = list(map(levels.__getitem__, p))
    k = len(p)
    cols: list[object] = [None] * (2 * N_LEVELS)
    cols[0:2 * k:2] = p
    cols[1:2 * k:2] = sz
    if n < N_LEVELS:
        p, sz = p[:n], sz[:n]
    total = sum(sz)
    weighted = sum(map(mul, p, sz)) / total if total else None
    return cols, float(total), weighted, (p[0] if k else 0.0), (sz[0] if k else 0.0), k


def make_row(
    book: OrderBook,
    upd: BookUpdate,
    *,
    category: str,
    data_source: str,
    n: int,
    iso: IsoMillis,
) -> tuple[object, ...]:
    """The training row for ``book`` as it stands after applying ``upd``.

    A side whose best 10 levels did not change (the book's dirty flag) reuses the previous row's columns.
    """
    if book.bid_top_dirty or book.bid_cache is None:
        book.bid_cache = _side(book.bid_px, book.bids, True, n)
        book.bid_top_dirty = False
    if book.ask_top_dirty or book.ask_cache is None:
        book.ask_cache = _side(book.ask_px, book.asks, False, n)
        book.ask_top_dirty = False
    bid_cols, tbv, wbp, b1, bs1, nb = book.bid_cache
    ask_cols, tav, wap, a1, as1, na = book.ask_cache
    mid: float | None = None
    spread: float | None = None
    spread_bps: float | None = None
    micro: float | None = None
    imb: float | None = None
    if nb and na:
        mid = (b1 + a1) / 2
        spread = a1 - b1
        spread_bps = spread / mid * 10_000
        micro = (b1 * as1 + a1 * bs1) / (bs1 + as1)
        imb = (tbv - tav) / (tbv + tav)
    quality = min(1.0, len(book.bids) / n, len(book.asks) / n)
    return (
        iso(upd.ts_ms), upd.symbol, "bybit",
        *bid_cols, *ask_cols,
        mid, spread, spread_bps,
        tbv, tav,
        wbp, wap, imb, micro,
        upd.u, upd.seq, quality, data_source,
        upd.u, upd.ts_ms,
        upd.seq, upd.cts_ms, upd.recv_ns, upd.depth, category,
    )
