"""Load mode of the fake Bybit server (``FakeBybit(..., load=True)``, CLI ``--load``), for benchmarks: it
sends Bybit's cadence for hundreds of symbols at a few microseconds of CPU a frame instead of ~80 us.

Per topic a ring of ``load_ring`` valid frames (a snapshot, then deltas, from the same ``SyntheticBook``) is
generated and serialised once, with ``ts``, ``u``, ``seq`` and ``cts`` left as holes; one scheduler task wakes
every ``load_tick_ms``, fills in the holes of every due topic's next frame once, and writes all the frames of
that tick for a connection with one ``transport.write`` (websocket framing done here; the connection must be
open). ``u`` rises by exactly 1 per frame of a topic, snapshots included: when the ring wraps, its snapshot
is sent again (carrying the next ``u``) and the deltas follow it, so a client always holds a valid book and
never sees a ``u`` jump. A new subscription makes its topic's next frame the ring's snapshot, for every
subscriber of the topic (a mid-stream snapshot, which real clients must handle anyway); the snapshot comes
at the topic's next push, not at once. Only counters are kept (frames per topic and connection, bytes,
ticks; ``sent_count()``, ``sent_by_connection()``, ``load_stats()``), plus the last ``load_keep`` data
frames for ``records()``/``sent_frames()``; replies are recorded in full. Faults, ``data_before_ack`` and
``record_path`` are refused in load mode; ``max_frames_per_topic`` works. A slow client is never skipped:
its frames wait in the server's write buffer (``load_stats()["buffered_bytes"]``), so "sent" means
written to the connection's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from .core import Conn, Core, Feed, SentFrame, Sub
from .faults import Fault
from .protocol import KIND_DELTA, KIND_REPLY, KIND_SNAPSHOT, WS_HEADERS, dumps, now_ms, ws_header, ws_text
from .synthetic import Msg, SyntheticBook

# Placeholders for the holes of a frame template, in their order in the text (ts, u, seq, cts).
_HOLES: tuple[int, ...] = (7_310_000_000_000_000_001, 7_310_000_000_000_000_002, 7_310_000_000_000_000_003,
                           7_310_000_000_000_000_004)
_GOLDEN = 0.6180339887498949  # spreads the topics' push phases evenly over their interval


@dataclass(frozen=True, slots=True)
class Ring:
    """One topic's pre-serialised frames. Entry 0 is a snapshot, the rest are the deltas that follow it
    (depth 1: snapshots). Per entry: a UTF-8 template with ``%d`` holes for ts, u, seq and cts, the ``seq``
    increment, and ``ts - cts``."""

    templates: list[bytes]
    seq_incs: list[int]
    cts_offs: list[int]
    kind: str  # of the entries after the first


def template(msg: Mapping[str, Any]) -> bytes:
    """``msg`` serialised with ``%d`` holes for ts, u, seq and cts (in that order; any ``%`` escaped)."""
    data = {**msg["data"], "u": _HOLES[1], "seq": _HOLES[2]}
    raw = orjson.dumps({**msg, "ts": _HOLES[0], "data": data, "cts": _HOLES[3]}).replace(b"%", b"%%")
    tokens = [str(h).encode() for h in _HOLES]
    where = [raw.find(t) for t in tokens]
    if any(raw.count(t) != 1 for t in tokens) or where != sorted(where):
        raise AssertionError(f"cannot template {msg.get('topic')!r}")  # the generator's shape changed
    for t in tokens:
        raw = raw.replace(t, b"%d")
    return raw


def build_ring(book: SyntheticBook, size: int, ts0: int) -> Ring:
    """``size`` frames of ``book`` from its current state: its snapshot, then ``size - 1`` pushes 20 ms
    apart. Advances the book."""
    snap: Msg = book.snapshot(ts0)
    ring = Ring([template(snap)], [1], [ts0 - snap["cts"]], KIND_DELTA)
    ts = ts0
    for _ in range(size - 1):
        ts += 20
        seq0 = book.seq
        msg = book.next_message(ts)
        ring.templates.append(template(msg))
        ring.seq_incs.append(book.seq - seq0)
        ring.cts_offs.append(ts - msg["cts"])
    return ring if book.depth != 1 else Ring(ring.templates, ring.seq_incs, ring.cts_offs, KIND_SNAPSHOT)


@dataclass(eq=False, slots=True)
class LoadConn(Conn["LoadSub"]):
    # This tick's websocket frames (header, payload, ...), whether it is open this tick, counters.
    out: list[bytes] = field(default_factory=list)
    writable: bool = False
    sent: int = 0
    buffered: int = 0  # bytes waiting in the transport's write buffer after the last tick


@dataclass(eq=False, slots=True)
class LoadSub(Sub[LoadConn, "LoadFeed"]):
    pass


@dataclass(eq=False, slots=True)
class LoadFeed(Feed[LoadSub]):
    ring: Ring | None = None
    pos: int = 0  # the ring entry sent next (0: the snapshot)
    u: int = 0  # u of the last frame sent
    seq: int = 0
    phase: float = 0.0  # seconds after a first subscription before the first push
    due: float = 0.0  # loop time of the next push
    targets: tuple[LoadConn, ...] = ()  # the subscribers' connections (a tuple is cheaper to walk than subs)
    scheduled: bool = False  # in a slot of the scheduler's wheel
    sent: int = 0  # data frames written, all connections


class LoadCore(Core[LoadConn, LoadSub, LoadFeed]):
    """Load mode: frame rings, one scheduler task on a timing wheel, batched writes, counters."""

    load = True

    def __init__(
        self,
        *,
        faults: Sequence[Fault] = (),
        data_before_ack: int = 0,
        record_path: str | Path | None = None,
        load_ring: int = 256,
        load_tick_ms: float = 5.0,
        load_keep: int = 0,
        load_depths: Iterable[int] = (50,),
        **common: Any,
    ) -> None:
        if faults:
            raise ValueError("load mode does not inject faults")
        if data_before_ack:
            raise ValueError("load mode does not support data_before_ack")
        if record_path is not None:
            raise ValueError("load mode does not record frames to a file")
        if not (isinstance(load_ring, int) and load_ring >= 2):
            raise ValueError(f"load_ring must be an int >= 2 (a snapshot and a delta), got {load_ring!r}")
        if not load_tick_ms > 0:
            raise ValueError(f"load_tick_ms must be > 0, got {load_tick_ms!r}")
        if load_keep < 0:
            raise ValueError(f"load_keep must be >= 0, got {load_keep!r}")
        self.load_ring = load_ring
        self.load_tick_s = load_tick_ms / 1000.0
        self.load_keep = load_keep
        # The scheduler's timing wheel (slot = one tick; built once the feeds are known), counters, the last
        # load_keep data frames.
        self._wheel: list[list[LoadFeed]] = []
        self._wheel_t0: float | None = None  # loop time of slot 0
        self._slot_done = 0  # the last slot (absolute tick number) pushed
        self._rec_n = itertools.count()  # orders replies and kept data frames in one record
        self._record_ns: list[int] = []  # the _rec_n of each entry of self.records (replies)
        self._recent: deque[tuple[int, str, str, str, bytes]] = deque(maxlen=max(1, load_keep))
        self.conn_sent: dict[str, int] = {}  # conn_id -> data frames written (first-send order)
        self.frames_sent = 0  # data frames written, all topics and connections
        self.bytes_sent = 0
        self.ticks = 0
        self.late_ticks = 0  # woke more than one tick late
        self.max_lag_s = 0.0
        self.loop_cpu_s = 0.0  # CPU time of the event loop's thread, as of the last tick
        self.rings_built = 0
        self.ring_build_s = 0.0
        self._load_task: asyncio.Task[None] | None = None
        super().__init__(**common)
        # A topic is re-placed at most ceil(interval / tick) + 1 slots ahead: the wheel spans that.
        longest = max((f.interval_s for f in self.feeds.values()), default=0.0)
        self._wheel = [[] for _ in range(int(longest / self.load_tick_s) + 3)]
        # Rings of the usual depths now (~40 us a frame at depth 50), the others on first subscribe.
        prebuild = set(load_depths)
        for topic, feed in self.feeds.items():
            if int(topic.split(".")[1]) in prebuild:
                self._ring(feed)

    def _new_conn(self, ws: ServerConnection, conn_id: str) -> LoadConn:
        return LoadConn(ws, conn_id)

    def _new_sub(self, conn: LoadConn, feed: LoadFeed) -> LoadSub:
        return LoadSub(conn, feed, self.max_frames)

    def _new_feed(self, topic: str, book: SyntheticBook, interval_s: float) -> LoadFeed:
        # The n-th topic created (this one is not in self.feeds yet) pushes at phase (n * golden ratio) mod 1.
        n = len(self.feeds) + 1
        return LoadFeed(topic, book, interval_s, phase=interval_s * ((n * _GOLDEN) % 1.0))

    async def start(self) -> None:
        """Bind, start listening and start the scheduler."""
        await super().start()
        self._load_task = asyncio.create_task(self._load_loop(), name="load scheduler")

    async def close(self) -> None:
        """Close every connection (1001) and stop the scheduler."""
        await super().close()
        if self._load_task is not None:
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_task
            self._load_task = None

    def arm(self, fault: Fault) -> None:
        raise ValueError("load mode does not inject faults")

    # -------------------------------------------------------------------------------------------- feeds

    def _ring(self, feed: LoadFeed) -> Ring:
        """The topic's ring, built on first use; the first frame sent carries the book's own u and seq."""
        if feed.ring is None:
            t0 = time.perf_counter()
            feed.u, feed.seq = feed.book.u - 1, feed.book.seq - 1
            feed.ring = build_ring(feed.book, self.load_ring, now_ms())
            self.rings_built += 1
            self.ring_build_s += time.perf_counter() - t0
        return feed.ring

    def _start_sub(self, conn: LoadConn, topic: str) -> None:
        sub = self._add_sub(conn, topic)
        feed = sub.feed
        self._ring(feed)
        feed.subs.add(sub)
        feed.targets = tuple(s.conn for s in feed.subs)
        feed.pos = 0  # the next frame of the topic is the ring's snapshot, for every subscriber
        if not feed.scheduled:
            feed.scheduled = True
            now = asyncio.get_running_loop().time()
            if self._wheel_t0 is None:
                self._wheel_t0 = now
                self._slot_done = 0
            feed.due = now + feed.phase
            self._place(feed, int((now - self._wheel_t0) / self.load_tick_s))

    def _end_sub(self, sub: LoadSub) -> None:
        super()._end_sub(sub)
        sub.feed.targets = tuple(s.conn for s in sub.feed.subs)

    def _place(self, feed: LoadFeed, current: int) -> None:
        """Put ``feed`` in the wheel slot of its due time, but at least the slot after ``current``."""
        assert self._wheel_t0 is not None
        slot = max(current + 1, int((feed.due - self._wheel_t0) / self.load_tick_s))
        self._wheel[slot % len(self._wheel)].append(feed)

    # ------------------------------------------------------------------------------------------- writing

    def _reply(self, conn: LoadConn, obj: Mapping[str, Any]) -> None:
        text = dumps(obj)
        ws = conn.ws
        if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            return  # as in scripted mode: a reply that cannot go out is not recorded
        ws.transport.write(ws_text(text.encode()))
        with self.lock:
            self.records.append(SentFrame(conn.conn_id, None, KIND_REPLY, text))
            self._record_ns.append(next(self._rec_n))
            self.conn_sent.setdefault(conn.conn_id, 0)

    async def _load_loop(self) -> None:
        """Wake every tick and push every due topic; a tick more than 1 s late resynchronises."""
        loop = asyncio.get_running_loop()
        tick = self.load_tick_s
        next_t = loop.time()
        while True:
            next_t += tick
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            now = loop.time()
            lag = now - next_t
            if lag > tick:
                self.late_ticks += 1
            self.max_lag_s = max(self.max_lag_s, lag)
            if lag > 1.0:
                next_t = now
            self._load_tick(now)

    def _load_tick(self, now: float) -> None:
        """Send the next frame of every topic due by ``now`` to its subscribers: each frame is built once
        (template holes filled), each connection gets one write for the whole tick."""
        self.ticks += 1
        if self._wheel_t0 is None:
            self.loop_cpu_s = time.thread_time()
            return  # nothing was ever subscribed
        wheel = self._wheel
        size = len(wheel)
        tick_s = self.load_tick_s
        current = int((now - self._wheel_t0) / tick_s)
        first = max(self._slot_done + 1, current - size + 1)  # late: every slot once, none twice
        self._slot_done = current
        for conn in self.conns:
            ws = conn.ws
            conn.writable = ws.protocol.state is State.OPEN and not ws.transport.is_closing()
        ts = now_ms()
        keep = self._recent if self.load_keep else None
        fast = keep is None and self.max_frames is None  # no per-subscription bookkeeping needed
        capped: list[LoadSub] = []
        headers = WS_HEADERS
        nheaders = len(headers)
        for k in range(first, current + 1):
            feeds = wheel[k % size]
            if not feeds:
                continue
            wheel[k % size] = []
            for feed in feeds:
                subs = feed.subs
                if not subs:
                    feed.scheduled = False  # no subscriber left (a new one schedules it again)
                    continue
                due = feed.due + feed.interval_s
                if now - due > 1.0:
                    due = now  # far behind (suspended?): do not burst to catch up
                feed.due = due
                slot = int((due - self._wheel_t0) / tick_s)
                wheel[(slot if slot > current else current + 1) % size].append(feed)
                ring = feed.ring
                assert ring is not None
                pos = feed.pos
                feed.pos = pos + 1 if pos + 1 < len(ring.templates) else 0
                feed.u = u = feed.u + 1
                feed.seq = seq = feed.seq + ring.seq_incs[pos]
                payload = ring.templates[pos] % (ts, u, seq, ts - ring.cts_offs[pos])
                n = len(payload)
                header = headers[n] if n < nheaders else ws_header(n)
                sent = 0
                if fast:
                    for conn in feed.targets:
                        if conn.writable:
                            out = conn.out
                            out.append(header)
                            out.append(payload)
                            sent += 1
                    feed.sent += sent
                    continue
                for sub in subs:
                    conn = sub.conn
                    if not conn.writable:
                        continue
                    out = conn.out
                    out.append(header)
                    out.append(payload)
                    sent += 1
                    if sub.cap is not None:
                        sub.queued += 1
                        if sub.queued >= sub.cap:
                            capped.append(sub)
                    if keep is not None:
                        kind = ring.kind if pos else KIND_SNAPSHOT
                        keep.append((next(self._rec_n), conn.conn_id, feed.topic, kind, payload))
                feed.sent += sent
                if capped:
                    for sub in capped:
                        subs.discard(sub)  # capped: stays subscribed, silent
                    feed.targets = tuple(s.conn for s in subs)
                    capped.clear()
        frames = nbytes = 0
        for conn in self.conns:
            out = conn.out
            if out:
                data = b"".join(out)
                conn.ws.transport.write(data)
                conn.sent += len(out) // 2
                frames += len(out) // 2
                nbytes += len(data)
                out.clear()
                conn.buffered = conn.ws.transport.get_write_buffer_size()
                with self.lock:
                    self.conn_sent[conn.conn_id] = conn.sent
        if frames:
            with self.lock:
                self.frames_sent += frames
                self.bytes_sent += nbytes
        self.loop_cpu_s = time.thread_time()

    # ----------------------------------------------------------------------------------------- counters

    def sent_records(self) -> list[SentFrame]:
        """Every reply and the last ``load_keep`` data frames, in send order. Any thread."""
        with self.lock:
            replies = list(zip(self._record_ns, self.records, strict=True))
            recent = list(self._recent) if self.load_keep else []
        data = [(n, SentFrame(c, t, k, payload.decode())) for n, c, t, k, payload in recent]
        return [r for _, r in heapq.merge(replies, data, key=lambda x: x[0])]

    def load_stats(self) -> dict[str, Any]:
        """Load mode counters (any thread; a consistent-enough snapshot for monitoring)."""
        with self.lock:
            out: dict[str, Any] = {"frames": self.frames_sent, "bytes": self.bytes_sent}
        out.update(
            ticks=self.ticks, late_ticks=self.late_ticks, max_lag_ms=round(self.max_lag_s * 1000, 3),
            loop_cpu_s=self.loop_cpu_s, rings_built=self.rings_built, ring_frames=self.load_ring,
            ring_build_s=round(self.ring_build_s, 3),
            buffered_bytes=sum(c.buffered for c in list(self.conns)), connections=len(self.conns),
        )
        return out

    def data_sent(self, topic: str | None = None, conn_id: str | None = None) -> int:
        """Data frames sent, per topic or per connection (counters, cheap). Any thread."""
        if topic is not None and conn_id is not None:
            raise ValueError("load mode counts per topic or per connection, not both")
        if topic is not None:
            feed = self.feeds.get(topic)
            return feed.sent if feed is not None else 0
        with self.lock:
            return self.frames_sent if conn_id is None else self.conn_sent.get(conn_id, 0)

    def sent_by_connection(self) -> dict[str, int]:
        with self.lock:
            return dict(self.conn_sent)
