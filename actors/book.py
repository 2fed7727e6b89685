"""BookActor: keeps the books, checks sequence integrity, makes the rows, batches them to the writer.

Named ``features`` in the health dump and in ``L2REC_FAULTS`` (the design card's stage name): it is where
each book state becomes a row of features (``l2rec.book.rows``), through ``l2rec.book.keeper``.

Flushes a batch when it holds ``buffer_size`` rows or its oldest row is ``write_interval`` old.

Backpressure (the writer cannot keep up and the bounded link is full):
- replay: the put blocks; the replay reader waits (its credits), nothing is lost;
- live: blocking would only move the pile-up into the parser's unbounded inbox, so the batch's rows are
  shed, every synced topic gets a ``backpressure`` gap (no silent loss), no rows are made until the link
  has drained to half its capacity, and then every topic is resubscribed for a fresh snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pykka

from l2rec.actors.base import RecorderActor, Reporter, handles, tell_quietly
from l2rec.book.keeper import BookKeeper
from l2rec.messages.book import BookUpdate, ParsedBatch
from l2rec.messages.control import Resubscribe, Tick
from l2rec.messages.frames import EndOfStream, SessionEnded, SessionStarted
from l2rec.messages.writer import GapRecord, SessionRecord
from l2rec.runtime.config import RecorderConfig
from l2rec.runtime.faults import Faults
from l2rec.runtime.logs import RateLimited
from l2rec.runtime.publish import RowPublisher, UpdateLog
from l2rec.storage.link import WriterLink
from l2rec.storage.sink import LastRow
from l2rec.supervision.states import ActorState
from l2rec.venue.credits import ByteCredits

log = logging.getLogger("actors.features")

RESYNC_RETRY_NS = 10_000_000_000


class BookActor(RecorderActor):
    """One per shard; between the parser and the writer link. The shard's only owner of book state."""

    name = "features"

    def __init__(
        self,
        cfg: RecorderConfig,
        shard_id: int,
        link: WriterLink,
        *,
        connection: pykka.ActorRef[Any] | None,
        credits: threading.Semaphore | None,
        end_of_stream: threading.Event,
        byte_credits: ByteCredits | None = None,
        reporter: Reporter,
        faults: Faults,
        topics: tuple[str, ...] = (),
        restarted_topics: tuple[str, ...] = (),
        resume: tuple[LastRow, ...] = (),
        close_session: SessionRecord | None = None,
        publisher: RowPublisher | None = None,
    ) -> None:
        super().__init__(reporter, faults)
        self.cfg = cfg
        self.shard_id = shard_id
        self.link = link
        self.connection = connection
        self.credits = credits
        self.byte_credits = byte_credits  # live: the reader's, given back per batch applied
        self.end_of_stream = end_of_stream
        self.keeper = BookKeeper(
            category=cfg.category,
            data_source="replay" if cfg.replay else "live_trading",
            feature_levels=cfg.feature_levels,
        )
        self.keeper.configure(topics)
        last_rows = {r.topic: (r.last_u, r.at_ns) for r in resume}
        if restarted_topics:
            self.keeper.on_process_restart(restarted_topics, last_rows)
        elif last_rows:
            self.keeper.on_start_after_downtime(topics, last_rows)
        self.rows: list[tuple[object, ...]] = []
        self.gaps: list[GapRecord] = list(self.keeper.take_events()[0])
        # the previous incarnation's session, closed with how that incarnation ended (it could not)
        self.sessions: list[SessionRecord] = [close_session] if close_session is not None else []
        self.session: SessionStarted | None = None
        self.batch_started = 0.0
        self.max_rows = cfg.buffer_size
        self.max_age_s = cfg.write_interval
        self.batches_sent = 0
        self.rows_sent = 0
        self.rows_shed = 0
        self.backpressured = False
        self.rate = RateLimited(10.0)
        # topic -> when (ns) its resubscribe was requested; retried if no snapshot came within RESYNC_RETRY_NS
        self.pending_resync: dict[str, int] = {}
        # topic -> last time (ns) it showed life or was resubscribed: the per-topic watchdog
        self.topic_seen_ns: dict[str, int] = {}
        self.silence_ns = int(cfg.topic_silence_s * 1e9)
        self.silent_resubscribes = 0
        # rows to an embedding host's update callback (only while it has one), and the seed's log_updates
        self.publisher = publisher
        self.update_log = UpdateLog(log) if cfg.log_updates else None

    @handles(ParsedBatch, fault_point=True)
    def _on_batch(self, batch: ParsedBatch) -> None:
        self._apply(batch)
        if self.credits is not None:
            self.credits.release()
        if self.byte_credits is not None and batch.frames:
            # Applied: the reader may read as much again. Not in a ``finally``: the frames of a batch
            # this actor died on never became rows, and the shard counts them as lost.
            self.byte_credits.give_back(batch.credit, batch.frames)

    @handles(SessionStarted)
    def _on_session_start(self, message: SessionStarted) -> None:
        # Bybit answers a subscribe with a snapshot; a resubscribe is pending no more.
        self.pending_resync.clear()
        self.session = message
        self.keeper.expect(message.topics)
        self.topic_seen_ns = dict.fromkeys(message.topics, message.connected_ns)
        self.sessions.append(SessionRecord(self.shard_id, message.session_id, message.url,
                                           len(message.topics), message.connected_ns, None, None, None))

    @handles(EndOfStream)
    def _on_end_of_stream(self, _message: EndOfStream) -> None:
        self._flush()
        self.end_of_stream.set()

    @handles(SessionEnded)
    def _on_session_end(self, msg: SessionEnded) -> None:
        s = self.session
        if s is not None and s.session_id == msg.session_id:
            self.sessions.append(SessionRecord(self.shard_id, s.session_id, s.url, len(s.topics), s.connected_ns,
                                               msg.ended_ns, msg.reason, msg.graceful))
            self.session = None
        self.topic_seen_ns = {}
        if msg.reason != "shutdown":
            self.keeper.on_disconnect()
            self._collect_events()

    @handles(Tick)
    def _on_tick(self, tick: Tick) -> None:
        now_ns = tick.now_ns
        if (self.rows and time.monotonic() - self.batch_started >= self.max_age_s) or self.gaps or self.sessions:
            self._flush()
        if self.publisher is not None:
            self.publisher.flush_due(time.monotonic())
        if self.backpressured and self.link.rows_held <= self.link.capacity_rows // 2:
            self._recover_from_backpressure()
        if self.pending_resync and not self.backpressured:
            self._retry_stuck_resyncs(now_ns)
        if self.silence_ns and self.connection is not None and self.topic_seen_ns:
            self._watch_silence(now_ns, self.connection)
        self.report(now_ns)

    def _watch_silence(self, now_ns: int, connection: pykka.ActorRef[Any]) -> None:
        topics = self.keeper.topics
        seen = self.topic_seen_ns
        for topic, last in seen.items():
            st = topics.get(topic)
            recv = st.last_recv_ns if st is not None else None
            if recv is not None and recv > last:
                last = seen[topic] = recv
            if now_ns - last > self.silence_ns:
                seen[topic] = now_ns
                self.silent_resubscribes += 1
                log.warning("topic silent; resubscribing", extra={"fields": {
                    "topic": topic, "silent_s": round((now_ns - last) / 1e9, 1)}})
                tell_quietly(connection, Resubscribe(topic, "silent"))

    def _apply(self, batch: ParsedBatch) -> None:
        keeper = self.keeper
        rows = self.rows
        was_empty = not rows
        made_from = len(rows)
        on_update = keeper.on_update
        pub = self.publisher if self.publisher is not None and self.publisher.enabled else None
        deep = pub if pub is not None and pub.deep else None
        for item in batch.items:
            if item.__class__ is BookUpdate:
                row = on_update(item)
                if row is not None:
                    rows.append(row)
                    if deep is not None:
                        # levels beyond the row's 10, as the book stands now (the next frame changes it)
                        deep.add_levels(keeper.topics[item.topic].book)
            else:
                keeper.on_reject(item)  # type: ignore[arg-type]  # not a BookUpdate, so a RejectedFrame
        if len(rows) > made_from:
            if pub is not None:
                pub.add(rows[made_from:], time.monotonic())
            if self.update_log is not None:
                self.update_log.rows(rows[made_from:])
        if keeper.gap_events or keeper.resync_requests or keeper.resets:
            self._collect_events()
        if was_empty and rows:
            self.batch_started = time.monotonic()
        if len(rows) >= self.max_rows:
            self._flush()

    def _collect_events(self) -> None:
        gaps, resyncs, resets = self.keeper.take_events()
        self.gaps.extend(gaps)
        for gap in gaps:
            if gap.recovered_ns is None:
                ok, suppressed = self.rate.allow("gap:" + gap.topic)
                if ok:
                    log.warning("gap: topic out of sync", extra={"fields": {
                        "topic": gap.topic, "reason": gap.reason, "last_u": gap.last_u, "got_u": gap.got_u,
                        "suppressed_since_last": suppressed}})
        for topic, last_u in resets:
            log.info("book reset by the exchange (u=1)", extra={"fields": {"topic": topic, "last_u": last_u}})
        if self.backpressured:
            return  # resubscribed together once the link drained
        for topic, reason in resyncs:
            self._request_resync(topic, reason)

    def _flush(self) -> None:
        if not self.rows and not self.gaps and not self.sessions:
            return
        # Any snapshot since the resync request closed the gap; allow new requests for those topics.
        self.pending_resync = {t: ns for t, ns in self.pending_resync.items() if not self.keeper.topics[t].synced}
        rows, gaps, sessions = tuple(self.rows), tuple(self.gaps), tuple(self.sessions)
        if self.credits is not None:
            self.link.put(rows, gaps, self.shard_id, sessions)  # replay: wait for the writer
        elif not self.link.try_put(rows, gaps, self.shard_id, sessions):
            self._shed()
            return
        self.rows, self.gaps, self.sessions = [], [], []
        self.batches_sent += 1
        self.rows_sent += len(rows)

    def _shed(self) -> None:
        """The link is full (live): drop the rows, record the gap, keep gap/session records for later."""
        rows = self.rows
        self.rows = []
        self.rows_shed += len(rows)
        self.keeper.shed_rows(rows)
        self.keeper.on_backpressure()
        first = not self.backpressured
        self.backpressured = True
        self._collect_events()
        if first:
            log.critical("writer too slow: link full, rows shed, topics marked out of sync", extra={"fields": {
                "shard": self.shard_id, "rows_shed": len(rows), "link_capacity_rows": self.link.capacity_rows}})

    def _recover_from_backpressure(self) -> None:
        self.backpressured = False
        topics = [t for t, st in self.keeper.topics.items() if not st.synced]
        log.warning("link drained; resubscribing for fresh snapshots", extra={"fields": {
            "shard": self.shard_id, "topics": len(topics), "rows_shed_total": self.rows_shed}})
        for topic in topics:
            self._request_resync(topic, "backpressure")

    def _request_resync(self, topic: str, reason: str) -> None:
        if self.connection is None or topic in self.pending_resync:
            return
        self.pending_resync[topic] = time.time_ns()
        # quietly: at a stop the connection may be gone while this actor still works through its inbox
        tell_quietly(self.connection, Resubscribe(topic, reason))

    def _retry_stuck_resyncs(self, now_ns: int) -> None:
        """A resubscribe that brought no snapshot (refused, lost) must not leave a topic unsynced for good."""
        topics = self.keeper.topics
        for topic, asked_ns in list(self.pending_resync.items()):
            if topics[topic].synced:
                del self.pending_resync[topic]
            elif now_ns - asked_ns > RESYNC_RETRY_NS:
                del self.pending_resync[topic]
                log.warning("no snapshot after resubscribing; asking again", extra={"fields": {"topic": topic}})
                self._request_resync(topic, "resync_retry")

    def status(self) -> dict[str, object]:
        link = self.link
        return {**self.base_status(ActorState.BACKPRESSURED if self.backpressured else ActorState.RUNNING),
                "topics": self.keeper.snapshot_stats(),
                "rows_sent": self.rows_sent, "rows_shed": self.rows_shed, "batches_sent": self.batches_sent,
                "rows_buffered": len(self.rows), "silent_resubscribes": self.silent_resubscribes,
                **({"published": self.publisher.status()} if self.publisher is not None else {}),
                "writer_link": {"depth_rows": link.rows_held, "capacity_rows": link.capacity_rows,
                                "depth_batches": link.depth(), "acked": link.acked,
                                "reconnects": link.reconnects, "resent": link.resent}}

    def on_stop(self) -> None:
        if self.publisher is not None:
            self.publisher.flush()
        if self.rows or self.gaps or self.sessions:
            # Stopping: wait for room rather than shed (the link's close has its own deadline).
            self.link.put(tuple(self.rows), tuple(self.gaps), self.shard_id, tuple(self.sessions))
            self.rows_sent += len(self.rows)
            self.rows, self.gaps, self.sessions = [], [], []
        self.report(time.time_ns(), force=True)
