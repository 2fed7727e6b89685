"""What crosses to the writer process: batches, never single rows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GapRecord:
    """A topic lost sync (``recovered_ns`` None) or regained it; keyed by (topic, detected_ns)."""

    category: str
    topic: str
    symbol: str
    depth: int
    last_u: int | None
    got_u: int | None
    reason: str
    detected_ns: int
    recovered_ns: int | None


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Rows for the training table (plain tuples in ``recorder.schema.ROW_COLUMNS`` order) and the gap
    records detected meanwhile; the writer commits both in one transaction."""

    shard_id: int
    rows: tuple[tuple[object, ...], ...]
    gaps: tuple[GapRecord, ...]
    batch_no: int  # per shard incarnation; the writer acknowledges it after the commit
