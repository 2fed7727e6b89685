"""What both modes of the fake Bybit server share: the listener, the connections, the requests and their
replies, the subscriptions, one shared book per topic, and the record of what was sent.

``Core`` runs on one asyncio event loop. It answers pings, subscribes and unsubscribes the way Bybit does
(protocol.py) and keeps one ``Feed`` per topic -- one ``SyntheticBook`` shared by every subscriber, like the
real feed: two connections see the same ``u`` sequence, and a resubscribe gets a fresh snapshot carrying the
book's current ``u`` (the counter goes on). How the data frames are produced and written, and what a reply
write looks like, is the mode's: ``ScriptedCore`` (scripted.py) or ``LoadCore`` (load.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from . import protocol
from .faults import Fault, FaultSchedule
from .protocol import DEFAULT_INTERVAL_MS, HOST, Reply
from .synthetic import VALID_DEPTHS, SyntheticBook

DEFAULT_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")

# (mid, tick) per symbol; anything else gets _OTHER_SPEC. Different ticks exercise price formatting.
DEFAULT_SPECS: dict[str, tuple[float, float]] = {
    "BTCUSDT": (30000.0, 0.1),
    "ETHUSDT": (2000.0, 0.01),
    "SOLUSDT": (150.0, 0.01),
    "XRPUSDT": (2.0, 0.0001),
}
_OTHER_SPEC = (100.0, 0.01)


@dataclass(frozen=True, slots=True)
class SentFrame:
    """One frame the server put on the wire (its ``send`` returned), or one fault event."""

    conn_id: str
    topic: str | None  # None for replies (acks, pongs, refusals) and events
    kind: str  # "snapshot" | "delta" | "invalid" (data frames) | "reply" | "event"
    text: str  # the exact text sent; for an event, a JSON description of it
    fault: str | None = None  # the Fault.kind that produced this frame or event; None for normal frames
    fault_arg: int | float | str | None = None  # that fault's effective arg


# One connection, subscription and feed; each mode adds its own fields in a subclass.
S = TypeVar("S", bound="Sub[Any, Any]")
C = TypeVar("C", bound="Conn[Any]")
F = TypeVar("F", bound="Feed[Any]")


@dataclass(eq=False, slots=True)
class Conn(Generic[S]):
    ws: ServerConnection
    conn_id: str
    subs: dict[str, S] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Sub(Generic[C, F]):
    conn: C
    feed: F
    cap: int | None  # data frames allowed for this subscription (None: unlimited)
    queued: int = 0


@dataclass(eq=False, slots=True)
class Feed(Generic[S]):
    """One topic's book and the subscriptions currently receiving it."""

    topic: str
    book: SyntheticBook
    interval_s: float
    subs: set[S] = field(default_factory=set)


class Core(Generic[C, S, F]):
    """The asyncio side: owns the server, the feeds and the record. Runs on one event loop."""

    load: ClassVar[bool] = False

    def __init__(
        self,
        *,
        port: int,
        symbols: Iterable[str],
        interval_ms: float | None,
        max_frames_per_topic: int | None,
        seed: int,
        max_args: int,
        specs: Mapping[str, tuple[float, float]] | None,
        path: str,
    ) -> None:
        self.requested_port = port
        self.symbols = frozenset(symbols)
        self.interval_ms = interval_ms
        self.max_frames = max_frames_per_topic
        self.seed = seed
        self.max_args = max_args
        self.specs = {**DEFAULT_SPECS, **(specs or {})}
        self.path = path
        self.port = 0
        self.total_connections = 0
        self.bad_requests = 0
        self.conns: list[C] = []  # live connections, in accept order
        self.feeds: dict[str, F] = {}
        # Read from the test thread while the loop appends: guard with a lock rather than rely on the GIL.
        self.lock = threading.Lock()
        self.records: list[SentFrame] = []
        self.faults = FaultSchedule(self.lock)  # stays empty in load mode
        self._server: Server | None = None
        self._conn_rng = random.Random(f"conn|{seed}")
        # Build every book now: a bad (mid, tick) for some depth fails here, not inside a connection.
        for symbol in sorted(self.symbols):
            for depth in VALID_DEPTHS:
                self._feed(f"orderbook.{depth}.{symbol}")

    # ---------------------------------------------------------------------------------- the mode's part

    def _new_conn(self, ws: ServerConnection, conn_id: str) -> C:
        raise NotImplementedError

    def _new_sub(self, conn: C, feed: F) -> S:
        raise NotImplementedError

    def _new_feed(self, topic: str, book: SyntheticBook, interval_s: float) -> F:
        raise NotImplementedError

    def _open(self, conn: C) -> asyncio.Task[None] | None:
        """A new connection: start its writer task, if the mode has one."""
        return None

    def _reply(self, conn: C, obj: Mapping[str, Any]) -> None:
        """Send (queue, record) one reply on ``conn``."""
        raise NotImplementedError

    def _start_sub(self, conn: C, topic: str) -> None:
        """Subscribe ``conn`` to ``topic`` (valid, not yet subscribed) and start streaming it."""
        raise NotImplementedError

    def _end_sub(self, sub: S) -> None:
        """``sub`` ended (unsubscribed, or its connection closed): stop streaming it."""
        sub.feed.subs.discard(sub)

    def sent_records(self) -> list[SentFrame]:
        """Every record kept, in send order. Any thread."""
        raise NotImplementedError

    def data_sent(self, topic: str | None = None, conn_id: str | None = None) -> int:
        """Data frames sent, optionally of one topic or on one connection. Any thread."""
        raise NotImplementedError

    def sent_by_connection(self) -> dict[str, int]:
        """conn_id -> data frames sent on it, every connection that was sent anything, in first-send order."""
        raise NotImplementedError

    def load_stats(self) -> dict[str, Any]:
        """Load mode counters; {} otherwise."""
        return {}

    # ------------------------------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        """The websocket URL clients should use."""
        return f"ws://{HOST}:{self.port}{self.path}"

    async def start(self) -> None:
        """Bind and start listening."""
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

    async def close(self) -> None:
        """Close every connection (1001) and the listener."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def drop_connections(self) -> int:
        """Abort every live TCP connection without a close frame (clients see 1006)."""
        conns = list(self.conns)
        for conn in conns:
            conn.ws.transport.abort()
        return len(conns)

    def arm(self, fault: Fault) -> None:
        """Arm ``fault``: counting starts now (frames queued before this do not count). Loop thread only."""
        self.faults.arm(fault)

    # --------------------------------------------------------------------------------------- connection

    def _new_conn_id(self) -> str:
        # Looks like Bybit's "d967ikkn0ine3iqmjc30-koqj"; seeded so a run is reproducible.
        alphabet = "0123456789abcdefghijklmnopqrstuv"
        head = "".join(self._conn_rng.choice(alphabet) for _ in range(20))
        tail = "".join(self._conn_rng.choice(alphabet) for _ in range(4))
        return f"{head}-{tail}"

    async def _handler(self, ws: ServerConnection) -> None:
        conn = self._new_conn(ws, self._new_conn_id())
        self.conns.append(conn)
        self.total_connections += 1
        writer = self._open(conn)
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

    # ----------------------------------------------------------------------------------------- requests

    def _on_request(self, conn: C, raw: str | bytes) -> None:
        req = protocol.parse_request(raw)
        if req is None:
            self.bad_requests += 1
            return
        op = req.get("op")
        rid = protocol.reply_req_id(req.get("req_id"))
        if op == "ping":
            self._reply(conn, protocol.pong(conn.conn_id, rid))
        elif op in ("subscribe", "unsubscribe"):
            args = req.get("args")
            self._on_subscription(conn, op, rid, args if isinstance(args, list) else [])
        else:
            self.bad_requests += 1
            self._reply(conn, protocol.invalid_op(conn.conn_id, rid, op))

    def _on_subscription(self, conn: C, op: str, rid: str, args: list[object]) -> None:
        if len(args) > self.max_args:
            self._reply(conn, protocol.args_size_refusal(conn.conn_id, op, self.max_args))
            return
        ack = protocol.ack(conn.conn_id, rid, op)
        if op == "unsubscribe":
            self._unsubscribe(conn, args, ack)
            return
        error: Reply | None = None
        topics: list[str] = []
        for topic in args:
            err = protocol.topic_refusal(conn.conn_id, rid, op, topic, self.symbols)
            if err is None and (topic in conn.subs or topic in topics):
                assert isinstance(topic, str)
                err = protocol.already_subscribed(conn.conn_id, rid, op, topic)
            if err is not None:
                error = error or err
            else:
                assert isinstance(topic, str)
                topics.append(topic)
        self._subscribe(conn, topics, error, ack)

    def _unsubscribe(self, conn: C, args: list[object], ack: Reply) -> None:
        # Frames of the topic already queued go out before the ack; none are queued after it.
        for topic in args:
            sub = conn.subs.pop(topic, None) if isinstance(topic, str) else None
            if sub is not None:
                self._end_sub(sub)
        self._reply(conn, ack)

    def _subscribe(self, conn: C, topics: list[str], error: Reply | None, ack: Reply) -> None:
        # One reply per request: the first refusal if any, else the ack. Valid topics of a partly
        # refused request are still subscribed (the client sees their data).
        self._reply(conn, error or ack)
        for topic in topics:
            self._start_sub(conn, topic)

    # -------------------------------------------------------------------------------------------- feeds

    def _feed(self, topic: str) -> F:
        feed = self.feeds.get(topic)
        if feed is None:
            _, depth_s, symbol = topic.split(".")
            depth = int(depth_s)
            mid, tick = self.specs.get(symbol, _OTHER_SPEC)
            interval = self.interval_ms if self.interval_ms is not None else DEFAULT_INTERVAL_MS[depth]
            book = SyntheticBook(symbol, depth, seed=self.seed, mid=mid, tick=tick)
            feed = self.feeds[topic] = self._new_feed(topic, book, max(0.0, interval) / 1000.0)
        return feed

    def _add_sub(self, conn: C, topic: str) -> S:
        """The new subscription of ``conn`` to ``topic``, registered on the connection (not yet on the feed)."""
        feed = self._feed(topic)
        sub = self._new_sub(conn, feed)
        conn.subs[topic] = sub
        return sub

