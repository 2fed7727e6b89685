"""What the connection (or the replay reader) tells the parser."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RawFrames:
    """Websocket text frames as received: ``(recv_ns, payload)`` pairs, in arrival order.

    ``recv_ns`` is ``time.time_ns()`` stamped by the reader thread, or ``None`` in a replay of a file
    that does not carry receive times. A live connection sends the frames of one socket ``recv`` per
    message (they arrived together, so they share ``recv_ns``); the replay reader sends batches.

    ``credit``: the bytes of the reader's byte credits (``l2rec.venue.credits``) this message holds; the
    parser gives them back once it parsed the frames. 0 in replay, which has credits of its own.
    """

    session_id: int
    frames: tuple[tuple[int | None, str | bytes], ...]
    credit: int = 0


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A websocket session opened and its subscriptions were sent; books must come from fresh snapshots."""

    session_id: int
    url: str
    topics: tuple[str, ...]
    connected_ns: int


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session closed; every topic of it is out of sync until its next snapshot."""

    session_id: int
    reason: str
    ended_ns: int
    graceful: bool


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The replay reader reached the end of its file: flush everything downstream."""

    frames_read: int
