"""An L2 order book for one topic: a dict per side plus a bisect-maintained sorted price list.

Floats, never Decimal: Bybit prices are decimal strings, and ``float("1.9520") == float("1.952")``, so the
same level from two spellings is one key. Measured here this is ~2x faster than SortedDict and ~3x faster
than anything with Decimal.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from l2rec.messages.book import Level

if TYPE_CHECKING:
    from l2rec.book.rows import SideColumns


class OrderBook:
    """Sizes are absolute: a level's size replaces the old one, size 0 deletes the level.

    ``bid_top_dirty``/``ask_top_dirty`` say whether a side's best ``top_n`` levels may have changed since
    the features last read them: most deltas touch deeper levels only, and then the previous row's level
    columns and sums are still right (``bid_cache``/``ask_cache`` hold them for ``rows.make_row``).
    """

    __slots__ = ("ask_cache", "ask_px", "ask_top_dirty", "asks", "bid_cache", "bid_px", "bid_top_dirty", "bids",
                 "top_n")

    def __init__(self, top_n: int = 10) -> None:
        self.top_n = top_n
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.bid_px: list[float] = []  # ascending; best bid is the last
        self.ask_px: list[float] = []  # ascending; best ask is the first
        self.bid_top_dirty = True
        self.ask_top_dirty = True
        self.bid_cache: SideColumns | None = None
        self.ask_cache: SideColumns | None = None

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Load a snapshot: the book becomes exactly these levels (zero sizes skipped)."""
        self.bids = {p: s for p, s in bids if s > 0.0}
        self.asks = {p: s for p, s in asks if s > 0.0}
        self.bid_px = sorted(self.bids)
        self.ask_px = sorted(self.asks)
        self.bid_top_dirty = self.ask_top_dirty = True

    def apply(self, bids: Sequence[Level], asks: Sequence[Level]) -> int:
        """Apply a delta; returns how many deletes named a level that was not there (tolerated)."""
        n = self.top_n
        if bids and not self.bid_top_dirty:
            # A change strictly below the n-th best bid cannot alter the best n (insert, update or delete).
            # max()/min() of the (price, size) tuples: the highest/lowest price changed, compared in C.
            px = self.bid_px
            self.bid_top_dirty = len(px) < n or max(bids)[0] >= px[-n]
        if asks and not self.ask_top_dirty:
            px = self.ask_px
            self.ask_top_dirty = len(px) < n or min(asks)[0] <= px[n - 1]
        return _apply_side(self.bids, self.bid_px, bids) + _apply_side(self.asks, self.ask_px, asks)

    def clear(self) -> None:
        self.replace((), ())

    def best_bid(self) -> float | None:
        return self.bid_px[-1] if self.bid_px else None

    def best_ask(self) -> float | None:
        return self.ask_px[0] if self.ask_px else None

    def crossed(self) -> bool:
        """Best bid at or above best ask: the book is known to be wrong."""
        return bool(self.bid_px and self.ask_px and self.bid_px[-1] >= self.ask_px[0])

    def top_bids(self, n: int) -> list[Level]:
        bids = self.bids
        return [(p, bids[p]) for p in self.bid_px[:-n - 1:-1]]

    def top_asks(self, n: int) -> list[Level]:
        asks = self.asks
        return [(p, asks[p]) for p in self.ask_px[:n]]

    def __len__(self) -> int:
        return len(self.bids) + len(self.asks)


def _apply_side(levels: dict[float, float], prices: list[float], changes: Iterable[Level]) -> int:
    orphans = 0
    for p, s in changes:
        if s > 0.0:
            if p not in levels:
                insort(prices, p)
            levels[p] = s
        elif p in levels:
            del levels[p]
            del prices[bisect_left(prices, p)]
        else:
            orphans += 1
    return orphans
