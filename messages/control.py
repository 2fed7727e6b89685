"""Control messages inside a shard process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from l2rec.venue.protocol import ReplyKind

if TYPE_CHECKING:
    import pykka


@dataclass(frozen=True, slots=True)
class Resubscribe:
    """Features -> connection: a topic lost sync; unsubscribe and subscribe it to get a fresh snapshot."""

    topic: str
    reason: str


@dataclass(frozen=True, slots=True)
class Tick:
    """A periodic wake-up (pykka has no timers): flush by age, send pings, run watchdogs."""

    now_ns: int


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Connection -> itself, after the backoff delay."""

    attempt: int


@dataclass(frozen=True, slots=True)
class ServerReply:
    """Parser -> connection: an ack, pong or refusal arrived (rare; carries what the connection needs)."""

    kind: ReplyKind
    ok: bool
    req_id: str | None
    message: str
    recv_ns: int | None
    topic: str | None = None  # the topic a refusal names, if any


@dataclass(frozen=True, slots=True)
class Begin:
    """Shard -> source actor (connection or replay): where to tell frames (the parser's ActorRef); start."""

    parser: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class StopReason:
    """Shard -> connection, just before its stop: why the shard stops, for the session's record (e.g. "root
    gone": the root vanished, and the session's end must not read like an orderly shutdown)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ReaderExited:
    """Reader thread -> its connection actor: the session is over."""

    session_id: int
    reason: str
    graceful: bool
