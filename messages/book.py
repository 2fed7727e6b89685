"""What the parser tells the features actor."""

from __future__ import annotations

from dataclasses import dataclass

Level = tuple[float, float]


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """One validated ``orderbook.{depth}.{symbol}`` frame, prices and sizes already floats."""

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
    """The parser's output for one ``RawFrames``: book updates and topic-bearing rejects, in order."""

    session_id: int
    items: tuple[BookUpdate | RejectedFrame, ...]
