"""Tests of the fake Bybit server's load mode (tests/fakes/load.py): the cadence, valid books across ring wraps,
counters instead of records, and the same replies as scripted mode."""

from __future__ import annotations

import signal
import time
from typing import Any

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
    open_ws,
    recv,
    recv_data,
    recv_text,
    recv_until,
    send,
    start_cli,
    subscribe,
    u_of,
)
from tests.fakes.bybit_server import FakeBybit, Fault
from tests.fakes.synthetic import SyntheticBook


def load_server(**kw: Any) -> FakeBybit:
    opts: dict[str, Any] = {"symbols": ["BTCUSDT", "ETHUSDT"], "interval_ms": 2, "load": True, "load_ring": 8,
                            "load_tick_ms": 1}
    return FakeBybit(**{**opts, **kw})


SPECS = {"BTCUSDT": (30000.0, 0.1), "ETHUSDT": (2000.0, 0.01)}


def test_load_mode_u_steps_by_one_across_ring_wraps_and_every_book_is_valid() -> None:
    ring = 8
    topics = {OB50: 50, "orderbook.200.ETHUSDT": 200, "orderbook.1.BTCUSDT": 1}  # 200 and 1: rings built lazily
    with load_server(load_ring=ring) as srv, connect(srv.url, open_timeout=TIMEOUT) as ws:
        send(ws, {"req_id": "s", "op": "subscribe", "args": list(topics)})
        ack = recv(ws)
        # the ack's conn_id is this connection's (the server may not have sent it a data frame yet)
        assert ack == {"success": True, "ret_msg": "", "conn_id": ack["conn_id"], "req_id": "s", "op": "subscribe"}
        assert {c for c, _ in srv.subscriptions()} == {ack["conn_id"]}
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
