"""Tests of the fake Bybit server's scripted faults (tests/fakes/faults.py): each one does exactly what it says, is
recorded as it went on the wire, and leaves a truth a correct client can recompute."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from tests.fake_client import (
    OB50,
    assert_next_is_pong,
    is_reply,
    open_ws,
    recv_data,
    recv_text,
    recv_until,
    send,
    subscribe,
    u_of,
)
from tests.fakes.bybit_server import FakeBybit, Fault


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
