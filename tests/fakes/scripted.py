"""Scripted mode of the fake Bybit server (the default): per topic a snapshot on subscribe, then a delta every
push interval (level 1: snapshots only), from the topic's shared ``SyntheticBook``, with scripted faults.

Every frame is sent by one writer task per connection, in queue order, and recorded only after
``await ws.send()`` returned: ``sent_frames()`` is exactly what went onto the wire, in wire order, and a
frame whose send raised is never recorded. "Sent" means handed to the OS: a frame sent just before the
client's close frame arrived can be in the record although the client never read it.

Scripted faults (``Fault``, given to the constructor or ``FakeBybit.inject()`` at run time) make the
fake misbehave the ways the real feed can: ``u`` gaps and restarts, stale, crossed, malformed and
oversized frames, dropped, closed and stalled connections, ignored unsubscribes. Every frame a fault
puts on the wire is in the record with its exact text and ``SentFrame.fault`` set; faults that send
nothing are recorded as ``kind == "event"`` records (topic None), so a test can recompute what a
correct client must have stored from exactly what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .core import Conn, Core, Feed, SentFrame, Sub
from .faults import (
    CLOSE_REASON,
    FEED_FAULTS,
    FRAME_FAULTS,
    STALE_HISTORY,
    Armed,
    Fault,
    extra_frame,
    feed_message,
    flood_topic,
)
from .protocol import KIND_EVENT, KIND_REPLY, KIND_SNAPSHOT, Reply, dumps, now_ms
from .synthetic import SyntheticBook


@dataclass(slots=True)
class Out:
    """One entry of a connection's send queue: a frame to send, or a fault event to act on."""

    text: str
    topic: str | None
    kind: str
    fault: str | None = None
    fault_arg: int | float | str | None = None


@dataclass(eq=False, slots=True)
class PendingAck:
    """An ack held back until each listed subscription has queued ``need`` data frames."""

    text: str
    need: int
    waiting: set[ScriptedSub] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class ScriptedConn(Conn["ScriptedSub"]):
    queue: asyncio.Queue[Out] = field(default_factory=asyncio.Queue)
    counts: dict[int, int] = field(default_factory=dict)  # topic-less faults: frames of any topic
    halted: bool = False  # a drop/close/stall is queued: nothing more is queued behind it
    ignore_unsub: str | None = None  # an "unsub_ignored" mode once that fault fired here


@dataclass(eq=False, slots=True)
class ScriptedSub(Sub[ScriptedConn, "ScriptedFeed"]):
    pending_ack: PendingAck | None = None
    counts: dict[int, int] = field(default_factory=dict)  # Armed.key -> frames queued since armed
    # (text, kind) of the last regular frames, for "stale" re-sends.
    history: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=STALE_HISTORY))

    @property
    def topic(self) -> str:
        return self.feed.topic

    @property
    def conn_counts(self) -> dict[int, int]:
        return self.conn.counts


@dataclass(eq=False, slots=True)
class ScriptedFeed(Feed[ScriptedSub]):
    task: asyncio.Task[None] | None = None  # the push loop, while the topic has subscribers


class ScriptedCore(Core[ScriptedConn, ScriptedSub, ScriptedFeed]):
    """Scripted mode: a push task per subscribed topic, a writer task and a send queue per connection,
    every frame recorded; faults armed at construction or at run time."""

    def __init__(
        self,
        *,
        faults: Sequence[Fault] = (),
        data_before_ack: int = 0,
        record_path: str | Path | None = None,
        **common: Any,
    ) -> None:
        self.data_before_ack = int(data_before_ack)
        self.record_path = Path(record_path) if record_path is not None else None
        self._record_fh: IO[bytes] | None = None
        super().__init__(**common)
        for fault in faults:
            self.arm(fault)

    def _new_conn(self, ws: ServerConnection, conn_id: str) -> ScriptedConn:
        return ScriptedConn(ws, conn_id)

    def _new_sub(self, conn: ScriptedConn, feed: ScriptedFeed) -> ScriptedSub:
        return ScriptedSub(conn, feed, self.max_frames)

    def _new_feed(self, topic: str, book: SyntheticBook, interval_s: float) -> ScriptedFeed:
        return ScriptedFeed(topic, book, interval_s)

    async def start(self) -> None:
        """Open the record file, bind and start listening."""
        if self.record_path is not None:
            self._record_fh = self.record_path.open("ab")
        await super().start()

    async def close(self) -> None:
        """Close every connection (1001), stop the feeds, close the record file."""
        await super().close()
        for feed in self.feeds.values():
            if feed.task is not None:
                feed.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed.task
        if self._record_fh is not None:
            self._record_fh.close()
            self._record_fh = None

    # -------------------------------------------------------------------------------------------- record

    def sent_records(self) -> list[SentFrame]:
        """Every frame sent (data and replies) and every fault event, in send order. Any thread."""
        with self.lock:
            return list(self.records)

    def data_sent(self, topic: str | None = None, conn_id: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.records if r.topic is not None and topic in (None, r.topic)
                       and conn_id in (None, r.conn_id))

    def sent_by_connection(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.sent_records():
            out[r.conn_id] = out.get(r.conn_id, 0) + (r.topic is not None)
        return out

    def _record(self, conn: ScriptedConn, out: Out) -> None:
        frame = SentFrame(conn.conn_id, out.topic, out.kind, out.text, out.fault, out.fault_arg)
        with self.lock:
            self.records.append(frame)
        if self._record_fh is not None and out.topic is not None:
            # One exact frame per line, like Bybit's own dumps: the file replays as a stream.
            self._record_fh.write(out.text.encode() + b"\n")
            self._record_fh.flush()

    # ------------------------------------------------------------------------------------------- writing

    def _open(self, conn: ScriptedConn) -> asyncio.Task[None]:
        return asyncio.create_task(self._writer(conn))

    async def _writer(self, conn: ScriptedConn) -> None:
        while True:
            out = await conn.queue.get()
            if conn.ws.transport.is_closing():
                # Aborted (drop_connections) but not yet seen by the protocol: send() would "succeed"
                # into a dead transport, so this frame must not be recorded as sent.
                return
            if out.kind == KIND_EVENT:
                # Recorded first: the event is "when it happened", and after an abort nothing is recorded.
                self._record(conn, out)
                if out.fault == "drop":
                    conn.ws.transport.abort()
                    return
                if out.fault == "close":
                    assert isinstance(out.fault_arg, int)
                    await conn.ws.close(out.fault_arg, CLOSE_REASON)
                    return
                if out.fault == "stall":
                    self._mute(conn)
                    return  # nothing more is ever sent by us on this connection
                continue  # unsub_ignored: nothing to do on the wire
            # Written to the transport iff the connection is open right now: send() does that before its
            # first await. Only an oversized frame is recorded even when send() then fails: the client is
            # expected to refuse it halfway, and tests need to see that it went out.
            written = conn.ws.protocol.state is State.OPEN
            try:
                await conn.ws.send(out.text)
            except ConnectionClosed:
                if written and out.fault == "oversized":
                    self._record(conn, out)
                return  # not recorded: this frame may never have left
            self._record(conn, out)

    @staticmethod
    def _mute(conn: ScriptedConn) -> None:
        """Stop the websockets library itself from sending on ``conn``, except to answer a close.

        A stall must silence RFC 6455 pongs too (a client's keepalive has to see it), and the library
        answers pings on its own: filter what it writes. Close frames and the EOF still pass, so a client
        that gives up and closes gets a normal handshake instead of waiting out its close timeout."""
        ws = conn.ws

        def send_data() -> None:
            for data in ws.protocol.data_to_send():
                if not data:
                    if ws.transport.can_write_eof():
                        with contextlib.suppress(Exception):  # as websockets does: the peer may be gone
                            ws.transport.write_eof()
                    else:
                        ws.transport.close()
                elif data[0] & 0x0F == 0x8:  # opcode of the frame: 0x8 is close
                    ws.transport.write(data)

        ws.send_data = send_data  # type: ignore[method-assign]

    # ------------------------------------------------------------------------------------------ requests

    def _reply(self, conn: ScriptedConn, obj: Mapping[str, Any]) -> None:
        if not conn.halted:
            conn.queue.put_nowait(Out(dumps(obj), None, KIND_REPLY))

    def _unsubscribe(self, conn: ScriptedConn, args: list[object], ack: Reply) -> None:
        if conn.ignore_unsub is not None:
            # An "unsub_ignored" fault fired on this connection: the topics keep streaming.
            self._event(conn, "unsub_ignored", conn.ignore_unsub, args=args)
            if conn.ignore_unsub == "ack":
                self._reply(conn, ack)
            return
        super()._unsubscribe(conn, args, ack)

    def _subscribe(self, conn: ScriptedConn, topics: list[str], error: Reply | None, ack: Reply) -> None:
        if error is not None or self.data_before_ack <= 0 or not topics:
            super()._subscribe(conn, topics, error, ack)
            return
        need = self.data_before_ack if self.max_frames is None else min(self.data_before_ack, self.max_frames)
        pending = PendingAck(dumps(ack), need)
        for topic in topics:
            self._start_sub(conn, topic, pending)

    # --------------------------------------------------------------------------------------------- feeds

    def _start_sub(self, conn: ScriptedConn, topic: str, pending: PendingAck | None = None) -> None:
        sub = self._add_sub(conn, topic)
        feed = sub.feed
        if pending is not None:
            sub.pending_ack = pending
            pending.waiting.add(sub)
        # Snapshot and registration happen with no await between: the subscriber gets every delta after
        # the snapshot's u and none before it.
        feed.subs.add(sub)
        self._offer(sub, dumps(feed.book.snapshot(now_ms())), KIND_SNAPSHOT)
        self._release_ack(sub, pending_check=True)
        if feed.subs and feed.task is None:
            feed.task = asyncio.create_task(self._produce(feed), name=f"feed {topic}")

    def _end_sub(self, sub: ScriptedSub) -> None:
        super()._end_sub(sub)
        self._release_ack(sub, pending_check=False)

    def _release_ack(self, sub: ScriptedSub, *, pending_check: bool) -> None:
        pending = sub.pending_ack
        if pending is None:
            return
        if pending_check and sub.queued < pending.need and sub in sub.feed.subs:
            return
        sub.pending_ack = None
        pending.waiting.discard(sub)
        if not pending.waiting and not sub.conn.halted:
            sub.conn.queue.put_nowait(Out(pending.text, None, KIND_REPLY))

    def _offer(self, sub: ScriptedSub, text: str, kind: str, fault: str | None = None,
               fault_arg: int | float | str | None = None, topic: str | None = None) -> None:
        """Queue a data frame on ``sub``'s connection; recorded under ``topic`` (a "flood" frame's own) or,
        by default, the subscription's topic."""
        conn = sub.conn
        if conn.halted:
            return  # a drop/close/stall is queued: nothing behind it would ever be sent
        if sub.cap is None or sub.queued < sub.cap:
            conn.queue.put_nowait(Out(text, topic or sub.feed.topic, kind, fault, fault_arg))
            sub.queued += 1
            self.faults.count(sub)
        if sub.cap is not None and sub.queued >= sub.cap:
            sub.feed.subs.discard(sub)  # capped: stays subscribed, silent

    def _event(self, conn: ScriptedConn, kind: str, arg: int | float | str | None, **detail: Any) -> None:
        """Queue a fault event record (sends nothing itself; the writer acts on drop/close/stall)."""
        text = dumps({"event": kind, **({"arg": arg} if arg is not None else {}), **detail})
        conn.queue.put_nowait(Out(text, None, KIND_EVENT, kind, arg))

    def _conn_fault(self, sub: ScriptedSub, fault: Fault) -> None:
        """Fire a CONN_FAULTS fault on ``sub``'s connection."""
        conn = sub.conn
        arg = fault.effective_arg
        if fault.kind == "unsub_ignored":
            assert isinstance(arg, str)
            conn.ignore_unsub = arg
            return
        # The writer acts when it reaches the event, i.e. after everything queued before it went out.
        if fault.kind == "close":
            self._event(conn, fault.kind, arg, reason=CLOSE_REASON)
        else:
            self._event(conn, fault.kind, None)
        conn.halted = True

    async def _produce(self, feed: ScriptedFeed) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while feed.subs:
                due += feed.interval_s
                # Always await, even when late (interval 0): other tasks must get to run.
                await asyncio.sleep(max(0.0, due - loop.time()))
                if loop.time() - due > 1.0:
                    due = loop.time()  # far behind (suspended?): do not burst to catch up
                if not feed.subs:
                    break
                self._push(feed)
        finally:
            feed.task = None

    def _push(self, feed: ScriptedFeed) -> None:
        """One push tick of ``feed``: fire the faults that are due, then send the regular frame."""
        faults = self.faults
        subs = list(feed.subs)
        due = {sub: faults.due(sub) for sub in subs} if faults.armed else {}
        # Per-subscription faults first, while the book still is what the client last saw: an injected
        # frame claims the u the client expects next and is built against the book the client holds.
        for sub in subs:
            for armed in due.get(sub, ()):
                fault = armed.fault
                if armed.done or fault.kind in FEED_FAULTS or sub.conn.halted:
                    continue  # spent on another subscription this tick, or the connection is ending
                if fault.kind in FRAME_FAULTS:
                    extra = extra_frame(feed.topic, feed.book, sub.history, fault)
                    if extra is None:
                        continue
                    self._offer(sub, extra[0], extra[1], fault.kind, fault.effective_arg,
                                topic=flood_topic(feed.topic) if fault.kind == "flood" else None)
                    faults.spend(armed, [sub])  # after the offer: its own frame must not count for next time
                else:
                    faults.spend(armed, [sub])
                    self._conn_fault(sub, fault)
        # At most one feed fault per tick (it decides what this tick's frame is); another waits a tick.
        feed_fault: Armed | None = next((a for sub in subs for a in due.get(sub, ())
                                         if a.fault.kind in FEED_FAULTS and not a.done), None)
        ts = now_ms()
        tag: str | None = None
        tag_arg: int | float | str | None = None
        if feed_fault is not None:
            tag, tag_arg = feed_fault.fault.kind, feed_fault.fault.effective_arg
        msg = feed_message(feed.book, tag, tag_arg, ts)
        text = dumps(msg)
        kind = msg["type"]
        for sub in subs:
            self._offer(sub, text, kind, tag, tag_arg)
            if tag == "u_restart":
                sub.history.clear()  # a stale re-send must not reach back across (or replay) the restart
            else:
                sub.history.append((text, kind))
            self._release_ack(sub, pending_check=True)
        if feed_fault is not None:
            faults.spend(feed_fault, subs)  # after the offers, for the same reason as above
