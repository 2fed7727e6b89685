"""Every frame accounted for, end to end: the fake Bybit server injects gaps, resets, stale, crossed,
malformed and oversized frames, drops, closes and stalls; the database must equal an independent
recomputation (tests/reference.py) from the frames the server actually sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.bybit_server import FakeBybit, Fault
from tests.helpers import wait_for
from tests.recorder_process import TABLE, RecorderProcess
from tests.reference import diff_row, expected_rows

BTC = "orderbook.50.BTCUSDT"
ETH = "orderbook.50.ETHUSDT"
FAST_LIVENESS = {"L2REC_PING_INTERVAL_S": "0.3", "L2REC_PONG_TIMEOUT_S": "0.3"}


def assert_db_equals_reference(rec: RecorderProcess, srv: FakeBybit, cut_after_fault: str | None = None) -> None:
    want = expected_rows(srv.records(), cut_after_fault=cut_after_fault)
    got = rec.rows_by_key()
    assert set(want) <= set(got), f"missing rows: {sorted(set(want) - set(got))[:5]}"
    if cut_after_fault is None:
        assert set(got) == set(want), f"rows the reference does not make: {sorted(set(got) - set(want))[:5]}"
    for key, w in want.items():
        assert diff_row(got[key], w) == [], (key, diff_row(got[key], w))


def gaps(rec: RecorderProcess) -> list[tuple]:
    return rec.query("SELECT topic, reason, recovered_at IS NOT NULL FROM l2_gaps ORDER BY id")


def run(tmp_path: Path, faults: list[Fault], *, symbols: str = "BTCUSDT,ETHUSDT", until=None,
        env: dict[str, str] | None = None, more_rows: int = 150) -> tuple[RecorderProcess, FakeBybit, dict]:
    srv = FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=5, seed=21, faults=faults)
    srv.start()
    rec = RecorderProcess(tmp_path, srv.url, symbols, env=env)
    try:
        wait_for(lambda: srv.faults_fired >= len(faults), 60, "the faults to fire")
        if until is not None:
            wait_for(until(rec, srv), 60, "the recorder's reaction")
        rows = rec.row_count()
        rec.wait_rows(rows + more_rows)
        wait_for(lambda: (d := rec.dump()) and all(t["synced"] for t in d["topics"].values())
                 and len(d["topics"]) >= 1, 30, "topics in sync")
        assert rec.stop() == 0, rec.stderr_text()[-2000:]
    finally:
        rec.kill()
        srv.stop()
    dump = json.loads(rec.health_file.read_text())  # the final dump, written at exit
    assert dump["processes"]["shard-0"].get("alive") is False
    for topic in dump["topics"].values():
        assert topic["unaccounted"] == 0
    assert dump["actors"]["shard:0:parser"]["unaccounted"] == 0
    return rec, srv, dump


def test_u_jump_is_a_gap_resynced_by_resubscribing_that_topic_only(tmp_path: Path):
    rec, srv, _ = run(tmp_path, [Fault("u_jump", topic=BTC, after_frames=40, arg=5)])
    assert_db_equals_reference(rec, srv)
    assert gaps(rec) == [(BTC, "u_jump", 1)]
    (last_u, got_u), = rec.query("SELECT last_u, got_u FROM l2_gaps")
    assert got_u == last_u + 6
    assert srv.total_connections == 1  # no reconnect: only the topic was resubscribed
    reqs = [json.loads(r.text) for r in srv.records() if r.topic is None and '"op":"unsubscribe"' in r.text]
    assert reqs and all(r["success"] for r in reqs)


def test_service_restart_u_1_is_a_reset_not_a_gap(tmp_path: Path):
    rec, srv, dump = run(tmp_path, [Fault("u_restart", topic=BTC, after_frames=40)])
    assert_db_equals_reference(rec, srv)
    assert gaps(rec) == []
    assert dump["topics"][BTC]["resets"] == 1
    assert rec.log_events("book reset by the exchange (u=1)")


def test_stale_update_is_dropped_and_counted(tmp_path: Path):
    rec, srv, dump = run(tmp_path, [Fault("stale", topic=ETH, after_frames=30, arg=2)])
    assert_db_equals_reference(rec, srv)
    assert gaps(rec) == []
    assert dump["topics"][ETH]["stale"] == 1


def test_crossed_delta_is_a_gap_and_no_row_comes_from_the_crossed_book(tmp_path: Path):
    rec, srv, _ = run(tmp_path, [Fault("crossed", topic=BTC, after_frames=40)])
    assert_db_equals_reference(rec, srv)
    assert gaps(rec) == [(BTC, "crossed_book", 1)]
    crossed = rec.query(f"SELECT COUNT(*) FROM {TABLE} WHERE bid_price_1 >= ask_price_1")
    assert crossed == [(0,)]


@pytest.mark.parametrize("variant", ["nan", "inf", "1e400", "1_000", "neg_size", "empty_symbol", "bad_type"])
def test_malformed_frame_of_a_topic_is_rejected_by_reason_and_resynced(tmp_path: Path, variant: str):
    rec, srv, dump = run(tmp_path, [Fault("malformed", topic=ETH, after_frames=30, arg=variant)], more_rows=60)
    assert_db_equals_reference(rec, srv)
    assert gaps(rec) == [(ETH, "rejected_frame", 1)]
    parser = dump["actors"]["shard:0:parser"]
    reason = {"empty_symbol": "reject:bad_symbol", "bad_type": "reject:bad_type"}.get(variant, "reject:bad_level")
    assert parser[reason] == 1


def test_non_json_frame_is_counted_and_dropped_without_a_gap(tmp_path: Path):
    rec, srv, dump = run(tmp_path, [Fault("malformed", topic=ETH, after_frames=30, arg="not_json")], more_rows=60)
    assert_db_equals_reference(rec, srv)
    assert gaps(rec) == []  # its topic cannot be read; the next u is continuous, so nothing was missed
    assert dump["actors"]["shard:0:parser"]["reject:not_json"] == 1


def test_oversized_frame_is_refused_before_buffering_and_the_connection_recycled(tmp_path: Path):
    rec, srv, dump = run(tmp_path, [Fault("oversized", topic=BTC, after_frames=30, arg=32 * 1024 * 1024)],
                         until=lambda rec, srv: lambda: srv.total_connections >= 2)
    assert_db_equals_reference(rec, srv, cut_after_fault="oversized")
    refused = [r for r in rec.log_events("disconnected") if "oversized frame refused" in str(r["reason"])]
    assert refused and "33554432 bytes" in str(refused[0]["reason"])
    assert {(t, r) for t, r, _ in gaps(rec)} == {(BTC, "disconnect"), (ETH, "disconnect")}
    # refused from its header: the 32 MiB payload was never buffered
    assert dump["actors"]["shard:0:features"]["process_peak_rss_bytes"] < 48 * 1024 * 1024  # ~28 MiB here


def test_abrupt_drop_and_graceful_close_reconnect_and_are_recorded(tmp_path: Path):
    faults = [Fault("drop", after_frames=40), Fault("close", after_frames=40, arg=1000)]
    rec, srv, _ = run(tmp_path, faults[:1], until=lambda rec, srv: lambda: srv.total_connections >= 2)
    assert_db_equals_reference(rec, srv, cut_after_fault="drop")
    assert {(t, r) for t, r, _ in gaps(rec)} == {(BTC, "disconnect"), (ETH, "disconnect")}
    sessions = rec.query("SELECT session, graceful, reason IS NOT NULL FROM l2_sessions ORDER BY id")
    assert sessions[0] == (1, 0, 1) and len(sessions) == 2

    tmp2 = tmp_path / "close"
    tmp2.mkdir()
    rec2, srv2, _ = run(tmp2, faults[1:], until=lambda rec, srv: lambda: srv.total_connections >= 2)
    assert_db_equals_reference(rec2, srv2)
    closed = [r for r in rec2.log_events("disconnected") if r.get("graceful")]
    assert closed and "code=1000" in str(closed[0]["reason"])
    # a graceful close is not a failure: reconnected at once, without the supervisor
    assert rec2.log_events("child exited; restart scheduled") == []


def test_silent_stall_is_detected_within_ping_interval_plus_timeout(tmp_path: Path):
    rec, srv, _ = run(tmp_path, [Fault("stall", after_frames=40)], env=FAST_LIVENESS,
                      until=lambda rec, srv: lambda: srv.total_connections >= 2)
    assert_db_equals_reference(rec, srv)
    stalls = [r for r in rec.log_events("disconnected") if "stall" in str(r["reason"])]
    assert stalls
    assert {(t, r) for t, r, _ in gaps(rec)} == {(BTC, "disconnect"), (ETH, "disconnect")}
    # From the last frame received before the stall to the end of that session: ping interval (0.3 s)
    # plus pong timeout (0.3 s), give or take scheduling on a busy machine.
    ((ended_ns,),) = rec.query("SELECT ended_ns FROM l2_sessions ORDER BY id LIMIT 1")
    ((last_recv_ns,),) = rec.query(f"SELECT MAX(recv_time_ns) FROM {TABLE} WHERE recv_time_ns < ?", (ended_ns,))
    assert 0.3 <= (ended_ns - last_recv_ns) / 1e9 <= 0.6 + 2.4


def test_silent_topic_is_resubscribed_while_the_socket_lives(tmp_path: Path):
    srv = FakeBybit(symbols=["BTCUSDT"], interval_ms=5, seed=8, max_frames_per_topic=30)
    srv.start()
    rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT", env={"L2REC_TOPIC_SILENCE_S": "0.5"})
    try:
        wait_for(lambda: len(rec.log_events("topic silent; resubscribing")) >= 2, 60, "two silent resubscribes")
        wait_for(lambda: rec.row_count() >= 60, 30, "rows from the second subscription")
        assert rec.stop() == 0
    finally:
        rec.kill()
        srv.stop()
    assert srv.total_connections == 1
    assert_db_equals_reference(rec, srv)
    assert gaps(rec) == []  # silence alone lost nothing: u stayed continuous
