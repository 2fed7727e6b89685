"""Tests of the fake Bybit server's replies: the shapes of acks, pongs and refusals, as Bybit sends them
(tests/fakes/protocol.py). The fixture ``server`` is in conftest.py."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from websockets.sync.client import connect

from tests.fake_client import OB50, TIMEOUT, assert_next_is_pong, is_reply, recv, recv_text, recv_until, send
from tests.fakes.bybit_server import FakeBybit


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
