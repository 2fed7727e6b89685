"""``L2Update``: what the embedding API's update callback receives for each row, made from the row itself
(the same values the table holds), so a callback and the table always agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from l2rec.messages.book import Level
from l2rec.storage.schema import COL, N_LEVELS

_BID_COLS = tuple((COL[f"bid_price_{i}"], COL[f"bid_size_{i}"]) for i in range(1, N_LEVELS + 1))
_ASK_COLS = tuple((COL[f"ask_price_{i}"], COL[f"ask_size_{i}"]) for i in range(1, N_LEVELS + 1))
_C = COL


@dataclass(frozen=True, slots=True)
class L2Update:
    """One book update that became a row. ``bids``/``asks``: best first, (price, size) pairs, up to the
    configured ``orderbook_depth`` levels (the row's 10 columns, or the book's deeper levels at the moment
    the row was made when more were asked for). Features are the row's (None when a side is empty)."""

    symbol: str
    timestamp: str  # the row's: exchange ``ts`` as ISO-8601 UTC with milliseconds
    exchange_timestamp: int  # ``ts``, ms
    sequence: int  # Bybit ``u``
    cross_sequence: int | None  # Bybit ``seq``
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    mid_price: float | None
    spread: float | None
    spread_bps: float | None
    microprice: float | None
    order_book_imbalance: float | None
    total_bid_volume_10: float
    total_ask_volume_10: float
    weighted_bid_price: float | None
    weighted_ask_price: float | None
    data_quality_score: float
    match_timestamp: int | None  # ``cts``, ms
    recv_time_ns: int | None  # when the frame was read from the socket (this host's clock)
    exchange: str
    category: str
    depth: int  # the subscribed Bybit depth


def _side(row: Any, cols: tuple[tuple[int, int], ...], n: int) -> tuple[Level, ...]:
    out: list[Level] = []
    for p, s in cols[:n]:
        price = row[p]
        if price is None:
            break
        out.append((price, row[s]))
    return tuple(out)


def update_from_row(row: tuple[object, ...], levels: int,
                    deep: tuple[tuple[Level, ...], tuple[Level, ...]] | None = None) -> L2Update:
    """The ``L2Update`` of a row tuple (``schema.ROW_COLUMNS`` order). ``deep``: the book's best levels
    when more than the row's 10 were wanted."""
    if deep is not None:
        bids, asks = deep
    else:
        bids, asks = _side(row, _BID_COLS, levels), _side(row, _ASK_COLS, levels)
    r: Any = row  # a row tuple's columns hold exactly these types (l2rec.book.rows.make_row)
    return L2Update(
        symbol=r[_C["symbol"]], timestamp=r[_C["timestamp"]],
        exchange_timestamp=r[_C["exchange_timestamp"]], sequence=r[_C["sequence"]],
        cross_sequence=r[_C["cross_sequence"]], bids=bids, asks=asks,
        mid_price=r[_C["mid_price"]], spread=r[_C["spread"]], spread_bps=r[_C["spread_bps"]],
        microprice=r[_C["microprice"]], order_book_imbalance=r[_C["order_book_imbalance"]],
        total_bid_volume_10=r[_C["total_bid_volume_10"]],
        total_ask_volume_10=r[_C["total_ask_volume_10"]],
        weighted_bid_price=r[_C["weighted_bid_price"]],
        weighted_ask_price=r[_C["weighted_ask_price"]],
        data_quality_score=r[_C["data_quality_score"]], match_timestamp=r[_C["match_timestamp"]],
        recv_time_ns=r[_C["recv_time_ns"]], exchange=r[_C["exchange"]],
        category=r[_C["category"]], depth=r[_C["depth"]],
    )
