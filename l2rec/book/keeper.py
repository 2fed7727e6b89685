"""Sequence integrity and book maintenance for every topic of a shard; turns updates into rows.

Rules (architecture.md, bybit-v5.md):
- any snapshot replaces the book and brings the topic in sync; ``u == 1`` after a higher ``u`` is a
  service restart: counted as a reset, not a gap;
- a delta must have ``u == last_u + 1``; ``orderbook.1`` may repeat the same ``u`` (3 s re-push);
- ``u`` jumping ahead is a gap: the topic goes out of sync (no rows), the gap is recorded, and a
  resubscribe is requested; ``u`` below the last (and not 1) is stale: dropped and counted;
- a delta before any snapshot, a crossed or locked book after a message, and a rejected frame of the topic
  are gaps as well; so is a frame that would leave a side with more than ``max_levels(depth)`` levels
  (counted as rejected, and in ``too_many_levels``);
- while out of sync every frame of the topic is counted as inside the gap, until the next snapshot;
- one row per book state: a frame that restates the state of the topic's last row (same ``u`` and same
  ``seq``: the fresh snapshot after a reconnect when the book did not move, ``orderbook.1``'s 3 s re-push)
  is applied as any other (a snapshot still replaces the book and closes a gap) but makes no row; it is
  counted as ``restated``.
Every book frame of a topic ends in exactly one counter: frames = rows + stale + in_gap + gaps + rejected +
restated (``gaps`` counts the frames that opened a gap; rows shed under backpressure move from rows to
in_gap).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from l2rec.book.orderbook import OrderBook
from l2rec.book.rows import IsoMillis, make_row
from l2rec.messages.book import BookUpdate, RejectedFrame
from l2rec.messages.writer import GapRecord
from l2rec.storage.schema import COL
from l2rec.venue.protocol import R_TOO_MANY_LEVELS, max_levels, split_topic

_DEPTH = COL["depth"]
_SYMBOL = COL["symbol"]

# Gap reasons (stable names, stored in l2_gaps.reason).


class GapReason(StrEnum):
    """Why a topic lost sync: the ``reason`` column of ``l2_gaps``."""

    U_JUMP = "u_jump"  # a delta's u is not last_u + 1
    NO_SNAPSHOT = "delta_before_snapshot"  # a delta before any snapshot of this session
    CROSSED = "crossed_book"  # best bid >= best ask after applying a frame
    REJECTED = "rejected_frame"  # a frame of the topic failed validation: an update was missed
    RESTART_DELTA = "restart_delta"  # u = 1 as a delta: Bybit restarted without a fresh snapshot
    DISCONNECT = "disconnect"  # the websocket session ended
    SHARD_RESTART = "shard_restart"  # the shard process died and was restarted
    BACKPRESSURE = "backpressure"  # the writer link was full: rows were shed
    DOWNTIME = "downtime"  # the recorder was not running: from the topic's last row to its first after


GAP_U_JUMP = GapReason.U_JUMP
GAP_NO_SNAPSHOT = GapReason.NO_SNAPSHOT
GAP_CROSSED = GapReason.CROSSED
GAP_REJECTED = GapReason.REJECTED
GAP_RESTART_DELTA = GapReason.RESTART_DELTA
GAP_DISCONNECT = GapReason.DISCONNECT
GAP_RESTART = GapReason.SHARD_RESTART
GAP_BACKPRESSURE = GapReason.BACKPRESSURE
GAP_DOWNTIME = GapReason.DOWNTIME


@dataclass(slots=True)
class TopicState:
    topic: str
    symbol: str
    depth: int
    book: OrderBook = field(default_factory=OrderBook)
    synced: bool = False
    last_u: int | None = None
    open_gap: GapRecord | None = None
    frames: int = 0
    rows: int = 0
    stale: int = 0
    in_gap: int = 0
    gaps: int = 0
    resets: int = 0
    orphan_deletes: int = 0
    rejected: int = 0
    too_many_levels: int = 0  # of ``rejected``: frames that would have made a side deeper than max_levels
    restated: int = 0  # frames that restated the state of the last row (same u and seq): no row of their own
    # (u, seq) of the topic's last row: the book state it holds. None until a row is made, and after rows
    # were shed (a state whose row was dropped must be written again by the snapshot that restates it).
    last_row_state: tuple[int, int | None] | None = None
    last_ts_ms: int | None = None
    last_recv_ns: int | None = None
    sessions: int = 0  # websocket sessions that subscribed it; 0: never connected
    max_levels: int = field(init=False)  # levels a side may hold: max_levels(depth)

    def __post_init__(self) -> None:
        self.max_levels = max_levels(self.depth)


class BookKeeper:
    """Holds the books of a shard. Not thread-safe: one actor owns it."""

    def __init__(
        self,
        *,
        category: str,
        data_source: str,
        feature_levels: int = 10,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.category = category
        self.data_source = data_source
        self.n = feature_levels
        self.clock_ns = clock_ns
        self.topics: dict[str, TopicState] = {}
        self.gap_events: list[GapRecord] = []
        self.resync_requests: list[tuple[str, str]] = []
        self.resets: list[tuple[str, int | None]] = []
        self._iso = IsoMillis()

    def _state(self, topic: str, symbol: str, depth: int) -> TopicState:
        st = self.topics.get(topic)
        if st is None:
            st = self.topics[topic] = TopicState(topic, symbol, depth)
        return st

    def on_update(self, upd: BookUpdate) -> tuple[object, ...] | None:
        """Apply one update; returns its row, or None when no row may be written."""
        st = self.topics.get(upd.topic) or self._state(upd.topic, upd.symbol, upd.depth)
        st.frames += 1
        st.last_ts_ms = upd.ts_ms
        st.last_recv_ns = upd.recv_ns
        book = st.book
        if upd.is_snapshot:
            if len(upd.bids) > st.max_levels or len(upd.asks) > st.max_levels:
                self._refuse_too_many_levels(st, upd.u)  # classify() refuses these already
                return None
            if upd.u == 1 and st.last_u is not None and st.last_u > 1:
                st.resets += 1
                self.resets.append((st.topic, st.last_u))
            prev_u = st.last_u
            book.replace(upd.bids, upd.asks)
            st.last_u = upd.u
            if book.crossed():
                self._open_gap(st, GAP_CROSSED, prev_u, upd.u)
                return None
            if not st.synced:
                st.synced = True
                self._close_gap(st, upd.u)
        else:
            if not st.synced:
                if st.open_gap is None:
                    self._open_gap(st, GAP_NO_SNAPSHOT, st.last_u, upd.u)
                else:
                    st.in_gap += 1
                return None
            last = st.last_u
            if upd.u != last + 1:  # type: ignore[operator]  # a synced topic always has its last_u
                if upd.u == last and upd.depth == 1:
                    pass  # the documented orderbook.1 re-push of an unchanged book
                elif upd.u == 1:
                    self._open_gap(st, GAP_RESTART_DELTA, last, upd.u)
                    return None
                elif upd.u > last:  # type: ignore[operator]  # as above
                    self._open_gap(st, GAP_U_JUMP, last, upd.u)
                    return None
                else:
                    st.stale += 1
                    return None
            # The cost of a delta is bounded by its size (classify() refuses bigger ones already), and the
            # book's size is checked after it is applied: a refused delta has changed the book, which is
            # harmless, since the refusal clears it and the resync's snapshot replaces it.
            lim = st.max_levels
            if len(upd.bids) > 2 * lim or len(upd.asks) > 2 * lim:
                self._refuse_too_many_levels(st, upd.u)
                return None
            st.orphan_deletes += book.apply(upd.bids, upd.asks)
            if len(book.bid_px) > lim or len(book.ask_px) > lim:
                self._refuse_too_many_levels(st, upd.u)
                return None
            st.last_u = upd.u
            if book.crossed():
                self._open_gap(st, GAP_CROSSED, last, upd.u)
                return None
        state = (upd.u, upd.seq)
        if state == st.last_row_state:
            # The same book state as the last row (u and seq are Bybit's identity of a state; ts is only when
            # it was pushed): the book is in sync and up to date, but a second row would duplicate the first.
            st.restated += 1
            return None
        st.last_row_state = state
        st.rows += 1
        return make_row(book, upd, category=self.category, data_source=self.data_source, n=self.n,
                        iso=self._iso)

    def on_reject(self, rej: RejectedFrame) -> None:
        """A frame of a topic could not be used: the topic's book missed an update."""
        if rej.topic is None:
            return
        parsed = split_topic(rej.topic)
        if parsed is None:
            return
        st = self._state(rej.topic, parsed[1], parsed[0])
        st.frames += 1
        st.rejected += 1
        if rej.reason == R_TOO_MANY_LEVELS:
            st.too_many_levels += 1
        if st.synced or st.open_gap is None:
            self._open_gap(st, GAP_REJECTED, st.last_u, None, count_frame=False)

    def _refuse_too_many_levels(self, st: TopicState, got_u: int) -> None:
        """A frame (already counted in ``frames``) would leave a side of the book with more than
        ``max_levels(depth)`` levels: refused like a rejected frame of the topic (``rejected``, and a gap
        with a resync when the topic was in sync)."""
        st.rejected += 1
        st.too_many_levels += 1
        if st.synced or st.open_gap is None:
            self._open_gap(st, GAP_REJECTED, st.last_u, got_u, count_frame=False)

    def on_disconnect(self, topics: tuple[str, ...] | None = None) -> None:
        """The connection dropped: every synced topic has a gap until its next snapshot."""
        for st in self.topics.values():
            if (topics is None or st.topic in topics) and st.synced:
                self._open_gap(st, GAP_DISCONNECT, st.last_u, None, count_frame=False, resync=False)

    def expect(self, topics: tuple[str, ...]) -> None:
        """A session subscribed these topics: they are listed (unsynced, zero frames) before their first
        frame arrives, so that a topic that never sends anything shows up as such."""
        for topic in topics:
            parsed = split_topic(topic)
            if parsed is not None:
                self._state(topic, parsed[1], parsed[0]).sessions += 1

    def configure(self, topics: tuple[str, ...]) -> None:
        """The topics this shard records, listed from the start: one that never connected shows up with
        ``sessions`` 0 (an unreachable endpoint is visible in the health dump, not an empty list)."""
        for topic in topics:
            parsed = split_topic(topic)
            if parsed is not None:
                self._state(topic, parsed[1], parsed[0])

    def on_backpressure(self) -> None:
        """The writer cannot keep up and rows had to be shed: every synced topic has a gap until the
        link drains and a resubscribe brings fresh snapshots."""
        for st in self.topics.values():
            if st.synced:
                self._open_gap(st, GAP_BACKPRESSURE, st.last_u, None, count_frame=False, resync=False)

    def shed_rows(self, rows: list[tuple[object, ...]]) -> None:
        """Account rows that were made but could not be kept: their frames now count as inside the gap."""
        for row in rows:
            st = self.topics.get(f"orderbook.{row[_DEPTH]}.{row[_SYMBOL]}")
            if st is not None:
                st.rows -= 1
                st.in_gap += 1
                st.last_row_state = None  # that row is not stored: a snapshot restating it must make it again

    def on_process_restart(self, topics: tuple[str, ...],
                           last_rows: Mapping[str, tuple[int, int]] | None = None) -> None:
        """This shard replaces one that died: whatever its topics had in flight is lost, so each topic
        has a gap until its first snapshot. With ``last_rows`` (topic -> (last u, time in ns) of its last
        recorded row) the gap starts where the data stops, so it spans the whole hole."""
        self._resume_gaps(topics, GAP_RESTART, last_rows or {}, every_topic=True)

    def on_start_after_downtime(self, topics: tuple[str, ...], last_rows: Mapping[str, tuple[int, int]]) -> None:
        """A fresh start of the recorder: each topic that has rows already has a ``downtime`` gap from its
        last row until its first snapshot (nothing was recorded while the recorder was down)."""
        self._resume_gaps(topics, GAP_DOWNTIME, last_rows, every_topic=False)

    def _resume_gaps(self, topics: tuple[str, ...], reason: str, last_rows: Mapping[str, tuple[int, int]], *,
                     every_topic: bool) -> None:
        for topic in topics:
            parsed = split_topic(topic)
            last = last_rows.get(topic)
            if parsed is None or (last is None and not every_topic):
                continue
            st = self._state(topic, parsed[1], parsed[0])
            self._open_gap(st, reason, last[0] if last else None, None, count_frame=False, resync=False,
                           detected_ns=last[1] if last else None)

    def _open_gap(self, st: TopicState, reason: str, last_u: int | None, got_u: int | None, *,
                  count_frame: bool = True, resync: bool = True, detected_ns: int | None = None) -> None:
        if count_frame:
            st.gaps += 1
        st.synced = False
        st.book.clear()
        if st.open_gap is None:
            gap = GapRecord(self.category, st.topic, st.symbol, st.depth, last_u, got_u, reason,
                            self.clock_ns() if detected_ns is None else detected_ns, None)
            st.open_gap = gap
            self.gap_events.append(gap)
        if resync:
            self.resync_requests.append((st.topic, reason))

    def _close_gap(self, st: TopicState, first_u: int) -> None:
        gap = st.open_gap
        if gap is not None:
            st.open_gap = None
            # got_u: the u that revealed the gap, or (disconnects, restarts, downtime) the first u after it
            closed = GapRecord(gap.category, gap.topic, gap.symbol, gap.depth, gap.last_u,
                               gap.got_u if gap.got_u is not None else first_u, gap.reason, gap.detected_ns,
                               self.clock_ns())
            self.gap_events.append(closed)

    def take_events(self) -> tuple[list[GapRecord], list[tuple[str, str]], list[tuple[str, int | None]]]:
        """Gap records, resync requests and resets produced since the last call."""
        out = (self.gap_events, self.resync_requests, self.resets)
        self.gap_events, self.resync_requests, self.resets = [], [], []
        return out

    def snapshot_stats(self) -> dict[str, dict[str, object]]:
        return {
            t: {
                "synced": st.synced, "last_u": st.last_u, "frames": st.frames, "rows": st.rows,
                "stale": st.stale, "in_gap": st.in_gap, "gaps": st.gaps, "resets": st.resets,
                "rejected": st.rejected, "too_many_levels": st.too_many_levels,
                "orphan_deletes": st.orphan_deletes, "restated": st.restated,
                "last_ts_ms": st.last_ts_ms, "last_recv_ns": st.last_recv_ns, "sessions": st.sessions,
                # frames = rows + stale + in_gap + gaps + rejected + restated, always: every frame accounted for
                "unaccounted": st.frames - st.rows - st.stale - st.in_gap - st.gaps - st.rejected - st.restated,
            }
            for t, st in self.topics.items()
        }
