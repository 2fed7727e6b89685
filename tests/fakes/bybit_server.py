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

CLI::

    python tests/fakes/bybit_server.py --port 8765 --symbols BTCUSDT,ETHUSDT --interval-ms 20 \\
        [--max-frames N] [--record frames.jsonl] [--seed 1] [--data-before-ack N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

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


@dataclass(frozen=True, slots=True)
class SentFrame:
    """One frame the server put on the wire (its ``send`` returned)."""

    conn_id: str
    topic: str | None  # None for replies (acks, pongs, refusals)
    kind: str  # "snapshot" | "delta" | "reply"
    text: str  # the exact JSON text sent


@dataclass(slots=True)
class _Out:
    text: str
    topic: str | None
    kind: str


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


@dataclass(eq=False, slots=True)
class _Conn:
    ws: ServerConnection
    conn_id: str
    queue: asyncio.Queue[_Out] = field(default_factory=asyncio.Queue)
    subs: dict[str, _Sub] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class _Feed:
    """One topic's book and the subscriptions currently receiving it."""

    topic: str
    book: SyntheticBook
    interval_s: float
    subs: set[_Sub] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _dumps(obj: Mapping[str, Any]) -> str:
    return orjson.dumps(obj).decode()


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
    ) -> None:
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
        # Build every book now: a bad (mid, tick) for some depth fails here, not inside a connection.
        for symbol in sorted(self.symbols):
            for depth in VALID_DEPTHS:
                self._feed(f"orderbook.{depth}.{symbol}")

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

    async def close(self) -> None:
        """Close every connection (1001), stop the feeds, close the record file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
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
        writer = asyncio.create_task(self._writer(conn))
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
            try:
                await conn.ws.send(out.text)
            except ConnectionClosed:
                return  # not recorded: this frame may never have left
            self._record(conn, out)

    def _record(self, conn: _Conn, out: _Out) -> None:
        frame = SentFrame(conn.conn_id, out.topic, out.kind, out.text)
        with self.lock:
            self.records.append(frame)
        if self._record_fh is not None and out.kind != KIND_REPLY:
            # One exact frame per line, like Bybit's own dumps: the file replays as a stream.
            self._record_fh.write(out.text.encode() + b"\n")
            self._record_fh.flush()

    # -------------------------------------------------------------------------------------- requests

    def _reply(self, conn: _Conn, obj: Mapping[str, Any]) -> None:
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
        return feed

    def _start_sub(self, conn: _Conn, topic: str, pending: _PendingAck | None) -> None:
        feed = self._feed(topic)
        sub = _Sub(conn, feed, self.max_frames)
        conn.subs[topic] = sub
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
        self._release_ack(sub, pending_check=False)

    def _release_ack(self, sub: _Sub, *, pending_check: bool) -> None:
        pending = sub.pending_ack
        if pending is None:
            return
        if pending_check and sub.queued < pending.need and sub in sub.feed.subs:
            return
        sub.pending_ack = None
        pending.waiting.discard(sub)
        if not pending.waiting:
            sub.conn.queue.put_nowait(_Out(pending.text, None, KIND_REPLY))

    def _offer(self, sub: _Sub, text: str, kind: str) -> None:
        if sub.cap is None or sub.queued < sub.cap:
            sub.conn.queue.put_nowait(_Out(text, sub.feed.topic, kind))
            sub.queued += 1
        if sub.cap is not None and sub.queued >= sub.cap:
            sub.feed.subs.discard(sub)  # capped: stays subscribed, silent

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
                msg = feed.book.next_message(_now_ms())
                text = _dumps(msg)
                kind = msg["type"]
                for sub in list(feed.subs):
                    self._offer(sub, text, kind)
                    self._release_ack(sub, pending_check=True)
        finally:
            feed.task = None


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
    ) -> None:
        """Configure; nothing listens until ``start()``.

        ``interval_ms`` None means Bybit's per-depth push interval (1: 10 ms, 50: 20, 200: 100, 1000: 200).
        ``max_frames_per_topic`` caps the data frames (snapshot included) of each subscription; a capped
        subscription stays subscribed and silent. ``data_before_ack`` N > 0 holds a subscribe ack back
        until every topic it subscribed has had N data frames queued (Bybit was seen sending 13 first).
        ``specs`` maps symbol -> (mid, tick) for the synthetic books.
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

    def records(self) -> list[SentFrame]:
        """Every frame sent (data and replies), all connections, in send order."""
        with self._core.lock:
            return list(self._core.records)

    def sent_frames(self, topic: str | None = None, conn_id: str | None = None) -> list[str]:
        """The exact JSON text of every data frame sent, in send order, optionally filtered."""
        return [
            r.text
            for r in self.records()
            if r.kind != KIND_REPLY and (topic is None or r.topic == topic)
            and (conn_id is None or r.conn_id == conn_id)
        ]

    def sent_replies(self, conn_id: str | None = None) -> list[str]:
        """The exact JSON text of every reply (ack, pong, refusal) sent, in send order."""
        return [r.text for r in self.records() if r.kind == KIND_REPLY and conn_id in (None, r.conn_id)]

    def sent_count(self, topic: str | None = None) -> int:
        """How many data frames were sent (optionally for one topic)."""
        return len(self.sent_frames(topic))

    def conn_ids(self) -> list[str]:
        """conn_ids of the frames sent so far, each once, in first-send order."""
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
    with core.lock:
        n = sum(1 for r in core.records if r.kind != KIND_REPLY)
    print(f"stopped; {n} data frames sent over {core.total_connections} connections", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
