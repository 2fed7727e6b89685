"""A fake Bybit v5 public websocket server (linear shapes), for tests and for running by hand.

Speaks the request/reply shapes of /work/shared/docs/bybit-v5.md: subscribe/unsubscribe acks, the linear
pong, the real refusal texts (``args size >10``, ``Invalid symbol :[topic]``, ``error:handler not
found,topic:...``, ``error:already subscribed,topic:...``), and streams ``orderbook.{1|50|200|1000}.{SYMBOL}``
from a seeded ``SyntheticBook``: a snapshot on subscribe, then deltas (level 1: snapshots only).

Each topic has one book shared by every subscriber, like the real feed: two connections see the same ``u``
sequence, and a resubscribe gets a fresh snapshot carrying the book's current ``u`` (the counter goes on).

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

Load mode (``FakeBybit(..., load=True)``, CLI ``--load``) is for benchmarks: it sends Bybit's cadence for
hundreds of symbols at a few microseconds of CPU a frame instead of ~80 us. Per topic a ring of
``load_ring`` valid frames (a snapshot, then deltas, from the same ``SyntheticBook``) is generated and
serialised once, with ``ts``, ``u``, ``seq`` and ``cts`` left as holes; one scheduler task wakes every
``load_tick_ms``, fills in the holes of every due topic's next frame once, and writes all the frames of that
tick for a connection with one ``transport.write`` (websocket framing done here; the connection must be
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

CLI::

    python tests/fakes/bybit_server.py --port 8765 --symbols BTCUSDT,ETHUSDT --interval-ms 20 \\
        [--max-frames N] [--record frames.jsonl] [--seed 1] [--data-before-ack N] \\
        [--fault "u_jump:topic=orderbook.50.BTCUSDT,after=100,arg=5,once=false" ...] \\
        [--load [--load-ring 256] [--load-tick-ms 5] [--load-keep 0]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import random
import re
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.protocol import State

if __package__:
    from .synthetic import VALID_DEPTHS, SyntheticBook
else:  # run as a script: python tests/fakes/bybit_server.py
    from synthetic import VALID_DEPTHS, SyntheticBook

T = TypeVar("T")

HOST = "127.0.0.1"  # never anything else: this is a test fake, it must not listen on the network
DEFAULT_PATH = "/v5/public/linear"
DEFAULT_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")

# Bybit's push intervals per depth for linear/spot (orderbook.mdx, current).
DEFAULT_INTERVAL_MS: dict[int, float] = {1: 10.0, 50: 20.0, 200: 100.0, 1000: 200.0}

# (mid, tick) per symbol; anything else gets _OTHER_SPEC. Different ticks exercise price formatting.
DEFAULT_SPECS: dict[str, tuple[float, float]] = {
    "BTCUSDT": (30000.0, 0.1),
    "ETHUSDT": (2000.0, 0.01),
    "SOLUSDT": (150.0, 0.01),
    "XRPUSDT": (2.0, 0.0001),
}
_OTHER_SPEC = (100.0, 0.01)

_TOPIC_RE = re.compile(r"orderbook\.(" + "|".join(map(str, VALID_DEPTHS)) + r")\.([^.\s]+)")

KIND_SNAPSHOT = "snapshot"
KIND_DELTA = "delta"
KIND_REPLY = "reply"
KIND_INVALID = "invalid"  # a data frame of a topic whose "type" is neither snapshot nor delta, or not JSON
KIND_EVENT = "event"  # not a frame: a fault that sent nothing (drop, close, stall, ignored unsubscribe)

# Fault kinds, by what they act on.
FEED_FAULTS = frozenset({"u_jump", "u_restart"})  # the topic's shared book: every subscriber sees them
FRAME_FAULTS = frozenset({"stale", "crossed", "malformed", "oversized"})  # one extra frame, one subscription
CONN_FAULTS = frozenset({"drop", "close", "stall", "unsub_ignored"})  # the subscription's connection
FAULT_KINDS = FEED_FAULTS | FRAME_FAULTS | CONN_FAULTS
MALFORMED_VARIANTS: tuple[str, ...] = (
    "nan", "inf", "1e400", "1_000", "neg_size", "empty_symbol", "bad_type", "not_json",
)
UNSUB_MODES: tuple[str, ...] = ("silent", "ack")
_DEFAULT_ARG: dict[str, int | str] = {
    "u_jump": 5, "stale": 2, "malformed": "nan", "oversized": 32 * 2**20, "close": 1000,
    "unsub_ignored": "silent",
}
_MIN_OVERSIZED = 1024  # the JSON envelope (topic, type, ts) must fit; anything smaller is not "oversized"
_STALE_HISTORY = 32  # regular frames remembered per subscription, for "stale" re-sends
CLOSE_REASON = "maintenance"

# Load mode: placeholders for the holes of a frame template, in their order in the text (ts, u, seq, cts).
_HOLES: tuple[int, ...] = (7_310_000_000_000_000_001, 7_310_000_000_000_000_002, 7_310_000_000_000_000_003,
                           7_310_000_000_000_000_004)
_GOLDEN = 0.6180339887498949  # spreads the topics' push phases evenly over their interval


@dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour of the fake server.

    When: a fault fires once ``topic`` (any topic if None) has had ``after_frames`` data frames queued
    on a connection since the fault was armed (``inject()``), or -- for faults given to the constructor
    -- since the subscription started (topic given; a resubscribe restarts the count) or the connection
    opened (topic None). Faults are checked at the topic's push ticks, so none fires before the
    subscription's snapshot; with ``after_frames >= 1`` exactly ``after_frames`` data frames of the topic
    (of any topic if None) precede the fault's frame or event on that connection. ``once`` True: the
    fault fires one time in all; False: it stays armed and fires again after another ``after_frames``
    frames on the same subscription (connection), and on every other one.

    What (``arg`` default in brackets):

    * ``u_jump`` [5]: the topic's book silently applies ``arg`` unsent deltas, so the next pushed frame
      has ``u == last + arg + 1``. Every subscriber of the topic gets that frame (the book is shared).
    * ``u_restart``: the book moves on once (unsent) and restarts its counter: every subscriber gets a
      snapshot with ``u == 1`` (``seq`` still rising), then deltas ``u == 2, 3, ...``.
    * ``stale`` [2]: one subscription gets again the regular frame sent ``arg`` pushes ago (2: its ``u``
      is the last ``u`` - 1; 1 is a plain duplicate). Waits until that many were sent.
    * ``crossed``: one extra frame claiming the next ``u`` and ``seq`` whose bid is one tick above the best
      ask; the book does not apply it. The next regular delta claims the same ``u``.
    * ``malformed`` [``"nan"``]: one extra frame of the topic, claiming the next ``u``, whose content is
      invalid: ``"nan"``, ``"inf"``, ``"1e400"``, ``"1_000"`` (a bid price), ``"neg_size"`` (size
      ``"-1"``), ``"empty_symbol"`` (``data.s == ""``), ``"bad_type"`` (``type == "update"``),
      ``"not_json"`` (``{"topic":"<topic>", garbage``). The other variants carry the best bid unchanged
      (level 1: a snapshot of best bid and ask), so the book misses nothing but that frame.
    * ``oversized`` [32 MiB]: one text frame of exactly ``arg`` bytes: a JSON object with the topic, type
      ``"delta"``, ts and a ``"pad"`` string. Recorded once handed to the socket even if the client
      refuses it mid-transfer.
    * ``drop``: abort the connection (no close frame: the client sees 1006).
    * ``close`` [1000]: close handshake with code ``arg`` and reason ``"maintenance"``.
    * ``stall``: the connection stays open but nothing more is sent on it -- no data, no JSON pongs, no
      acks, no RFC 6455 pongs -- until the client closes it (its close frame is still answered).
    * ``unsub_ignored`` [``"silent"``]: from then on the connection ignores unsubscribe requests: no
      reply (``"silent"``) or a success ack (``"ack"``), and the topic keeps streaming either way. Each
      ignored request is an event record (``{"event":"unsub_ignored","arg":mode,"args":[...]}``).

    Recorded as: injected frames with ``SentFrame.fault == kind`` (u_jump/u_restart: the frame every
    subscriber got); drop/close/stall as an event record queued behind the frames before it, so its
    position among the connection's records is where it happened on the wire.
    """

    kind: str
    topic: str | None = None
    after_frames: int = 0
    arg: int | float | str | None = None
    once: bool = True

    def __post_init__(self) -> None:
        """Refuse a fault that could never fire as asked, at construction rather than mid-test."""
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        if not isinstance(self.after_frames, int) or self.after_frames < 0:
            raise ValueError(f"after_frames must be an int >= 0, got {self.after_frames!r}")
        if self.topic is not None and _TOPIC_RE.fullmatch(self.topic) is None:
            raise ValueError(f"not an orderbook topic: {self.topic!r}")
        arg = self.effective_arg
        if self.kind == "malformed" and arg not in MALFORMED_VARIANTS:
            raise ValueError(f"malformed arg must be one of {MALFORMED_VARIANTS}, got {arg!r}")
        if self.kind == "unsub_ignored" and arg not in UNSUB_MODES:
            raise ValueError(f"unsub_ignored arg must be one of {UNSUB_MODES}, got {arg!r}")
        if self.kind == "u_jump" and not (isinstance(arg, int) and arg >= 1):
            raise ValueError(f"u_jump arg must be an int >= 1 (update ids skipped), got {arg!r}")
        if self.kind == "stale" and not (isinstance(arg, int) and 1 <= arg <= _STALE_HISTORY):
            raise ValueError(f"stale arg must be an int in 1..{_STALE_HISTORY} (frames back), got {arg!r}")
        if self.kind == "oversized" and not (isinstance(arg, int) and arg >= _MIN_OVERSIZED):
            raise ValueError(f"oversized arg must be an int >= {_MIN_OVERSIZED} (bytes), got {arg!r}")
        if self.kind == "close" and not (isinstance(arg, int) and (arg in EXTERNAL_CLOSE_CODES
                                                                   or 3000 <= arg <= 4999)):
            # 1004-1006 and 1015 must never be sent on the wire; websockets refuses them too.
            raise ValueError(f"close arg must be a sendable close code (1000-1003, 1007-1014, 3000-4999), "
                             f"got {arg!r}")
        if self.kind in ("u_restart", "crossed", "drop", "stall") and self.arg is not None:
            raise ValueError(f"{self.kind} takes no arg, got {self.arg!r}")

    @property
    def effective_arg(self) -> int | float | str | None:
        """``arg``, or the kind's default when None (u_jump 5, stale 2, malformed "nan", oversized 32 MiB,
        close 1000, unsub_ignored "silent")."""
        return self.arg if self.arg is not None else _DEFAULT_ARG.get(self.kind)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``"kind"`` or ``"kind:topic=T,after=N,arg=X,once=false"`` (for the CLI's ``--fault``)."""
        kind, _, rest = spec.partition(":")
        kw: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"bad fault option {item!r} in {spec!r}")
            if key == "topic":
                kw["topic"] = value
            elif key == "after":
                kw["after_frames"] = int(value)
            elif key == "once":
                kw["once"] = value.lower() not in ("0", "false", "no")
            elif key == "arg":
                kw["arg"] = int(value) if re.fullmatch(r"\d+", value) else value
            else:
                raise ValueError(f"unknown fault option {key!r} in {spec!r}")
        return cls(kind.strip(), **kw)


@dataclass(frozen=True, slots=True)
class SentFrame:
    """One frame the server put on the wire (its ``send`` returned), or one fault event."""

    conn_id: str
    topic: str | None  # None for replies (acks, pongs, refusals) and events
    kind: str  # "snapshot" | "delta" | "invalid" (data frames) | "reply" | "event"
    text: str  # the exact text sent; for an event, a JSON description of it
    fault: str | None = None  # the Fault.kind that produced this frame or event; None for normal frames
    fault_arg: int | float | str | None = None  # that fault's effective arg


@dataclass(slots=True)
class _Out:
    text: str
    topic: str | None
    kind: str
    fault: str | None = None
    fault_arg: int | float | str | None = None


@dataclass(eq=False, slots=True)
class _PendingAck:
    """An ack held back until each listed subscription has queued ``need`` data frames."""

    text: str
    need: int
    waiting: set[_Sub] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class _Sub:
    conn: _Conn
    feed: _Feed
    cap: int | None  # data frames allowed for this subscription (None: unlimited)
    queued: int = 0
    pending_ack: _PendingAck | None = None
    counts: dict[int, int] = field(default_factory=dict)  # _Armed.key -> frames queued since armed
    # (text, kind) of the last regular frames, for "stale" re-sends.
    history: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=_STALE_HISTORY))


@dataclass(eq=False, slots=True)
class _Conn:
    ws: ServerConnection
    conn_id: str
    queue: asyncio.Queue[_Out] = field(default_factory=asyncio.Queue)
    subs: dict[str, _Sub] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)  # topic-less faults: frames of any topic
    halted: bool = False  # a drop/close/stall is queued: nothing more is queued behind it
    ignore_unsub: str | None = None  # an "unsub_ignored" mode once that fault fired here
    # Load mode only: this tick's websocket frames (header, payload, ...), whether it is open this tick, counters.
    out: list[bytes] = field(default_factory=list)
    writable: bool = False
    sent: int = 0
    buffered: int = 0  # bytes waiting in the transport's write buffer after the last tick


@dataclass(frozen=True, slots=True)
class _Ring:
    """Load mode: one topic's pre-serialised frames. Entry 0 is a snapshot, the rest are the deltas that
    follow it (depth 1: snapshots). Per entry: a UTF-8 template with ``%d`` holes for ts, u, seq and cts,
    the ``seq`` increment, and ``ts - cts``."""

    templates: list[bytes]
    seq_incs: list[int]
    cts_offs: list[int]
    kind: str  # of the entries after the first


@dataclass(eq=False, slots=True)
class _Armed:
    """A fault waiting to fire; ``key`` indexes the per-subscription/connection frame counters."""

    fault: Fault
    key: int
    fired: int = 0
    done: bool = False


@dataclass(eq=False, slots=True)
class _Feed:
    """One topic's book and the subscriptions currently receiving it."""

    topic: str
    book: SyntheticBook
    interval_s: float
    subs: set[_Sub] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    # Load mode only.
    ring: _Ring | None = None
    pos: int = 0  # the ring entry sent next (0: the snapshot)
    u: int = 0  # u of the last frame sent
    seq: int = 0
    phase: float = 0.0  # seconds after a first subscription before the first push
    due: float = 0.0  # loop time of the next push
    targets: tuple[_Conn, ...] = ()  # the subscribers' connections (a tuple is cheaper to walk than subs)
    scheduled: bool = False  # in a slot of the scheduler's wheel
    sent: int = 0  # data frames written, all connections


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _dumps(obj: Mapping[str, Any]) -> str:
    return orjson.dumps(obj).decode()


def _ws_header(n: int) -> bytes:
    """The header of one unmasked, unfragmented RFC 6455 text frame (a server's) of ``n`` payload bytes."""
    if n < 126:
        return bytes((0x81, n))
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n)
    return struct.pack("!BBQ", 0x81, 127, n)


_WS_HEADERS = [_ws_header(n) for n in range(8192)]  # load mode: no packing per frame


def _ws_text(payload: bytes) -> bytes:
    """One text frame, header + payload."""
    return _ws_header(len(payload)) + payload


def _template(msg: Mapping[str, Any]) -> bytes:
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


def _build_ring(book: SyntheticBook, size: int, ts0: int) -> _Ring:
    """``size`` frames of ``book`` from its current state: its snapshot, then ``size - 1`` pushes 20 ms
    apart. Advances the book."""
    snap = book.snapshot(ts0)
    ring = _Ring([_template(snap)], [1], [ts0 - snap["cts"]], KIND_DELTA)
    ts = ts0
    for _ in range(size - 1):
        ts += 20
        seq0 = book.seq
        msg = book.next_message(ts)
        ring.templates.append(_template(msg))
        ring.seq_incs.append(book.seq - seq0)
        ring.cts_offs.append(ts - msg["cts"])
    return ring if book.depth != 1 else _Ring(ring.templates, ring.seq_incs, ring.cts_offs, KIND_SNAPSHOT)


class _Core:
    """The asyncio side: owns the server, the feeds and the record. Runs on one event loop."""

    def __init__(
        self,
        *,
        port: int,
        symbols: Iterable[str],
        interval_ms: float | None,
        max_frames_per_topic: int | None,
        data_before_ack: int,
        seed: int,
        record_path: str | Path | None,
        max_args: int,
        specs: Mapping[str, tuple[float, float]] | None,
        path: str,
        faults: Sequence[Fault] = (),
        load: bool = False,
        load_ring: int = 256,
        load_tick_ms: float = 5.0,
        load_keep: int = 0,
        load_depths: Iterable[int] = (50,),
    ) -> None:
        if load:
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
        self.load = load
        self.load_ring = load_ring
        self.load_tick_s = load_tick_ms / 1000.0
        self.load_keep = load_keep
        self.requested_port = port
        self.symbols = frozenset(symbols)
        self.interval_ms = interval_ms
        self.max_frames = max_frames_per_topic
        self.data_before_ack = int(data_before_ack)
        self.seed = seed
        self.max_args = max_args
        self.specs = {**DEFAULT_SPECS, **(specs or {})}
        self.path = path
        self.record_path = Path(record_path) if record_path is not None else None
        self.port = 0
        self.total_connections = 0
        self.bad_requests = 0
        self.conns: list[_Conn] = []  # live connections, in accept order
        self.feeds: dict[str, _Feed] = {}
        # Read from the test thread while the loop appends: guard with a lock rather than rely on the GIL.
        self.lock = threading.Lock()
        self.records: list[SentFrame] = []
        self._server: Server | None = None
        self._record_fh: IO[bytes] | None = None
        self._conn_rng = random.Random(f"conn|{seed}")
        self.armed: list[_Armed] = []  # faults not yet spent, in arming order (checked in that order)
        self._fault_keys = 0
        self.fired: dict[str, int] = dict.fromkeys(sorted(FAULT_KINDS), 0)  # under self.lock
        # Load mode: the scheduler's timing wheel (slot = one tick; built once the feeds are known),
        # counters, the last load_keep data frames.
        self._wheel: list[list[_Feed]] = []
        self._wheel_t0: float | None = None  # loop time of slot 0
        self._slot_done = 0  # the last slot (absolute tick number) pushed
        self._rec_n = itertools.count()  # orders replies and kept data frames in one record
        self._record_ns: list[int] = []  # load mode: the _rec_n of each entry of self.records (replies)
        self._recent: deque[tuple[int, str, str, str, bytes]] = deque(maxlen=max(1, load_keep))
        self.conn_sent: dict[str, int] = {}  # load mode: conn_id -> data frames written (first-send order)
        self.frames_sent = 0  # load mode: data frames written, all topics and connections
        self.bytes_sent = 0
        self.ticks = 0
        self.late_ticks = 0  # woke more than one tick late
        self.max_lag_s = 0.0
        self.loop_cpu_s = 0.0  # CPU time of the event loop's thread, as of the last tick
        self.rings_built = 0
        self.ring_build_s = 0.0
        self._load_task: asyncio.Task[None] | None = None
        for fault in faults:
            self.arm(fault)
        # Build every book now: a bad (mid, tick) for some depth fails here, not inside a connection.
        for symbol in sorted(self.symbols):
            for depth in VALID_DEPTHS:
                self._feed(f"orderbook.{depth}.{symbol}")
        if load:
            # A topic is re-placed at most ceil(interval / tick) + 1 slots ahead: the wheel spans that.
            longest = max((f.interval_s for f in self.feeds.values()), default=0.0)
            self._wheel = [[] for _ in range(int(longest / self.load_tick_s) + 3)]
            # Rings of the usual depths now (~40 us a frame at depth 50), the others on first subscribe.
            prebuild = set(load_depths)
            for topic, feed in self.feeds.items():
                if int(topic.split(".")[1]) in prebuild:
                    self._ring(feed)

    @property
    def url(self) -> str:
        """The websocket URL clients should use."""
        return f"ws://{HOST}:{self.port}{self.path}"

    async def start(self) -> None:
        """Bind and start listening."""
        if self.record_path is not None:
            self._record_fh = self.record_path.open("ab")
        self._server = await serve(
            self._handler,
            HOST,
            self.requested_port,
            compression=None,  # Bybit does not negotiate permessage-deflate
            ping_interval=None,  # the client pings (JSON and/or RFC 6455); we only answer
            close_timeout=2,
            max_size=2**20,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.load:
            self._load_task = asyncio.create_task(self._load_loop(), name="load scheduler")

    async def close(self) -> None:
        """Close every connection (1001), stop the feeds, close the record file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._load_task is not None:
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_task
            self._load_task = None
        for feed in self.feeds.values():
            if feed.task is not None:
                feed.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed.task
        if self._record_fh is not None:
            self._record_fh.close()
            self._record_fh = None

    def drop_connections(self) -> int:
        """Abort every live TCP connection without a close frame (clients see 1006)."""
        conns = list(self.conns)
        for conn in conns:
            conn.ws.transport.abort()
        return len(conns)

    def arm(self, fault: Fault) -> None:
        """Arm ``fault``: counting starts now (frames queued before this do not count). Loop thread only."""
        if self.load:
            raise ValueError("load mode does not inject faults")
        self._fault_keys += 1
        self.armed.append(_Armed(fault, self._fault_keys))

    # ------------------------------------------------------------------------------------ connection

    def _new_conn_id(self) -> str:
        # Looks like Bybit's "d967ikkn0ine3iqmjc30-koqj"; seeded so a run is reproducible.
        alphabet = "0123456789abcdefghijklmnopqrstuv"
        head = "".join(self._conn_rng.choice(alphabet) for _ in range(20))
        tail = "".join(self._conn_rng.choice(alphabet) for _ in range(4))
        return f"{head}-{tail}"

    async def _handler(self, ws: ServerConnection) -> None:
        conn = _Conn(ws, self._new_conn_id())
        self.conns.append(conn)
        self.total_connections += 1
        # Load mode writes from the scheduler (data) and from the request handler (replies), in program order.
        writer = asyncio.create_task(self._writer(conn)) if not self.load else None
        try:
            async for raw in ws:
                self._on_request(conn, raw)
        except ConnectionClosed:
            pass  # aborted or failed; the finally below is the same for every ending
        finally:
            self.conns.remove(conn)
            for sub in list(conn.subs.values()):
                self._end_sub(sub)
            conn.subs.clear()
            # The peer is gone or closing: whatever is still queued would not be read; stop now.
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    async def _writer(self, conn: _Conn) -> None:
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
    def _mute(conn: _Conn) -> None:
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

    def _record(self, conn: _Conn, out: _Out) -> None:
        frame = SentFrame(conn.conn_id, out.topic, out.kind, out.text, out.fault, out.fault_arg)
        with self.lock:
            self.records.append(frame)
        if self._record_fh is not None and out.topic is not None:
            # One exact frame per line, like Bybit's own dumps: the file replays as a stream.
            self._record_fh.write(out.text.encode() + b"\n")
            self._record_fh.flush()

    # -------------------------------------------------------------------------------------- requests

    def _reply(self, conn: _Conn, obj: Mapping[str, Any]) -> None:
        if self.load:
            self._load_reply(conn, _dumps(obj))
        elif not conn.halted:
            conn.queue.put_nowait(_Out(_dumps(obj), None, KIND_REPLY))

    def _on_request(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.bad_requests += 1
            return
        if not isinstance(req, dict):
            self.bad_requests += 1
            return
        op = req.get("op")
        req_id = req.get("req_id")
        # Linear replies always carry req_id, "" when none was sent; a non-string id comes back as text.
        rid = "" if req_id is None else req_id if isinstance(req_id, str) else orjson.dumps(req_id).decode()
        if op == "ping":
            self._reply(conn, {"success": True, "ret_msg": "pong", "conn_id": conn.conn_id, "req_id": rid,
                               "op": "ping"})
        elif op in ("subscribe", "unsubscribe"):
            args = req.get("args")
            self._on_subscription(conn, op, rid, args if isinstance(args, list) else [])
        else:
            self.bad_requests += 1
            reply: dict[str, Any] = {"success": False, "ret_msg": "error:invalid op", "conn_id": conn.conn_id,
                                     "req_id": rid}
            if isinstance(op, str):
                reply["op"] = op
            self._reply(conn, reply)

    def _topic_error(self, conn: _Conn, op: str, rid: str, topic: object) -> dict[str, Any] | None:
        m = _TOPIC_RE.fullmatch(topic) if isinstance(topic, str) else None
        if m is None:
            return {"success": False, "ret_msg": f"error:handler not found,topic:{topic}",
                    "conn_id": conn.conn_id, "req_id": rid, "op": op}
        if m.group(2) not in self.symbols:
            # The real refusal has no req_id (FastMM capture).
            return {"success": False, "ret_msg": f"Invalid symbol :[{topic}]", "conn_id": conn.conn_id,
                    "op": op}
        return None

    def _on_subscription(self, conn: _Conn, op: str, rid: str, args: list[object]) -> None:
        if len(args) > self.max_args:
            # Bybit refuses the whole request and subscribes nothing; this refusal has no req_id.
            self._reply(conn, {"success": False, "ret_msg": f"args size >{self.max_args}",
                               "conn_id": conn.conn_id, "op": op})
            return
        ack = {"success": True, "ret_msg": "", "conn_id": conn.conn_id, "req_id": rid, "op": op}
        if op == "unsubscribe":
            if conn.ignore_unsub is not None:
                # An "unsub_ignored" fault fired on this connection: the topics keep streaming.
                self._event(conn, "unsub_ignored", conn.ignore_unsub, args=args)
                if conn.ignore_unsub == "ack":
                    self._reply(conn, ack)
                return
            # Frames of the topic already queued go out before the ack; none are queued after it.
            for topic in args:
                sub = conn.subs.pop(topic, None) if isinstance(topic, str) else None
                if sub is not None:
                    self._end_sub(sub)
            self._reply(conn, ack)
            return
        error: dict[str, Any] | None = None
        topics: list[str] = []
        for topic in args:
            err = self._topic_error(conn, op, rid, topic)
            if err is None and (topic in conn.subs or topic in topics):
                err = {"success": False, "ret_msg": f"error:already subscribed,topic:{topic}",
                       "conn_id": conn.conn_id, "req_id": rid, "op": op}
            if err is not None:
                error = error or err
            else:
                assert isinstance(topic, str)
                topics.append(topic)
        # One reply per request: the first refusal if any, else the ack. Valid topics of a partly
        # refused request are still subscribed (the client sees their data).
        if error is not None or self.data_before_ack <= 0 or not topics:
            self._reply(conn, error or ack)
            for topic in topics:
                self._start_sub(conn, topic, None)
            return
        need = self.data_before_ack if self.max_frames is None else min(self.data_before_ack, self.max_frames)
        pending = _PendingAck(_dumps(ack), need)
        for topic in topics:
            self._start_sub(conn, topic, pending)

    # ----------------------------------------------------------------------------------------- feeds

    def _feed(self, topic: str) -> _Feed:
        feed = self.feeds.get(topic)
        if feed is None:
            _, depth_s, symbol = topic.split(".")
            depth = int(depth_s)
            mid, tick = self.specs.get(symbol, _OTHER_SPEC)
            interval = self.interval_ms if self.interval_ms is not None else DEFAULT_INTERVAL_MS[depth]
            book = SyntheticBook(symbol, depth, seed=self.seed, mid=mid, tick=tick)
            feed = self.feeds[topic] = _Feed(topic, book, max(0.0, interval) / 1000.0)
            feed.phase = feed.interval_s * ((len(self.feeds) * _GOLDEN) % 1.0)
        return feed

    def _start_sub(self, conn: _Conn, topic: str, pending: _PendingAck | None) -> None:
        feed = self._feed(topic)
        sub = _Sub(conn, feed, self.max_frames)
        conn.subs[topic] = sub
        if self.load:
            self._load_start_sub(sub)
            return
        if pending is not None:
            sub.pending_ack = pending
            pending.waiting.add(sub)
        # Snapshot and registration happen with no await between: the subscriber gets every delta after
        # the snapshot's u and none before it.
        feed.subs.add(sub)
        self._offer(sub, _dumps(feed.book.snapshot(_now_ms())), KIND_SNAPSHOT)
        self._release_ack(sub, pending_check=True)
        if feed.subs and feed.task is None:
            feed.task = asyncio.create_task(self._produce(feed), name=f"feed {topic}")

    def _end_sub(self, sub: _Sub) -> None:
        sub.feed.subs.discard(sub)
        if self.load:
            sub.feed.targets = tuple(s.conn for s in sub.feed.subs)
        self._release_ack(sub, pending_check=False)

    def _release_ack(self, sub: _Sub, *, pending_check: bool) -> None:
        pending = sub.pending_ack
        if pending is None:
            return
        if pending_check and sub.queued < pending.need and sub in sub.feed.subs:
            return
        sub.pending_ack = None
        pending.waiting.discard(sub)
        if not pending.waiting and not sub.conn.halted:
            sub.conn.queue.put_nowait(_Out(pending.text, None, KIND_REPLY))

    def _offer(self, sub: _Sub, text: str, kind: str, fault: str | None = None,
               fault_arg: int | float | str | None = None) -> None:
        conn = sub.conn
        if conn.halted:
            return  # a drop/close/stall is queued: nothing behind it would ever be sent
        if sub.cap is None or sub.queued < sub.cap:
            conn.queue.put_nowait(_Out(text, sub.feed.topic, kind, fault, fault_arg))
            sub.queued += 1
            # Count for the armed faults (after_frames): queue order is wire order, so "N frames queued
            # before the fault" is "N frames sent before it".
            for armed in self.armed:
                topic = armed.fault.topic
                if topic is None:
                    conn.counts[armed.key] = conn.counts.get(armed.key, 0) + 1
                elif topic == sub.feed.topic:
                    sub.counts[armed.key] = sub.counts.get(armed.key, 0) + 1
        if sub.cap is not None and sub.queued >= sub.cap:
            sub.feed.subs.discard(sub)  # capped: stays subscribed, silent

    def _event(self, conn: _Conn, kind: str, arg: int | float | str | None, **detail: Any) -> None:
        """Queue a fault event record (sends nothing itself; the writer acts on drop/close/stall)."""
        text = _dumps({"event": kind, **({"arg": arg} if arg is not None else {}), **detail})
        conn.queue.put_nowait(_Out(text, None, KIND_EVENT, kind, arg))

    # ---------------------------------------------------------------------------------------- faults

    def _due(self, sub: _Sub) -> list[_Armed]:
        """The armed faults whose frame count on ``sub`` (or its connection) has been reached."""
        due = []
        for armed in self.armed:
            topic = armed.fault.topic
            if topic is None:
                n = sub.conn.counts.get(armed.key, 0)
            elif topic == sub.feed.topic:
                n = sub.counts.get(armed.key, 0)
            else:
                continue
            if n >= armed.fault.after_frames:
                due.append(armed)
        return due

    def _spend(self, armed: _Armed, subs: Iterable[_Sub]) -> None:
        """Count a firing; retire a once-fault, or restart the count of a repeating one on ``subs``."""
        armed.fired += 1
        with self.lock:
            self.fired[armed.fault.kind] += 1
        if armed.fault.once:
            armed.done = True
            self.armed.remove(armed)
            return
        for sub in subs:
            counts = sub.conn.counts if armed.fault.topic is None else sub.counts
            counts[armed.key] = 0

    def _next_claim(self, book: SyntheticBook) -> tuple[int, int]:
        """The (u, seq) an injected frame claims: those the next regular frame will carry, so the client
        cannot tell it apart by its counters alone."""
        return book.u + 1, book.seq + 1

    def _extra_frame(self, sub: _Sub, fault: Fault) -> tuple[str, str] | None:
        """(text, kind) of the one frame a FRAME_FAULTS fault sends on ``sub``; None: not possible yet."""
        feed, book = sub.feed, sub.feed.book
        arg = fault.effective_arg
        ts = _now_ms()
        if fault.kind == "stale":
            assert isinstance(arg, int)
            if len(sub.history) < arg:
                return None  # not enough sent yet: try again at the next push
            return sub.history[-arg]
        if fault.kind == "oversized":
            assert isinstance(arg, int)
            head = f'{{"topic":"{feed.topic}","type":"delta","ts":{ts},"pad":"'
            tail = '"}'
            return head + "x" * (arg - len(head) - len(tail)) + tail, KIND_INVALID
        if fault.kind == "malformed" and arg == "not_json":
            return f'{{"topic":"{feed.topic}", garbage', KIND_INVALID
        kind = KIND_SNAPSHOT if book.depth == 1 else KIND_DELTA
        best_bid, best_ask = book.top_levels()
        bid = book.crossing_bid() if fault.kind == "crossed" else best_bid
        # Level 1 is snapshot-only: a one-level-per-side snapshot. Deeper: a delta of one bid.
        asks = [best_ask] if book.depth == 1 else []
        u, seq = self._next_claim(book)
        msg = book.forge(kind, ts, [bid], asks, u=u, seq=seq)
        if fault.kind == "malformed":
            if arg in ("nan", "inf", "1e400", "1_000"):
                msg["data"]["b"][0][0] = arg
            elif arg == "neg_size":
                msg["data"]["b"][0][1] = "-1"
            elif arg == "empty_symbol":
                msg["data"]["s"] = ""
            elif arg == "bad_type":
                msg["type"] = "update"
                kind = KIND_INVALID
        return _dumps(msg), kind

    def _conn_fault(self, sub: _Sub, fault: Fault) -> None:
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

    async def _produce(self, feed: _Feed) -> None:
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

    def _push(self, feed: _Feed) -> None:
        """One push tick of ``feed``: fire the faults that are due, then send the regular frame."""
        subs = list(feed.subs)
        due = {sub: self._due(sub) for sub in subs} if self.armed else {}
        # Per-subscription faults first, while the book still is what the client last saw: an injected
        # frame claims the u the client expects next and is built against the book the client holds.
        for sub in subs:
            for armed in due.get(sub, ()):
                fault = armed.fault
                if armed.done or fault.kind in FEED_FAULTS or sub.conn.halted:
                    continue  # spent on another subscription this tick, or the connection is ending
                if fault.kind in FRAME_FAULTS:
                    extra = self._extra_frame(sub, fault)
                    if extra is None:
                        continue
                    self._offer(sub, extra[0], extra[1], fault.kind, fault.effective_arg)
                    self._spend(armed, [sub])  # after the offer: its own frame must not count for next time
                else:
                    self._spend(armed, [sub])
                    self._conn_fault(sub, fault)
        # At most one feed fault per tick (it decides what this tick's frame is); another waits a tick.
        feed_fault = next((a for sub in subs for a in due.get(sub, ())
                           if a.fault.kind in FEED_FAULTS and not a.done), None)
        ts = _now_ms()
        tag: str | None = None
        tag_arg: int | float | str | None = None
        if feed_fault is not None:
            tag, tag_arg = feed_fault.fault.kind, feed_fault.fault.effective_arg
        if tag == "u_jump":
            assert isinstance(tag_arg, int)
            feed.book.skip(tag_arg, ts)
            msg = feed.book.next_message(ts)
        elif tag == "u_restart":
            feed.book.restart(ts)
            msg = feed.book.snapshot(ts)
        else:
            msg = feed.book.next_message(ts)
        text = _dumps(msg)
        kind = msg["type"]
        for sub in subs:
            self._offer(sub, text, kind, tag, tag_arg)
            if tag == "u_restart":
                sub.history.clear()  # a stale re-send must not reach back across (or replay) the restart
            else:
                sub.history.append((text, kind))
            self._release_ack(sub, pending_check=True)
        if feed_fault is not None:
            self._spend(feed_fault, subs)  # after the offers, for the same reason as above

    # ------------------------------------------------------------------------------------- load mode

    def _ring(self, feed: _Feed) -> _Ring:
        """The topic's ring, built on first use; the first frame sent carries the book's own u and seq."""
        if feed.ring is None:
            t0 = time.perf_counter()
            feed.u, feed.seq = feed.book.u - 1, feed.book.seq - 1
            feed.ring = _build_ring(feed.book, self.load_ring, _now_ms())
            self.rings_built += 1
            self.ring_build_s += time.perf_counter() - t0
        return feed.ring

    def _load_start_sub(self, sub: _Sub) -> None:
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

    def _place(self, feed: _Feed, current: int) -> None:
        """Put ``feed`` in the wheel slot of its due time, but at least the slot after ``current``."""
        assert self._wheel_t0 is not None
        slot = max(current + 1, int((feed.due - self._wheel_t0) / self.load_tick_s))
        self._wheel[slot % len(self._wheel)].append(feed)

    def _load_reply(self, conn: _Conn, text: str) -> None:
        ws = conn.ws
        if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            return  # as in normal mode: a reply that cannot go out is not recorded
        ws.transport.write(_ws_text(text.encode()))
        with self.lock:
            self.records.append(SentFrame(conn.conn_id, None, KIND_REPLY, text))
            self._record_ns.append(next(self._rec_n))
            self.conn_sent.setdefault(conn.conn_id, 0)

    def load_records(self) -> list[SentFrame]:
        """Load mode: every reply and the last ``load_keep`` data frames, in send order. Any thread."""
        with self.lock:
            replies = list(zip(self._record_ns, self.records, strict=True))
            recent = list(self._recent) if self.load_keep else []
        data = [(n, SentFrame(c, t, k, payload.decode())) for n, c, t, k, payload in recent]
        return [r for _, r in heapq.merge(replies, data, key=lambda x: x[0])]

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
        ts = _now_ms()
        keep = self._recent if self.load_keep else None
        fast = keep is None and self.max_frames is None  # no per-subscription bookkeeping needed
        capped: list[_Sub] = []
        headers = _WS_HEADERS
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
                header = headers[n] if n < nheaders else _ws_header(n)
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
        """Data frames sent, optionally of one topic or on one connection, in either mode. Any thread."""
        if not self.load:
            with self.lock:
                return sum(1 for r in self.records if r.topic is not None and topic in (None, r.topic)
                           and conn_id in (None, r.conn_id))
        if topic is not None and conn_id is not None:
            raise ValueError("load mode counts per topic or per connection, not both")
        if topic is not None:
            feed = self.feeds.get(topic)
            return feed.sent if feed is not None else 0
        with self.lock:
            return self.frames_sent if conn_id is None else self.conn_sent.get(conn_id, 0)


class FakeBybit:
    """A fake Bybit v5 public websocket server running in a background thread.

    Typical test use::

        with FakeBybit(symbols=["BTCUSDT"], interval_ms=5) as srv:
            with connect(srv.url) as ws:
                ws.send('{"op":"subscribe","args":["orderbook.50.BTCUSDT"]}')
                ...
            srv.wait_for(lambda: srv.connections == 0)
    """

    def __init__(
        self,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        *,
        port: int = 0,
        interval_ms: float | None = None,
        max_frames_per_topic: int | None = None,
        data_before_ack: int | bool = 0,
        seed: int = 0,
        record_path: str | Path | None = None,
        max_args: int = 10,
        specs: Mapping[str, tuple[float, float]] | None = None,
        path: str = DEFAULT_PATH,
        faults: Sequence[Fault] = (),
        load: bool = False,
        load_ring: int = 256,
        load_tick_ms: float = 5.0,
        load_keep: int = 0,
        load_depths: Iterable[int] = (50,),
    ) -> None:
        """Configure; nothing listens until ``start()``.

        ``interval_ms`` None means Bybit's per-depth push interval (1: 10 ms, 50: 20, 200: 100, 1000: 200).
        ``max_frames_per_topic`` caps the data frames (snapshot included) of each subscription; a capped
        subscription stays subscribed and silent. ``data_before_ack`` N > 0 holds a subscribe ack back
        until every topic it subscribed has had N data frames queued (Bybit was seen sending 13 first).
        ``specs`` maps symbol -> (mid, tick) for the synthetic books. ``faults`` are armed from the
        start (see ``Fault``); more can be added with ``inject()``.

        ``load`` True: load mode (module docstring): rings of ``load_ring`` frames per topic (built here for
        the depths in ``load_depths``, ~40 us a frame at depth 50; other depths on first subscribe), one
        scheduler tick every ``load_tick_ms``, counters only plus the last ``load_keep`` data frames. In load
        mode ``book()`` is the generator, ``load_ring`` frames ahead of what was sent.
        """
        self._core = _Core(
            port=port,
            symbols=symbols,
            interval_ms=interval_ms,
            max_frames_per_topic=max_frames_per_topic,
            data_before_ack=int(data_before_ack),
            seed=seed,
            record_path=record_path,
            max_args=max_args,
            specs=specs,
            path=path,
            faults=faults,
            load=load,
            load_ring=load_ring,
            load_tick_ms=load_tick_ms,
            load_keep=load_keep,
            load_depths=load_depths,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------------------------------- control

    def start(self, timeout: float = 10.0) -> FakeBybit:
        """Start the event loop thread and return once the server is listening."""
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-bybit", daemon=True)
        self._thread.start()
        try:
            self._call(self._core.start(), timeout)
        except BaseException:
            self._shutdown_loop(timeout)
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close all connections and the listener, and join the thread. Idempotent."""
        if self._loop is None or self._thread is None:
            return
        try:
            self._call(self._core.close(), timeout)
        finally:
            self._shutdown_loop(timeout)

    def drop_connections(self, timeout: float = 5.0) -> int:
        """Abruptly abort every live connection (no close frame: clients see 1006); returns how many."""

        async def drop() -> int:
            return self._core.drop_connections()

        return self._call(drop(), timeout)

    def inject(self, fault: Fault, timeout: float = 5.0) -> None:
        """Arm ``fault`` now (thread-safe): its ``after_frames`` count starts when this returns.

        Before ``start()`` this is the same as passing it to the constructor."""
        if self._loop is None:
            self._core.arm(fault)
            return

        async def arm() -> None:
            self._core.arm(fault)

        self._call(arm(), timeout)

    def __enter__(self) -> FakeBybit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when constructed with port 0)."""
        return self._core.port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/v5/public/linear``."""
        return self._core.url

    # -------------------------------------------------------------------------------------- observing

    @property
    def connections(self) -> int:
        """Live connections right now."""
        return len(self._core.conns)

    @property
    def total_connections(self) -> int:
        """Connections accepted since start (a reconnect makes this grow)."""
        return self._core.total_connections

    @property
    def bad_requests(self) -> int:
        """Client frames that were not JSON objects or named an unknown op."""
        return self._core.bad_requests

    @property
    def load(self) -> bool:
        """True in load mode."""
        return self._core.load

    def records(self) -> list[SentFrame]:
        """Every frame sent (data and replies) and every fault event, all connections, in send order.

        Load mode: every reply, but only the last ``load_keep`` data frames (none by default)."""
        if self._core.load:
            return self._core.load_records()
        with self._core.lock:
            return list(self._core.records)

    def sent_frames(self, topic: str | None = None, conn_id: str | None = None) -> list[str]:
        """The exact text of every data frame sent (those of a topic: snapshots, deltas and the frames
        faults injected), in send order, optionally filtered. Replies and events are not included."""
        return [
            r.text
            for r in self.records()
            if r.topic is not None and (topic is None or r.topic == topic)
            and (conn_id is None or r.conn_id == conn_id)
        ]

    def events(self, conn_id: str | None = None) -> list[SentFrame]:
        """The fault events (drop, close, stall, ignored unsubscribe), in the order they happened."""
        return [r for r in self.records() if r.kind == KIND_EVENT and conn_id in (None, r.conn_id)]

    def fault_records(self, kind: str | None = None) -> list[SentFrame]:
        """Every record a fault produced (frames and events), optionally of one fault kind."""
        return [r for r in self.records() if r.fault is not None and kind in (None, r.fault)]

    def stats(self) -> dict[str, int]:
        """How many times each fault kind fired so far (every kind is present; 0 when it never fired).

        "Fired" is when the server decided it (the frame or event is queued then); the record shows when
        it reached the wire. A feed fault (u_jump, u_restart) counts once however many subscribers."""
        with self._core.lock:
            return dict(self._core.fired)

    @property
    def faults_fired(self) -> int:
        """Total fault firings so far, all kinds."""
        return sum(self.stats().values())

    def pending_faults(self, timeout: float = 5.0) -> list[Fault]:
        """Faults still armed (once-faults not yet fired, and every repeating fault)."""
        if self._loop is None:
            return [a.fault for a in self._core.armed]

        async def read() -> list[Fault]:
            return [a.fault for a in self._core.armed]

        return self._call(read(), timeout)

    def sent_replies(self, conn_id: str | None = None) -> list[str]:
        """The exact JSON text of every reply (ack, pong, refusal) sent, in send order."""
        return [r.text for r in self.records() if r.kind == KIND_REPLY and conn_id in (None, r.conn_id)]

    def sent_count(self, topic: str | None = None) -> int:
        """How many data frames were sent (optionally for one topic). Cheap in load mode (a counter)."""
        if self._core.load:
            return self._core.data_sent(topic)
        return len(self.sent_frames(topic))

    def sent_by_connection(self) -> dict[str, int]:
        """conn_id -> data frames sent on it, every connection that was sent anything, in first-send order."""
        if self._core.load:
            with self._core.lock:
                return dict(self._core.conn_sent)
        out: dict[str, int] = {}
        for r in self.records():
            out[r.conn_id] = out.get(r.conn_id, 0) + (r.topic is not None)
        return out

    def load_stats(self) -> dict[str, Any]:
        """Load mode: ``frames`` and ``bytes`` written, ``ticks``, ``late_ticks`` (woke more than a tick
        late), ``max_lag_ms``, ``loop_cpu_s`` (CPU time of the server's event-loop thread, which does all
        the sending), ``rings_built``, ``ring_frames``, ``ring_build_s``, ``buffered_bytes`` (written but
        still in the live connections' transport buffers, not yet taken by the kernel), ``connections``.
        Not load mode: {}."""
        return self._core.load_stats() if self._core.load else {}

    def conn_ids(self) -> list[str]:
        """conn_ids of the frames sent so far, each once, in first-send order."""
        if self._core.load:
            return list(self.sent_by_connection())
        return list(dict.fromkeys(r.conn_id for r in self.records()))

    def subscriptions(self, timeout: float = 5.0) -> list[tuple[str, str]]:
        """(conn_id, topic) of every live subscription, read on the server's loop."""

        async def read() -> list[tuple[str, str]]:
            return [(c.conn_id, t) for c in self._core.conns for t in c.subs]

        return self._call(read(), timeout)

    def book(self, topic: str) -> SyntheticBook | None:
        """The synthetic book behind ``topic`` (None for an unknown topic). Read it only while the feed
        is idle (no subscriber receiving), e.g. after ``max_frames_per_topic`` was reached."""
        feed = self._core.feeds.get(topic)
        return feed.book if feed is not None else None

    @staticmethod
    def wait_for(predicate: Callable[[], T], timeout: float = 5.0, poll: float = 0.005) -> T:
        """Poll ``predicate`` until it returns something truthy and return that; ``TimeoutError`` at the
        deadline. Use this instead of sleeping in tests."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(poll)

    # -------------------------------------------------------------------------------------- internal

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _shutdown_loop(self, timeout: float) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()


# ------------------------------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fake Bybit v5 public websocket server (127.0.0.1 only).")
    p.add_argument("--port", type=int, default=8765, help="TCP port; 0 picks a free one (default 8765)")
    p.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma-separated known symbols")
    p.add_argument("--interval-ms", type=float, default=None,
                   help="delta push interval for every depth (default: Bybit's, 20 ms for depth 50)")
    p.add_argument("--max-frames", type=int, default=None, help="data frames per subscription, then silence")
    p.add_argument("--record", default=None, help="append every data frame sent to this JSONL file")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic books")
    p.add_argument("--data-before-ack", type=int, default=0,
                   help="send this many data frames of each new subscription before its ack")
    p.add_argument("--path", default=DEFAULT_PATH, help="path printed in the URL (any path is accepted)")
    p.add_argument("--fault", action="append", default=[], type=Fault.parse, metavar="SPEC",
                   help='arm a fault: "kind[:topic=T,after=N,arg=X,once=false]"; repeatable')
    p.add_argument("--load", action="store_true",
                   help="load mode: pre-serialised frame rings, batched writes, counters only (benchmarks)")
    p.add_argument("--load-ring", type=int, default=256, help="load mode: frames per topic ring (default 256)")
    p.add_argument("--load-tick-ms", type=float, default=5.0, help="load mode: scheduler tick (default 5 ms)")
    p.add_argument("--load-keep", type=int, default=0, help="load mode: data frames kept in memory (default 0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the fake server until Ctrl-C; prints the URL to connect to on stdout."""
    args = _parse_args(argv)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    core = _Core(
        port=args.port,
        symbols=symbols,
        interval_ms=args.interval_ms,
        max_frames_per_topic=args.max_frames,
        data_before_ack=args.data_before_ack,
        seed=args.seed,
        record_path=args.record,
        max_args=10,
        specs=None,
        path=args.path,
        faults=args.fault,
        load=args.load,
        load_ring=args.load_ring,
        load_tick_ms=args.load_tick_ms,
        load_keep=args.load_keep,
    )

    async def run() -> None:
        await core.start()
        try:
            print(core.url, flush=True)
            print(f"symbols: {', '.join(sorted(core.symbols))}; "
                  f"try: {{\"req_id\":\"1\",\"op\":\"subscribe\",\"args\":[\"orderbook.50.{symbols[0]}\"]}}",
                  file=sys.stderr, flush=True)
            await asyncio.Event().wait()  # until cancelled by Ctrl-C
        finally:
            await core.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"cannot listen on {HOST}:{args.port}: {exc}", file=sys.stderr)
        return 1
    n = core.data_sent()
    print(f"stopped; {n} data frames sent over {core.total_connections} connections", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
