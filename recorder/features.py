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

from messages.book import BookUpdate
from recorder.orderbook import OrderBook
from recorder.schema import N_LEVELS

_PAD: tuple[None, ...] = (None,) * (2 * N_LEVELS)


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
        return f"{self._prefix}.{ms:03d}Z"


def make_row(
    book: OrderBook,
    upd: BookUpdate,
    *,
    category: str,
    data_source: str,
    n: int,
    iso: IsoMillis,
) -> tuple[object, ...]:
    """The training row for ``book`` as it stands after applying ``upd``."""
    bids = book.top_bids(N_LEVELS)
    asks = book.top_asks(N_LEVELS)
    bid_cols = [x for lvl in bids for x in lvl]
    ask_cols = [x for lvl in asks for x in lvl]
    if len(bids) < N_LEVELS:
        bid_cols += _PAD[: 2 * (N_LEVELS - len(bids))]
    if len(asks) < N_LEVELS:
        ask_cols += _PAD[: 2 * (N_LEVELS - len(asks))]

    nb = bids[:n] if n < N_LEVELS else bids
    na = asks[:n] if n < N_LEVELS else asks
    tbv = sum(s for _, s in nb) if nb else None
    tav = sum(s for _, s in na) if na else None
    wbp = sum(p * s for p, s in nb) / tbv if tbv else None
    wap = sum(p * s for p, s in na) / tav if tav else None
    mid = spread = spread_bps = micro = imb = None
    if bids and asks:
        b1, bs1 = bids[0]
        a1, as1 = asks[0]
        mid = (b1 + a1) / 2
        spread = a1 - b1
        spread_bps = spread / mid * 10_000
        micro = (b1 * as1 + a1 * bs1) / (bs1 + as1)
        imb = (tbv - tav) / (tbv + tav)  # type: ignore[operator]
    quality = min(1.0, len(book.bids) / n, len(book.asks) / n)
    return (
        iso(upd.ts_ms), upd.symbol, "bybit",
        *bid_cols, *ask_cols,
        mid, spread, spread_bps,
        tbv if tbv is not None else 0.0, tav if tav is not None else 0.0,
        wbp, wap, imb, micro,
        upd.u, upd.seq, quality, data_source,
        upd.u, upd.ts_ms,
        upd.seq, upd.cts_ms, upd.recv_ns, upd.depth, category,
    )
