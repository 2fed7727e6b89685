"""The recorder end to end against the fake Bybit server on 127.0.0.1: every frame sent is a row."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.fakes.bybit_server import FakeBybit
from tests.helpers import wait_for
from tests.recorder_process import TABLE, RecorderProcess, frame_key
from tests.reference import RefRecorder, diff_row

SYMBOLS = "BTCUSDT,ETHUSDT"


@pytest.fixture
def server():
    srv = FakeBybit(symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], interval_ms=5, seed=3)
    srv.start()
    yield srv
    srv.stop()


def sent_book_frames(srv: FakeBybit) -> list[str]:
    return [r.text for r in srv.records() if r.topic is not None]


def assert_rows_match_reference(rec: RecorderProcess, frames_by_conn: dict[str, list[str]]) -> int:
    """Every frame the server sent is a row, equal to the reference implementation's row."""
    by_key = rec.rows_by_key()
    checked = 0
    for frames in frames_by_conn.values():
        ref = RefRecorder(category="linear", data_source="live_trading")
        for text in frames:
            kind, want = ref.feed(text)
            assert kind == "book" and want is not None, text[:200]
            key = (want["symbol"], want["sequence"], want["exchange_timestamp"])
            assert key in by_key, f"frame sent but not recorded: {key}"
            got = by_key[key]
            want.pop("recv_time_ns", None)  # the reference cannot know when we received it
            assert diff_row(got, want) == [], (key, diff_row(got, want))
            assert isinstance(got["recv_time_ns"], int) and got["data_source"] == "live_trading"
            checked += 1
    return checked


def frames_by_connection(srv: FakeBybit) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in srv.records():
        if r.topic is not None:
            out.setdefault(r.conn_id, []).append(r.text)
    return out


def test_sigterm_every_frame_sent_is_a_row_and_exit_0(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, SYMBOLS)
    try:
        wait_for(lambda: server.sent_count() >= 400, 60, "400 frames sent")
        rec.wait_rows(100)
        assert rec.stop() == 0, rec.stderr_text()[-3000:]
    finally:
        rec.kill()
    frames = sent_book_frames(server)
    assert {frame_key(f) for f in frames} <= rec.row_keys()
    assert rec.row_count() == len(frames)
    assert assert_rows_match_reference(rec, frames_by_connection(server)) == len(frames)
    # subscribed in one request with a req_id; the ack was recognised as a reply, not a row
    subs = server.subscriptions()
    assert {t for _, t in subs} >= {"orderbook.50.BTCUSDT", "orderbook.50.ETHUSDT"} or subs == []
    assert rec.query("SELECT COUNT(*) FROM l2_gaps") == [(0,)]
    assert rec.query("PRAGMA integrity_check") == [("ok",)]


def test_sigint_stops_cleanly_too(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT")
    try:
        rec.wait_rows(50)
        rec.signal(signal.SIGINT)
        assert rec.stop() == 0
    finally:
        rec.kill()
    assert {frame_key(f) for f in sent_book_frames(server)} <= rec.row_keys()


def test_reconnects_after_a_dropped_connection_and_records_the_gap(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, SYMBOLS)
    try:
        rec.wait_rows(60)
        server.drop_connections()
        wait_for(lambda: server.total_connections >= 2 and server.connections == 1, 30, "a reconnect")
        before = rec.row_count()
        rec.wait_rows(before + 100)
        assert rec.stop() == 0
    finally:
        rec.kill()
    by_conn = frames_by_connection(server)
    assert len(by_conn) == 2
    # The new session's book states are all rows (the old socket was cut: what it had in flight is lost).
    # States, not frames: its snapshot may restate the last state recorded before the drop (the fake's book
    # does not move while nobody subscribes), and one row per book state is all the table holds of it.
    new_conn = server.conn_ids()[-1]
    states = {(m["data"]["s"], m["data"]["u"], m["data"]["seq"]) for m in map(json.loads, by_conn[new_conn])}
    assert states <= set(rec.query(f"SELECT symbol, sequence, cross_sequence FROM {TABLE}"))
    gaps = rec.query("SELECT topic, reason, recovered_at IS NOT NULL FROM l2_gaps ORDER BY topic")
    assert gaps == [("orderbook.50.BTCUSDT", "disconnect", 1), ("orderbook.50.ETHUSDT", "disconnect", 1)]
    disconnects = rec.log_events("disconnected")
    assert disconnects and disconnects[0]["role"] == "shard-0"


def test_health_dump_on_sigusr1_while_recording(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, SYMBOLS)
    try:
        rec.wait_rows(100)
        # reports reach the root about once a second: wait for a dump that has both topics and commits
        dump = wait_for(lambda: (d := rec.dump()) and len(d["topics"]) == 2
                        and d["actors"].get("writer:writer", {}).get("rows_committed", 0) > 0 and d, 30,
                        "a dump with 2 topics and committed rows")
        rows_before = rec.row_count()
        rec.wait_rows(rows_before + 50)  # recording goes on after the dump
        assert rec.stop() == 0
    finally:
        rec.kill()
    assert set(dump["processes"]) == {"root", "writer", "shard-0"}
    for proc in dump["processes"].values():
        assert proc["pid"] > 0 and proc["rss_bytes"] > 0 and proc["threads"] >= 1 and "open_files" in proc
    for topic in ("orderbook.50.BTCUSDT", "orderbook.50.ETHUSDT"):
        t = dump["topics"][topic]
        assert t["synced"] is True and t["rows"] > 0 and t["last_u"] > 0 and t["age_s"] < 10
    writer = dump["actors"]["writer:writer"]
    assert writer["rows_committed"] > 0
    assert 0 < writer["recv_to_commit_ms"]["p50"] <= writer["recv_to_commit_ms"]["p99"] < 5_000
    assert writer["wal"]["checkpoints"] > 0 and writer["wal"]["last_error"] is None
    assert dump["actors"]["shard:0:connection"]["connected"] is True
    assert dump["supervisor"]["shard-0"]["breaker"] == "closed"
    assert any("health dump written" in str(r["event"]) for r in rec.logs())


def test_bybit_refusal_is_logged_with_the_topic_and_the_rest_goes_on(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT,NOSUCHSYM")
    try:
        rec.wait_rows(50)
        wait_for(lambda: rec.log_events("Bybit refused a request"), 30, "the refusal in the log")
        assert rec.stop() == 0
    finally:
        rec.kill()
    (refusal,) = rec.log_events("Bybit refused a request")
    assert refusal["level"] == "ERROR" and refusal["topic"] == "orderbook.50.NOSUCHSYM"
    # the final dump lists the refused topic as what it is: subscribed, never a frame, not in sync
    topics = json.loads(rec.health_file.read_text())["topics"]
    assert (topics["orderbook.50.NOSUCHSYM"]["frames"], topics["orderbook.50.NOSUCHSYM"]["synced"]) == (0, False)
    assert topics["orderbook.50.BTCUSDT"]["synced"] is True
    assert "Invalid symbol" in str(refusal["ret_msg"])
    assert rec.query(f"SELECT DISTINCT symbol FROM {TABLE}") == [("BTCUSDT",)]


def test_data_before_the_ack_is_recorded_and_json_pings_are_answered(tmp_path: Path):
    # Bybit was seen sending 13 data frames before the subscribe ack: data must not wait for the ack.
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5, data_before_ack=13, seed=4) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT", env={"L2REC_PING_INTERVAL_S": "0.2"})
        try:
            rec.wait_rows(60)
            dump = wait_for(lambda: (d := rec.dump()) and d["actors"].get("shard:0:connection", {}).get("pongs", 0)
                            >= 2 and d, 30, "pongs in the dump")
            assert rec.stop() == 0
        finally:
            rec.kill()
        replies = srv.sent_replies()
        frames = srv.records()
    first_ack = next(i for i, r in enumerate(frames) if r.topic is None and '"op":"subscribe"' in r.text)
    assert sum(1 for r in frames[:first_ack] if r.topic is not None) >= 13
    assert {frame_key(r.text) for r in frames if r.topic is not None} <= rec.row_keys()
    conn = dump["actors"]["shard:0:connection"]
    assert conn["pings"] >= conn["pongs"] >= 2
    assert any('"ret_msg":"pong"' in r for r in replies)
    parser = dump["actors"]["shard:0:parser"]
    assert parser["reply:pong"] >= 2 and parser["reply:ack"] == 1 and parser["unaccounted"] == 0


def test_sigterm_during_a_busy_stream_loses_nothing(tmp_path: Path):
    symbols = [f"S{i}USDT" for i in range(10)]
    with FakeBybit(symbols=symbols, interval_ms=2, seed=6) as srv:
        rec = RecorderProcess(tmp_path, srv.url, ",".join(symbols))
        try:
            wait_for(lambda: srv.sent_count() >= 5000, 60, "5000 frames sent")
            assert rec.stop() == 0, rec.stderr_text()[-3000:]
        finally:
            rec.kill()
        sent = [frame_key(f) for f in sent_book_frames(srv)]
    assert len(sent) >= 5000
    assert set(sent) <= rec.row_keys()
    assert rec.row_count() == len(sent)


def test_reconnects_with_capped_jittered_backoff_until_the_exchange_is_reachable(tmp_path: Path):
    import socket

    with socket.socket() as s:  # a port nobody listens on (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/v5/public/linear"
    env = {"L2REC_RECONNECT_DELAY": "0.1", "L2REC_RECONNECT_DELAY_MAX_S": "0.4"}
    rec = RecorderProcess(tmp_path, url, "BTCUSDT", env=env)
    try:
        wait_for(lambda: len(rec.log_events("reconnect scheduled")) >= 5, 30, "five refused connects")
        with FakeBybit(symbols=["BTCUSDT"], interval_ms=5, port=port) as srv:
            rec.wait_rows(30)
            assert rec.stop() == 0
            sent = {frame_key(f) for f in sent_book_frames(srv)}
    finally:
        rec.kill()
    delays = [r["delay_s"] for r in rec.log_events("reconnect scheduled")][:5]
    for attempt, delay in enumerate(delays, start=1):
        base = min(0.4, 0.1 * 2 ** (attempt - 1))
        # the log rounds the delay to the millisecond: a jitter at its bound may read just outside it
        assert base * 0.8 - 0.0005 <= delay <= base * 1.2 + 0.0005, (attempt, delay)
    assert sent <= rec.row_keys()


def test_tls_certificates_are_verified(tmp_path: Path):
    """A wss endpoint with a certificate no CA vouches for is refused, never recorded from."""
    import asyncio
    import ssl
    import threading

    import trustme
    import websockets

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    accepted = threading.Event()
    ready = threading.Event()
    port_box: list[int] = []
    stop = threading.Event()

    async def handler(ws):
        accepted.set()  # only reached if the client accepted our certificate
        await ws.send('{"topic":"orderbook.50.BTCUSDT"}')

    async def main():
        async with websockets.serve(handler, "127.0.0.1", 0, ssl=server_ctx) as server:
            port_box.append(server.sockets[0].getsockname()[1])
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    rec = RecorderProcess(tmp_path, f"wss://127.0.0.1:{port_box[0]}/v5/public/linear", "BTCUSDT",
                          env={"L2REC_RECONNECT_DELAY": "0.1", "L2REC_RECONNECT_DELAY_MAX_S": "0.2"})
    try:
        wait_for(lambda: len(rec.log_events("reconnect scheduled")) >= 2, 30, "refused TLS handshakes")
        assert rec.stop() == 0
    finally:
        rec.kill()
        stop.set()
        thread.join(timeout=10)
    reasons = [str(r["reason"]) for r in rec.log_events("reconnect scheduled")]
    assert all("CERTIFICATE_VERIFY_FAILED" in r for r in reasons), reasons
    assert not accepted.is_set()
    assert rec.row_count() == 0
