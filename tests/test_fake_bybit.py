"""Tests of the fake Bybit v5 server and its synthetic book: the fake must itself be right before other
tests trust it. Every wait has a deadline (recv timeouts, FakeBybit.wait_for); no sleeps."""

from __future__ import annotations

import contextlib
import itertools
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

try:
    from tests.fakes.bybit_server import FakeBybit, Fault
    from tests.fakes.synthetic import SyntheticBook
except ModuleNotFoundError:  # plain `pytest`: tests/ is on sys.path (no __init__.py), the repo root is not
    from fakes.bybit_server import FakeBybit, Fault  # type: ignore[no-redef]
    from fakes.synthetic import SyntheticBook  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 3.0
OB50 = "orderbook.50.BTCUSDT"


# ------------------------------------------------------------------------------------------- helpers


def send(ws: ClientConnection, obj: dict[str, Any]) -> None:
    ws.send(orjson.dumps(obj).decode())


def recv_text(ws: ClientConnection, timeout: float = TIMEOUT) -> str:
    text = ws.recv(timeout=timeout)
    assert isinstance(text, str)  # Bybit sends text frames
    return text


def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    return orjson.loads(recv_text(ws, timeout))


def recv_until(
    ws: ClientConnection, pred: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
) -> tuple[list[str], dict[str, Any]]:
    """Frames received before the first one matching ``pred`` (raw text), and that one (parsed)."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        text = recv_text(ws, max(0.01, deadline - time.monotonic()))
        msg = orjson.loads(text)
        if pred(msg):
            return seen, msg
        seen.append(text)


def recv_data(ws: ClientConnection, n: int, timeout: float = TIMEOUT) -> list[str]:
    """The next ``n`` data frames (raw text); fails on any reply in between."""
    deadline = time.monotonic() + timeout
    out: list[str] = []
    while len(out) < n:
        text = recv_text(ws, max(0.01, deadline - time.monotonic()))
        assert '"topic"' in text, text
        out.append(text)
    return out


def is_reply(op: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: "topic" not in m and m.get("op") == op


def assert_next_is_pong(ws: ClientConnection) -> None:
    """Ping and require the pong to be the very next frame: proves nothing else was queued before it."""
    send(ws, {"req_id": "probe", "op": "ping"})
    msg = recv(ws)
    assert msg.get("ret_msg") == "pong", msg


class Replay:
    """A minimal client-side book that checks every invariant the real feed shows."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.u: int | None = None
        self.seq: int | None = None
        self.inserts = self.deletes = self.updates = self.snapshots = 0

    def apply(self, msg: dict[str, Any]) -> None:
        d = msg["data"]
        assert isinstance(msg["ts"], int) and isinstance(msg["cts"], int) and msg["cts"] <= msg["ts"]
        if msg["type"] == "snapshot":
            if self.u is not None:
                assert d["u"] >= self.u  # a resubscribe continues the counter
            self.bids = {float(p): float(s) for p, s in d["b"]}
            self.asks = {float(p): float(s) for p, s in d["a"]}
            assert [float(p) for p, _ in d["b"]] == sorted(self.bids, reverse=True)
            assert [float(p) for p, _ in d["a"]] == sorted(self.asks)
            self.snapshots += 1
        else:
            assert msg["type"] == "delta"
            assert self.u is not None, "delta before any snapshot"
            assert d["u"] == self.u + 1
            for side, book in (("b", self.bids), ("a", self.asks)):
                for p, s in d[side]:
                    price = float(p)
                    if s == "0":
                        assert price in book, f"orphan delete {p}"
                        del book[price]
                        self.deletes += 1
                    elif price in book:
                        self.updates += 1
                        book[price] = float(s)
                    else:
                        self.inserts += 1
                        book[price] = float(s)
        if self.seq is not None:
            assert d["seq"] >= self.seq if msg["type"] == "snapshot" else d["seq"] > self.seq
        self.u, self.seq = d["u"], d["seq"]
        assert len(self.bids) == self.depth and len(self.asks) == self.depth
        assert max(self.bids) < min(self.asks), "crossed or locked"
        assert all(s > 0 for s in self.bids.values()) and all(s > 0 for s in self.asks.values())

    def top(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


@pytest.fixture
def server() -> Iterator[FakeBybit]:
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=2) as srv:
        yield srv


# --------------------------------------------------------------------------------------- replies


def test_url_and_port(server: FakeBybit) -> None:
    assert server.port > 0
    assert server.url == f"ws://127.0.0.1:{server.port}/v5/public/linear"


def test_subscribe_ack_shape(server: FakeBybit) -> None:
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"req_id": "s1", "op": "subscribe", "args": [OB50]})
        raw = recv_text(ws)
        ack = orjson.loads(raw)
        assert list(ack) == ["success", "ret_msg", "conn_id", "req_id", "op"]
        assert ack == {"success": True, "ret_msg": "", "conn_id": ack["conn_id"], "req_id": "s1",
                       "op": "subscribe"}
        assert re.fullmatch(r"[0-9a-v]{20}-[0-9a-v]{4}", ack["conn_id"])
        # Linear key order: topic, type, ts, data, cts.
        assert recv_text(ws).startswith('{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":')
        # No req_id sent: linear still echoes one, empty. A numeric one comes back as text.
        send(ws, {"op": "subscribe", "args": ["orderbook.50.ETHUSDT"]})
        _, ack2 = recv_until(ws, is_reply("subscribe"))
        assert ack2 == {"success": True, "ret_msg": "", "conn_id": ack["conn_id"], "req_id": "",
                        "op": "subscribe"}
        send(ws, {"req_id": 7, "op": "subscribe", "args": ["orderbook.1.ETHUSDT"]})
        _, ack3 = recv_until(ws, is_reply("subscribe"))
        assert ack3["req_id"] == "7"


def test_pong_shape(server: FakeBybit) -> None:
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"req_id": "100001", "op": "ping"})
        pong = recv(ws)
        assert pong == {"success": True, "ret_msg": "pong", "conn_id": pong["conn_id"], "req_id": "100001",
                        "op": "ping"}
        send(ws, {"op": "ping"})
        assert recv(ws) == {"success": True, "ret_msg": "pong", "conn_id": pong["conn_id"], "req_id": "",
                            "op": "ping"}
    assert server.sent_count() == 0
    assert len(server.sent_replies()) == 2


def test_more_than_10_args_refuses_whole_request(server: FakeBybit) -> None:
    topics = [f"orderbook.{d}.{s}" for d in (1, 50, 200, 1000) for s in ("BTCUSDT", "ETHUSDT")]
    topics += ["orderbook.50.NOSUCH", "orderbook.500.BTCUSDT", "publicTrade.BTCUSDT"]
    assert len(topics) == 11
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"req_id": "big", "op": "subscribe", "args": topics})
        msg = recv(ws)
        assert msg == {"success": False, "ret_msg": "args size >10", "conn_id": msg["conn_id"],
                       "op": "subscribe"}
        assert_next_is_pong(ws)
        assert server.subscriptions() == []
    assert server.sent_count() == 0


@pytest.mark.parametrize(
    ("topic", "with_req_id", "ret_msg"),
    [
        ("orderbook.50.NOSUCHSYM", False, "Invalid symbol :[orderbook.50.NOSUCHSYM]"),
        ("orderbook.500.BTCUSDT", True, "error:handler not found,topic:orderbook.500.BTCUSDT"),
        ("orderbook.25.BTCUSDT", True, "error:handler not found,topic:orderbook.25.BTCUSDT"),
        ("publicTrade.BTCUSDT", True, "error:handler not found,topic:publicTrade.BTCUSDT"),
        ("orderbook.50", True, "error:handler not found,topic:orderbook.50"),
    ],
)
def test_refused_topics(server: FakeBybit, topic: str, with_req_id: bool, ret_msg: str) -> None:
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"req_id": "r9", "op": "subscribe", "args": [topic]})
        msg = recv(ws)
        expected: dict[str, Any] = {"success": False, "ret_msg": ret_msg, "conn_id": msg["conn_id"]}
        if with_req_id:
            expected["req_id"] = "r9"
        expected["op"] = "subscribe"
        assert msg == expected
        assert list(msg) == list(expected)
        assert_next_is_pong(ws)
    assert server.sent_count() == 0


def test_already_subscribed(server: FakeBybit) -> None:
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"req_id": "a", "op": "subscribe", "args": [OB50]})
        recv_until(ws, is_reply("subscribe"))
        send(ws, {"req_id": "b", "op": "subscribe", "args": [OB50]})
        _, msg = recv_until(ws, is_reply("subscribe"))
        assert msg == {"success": False, "ret_msg": f"error:already subscribed,topic:{OB50}",
                       "conn_id": msg["conn_id"], "req_id": "b", "op": "subscribe"}
        assert server.subscriptions() == [(msg["conn_id"], OB50)]


def test_garbage_and_unknown_op(server: FakeBybit) -> None:
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        ws.send("not json")
        send(ws, {"req_id": "x", "op": "fly"})
        msg = recv(ws)
        assert msg["success"] is False and msg["ret_msg"] == "error:invalid op" and msg["req_id"] == "x"
        assert_next_is_pong(ws)
    assert server.bad_requests == 2


# ------------------------------------------------------------------------------------------ stream


def test_snapshot_then_deltas_replay_valid() -> None:
    n = 150
    topics = {OB50: 50, "orderbook.200.ETHUSDT": 200, "orderbook.1.BTCUSDT": 1}
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=1, max_frames_per_topic=n) as srv:
        with connect(srv.url, open_timeout=TIMEOUT) as ws:
            send(ws, {"req_id": "s", "op": "subscribe", "args": list(topics)})
            assert recv(ws)["success"] is True
            frames = [orjson.loads(t) for t in recv_data(ws, n * len(topics), timeout=8.0)]
            assert_next_is_pong(ws)  # capped: nothing more comes
        books = {t: Replay(d) for t, d in topics.items()}
        for msg in frames:
            books[msg["topic"]].apply(msg)
        for topic, book in books.items():
            assert book.snapshots == (n if topic.startswith("orderbook.1.") else 1)
            truth = srv.book(topic)
            assert truth is not None
            assert book.top() == (truth.bids(), truth.asks())  # the feed is idle once capped
        ob50 = books[OB50]
        assert ob50.inserts > 0 and ob50.deletes > 0 and ob50.updates > ob50.inserts
    first = next(m for m in frames if m["topic"] == OB50)
    assert first["type"] == "snapshot"
    for msg in frames:
        d = msg["data"]
        tick_dec = 2 if d["s"] == "ETHUSDT" else 1
        for p, s in d["b"] + d["a"]:
            assert re.fullmatch(rf"\d+\.\d{{{tick_dec}}}", p), p
            if s == "0":
                assert msg["type"] == "delta"
            else:
                assert re.fullmatch(r"\d+\.\d{3}", s), s
        if msg["type"] == "delta":
            assert d["b"] or d["a"], "empty delta"


def test_sent_frames_equal_received() -> None:
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=1, max_frames_per_topic=40) as srv:
        with connect(srv.url, open_timeout=TIMEOUT) as ws:
            send(ws, {"req_id": "s", "op": "subscribe", "args": [OB50, "orderbook.50.ETHUSDT"]})
            ack = recv(ws)
            received = recv_data(ws, 80)
        srv.wait_for(lambda: srv.connections == 0)
        assert srv.sent_frames() == received
        assert srv.sent_count() == 80
        assert srv.sent_frames(topic=OB50) == [t for t in received if orjson.loads(t)["topic"] == OB50]
        assert srv.sent_frames(conn_id=ack["conn_id"]) == received
        assert srv.conn_ids() == [ack["conn_id"]]
        assert srv.sent_replies() == [orjson.dumps(ack).decode()]


def test_unsubscribe_stops_stream_and_resubscribe_continues_u(server: FakeBybit) -> None:
    eth = "orderbook.50.ETHUSDT"
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"req_id": "s", "op": "subscribe", "args": [OB50, eth]})
        recv_until(ws, is_reply("subscribe"))
        seen = [orjson.loads(t) for t in recv_data(ws, 20)]
        send(ws, {"req_id": "u1", "op": "unsubscribe", "args": [OB50]})
        before, ack = recv_until(ws, is_reply("unsubscribe"))
        assert ack == {"success": True, "ret_msg": "", "conn_id": ack["conn_id"], "req_id": "u1",
                       "op": "unsubscribe"}
        last_u = max(m["data"]["u"] for m in seen + [orjson.loads(t) for t in before] if m["topic"] == OB50)
        # ETH keeps streaming; BTC never shows up again.
        after = [orjson.loads(t) for t in recv_data(ws, 30)]
        assert all(m["topic"] == eth for m in after)
        assert server.subscriptions() == [(ack["conn_id"], eth)]
        send(ws, {"req_id": "s2", "op": "subscribe", "args": [OB50]})
        recv_until(ws, is_reply("subscribe"))
        _, snap = recv_until(ws, lambda m: m.get("topic") == OB50)
        assert snap["type"] == "snapshot" and snap["data"]["u"] >= last_u
        _, nxt = recv_until(ws, lambda m: m.get("topic") == OB50)
        assert nxt["type"] == "delta" and nxt["data"]["u"] == snap["data"]["u"] + 1


def test_two_connections_share_one_u_sequence(server: FakeBybit) -> None:
    with connect(server.url, open_timeout=TIMEOUT) as a, connect(server.url, open_timeout=TIMEOUT) as b:
        for ws in (a, b):
            send(ws, {"op": "subscribe", "args": [OB50]})
            recv_until(ws, is_reply("subscribe"))
        ua = {orjson.loads(t)["data"]["u"] for t in recv_data(a, 20)}
        ub = {orjson.loads(t)["data"]["u"] for t in recv_data(b, 20)}
        assert ua & ub  # same book, same counter
        assert server.connections == 2


def test_max_frames_then_silence() -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=1, max_frames_per_topic=5) as srv:
        with connect(srv.url, open_timeout=TIMEOUT) as ws:
            send(ws, {"op": "subscribe", "args": [OB50]})
            assert recv(ws)["success"] is True
            frames = recv_data(ws, 5)
            assert_next_is_pong(ws)
            conn_id = srv.conn_ids()[0]
            assert srv.subscriptions() == [(conn_id, OB50)]  # capped: still subscribed, just silent
        assert srv.sent_frames() == frames


def test_data_before_ack() -> None:
    with (
        FakeBybit(symbols=["BTCUSDT"], interval_ms=1, data_before_ack=3) as srv,
        connect(srv.url, open_timeout=TIMEOUT) as ws,
    ):
        send(ws, {"req_id": "early", "op": "subscribe", "args": [OB50]})
        data = [orjson.loads(t) for t in recv_data(ws, 3)]
        assert [m["type"] for m in data] == ["snapshot", "delta", "delta"]
        _, ack = recv_until(ws, is_reply("subscribe"))
        assert ack["success"] is True and ack["req_id"] == "early"


def test_drop_connections_then_reconnect(server: FakeBybit) -> None:
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"op": "subscribe", "args": [OB50]})
        ack = recv(ws)
        last_u = orjson.loads(recv_data(ws, 3)[-1])["data"]["u"]
        assert server.drop_connections() == 1
        with pytest.raises(ConnectionClosedError) as info:
            recv_until(ws, lambda m: False)
        assert info.value.rcvd is None  # no close frame: an abnormal closure (1006)
    server.wait_for(lambda: server.connections == 0)
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"op": "subscribe", "args": [OB50]})
        ack2 = recv(ws)
        assert ack2["conn_id"] != ack["conn_id"]
        snap = orjson.loads(recv_data(ws, 1)[0])
        assert snap["type"] == "snapshot" and snap["data"]["u"] >= last_u
    assert server.total_connections == 2


def test_client_close_stops_sending(server: FakeBybit) -> None:
    with connect(server.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"op": "subscribe", "args": [OB50]})
        recv(ws)
        received = recv_data(ws, 10)
    # Clean close handshake done (the context manager waited for it); the server stops the feed.
    server.wait_for(lambda: server.connections == 0)
    server.wait_for(lambda: server._core.feeds[OB50].task is None)
    sent = server.sent_frames()
    assert sent[: len(received)] == received  # frames in flight at close may be recorded, never missing
    assert server.sent_count() == len(sent)
    assert server.subscriptions() == []


def test_record_file(tmp_path: Path) -> None:
    path = tmp_path / "frames.jsonl"
    srv = FakeBybit(symbols=["BTCUSDT"], interval_ms=1, max_frames_per_topic=12, record_path=path).start()
    try:
        with connect(srv.url, open_timeout=TIMEOUT) as ws:
            send(ws, {"op": "subscribe", "args": [OB50, "orderbook.1.BTCUSDT"]})
            recv(ws)
            received = recv_data(ws, 24)
        srv.wait_for(lambda: srv.sent_count() == 24)
    finally:
        srv.stop()
    assert path.read_text().splitlines() == received == srv.sent_frames()


def start_cli(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Run the fake from its command line, as a person would; returns the process and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "tests/fakes/bybit_server.py", "--port", "0", "--symbols", "ETHUSDT", "--interval-ms", "5",
         *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=10.0):
        proc.kill()
        proc.wait()
        raise AssertionError("no URL printed")
    return proc, proc.stdout.readline().strip()


def test_cli_prints_url_and_serves() -> None:
    proc, url = start_cli("--max-frames", "3", "--seed", "1")
    try:
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/v5/public/linear", url), url
        with connect(url, open_timeout=TIMEOUT) as ws:
            send(ws, {"req_id": "c", "op": "subscribe", "args": ["orderbook.50.ETHUSDT"]})
            assert recv(ws)["req_id"] == "c"
            assert [orjson.loads(t)["type"] for t in recv_data(ws, 3)] == ["snapshot", "delta", "delta"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------ faults


def u_of(text: str) -> int:
    return orjson.loads(text)["data"]["u"]


class LooseBook:
    """A client book with no checks at all: shows what a client that trusts every frame would hold."""

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}

    def apply(self, text: str) -> None:
        msg = orjson.loads(text)
        if msg["type"] == "snapshot":
            self.bids, self.asks = {}, {}
        for side, book in (("b", self.bids), ("a", self.asks)):
            for p, s in msg["data"][side]:
                if s == "0":
                    book.pop(float(p), None)
                else:
                    book[float(p)] = float(s)

    def top(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


def truth(srv: FakeBybit, topic: str = OB50) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    book = srv.book(topic)
    assert book is not None
    return book.bids(), book.asks()


def open_ws(srv: FakeBybit, **kw: Any) -> ClientConnection:
    """A client connection without receive flow control: these tests stop reading fast streams for a
    while, and a paused reader would not see the server's close reply (a 10 s close timeout)."""
    return connect(srv.url, open_timeout=TIMEOUT, max_queue=None, **kw)


def subscribe(ws: ClientConnection, *topics: str) -> dict[str, Any]:
    send(ws, {"op": "subscribe", "args": list(topics)})
    _, ack = recv_until(ws, is_reply("subscribe"))
    assert ack["success"] is True, ack
    return ack


@contextlib.contextmanager
def capped_stream(faults: list[Fault], n: int, topic: str = OB50) -> Iterator[tuple[FakeBybit, list[str]]]:
    """A server with ``faults`` and a cap of ``n`` frames; all ``n`` frames of ``topic`` received on one
    connection, then closed. Yields the (still running) server and the frames: the feed is idle by
    then, so ``srv.book(topic)`` is the truth a correct client would hold."""
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=1, max_frames_per_topic=n, faults=faults) as srv:
        with open_ws(srv) as ws:
            subscribe(ws, topic)
            frames = recv_data(ws, n)
            assert_next_is_pong(ws)  # capped: nothing more comes
        srv.wait_for(lambda: srv.connections == 0)
        yield srv, frames


@pytest.mark.parametrize(
    "kw",
    [
        {"kind": "no_such_kind"}, {"kind": "u_jump", "arg": 0}, {"kind": "stale", "arg": 33},
        {"kind": "malformed", "arg": "zzz"}, {"kind": "oversized", "arg": 100}, {"kind": "close", "arg": 999},
        {"kind": "close", "arg": 1006}, {"kind": "drop", "arg": 1}, {"kind": "u_jump", "after_frames": -1},
        {"kind": "drop", "topic": "orderbook.25.BTCUSDT"}, {"kind": "unsub_ignored", "arg": "loud"},
    ],
)
def test_fault_rejects_bad_config(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Fault(**kw)


def test_fault_defaults_and_parse() -> None:
    assert Fault("u_jump").effective_arg == 5 and Fault("stale").effective_arg == 2
    assert Fault("oversized").effective_arg == 32 * 2**20 and Fault("close").effective_arg == 1000
    assert Fault("malformed").effective_arg == "nan" and Fault("drop").effective_arg is None
    assert Fault.parse("drop") == Fault("drop")
    assert Fault.parse(f"malformed:topic={OB50},after=7,arg=neg_size,once=false") == Fault(
        "malformed", OB50, 7, "neg_size", once=False)
    assert Fault.parse("u_jump:arg=3").arg == 3


def test_u_jump_is_a_real_gap_and_resubscribe_repairs_it() -> None:
    with capped_stream([Fault("u_jump", OB50, after_frames=10, arg=5)], 30) as (srv, frames):
        steps = [u_of(b) - u_of(a) for a, b in itertools.pairwise(frames)]
        assert steps == [1] * 9 + [6] + [1] * 19  # frame 10 skips 5 ids; 10 frames went before it
        recs = [r for r in srv.records() if r.topic == OB50]
        assert [r.fault for r in recs] == [None] * 10 + ["u_jump"] + [None] * 19
        assert recs[10].fault_arg == 5 and recs[10].kind == "delta" and recs[10].text == frames[10]
        assert srv.stats()["u_jump"] == 1 and srv.faults_fired == 1 and srv.pending_faults() == []
        # The skipped updates changed the book: a client that ignores the gap holds a wrong book...
        loose = LooseBook()
        for text in frames:
            loose.apply(text)
        assert loose.top() != truth(srv)
        # ...and a fresh snapshot (new connection, then unsubscribe + subscribe) is the truth, current u.
        want = truth(srv)
        with open_ws(srv) as ws:
            subscribe(ws, OB50)
            again = recv_data(ws, 30)  # capped again: the feed is idle after these
            want_again = truth(srv)
            send(ws, {"op": "unsubscribe", "args": [OB50]})
            recv_until(ws, is_reply("unsubscribe"))
            subscribe(ws, OB50)
            snap = recv_data(ws, 1)[0]
        first, replay, resub = LooseBook(), LooseBook(), LooseBook()
        first.apply(again[0])
        assert u_of(again[0]) == u_of(frames[-1]) and first.top() == want
        for text in again:
            replay.apply(text)
        resub.apply(snap)
        assert orjson.loads(snap)["type"] == "snapshot" and u_of(snap) == u_of(again[-1])
        assert resub.top() == replay.top() == want_again


def test_u_restart_snapshot_u1_then_deltas_from_2_on_every_subscriber() -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=1, max_frames_per_topic=60) as srv:
        with open_ws(srv) as a, open_ws(srv) as b:
            subscribe(a, OB50)
            subscribe(b, OB50)
            srv.inject(Fault("u_restart", OB50, after_frames=4))  # both are subscribed by now
            got_a, got_b = recv_data(a, 60), recv_data(b, 60)
        for got in (got_a, got_b):
            msgs = [orjson.loads(t) for t in got]
            i = next(i for i, m in enumerate(msgs) if m["data"]["u"] == 1)
            assert msgs[i]["type"] == "snapshot" and msgs[i]["data"]["seq"] > msgs[i - 1]["data"]["seq"]
            assert [m["data"]["u"] for m in msgs[i:]] == list(range(1, len(msgs) - i + 1))
            assert all(m["type"] == "delta" for m in msgs[i + 1 :])
            # A client that overwrites its book on the snapshot ends with the truth.
            loose = LooseBook()
            for text in got[i:]:
                loose.apply(text)
            assert loose.top() == truth(srv)
        restarts = srv.fault_records("u_restart")
        assert len(restarts) == 2 and len({r.conn_id for r in restarts}) == 2  # one frame per subscriber
        assert restarts[0].text == restarts[1].text and srv.stats()["u_restart"] == 1


def test_stale_resends_an_earlier_frame() -> None:
    with capped_stream([Fault("stale", OB50, after_frames=8)], 20) as (srv, frames):
        assert frames[8] == frames[6]  # two pushes back: the snapshot is not a push
        assert u_of(frames[8]) == u_of(frames[7]) - 1 and u_of(frames[9]) == u_of(frames[7]) + 1
        assert [r.fault for r in srv.records() if r.topic][8] == "stale"
        loose = LooseBook()
        for i, text in enumerate(frames):
            if i != 8:
                loose.apply(text)
        assert loose.top() == truth(srv)  # the book never moved for it


def test_crossed_frame_is_not_in_the_truth() -> None:
    with capped_stream([Fault("crossed", OB50, after_frames=6)], 20) as (srv, frames):
        crossed = orjson.loads(frames[6])
        assert crossed["type"] == "delta" and u_of(frames[6]) == u_of(frames[5]) + 1 == u_of(frames[7])
        assert crossed["data"]["seq"] > orjson.loads(frames[5])["data"]["seq"]
        loose = LooseBook()
        for text in frames[:7]:
            loose.apply(text)
        assert max(loose.bids) > min(loose.asks)  # applying it crosses the book
        clean = LooseBook()
        for i, text in enumerate(frames):
            if i != 6:
                clean.apply(text)
        assert clean.top() == truth(srv)
        rec = srv.fault_records()
        assert [(r.fault, r.text, r.kind) for r in rec] == [("crossed", frames[6], "delta")]


@pytest.mark.parametrize("variant", ["nan", "inf", "1e400", "1_000", "neg_size", "empty_symbol", "bad_type",
                                     "not_json"])
def test_malformed_variants(variant: str) -> None:
    with capped_stream([Fault("malformed", OB50, after_frames=4, arg=variant)], 12) as (srv, frames):
        bad = frames[4]
        if variant == "not_json":
            assert bad == '{"topic":"orderbook.50.BTCUSDT", garbage'
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(bad)
        else:
            msg = orjson.loads(bad)
            assert msg["topic"] == OB50 and msg["data"]["u"] == u_of(frames[3]) + 1 == u_of(frames[5])
            level = msg["data"]["b"][0]
            expected = {"nan": ("nan", level[1]), "inf": ("inf", level[1]), "1e400": ("1e400", level[1]),
                        "1_000": ("1_000", level[1]), "neg_size": (level[0], "-1")}
            if variant in expected:
                assert tuple(level) == expected[variant]
            assert (msg["data"]["s"] == "") == (variant == "empty_symbol")
            assert msg["type"] == ("update" if variant == "bad_type" else "delta")
        rec = next(r for r in srv.records() if r.fault)
        assert (rec.fault, rec.fault_arg, rec.text, rec.topic) == ("malformed", variant, bad, OB50)
        assert rec.kind == ("invalid" if variant in ("not_json", "bad_type") else "delta")
        loose = LooseBook()
        for i, text in enumerate(frames):
            if i != 4:
                loose.apply(text)
        assert loose.top() == truth(srv)  # the client missed nothing real but that frame


def test_malformed_on_level_1_is_a_snapshot_and_repeats() -> None:
    ob1 = "orderbook.1.BTCUSDT"
    with capped_stream([Fault("malformed", ob1, after_frames=3, arg="inf", once=False)], 16, ob1) as (srv, frames):
        bad = [i for i, t in enumerate(frames) if '"inf"' in t]
        assert bad == [3, 7, 11, 15]  # every 4th frame: 3 frames, then the fault, over and over
        msg = orjson.loads(frames[3])
        assert msg["type"] == "snapshot" and msg["data"]["b"][0][0] == "inf" and len(msg["data"]["a"]) == 1
        assert srv.stats()["malformed"] == 4 and len(srv.pending_faults()) == 1


def test_oversized_frame_is_exact_and_the_server_can_send_it() -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=2, faults=[Fault("oversized", OB50, after_frames=2)]) as srv:
        with open_ws(srv, max_size=None) as ws:
            subscribe(ws, OB50)
            frames = recv_data(ws, 4, timeout=10.0)
        big = frames[2]
        assert len(big.encode()) == 32 * 2**20
        msg = orjson.loads(big)
        assert msg["topic"] == OB50 and set(msg) == {"topic", "type", "ts", "pad"}
        assert u_of(frames[3]) == u_of(frames[1]) + 1  # the stream goes on after it
        (rec,) = srv.fault_records("oversized")
        assert rec.text == big and rec.kind == "invalid" and rec.fault_arg == 32 * 2**20


def test_oversized_frame_refused_by_the_client_is_still_recorded() -> None:
    size = 2 * 2**20
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=2, faults=[Fault("oversized", OB50, 3, size)]) as srv:
        with open_ws(srv, max_size=2**20) as ws:
            subscribe(ws, OB50)
            recv_data(ws, 3)
            with pytest.raises(ConnectionClosedError) as info:
                recv_until(ws, lambda m: False)
            assert info.value.sent is not None and info.value.sent.code == 1009  # message too big
        (rec,) = srv.wait_for(lambda: srv.fault_records("oversized"))
        assert len(rec.text) == size and rec.text.startswith('{"topic":"orderbook.50.BTCUSDT","type":"delta"')
        srv.wait_for(lambda: srv.connections == 0)


def test_drop_after_n_frames_of_any_topic_then_reconnect_is_clean() -> None:
    eth = "orderbook.50.ETHUSDT"
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=1, faults=[Fault("drop", after_frames=9)]) as srv:
        with open_ws(srv) as ws:
            ack = subscribe(ws, OB50, eth)
            with pytest.raises(ConnectionClosedError) as info:
                recv_until(ws, lambda m: False)
            assert info.value.rcvd is None  # no close frame: 1006
        recs = [r for r in srv.records() if r.conn_id == ack["conn_id"] and r.kind != "reply"]
        assert [r.kind for r in recs[9:]] == ["event"] and recs[9].fault == "drop" and recs[9].topic is None
        assert orjson.loads(recs[9].text) == {"event": "drop"}
        assert srv.events() == [recs[9]] and srv.sent_count() == 9  # events are not data frames
        assert srv.sent_frames(conn_id=ack["conn_id"]) == [r.text for r in recs[:9]]
        srv.wait_for(lambda: srv.connections == 0)
        with open_ws(srv) as ws:  # once: the next connection is left alone
            subscribe(ws, OB50)
            recv_data(ws, 20)
        assert srv.stats()["drop"] == 1


def test_repeating_drop_hits_every_connection() -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=1, faults=[Fault("drop", OB50, 3, once=False)]) as srv:
        for _ in range(3):
            with open_ws(srv) as ws:
                subscribe(ws, OB50)
                assert len(recv_data(ws, 3)) == 3
                with pytest.raises(ConnectionClosedError):
                    recv_until(ws, lambda m: False)
        assert srv.stats()["drop"] == 3 and len(srv.events()) == 3 and srv.total_connections == 3


@pytest.mark.parametrize(("arg", "code"), [(None, 1000), (4000, 4000)])
def test_close_is_a_clean_handshake_with_reason_maintenance(arg: int | None, code: int) -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=1, faults=[Fault("close", OB50, 5, arg)]) as srv:
        with open_ws(srv) as ws:
            subscribe(ws, OB50)
            assert len(recv_data(ws, 5)) == 5
            with pytest.raises(ConnectionClosed) as info:
                recv_until(ws, lambda m: False)
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (code, "maintenance")
        (event,) = srv.events()
        assert event.fault == "close" and event.fault_arg == code
        assert orjson.loads(event.text) == {"event": "close", "arg": code, "reason": "maintenance"}


def test_stall_silences_one_connection_until_the_client_closes() -> None:
    eth = "orderbook.50.ETHUSDT"
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=1, faults=[Fault("stall", OB50, 3)]) as srv:
        with open_ws(srv) as a, open_ws(srv) as b:
            ack_a = subscribe(a, OB50)
            subscribe(b, eth)
            assert len(recv_data(a, 3)) == 3
            srv.wait_for(lambda: srv.events())
            send(a, {"req_id": "p", "op": "ping"})
            with pytest.raises(TimeoutError):
                recv_text(a, timeout=0.3)  # no data, no JSON pong
            assert not a.ping().wait(0.3)  # no RFC 6455 pong either
            assert srv.connections == 2  # still open
            recv_data(b, 30)  # the other connection is unaffected
        # The client closed a: the close handshake is still answered, so it ends at once.
        srv.wait_for(lambda: srv.connections == 0)
        recs = [r for r in srv.records() if r.conn_id == ack_a["conn_id"] and r.kind != "reply"]
        assert [r.fault for r in recs] == [None, None, None, "stall"]
        assert srv.stats()["stall"] == 1


@pytest.mark.parametrize("mode", ["silent", "ack"])
def test_unsub_ignored(mode: str) -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=1, faults=[Fault("unsub_ignored", OB50, 2, mode)]) as srv:
        with open_ws(srv) as ws:
            ack = subscribe(ws, OB50)
            recv_data(ws, 3)
            srv.wait_for(lambda: srv.stats()["unsub_ignored"] == 1)
            send(ws, {"req_id": "u", "op": "unsubscribe", "args": [OB50]})
            send(ws, {"req_id": "p", "op": "ping"})
            before, _ = recv_until(ws, lambda m: m.get("ret_msg") == "pong")
            replies = [orjson.loads(t) for t in before if '"topic"' not in t]
            assert replies == ([] if mode == "silent" else [{"success": True, "ret_msg": "", "conn_id":
                                                               ack["conn_id"], "req_id": "u", "op": "unsubscribe"}])
            recv_data(ws, 5)  # still streaming
            assert srv.subscriptions() == [(ack["conn_id"], OB50)]
        (event,) = srv.events()
        assert orjson.loads(event.text) == {"event": "unsub_ignored", "arg": mode, "args": [OB50]}


def test_injected_fault_counts_from_arming_and_only_its_topic() -> None:
    eth = "orderbook.50.ETHUSDT"
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=1) as srv:
        with open_ws(srv) as ws:
            subscribe(ws, OB50, eth)
            recv_data(ws, 20)
            assert srv.pending_faults() == []
            n_before = srv.sent_count(eth)
            srv.inject(Fault("u_jump", eth, after_frames=5, arg=2))
            srv.wait_for(lambda: srv.stats()["u_jump"] == 1)
        recs = [r for r in srv.records() if r.topic == eth]
        i = next(i for i, r in enumerate(recs) if r.fault == "u_jump")
        # At least 5 frames of ETH after arming (more may have been queued, not yet sent, when it armed).
        assert i >= n_before + 5
        assert u_of(recs[i].text) == u_of(recs[i - 1].text) + 3
        assert all(r.fault is None for r in srv.records() if r.topic == OB50)


# ---------------------------------------------------------------------------------------- load mode


def load_server(**kw: Any) -> FakeBybit:
    opts: dict[str, Any] = {"symbols": ["BTCUSDT", "ETHUSDT"], "interval_ms": 2, "load": True, "load_ring": 8,
                            "load_tick_ms": 1}
    return FakeBybit(**{**opts, **kw})


def test_load_mode_u_steps_by_one_across_ring_wraps_and_every_book_is_valid() -> None:
    ring = 8
    topics = {OB50: 50, "orderbook.200.ETHUSDT": 200, "orderbook.1.BTCUSDT": 1}  # 200 and 1: rings built lazily
    with load_server(load_ring=ring) as srv, connect(srv.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"req_id": "s", "op": "subscribe", "args": list(topics)})
        assert recv(ws) == {"success": True, "ret_msg": "", "conn_id": srv.conn_ids()[0], "req_id": "s",
                            "op": "subscribe"}
        frames = [orjson.loads(t) for t in recv_data(ws, 3 * 5 * ring, timeout=8.0)]
    books = {t: Replay(d) for t, d in topics.items()}
    per_topic: dict[str, list[dict[str, Any]]] = {t: [] for t in topics}
    for msg in frames:
        book = books[msg["topic"]]
        if book.u is not None:
            assert msg["data"]["u"] == book.u + 1  # snapshots included: never a jump, never a repeat
        book.apply(msg)  # valid book after every frame, seq rising, cts <= ts
        per_topic[msg["topic"]].append(msg)
    for topic, msgs in per_topic.items():
        depth = topics[topic]
        assert len(msgs) >= 2 * ring
        if depth != 1:  # one snapshot per ring: the first frame and every ring-th after it
            assert [i for i, m in enumerate(msgs) if m["type"] == "snapshot"] == list(range(0, len(msgs), ring))
        # The ring's content is the synthetic book's own sequence, and repeats exactly from its snapshot.
        symbol = topic.split(".")[2]
        gen = SyntheticBook(symbol, depth, seed=0, **dict(zip(("mid", "tick"), SPECS[symbol], strict=True)))
        want = [gen.snapshot(0)] + [gen.next_message(20 * (i + 1)) for i in range(ring - 1)]
        for i, msg in enumerate(msgs):
            ref = want[i % ring]
            assert (msg["data"]["b"], msg["data"]["a"], msg["data"]["s"]) == (ref["data"]["b"], ref["data"]["a"],
                                                                              symbol)
            assert list(msg) == list(ref) and list(msg["data"]) == list(ref["data"])  # same key order
        assert msgs[0]["data"]["u"] == SyntheticBook(symbol, depth, seed=0, **dict(
            zip(("mid", "tick"), SPECS[symbol], strict=True))).u  # the first frame carries the book's own u


SPECS = {"BTCUSDT": (30000.0, 0.1), "ETHUSDT": (2000.0, 0.01)}


def test_load_mode_counts_instead_of_recording() -> None:
    with load_server(load_keep=5) as srv:
        with connect(srv.url, open_timeout=TIMEOUT) as ws:
            send(ws, {"req_id": "s", "op": "subscribe", "args": [OB50, "orderbook.50.ETHUSDT"]})
            ack = recv_text(ws)
            received = recv_data(ws, 60)
            send(ws, {"req_id": "u", "op": "unsubscribe", "args": [OB50, "orderbook.50.ETHUSDT"]})
            more, _ = recv_until(ws, is_reply("unsubscribe"))
            received += more
            assert_next_is_pong(ws)  # nothing streams after the unsubscribe ack
        srv.wait_for(lambda: srv.connections == 0)
        conn_id = orjson.loads(ack)["conn_id"]
        assert srv.sent_count() == len(received)
        assert srv.sent_count(OB50) == sum(1 for t in received if orjson.loads(t)["topic"] == OB50)
        assert srv.sent_by_connection() == {conn_id: len(received)} and srv.conn_ids() == [conn_id]
        assert srv.sent_frames() == received[-5:]  # only the last load_keep data frames are kept
        replies = srv.sent_replies()
        assert replies[0] == ack and [orjson.loads(r)["req_id"] for r in replies] == ["s", "u", "probe"]
        kinds = [r.kind for r in srv.records()]
        assert kinds[0] == "reply" and kinds.count("reply") == 3 and kinds.count("delta") + kinds.count(
            "snapshot") == 5
        stats = srv.load_stats()
        headers = sum(2 if len(t) < 126 else 4 for t in received)
        assert stats["frames"] == len(received) and stats["bytes"] == headers + sum(len(t) for t in received)
        assert stats["rings_built"] == 2 and stats["ring_frames"] == 8 and stats["loop_cpu_s"] > 0
    with FakeBybit(symbols=["BTCUSDT"]) as normal:
        assert normal.load_stats() == {} and not normal.load


def test_load_mode_new_subscriber_brings_a_snapshot_to_all_and_u_goes_on() -> None:
    with load_server(load_ring=64) as srv, open_ws(srv) as a, open_ws(srv) as b:
        subscribe(a, OB50)
        before = [orjson.loads(t) for t in recv_data(a, 10)]
        subscribe(b, OB50)
        _, snap_b = recv_until(b, lambda m: m.get("topic") == OB50)
        assert snap_b["type"] == "snapshot"
        seen, snap_a = recv_until(a, lambda m: m.get("type") == "snapshot")
        assert snap_a == snap_b  # the same frame: one shared book and counter
        us = [m["data"]["u"] for m in before] + [u_of(t) for t in seen] + [snap_a["data"]["u"]]
        assert us == list(range(us[0], us[0] + len(us)))  # no jump for the old subscriber either
        for ws in (a, b):
            assert [u_of(t) for t in recv_data(ws, 5)] == list(range(snap_a["data"]["u"] + 1,
                                                                       snap_a["data"]["u"] + 6))
        send(a, {"op": "unsubscribe", "args": [OB50]})
        recv_until(a, is_reply("unsubscribe"))
        assert_next_is_pong(a)
        last = u_of(recv_data(b, 3)[-1])
        subscribe(a, OB50)  # a resubscribe continues the counter
        _, snap = recv_until(a, lambda m: m.get("topic") == OB50)
        assert snap["type"] == "snapshot" and snap["data"]["u"] > last


def test_load_mode_replies_and_refusals_are_those_of_normal_mode() -> None:
    def talk(srv: FakeBybit) -> list[dict[str, Any]]:
        with connect(srv.url, open_timeout=TIMEOUT) as ws:
            send(ws, {"req_id": "p", "op": "ping"})
            send(ws, {"req_id": "x", "op": "subscribe", "args": [f"orderbook.50.S{i}" for i in range(11)]})
            send(ws, {"req_id": "y", "op": "subscribe", "args": ["orderbook.50.NOPE"]})
            send(ws, {"req_id": "z", "op": "subscribe", "args": ["orderbook.25.BTCUSDT"]})
            send(ws, {"req_id": "w", "op": "nope"})
            out = [recv(ws) for _ in range(5)]
        return [{k: v for k, v in m.items() if k != "conn_id"} for m in out]

    with FakeBybit(symbols=["BTCUSDT"]) as normal, load_server(symbols=["BTCUSDT"]) as load:
        assert talk(load) == talk(normal)
        load.wait_for(lambda: load.connections == 0)
        assert load.bad_requests == normal.bad_requests == 1 and load.sent_count() == 0


def test_load_mode_max_frames_then_silence_and_drop() -> None:
    with load_server(max_frames_per_topic=12) as srv:
        with open_ws(srv) as ws:
            subscribe(ws, OB50)
            frames = recv_data(ws, 12)
            assert_next_is_pong(ws)
            assert srv.subscriptions() == [(srv.conn_ids()[0], OB50)]
        assert [u_of(t) for t in frames] == list(range(u_of(frames[0]), u_of(frames[0]) + 12))
        with open_ws(srv) as ws:
            subscribe(ws, "orderbook.50.ETHUSDT")
            recv_data(ws, 2)
            assert srv.drop_connections() == 1
            with pytest.raises(ConnectionClosedError):
                recv_until(ws, lambda m: False)
        srv.wait_for(lambda: srv.connections == 0)
        n = srv.sent_count()
        time.sleep(0.05)  # the scheduler keeps ticking; nothing is counted for a dead connection
        assert srv.sent_count() == n


@pytest.mark.parametrize(
    "kw",
    [
        {"faults": [Fault("drop")]}, {"data_before_ack": 3}, {"record_path": "x.jsonl"}, {"load_ring": 1},
        {"load_tick_ms": 0}, {"load_keep": -1},
    ],
)
def test_load_mode_refuses_what_it_cannot_do(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FakeBybit(symbols=["BTCUSDT"], load=True, **kw)


def test_load_mode_refuses_inject() -> None:
    with load_server() as srv, pytest.raises(ValueError):
        srv.inject(Fault("drop"))


def test_load_mode_keeps_the_cadence() -> None:
    """20 topics at 10 ms for ~1 s: about 2,000 frames, never more (one frame a topic per due push)."""
    symbols = [f"S{i:02d}USDT" for i in range(20)]
    with FakeBybit(symbols=symbols, interval_ms=10, load=True, load_ring=16) as srv, open_ws(srv) as ws:
        for i in range(0, 20, 10):
            send(ws, {"op": "subscribe", "args": [f"orderbook.50.{s}" for s in symbols[i:i + 10]]})
        recv_until(ws, is_reply("subscribe"))
        recv_until(ws, is_reply("subscribe"))
        t0, n0 = time.monotonic(), srv.sent_count()
        while time.monotonic() - t0 < 1.0:
            recv_text(ws)
        n, dt = srv.sent_count() - n0, time.monotonic() - t0
        assert 0.5 * 2000 * dt <= n <= 2000 * dt + 40, (n, dt)
        assert srv.load_stats()["buffered_bytes"] < 2**20


def test_load_mode_cli() -> None:
    proc, url = start_cli("--load", "--load-ring", "4")
    try:
        with connect(url, open_timeout=TIMEOUT) as ws:
            send(ws, {"req_id": "c", "op": "subscribe", "args": ["orderbook.50.ETHUSDT"]})
            assert recv(ws)["req_id"] == "c"
            kinds = [orjson.loads(t)["type"] for t in recv_data(ws, 9)]
            assert kinds == ["snapshot", "delta", "delta", "delta"] * 2 + ["snapshot"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10.0) == 0
        assert proc.stderr is not None and "data frames sent over 1 connections" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------- synthetic


def replay_synthetic(book: SyntheticBook, n: int) -> Replay:
    replay = Replay(book.depth)
    replay.apply(book.snapshot(1_000_000))
    for i in range(n):
        replay.apply(book.next_message(1_000_000 + 20 * (i + 1)))
    assert replay.top() == (book.bids(), book.asks())
    return replay


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    depth=st.sampled_from([1, 50, 200]),
    spec=st.sampled_from([(30000.0, 0.1), (2000.0, 0.01), (2.0, 0.0001), (60000.0, 0.5), (90000.0, 10.0)]),
)
def test_synthetic_book_stays_valid(seed: int, depth: int, spec: tuple[float, float]) -> None:
    mid, tick = spec
    replay_synthetic(SyntheticBook("XUSDT", depth, seed=seed, mid=mid, tick=tick), 150)


def test_synthetic_is_deterministic_and_calibrated() -> None:
    a = SyntheticBook("BTCUSDT", 50, seed=42)
    b = SyntheticBook("BTCUSDT", 50, seed=42)
    b.snapshot(5)  # snapshots do not consume the book's randomness
    msgs = [a.delta(1000 + i) for i in range(500)]
    assert msgs == [b.delta(1000 + i) for i in range(500)]
    assert msgs != [SyntheticBook("BTCUSDT", 50, seed=43).delta(1000 + i) for i in range(500)]
    replay = replay_synthetic(SyntheticBook("BTCUSDT", 50, seed=7), 500)
    assert replay.updates > 2 * replay.inserts > 0 and replay.deletes == replay.inserts
    sizes = sorted(len(m["data"]["b"]) + len(m["data"]["a"]) for m in msgs)
    assert sizes[0] >= 1 and 1 <= sizes[len(sizes) // 2] <= 5 and sizes[int(len(sizes) * 0.95)] <= 10
    price = SyntheticBook("BTCUSDT", 50, seed=0, mid=30000.0, tick=0.1).snapshot(0)["data"]["b"][0][0]
    assert price == "29999.9"


def test_synthetic_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        SyntheticBook("X", 0)
    with pytest.raises(ValueError):
        SyntheticBook("X", 1000, mid=1.0, tick=0.01)
