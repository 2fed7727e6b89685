"""What crosses to the writer process: batches, never single rows."""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection


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
class SessionRecord:
    """A websocket session of a shard: opened (``ended_ns`` None) or closed; keyed by (shard, connected)."""

    shard_id: int
    session_id: int
    url: str
    topics: int
    connected_ns: int
    ended_ns: int | None
    reason: str | None
    graceful: bool | None


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Rows for the training table (plain tuples in ``recorder.schema.ROW_COLUMNS`` order) and the gap and
    session records produced meanwhile; the writer commits them all in one transaction."""

    shard_id: int
    rows: tuple[tuple[object, ...], ...]
    gaps: tuple[GapRecord, ...]
    batch_no: int  # per shard incarnation; the writer acknowledges it after the commit
    sessions: tuple[SessionRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """Writer's link server -> WriterActor: a batch and the shard link to acknowledge it on."""

    batch: RowBatch
    reply: Connection


@dataclass(frozen=True, slots=True)
class WriteGroup:
    """Writer's link server -> WriterActor: every batch that was waiting, to be committed together."""

    batches: tuple[WriteBatch, ...]


@dataclass(frozen=True, slots=True)
class RetryWrites:
    """WriterActor -> itself, after the backoff delay."""

    attempt: int
