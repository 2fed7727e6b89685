"""Tests of the fake Bybit server's scripted mode (tests/fakes/scripted.py): snapshot then deltas per topic, one
book per topic shared by every subscriber, caps, held-back acks, the record, the command line."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from tests.fake_client import (
    OB50,
    TIMEOUT,
    Replay,
    assert_next_is_pong,
    is_reply,
    recv,
    recv_data,
    recv_until,
    send,
    start_cli,
)
from tests.fakes.bybit_server import FakeBybit


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
