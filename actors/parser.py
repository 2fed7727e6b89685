"""ParserActor: raw frames -> validated book updates (orjson, floats); bad frames counted and dropped.

Live, each ``RawFrames`` holds byte credits of its connection's reader (``l2rec.venue.credits``), given
back once its frames are parsed: that is what keeps the bytes between the socket and the parser bounded.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pykka

from l2rec.actors.base import RecorderActor, Reporter, handles, tell_quietly
from l2rec.messages.book import BookUpdate, ParsedBatch, RejectedFrame
from l2rec.messages.control import ServerReply, Tick
from l2rec.messages.frames import EndOfStream, RawFrames, SessionEnded, SessionStarted
from l2rec.runtime.faults import Faults
from l2rec.runtime.logs import RateLimited
from l2rec.supervision.states import ActorState
from l2rec.venue.credits import ByteCredits
from l2rec.venue.protocol import BOOK, OTHER_TOPIC, REJECT, REPLY, Reply, classify
from l2rec.venue.refusals import ALREADY_SUBSCRIBED, PROBE_PREFIX

log = logging.getLogger("actors.parser")


class ParserActor(RecorderActor):
    """Never raises on input: every frame ends in a counter (book, reply, other_topic, reject:<reason>,
    filtered)."""

    name = "parser"

    def __init__(
        self,
        books: pykka.ActorRef[Any],
        connection: pykka.ActorRef[Any] | None,
        *,
        topics: frozenset[str] | None,
        symbols: frozenset[str] | None,
        depth: int | None,
        reporter: Reporter,
        faults: Faults,
        coalesce: bool = False,
        credits: ByteCredits | None = None,
    ) -> None:
        super().__init__(reporter, faults)
        self.credits = credits  # live: the reader's byte credits, given back per RawFrames parsed
        # Live: frames arrive one per message; when they come faster than parsed, hand the book
        # actor one batch for everything parsed while the inbox was non-empty (one hop per burst, not
        # per frame), and a frame at a time when traffic is sparse (latency stays low). Replay sends
        # batches already, each carrying one flow-control credit: never coalesce there.
        self.coalesce = coalesce
        self.pending: list[BookUpdate | RejectedFrame] = []
        self.pending_session = 0
        self.pending_credit = 0  # byte credits (and frames) of the frames behind ``pending``
        self.pending_frames = 0
        self.batches_out = 0
        self.books = books
        self.connection = connection
        # Live: only subscribed topics are ours. Replay: topics come from the file, optionally filtered.
        self.topics = topics
        self.symbols = symbols
        self.depth = depth
        self.counts: dict[str, int] = {"frames": 0, "book": 0, "reply": 0, "other_topic": 0, "filtered": 0}
        self.rate = RateLimited(10.0)

    @handles(Tick)
    def _on_tick(self, tick: Tick) -> None:
        self._flush()
        self.report(tick.now_ns)

    @handles(SessionStarted, SessionEnded, EndOfStream)
    def _forward(self, message: SessionStarted | SessionEnded | EndOfStream) -> None:
        # In order with the frames: the book actor must see a session's start before its snapshots.
        self._flush()
        self.books.tell(message)

    @handles(RawFrames, fault_point=True)
    def _parse(self, msg: RawFrames) -> None:
        items: list[BookUpdate | RejectedFrame] = []
        counts = self.counts
        topics, symbols, depth = self.topics, self.symbols, self.depth
        for recv_ns, payload in msg.frames:
            kind, obj = classify(payload, recv_ns)
            if kind is BOOK:
                upd: BookUpdate = obj  # type: ignore[assignment]  # classify pairs BOOK with a BookUpdate
                if topics is not None and upd.topic not in topics:
                    counts["reject:unknown_topic"] = counts.get("reject:unknown_topic", 0) + 1
                    continue
                if (symbols is not None and upd.symbol not in symbols) or (
                        depth is not None and upd.depth != depth):
                    counts["filtered"] += 1  # replay: --symbols/--depth given
                    continue
                items.append(upd)
            elif kind is REJECT:
                rej: RejectedFrame = obj  # type: ignore[assignment]  # ... REJECT with a RejectedFrame
                key = "reject:" + rej.reason
                counts[key] = counts.get(key, 0) + 1
                if rej.topic is not None and (topics is None or rej.topic in topics):
                    items.append(rej)
                ok, suppressed = self.rate.allow(key)
                if ok:
                    log.warning("frame rejected", extra={"fields": {
                        "reason": rej.reason, "topic": rej.topic, "suppressed_since_last": suppressed}})
            elif kind is REPLY:
                self._reply(obj, recv_ns)  # type: ignore[arg-type]  # ... REPLY with a Reply
            elif kind is OTHER_TOPIC:
                counts["other_topic"] += 1
        counts["frames"] += len(msg.frames)
        counts["book"] += sum(1 for i in items if i.__class__ is BookUpdate)
        if not self.coalesce:
            # Always tell, even an empty batch: in replay each batch carries one flow-control credit.
            self.books.tell(ParsedBatch(msg.session_id, tuple(items)))
            self.batches_out += 1
            return
        # Live: the frames' byte credits go with their items to the book actor, which gives them back
        # once it applied them (a book actor behind the parser holds the reader back, as a parser behind
        # the reader does). Frames that made no item are done here. Not in a ``finally``: frames of a
        # message whose parsing failed stay in flight, and the shard counts them as lost.
        if items:
            self.pending += items
            self.pending_credit += msg.credit
            self.pending_frames += len(msg.frames)
        elif self.credits is not None:
            self.credits.give_back(msg.credit, len(msg.frames))
        self.pending_session = msg.session_id
        if len(self.pending) >= 1000 or self.actor_inbox.empty():
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.books.tell(ParsedBatch(self.pending_session, tuple(self.pending), self.pending_credit,
                                        self.pending_frames))
            self.pending = []
            self.pending_credit = self.pending_frames = 0
            self.batches_out += 1

    def _reply(self, reply: Reply, recv_ns: int | None) -> None:
        self.counts["reply"] += 1
        key = "reply:" + reply.kind
        self.counts[key] = self.counts.get(key, 0) + 1
        topic = reply.topic
        if not reply.ok:
            # A probe's "already subscribed" is the expected answer for a good topic (venue/refusals.py).
            probe_ok = ALREADY_SUBSCRIBED in reply.message and (reply.req_id or "").startswith(PROBE_PREFIX)
            log.log(logging.DEBUG if probe_ok else logging.ERROR, "Bybit refused a request", extra={"fields": {
                "ret_msg": reply.message, "topic": topic, "req_id": reply.req_id, "op": reply.op}})
        if self.connection is not None:
            # Quietly: at a stop the connection stops first, and the parser drains the frames it still
            # holds after that, replies among them; telling a stopped actor must not kill the parser.
            tell_quietly(self.connection,
                         ServerReply(reply.kind, reply.ok, reply.req_id, reply.message, recv_ns, topic))

    def status(self) -> dict[str, object]:
        c = self.counts
        # frames = book + reply + other_topic + filtered + every reject reason, always
        accounted = c["book"] + c["reply"] + c["other_topic"] + c["filtered"] + sum(
            v for k, v in c.items() if k.startswith("reject:"))
        return {**self.base_status(ActorState.RUNNING), "batches_out": self.batches_out, **c,
                "unaccounted": c["frames"] - accounted}

    def on_stop(self) -> None:
        self._flush()
        self.report(time.time_ns(), force=True)
