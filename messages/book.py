"""What the parser tells the features actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

Level = tuple[float, float]


class BookUpdate(NamedTuple):
    """One validated ``orderbook.{depth}.{symbol}`` frame, prices and sizes already floats.

    An item of ``ParsedBatch`` (the frozen dataclass envelope), made once per frame: a NamedTuple is as
    immutable and costs 0.28 us to build where a frozen slotted dataclass costs 1.26 us (measured here).
    """

    topic: str
    symbol: str
    depth: int
    is_snapshot: bool
    u: int
    seq: int | None
    ts_ms: int
    cts_ms: int | None
    recv_ns: int | None
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True, slots=True)
class RejectedFrame:
    """A frame the parser refused. ``topic`` is set when it could still be read: that topic's book has
    missed an update and must be resynchronised."""

    reason: str
    topic: str | None
    recv_ns: int | None


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """The parser's output for one ``RawFrames`` (live: for every ``RawFrames`` parsed while its inbox was
    busy): book updates and topic-bearing rejects, in order.

    ``credit`` / ``frames``: live, the reader's byte credits (``l2rec.venue.credits``) of the frames behind
    these items; the book actor gives them back once it applied them, so the bound on what a shard holds
    covers the book actor's inbox too, not only the parser's.
    """

    session_id: int
    items: tuple[BookUpdate | RejectedFrame, ...]
    credit: int = 0
    frames: int = 0


@dataclass(frozen=True, slots=True)
class RowsPublished:
    """Shard -> root (up the uplink), only while an embedding host has an update callback: the rows the
    book actor made since its last publication, in the order made (so in order per topic).

    ``levels`` is set when the host wants more levels a side than a row holds (10): per row, the book's
    best (bids, asks) at the moment the row was made. ``sent_ns``: when the batch left the shard."""

    shard_id: int
    rows: tuple[tuple[object, ...], ...]
    levels: tuple[tuple[tuple[Level, ...], tuple[Level, ...]], ...] | None
    sent_ns: int
