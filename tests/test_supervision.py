"""Supervision across processes: kills, injected crashes and hangs, the breaker, signals and logs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.fakes.bybit_server import FakeBybit
from tests.helpers import wait_for
from tests.recorder_process import TABLE, RecorderProcess, frame_keys

# Small, fast policy figures for tests (the defaults are minutes, not milliseconds).
FAST = {
    "L2REC_RESTART_BACKOFF_MIN_S": "0.2",
    "L2REC_RESTART_BACKOFF_MAX_S": "2",
    "L2REC_RESTART_RESET_AFTER_S": "30",
    "L2REC_BREAKER_COOLDOWN_S": "0.5",
}


@pytest.fixture
def server():
    srv = FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=5, seed=5)
    srv.start()
    yield srv
    srv.stop()


def restarts(rec: RecorderProcess, child: str) -> list[dict[str, object]]:
    return [r for r in rec.log_events("child exited; restart scheduled") if r.get("child") == child]


def test_process_tree_is_root_writer_and_shard_with_spawn(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT", env=FAST)
    try:
        rec.wait_rows(20)
        dump = rec.dump()
        kids = {p.pid: " ".join(p.cmdline()) for p in psutil.Process(rec.pid).children()}
        assert rec.stop() == 0
    finally:
        rec.kill()
    for name in ("writer", "shard-0"):
        pid = dump["processes"][name]["pid"]
        assert pid in kids and "multiprocessing.spawn" in kids[pid]


def test_sigkill_of_the_shard_restarts_it_and_rows_continue(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT,ETHUSDT", env=FAST)
    try:
        rec.wait_rows(50)
        shard = rec.child_pid("shard-0")
        os.kill(shard, signal.SIGKILL)
        wait_for(lambda: restarts(rec, "shard-0"), 30, "the restart decision in the log")
        wait_for(lambda: server.total_connections >= 2, 30, "the new shard's connection")
        new_conn = wait_for(lambda: len(server.conn_ids()) >= 2 and server.conn_ids()[-1], 30, "new frames")
        wait_for(lambda: len(server.sent_frames(conn_id=new_conn)) >= 100, 30, "frames on the new connection")
        assert rec.child_pid("shard-0") != shard
        dump = wait_for(lambda: (d := rec.dump()) and d["supervisor"]["shard-0"]["restarts"] == 1
                        and d["actors"].get("shard:0:features", {}).get("restarts") == 1 and d, 30,
                        "the restart in the dump")
        assert "exit code -9" in str(dump["supervisor"]["shard-0"]["last_error"])
        assert rec.stop() == 0
    finally:
        rec.kill()
    decision = restarts(rec, "shard-0")[0]
    assert decision["exitcode"] == -signal.SIGKILL and decision["attempt"] == 1
    assert 0.2 * 0.8 - 0.0005 <= decision["delay_s"] <= 0.2 * 1.2 + 0.0005  # logged to the millisecond
    # the new incarnation rebuilt every book from a fresh snapshot, and every frame it got is a row
    new_frames = server.sent_frames(conn_id=new_conn)
    assert '"type":"snapshot"' in new_frames[0]
    assert frame_keys(new_frames) <= rec.row_keys()


def test_sigkill_of_the_writer_restarts_it_without_loss_or_duplicates(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT,ETHUSDT", env=FAST)
    try:
        rec.wait_rows(100)
        writer = rec.child_pid("writer")
        os.kill(writer, signal.SIGKILL)
        wait_for(lambda: restarts(rec, "writer"), 30, "the writer's restart decision")
        before = rec.row_count()
        rec.wait_rows(before + 200)
        assert rec.stop() == 0
    finally:
        rec.kill()
    assert rec.query("PRAGMA integrity_check") == [("ok",)]
    dupes = rec.query(f"SELECT symbol, sequence, exchange_timestamp, COUNT(*) FROM {TABLE} "
                      "GROUP BY 1, 2, 3 HAVING COUNT(*) > 1")
    assert dupes == []
    # unacknowledged batches were resent to the new writer: nothing the server sent is missing
    assert frame_keys(server.sent_frames()) - rec.row_keys() == set()


@pytest.mark.parametrize("fault", ["features:crash_after=30@1", "parser:crash_after=30@1",
                                   "connection:crash_after=1@1", "parser:crash_on_start@1",
                                   "features:crash_on_start@1", "connection:crash_on_start@1"])
def test_injected_crash_in_each_actor_restarts_the_shard(server: FakeBybit, tmp_path: Path, fault: str):
    state = tmp_path / "faults"
    state.mkdir()
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT",
                          env={**FAST, "L2REC_FAULTS": fault, "L2REC_FAULTS_STATE": str(state)})
    try:
        wait_for(lambda: restarts(rec, "shard-0"), 60, f"a restart after {fault}")
        before = rec.row_count()
        rec.wait_rows(before + 50)
        assert rec.stop() == 0
    finally:
        rec.kill()
    assert len(restarts(rec, "shard-0")) == 1
    failed = rec.log_events("shard failed")[0]
    actor = fault.split(":")[0]
    assert actor in str(failed["reason"]) or (actor if actor != "connection" else "source") in failed["dead_actors"]


def test_injected_writer_crash_restarts_the_writer(server: FakeBybit, tmp_path: Path):
    state = tmp_path / "faults"
    state.mkdir()
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT",
                          env={**FAST, "L2REC_FAULTS": "writer:crash_after=3@1", "L2REC_FAULTS_STATE": str(state)})
    try:
        wait_for(lambda: restarts(rec, "writer"), 60, "the writer's restart")
        before = rec.row_count()
        rec.wait_rows(before + 100)
        assert rec.stop() == 0
    finally:
        rec.kill()
    assert frame_keys(server.sent_frames()) <= rec.row_keys()


def test_crash_loop_opens_the_breaker_then_escalates_with_exit_75(server: FakeBybit, tmp_path: Path):
    env = {**FAST, "L2REC_FAULTS": "parser:crash_on_start", "L2REC_RESTART_MAX_RESTARTS": "2",
           "L2REC_RESTART_PERIOD_S": "60", "L2REC_BREAKER_COOLDOWN_S": "0.3",
           "L2REC_BREAKER_ESCALATE_AFTER_REOPENS": "2"}
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT", env=env)
    try:
        code = rec.proc.wait(timeout=90)
    finally:
        rec.kill()
    assert code == 75
    decisions = restarts(rec, "shard-0")
    delays = [d["delay_s"] for d in decisions]
    breakers = [d["breaker"] for d in decisions]
    # two backoff restarts (growing), then the breaker opens (cooldown 0.3), reopens once (0.6), escalates
    assert breakers == ["closed", "closed", "open", "open"]
    assert 0.16 <= delays[0] <= 0.24 and 0.32 <= delays[1] <= 0.48
    assert delays[2:] == [0.3, 0.6]
    assert rec.log_events("escalating: stopping everything")


def test_hung_actor_is_detected_by_missing_heartbeats_and_restarted(server: FakeBybit, tmp_path: Path):
    state = tmp_path / "faults"
    state.mkdir()
    env = {**FAST, "L2REC_FAULTS": "features:hang_after=20@1", "L2REC_FAULTS_STATE": str(state),
           "L2REC_HEARTBEAT_TIMEOUT_S": "3", "L2REC_CONNECT_TIMEOUT_S": "2"}
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT", env=env)
    try:
        wait_for(lambda: rec.log_events("child hung; killing it"), 60, "hang detection")
        before = rec.row_count()
        rec.wait_rows(before + 50)
        assert rec.stop() == 0
    finally:
        rec.kill()
    hung = rec.log_events("child hung; killing it")[0]
    assert hung["child"] == "shard-0" and hung["actor"] == "features"
    assert "hung" in str(restarts(rec, "shard-0")[0]["error"])


def test_sighup_reopens_the_log_file_after_logrotate_moved_it(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT", env=FAST)
    try:
        rec.wait_rows(10)
        wait_for(rec.log_file.exists, 30, "the log file")
        rotated = tmp_path / "recorder.log.1"
        rec.log_file.rename(rotated)
        rec.signal(signal.SIGHUP)
        wait_for(lambda: rec.log_file.exists() and rec.log_events("log file reopened"), 30, "a reopened log")
        assert rec.stop() == 0
    finally:
        rec.kill()
    assert "starting" in rotated.read_text()
    assert rec.log_events("stopped")  # written to the new file


def test_second_sigint_exits_at_once_and_the_database_is_intact(server: FakeBybit, tmp_path: Path):
    # A hung features actor makes the graceful stop wait for its deadline: the second SIGINT must not.
    env = {**FAST, "L2REC_FAULTS": "features:hang_after=100", "L2REC_HEARTBEAT_TIMEOUT_S": "600"}
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT,ETHUSDT", env=env)
    try:
        rec.wait_rows(50)
        rec.signal(signal.SIGINT)
        wait_for(lambda: rec.log_events("stop requested: stopping shards, then the writer"), 30, "the stop")
        assert rec.proc.poll() is None
        rec.signal(signal.SIGINT)
        t0 = time.monotonic()
        code = rec.proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        rec.kill()
    assert code == 130 and took < 5
    assert rec.query("PRAGMA integrity_check") == [("ok",)]
    assert rec.row_count() >= 50


def test_symbols_are_split_across_shards_each_supervised_on_its_own(tmp_path: Path):
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], interval_ms=5, seed=9) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT,ETHUSDT,SOLUSDT",
                              env={**FAST, "L2REC_SYMBOLS_PER_SHARD": "2"})
        try:
            wait_for(lambda: srv.connections == 2, 30, "two connections")
            wait_for(lambda: len(rec.query(f"SELECT DISTINCT symbol FROM {TABLE}")) == 3, 30, "all symbols")
            dump = wait_for(lambda: (d := rec.dump()) and len(d["topics"]) == 3 and d, 30, "3 topics in the dump")
            assert {"shard-0", "shard-1", "writer", "root"} == set(dump["processes"])
            assert dump["topics"]["orderbook.50.SOLUSDT"]["shard"] == 1
            assert set(dump["queues"]) == {"shard-0->writer", "shard-1->writer"}
            first_conns = srv.conn_ids()
            os.kill(dump["processes"]["shard-1"]["pid"], signal.SIGKILL)
            wait_for(lambda: restarts(rec, "shard-1"), 30, "shard-1's restart")
            wait_for(lambda: srv.total_connections == 3 and srv.connections == 2, 30, "shard-1 reconnected")
            assert rec.stop() == 0
        finally:
            rec.kill()
    assert restarts(rec, "shard-0") == []
    assert len(first_conns) == 2
    # Only shard-1's topic has a gap: its process died with whatever it had in flight.
    gaps = rec.query("SELECT topic, reason, last_u, got_u, detected_ns, recovered_ns FROM l2_gaps")
    assert [(g[0], g[1]) for g in gaps] == [("orderbook.50.SOLUSDT", "shard_restart")]
    (_, _, last_u, got_u, detected_ns, recovered_ns), = gaps
    # the gap spans the hole: from SOLUSDT's last row before the kill to its first row after
    (last_recv,), = rec.query(f"SELECT recv_time_ns FROM {TABLE} WHERE symbol = 'SOLUSDT' AND sequence = ?",
                              (last_u,))
    (first_recv,), = rec.query(f"SELECT MIN(recv_time_ns) FROM {TABLE} WHERE symbol = 'SOLUSDT' AND "
                               "recv_time_ns > ?", (last_recv,))
    assert detected_ns == last_recv and recovered_ns is not None and recovered_ns <= first_recv + 1_000_000_000
    assert rec.query(f"SELECT sequence FROM {TABLE} WHERE symbol = 'SOLUSDT' AND recv_time_ns = ?",
                     (first_recv,)) == [(got_u,)]
