"""FeaturesActor: keeps the books, checks sequence integrity, computes rows, batches them to the writer."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pykka

from actors.reporting import Reporter
from messages.book import BookUpdate, ParsedBatch
from messages.control import Resubscribe, Tick
from messages.frames import EndOfStream, SessionEnded, SessionStarted
from messages.writer import GapRecord
from recorder.bookkeeper import BookKeeper
from recorder.config import RecorderConfig
from recorder.faults import Faults
from recorder.logs import RateLimited
from recorder.writer_link import WriterLink

log = logging.getLogger("actors.features")


class FeaturesActor(pykka.ThreadingActor):
    """Flushes a batch when it holds ``buffer_size`` rows or its oldest row is ``write_interval`` old.

    The put on the bounded writer link blocks when the writer lags: backpressure reaches the parser's
    inbox (live) or the replay reader's credits (replay) instead of growing memory here.
    """

    def __init__(
        self,
        cfg: RecorderConfig,
        shard_id: int,
        link: WriterLink,
        *,
        connection: pykka.ActorRef[Any] | None,
        credits: threading.Semaphore | None,
        end_of_stream: threading.Event,
        reporter: Reporter,
        faults: Faults,
        restarted_topics: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.fault = faults.for_actor("features")
        self.msgs_in = 0
        self.cfg = cfg
        self.shard_id = shard_id
        self.link = link
        self.connection = connection
        self.credits = credits
        self.end_of_stream = end_of_stream
        self.reporter = reporter
        self.keeper = BookKeeper(
            category=cfg.category,
            data_source="replay" if cfg.replay else "live_trading",
            feature_levels=cfg.feature_levels,
        )
        if restarted_topics:
            self.keeper.on_process_restart(restarted_topics)
        self.rows: list[tuple[object, ...]] = []
        self.gaps: list[GapRecord] = list(self.keeper.take_events()[0])
        self.batch_started = 0.0
        self.max_rows = cfg.buffer_size
        self.max_age_s = cfg.write_interval
        self.batches_sent = 0
        self.rows_sent = 0
        self.rejects_in_topics = 0
        self.rate = RateLimited(10.0)
        self.pending_resync: set[str] = set()

    def on_start(self) -> None:
        if self.fault is not None:
            self.fault.on_start()

    def on_receive(self, message: Any) -> Any:
        self.msgs_in += 1
        if isinstance(message, ParsedBatch):
            if self.fault is not None:
                self.fault.on_message()
            self._apply(message)
            if self.credits is not None:
                self.credits.release()
        elif isinstance(message, Tick):
            if (self.rows and time.monotonic() - self.batch_started >= self.max_age_s) or self.gaps:
                self._flush()
            self.reporter.maybe(message.now_ns, self.status())
        elif isinstance(message, SessionStarted):
            # Bybit answers a subscribe with a snapshot; a resubscribe is pending no more.
            self.pending_resync.clear()
        elif isinstance(message, SessionEnded):
            if message.reason != "shutdown":
                self.keeper.on_disconnect()
                self._collect_events()
        elif isinstance(message, EndOfStream):
            self._flush()
            self.end_of_stream.set()
        return None

    def _apply(self, batch: ParsedBatch) -> None:
        keeper = self.keeper
        rows = self.rows
        was_empty = not rows
        on_update = keeper.on_update
        for item in batch.items:
            if item.__class__ is BookUpdate:
                row = on_update(item)  # type: ignore[arg-type]
                if row is not None:
                    rows.append(row)
            else:
                keeper.on_reject(item)  # type: ignore[arg-type]
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
        for topic, reason in resyncs:
            if self.connection is not None and topic not in self.pending_resync:
                self.pending_resync.add(topic)
                self.connection.tell(Resubscribe(topic, reason))

    def _flush(self) -> None:
        if not self.rows and not self.gaps:
            return
        # Any snapshot since the resync request closed the gap; allow new requests for those topics.
        self.pending_resync = {t for t in self.pending_resync if not self.keeper.topics[t].synced}
        rows, gaps = tuple(self.rows), tuple(self.gaps)
        self.rows = []
        self.gaps = []
        self.link.put(rows, gaps, self.shard_id)  # blocks while the link is full: backpressure
        self.batches_sent += 1
        self.rows_sent += len(rows)

    def status(self) -> dict[str, object]:
        link = self.link
        return {"state": "running", "messages_in": self.msgs_in, "mailbox": self.actor_inbox.qsize(),
                "topics": self.keeper.snapshot_stats(), "rows_sent": self.rows_sent,
                "batches_sent": self.batches_sent, "rows_buffered": len(self.rows),
                "writer_link": {"depth": link.depth(), "capacity": link.capacity, "acked": link.acked,
                                "reconnects": link.reconnects, "resent": link.resent}}

    def on_stop(self) -> None:
        self._flush()
        self.reporter.maybe(time.time_ns(), self.status(), force=True)
