"""Issue 11: gap records that span the whole hole, so that masking training data by ``l2_gaps`` hides
all of it: a shard restart and the recorder's own downtime start at the topic's last row and end at its
first row after, with the last recorded u and the first u after."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from l2rec.book.keeper import GAP_DOWNTIME, GAP_RESTART, BookKeeper
from l2rec.venue.protocol import BOOK, classify
from tests.fakes.bybit_server import FakeBybit
from tests.helpers import TABLE, wait_for
from tests.recorder_process import RecorderProcess

BTC = "orderbook.50.BTCUSDT"


def snapshot(u: int, ts: int) -> bytes:
    return (b'{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":%d,"data":{"s":"BTCUSDT","b":[["1.0","1"]],'
            b'"a":[["2.0","1"]],"u":%d,"seq":%d},"cts":%d}' % (ts, u, u * 10, ts))


def test_a_restart_gap_starts_at_the_last_row_and_ends_at_the_first_row_after() -> None:
    clock = iter(range(5_000, 10_000)).__next__
    bk = BookKeeper(category="linear", data_source="live_trading", feature_levels=10, clock_ns=clock)
    bk.on_process_restart((BTC,), {BTC: (41, 1_000)})
    bk.on_start_after_downtime(("orderbook.50.ETHUSDT",), {})  # no rows yet: no downtime gap
    kind, upd = classify(snapshot(77, 1_700_000_000_000), 6_000)
    assert kind is BOOK
    assert bk.on_update(upd) is not None  # type: ignore[arg-type]
    gaps, _, _ = bk.take_events()
    assert [(g.reason, g.last_u, g.got_u, g.detected_ns, g.recovered_ns is not None) for g in gaps] == [
        (GAP_RESTART, 41, None, 1_000, False), (GAP_RESTART, 41, 77, 1_000, True)]


def test_downtime_gap_at_a_fresh_start() -> None:
    bk = BookKeeper(category="linear", data_source="live_trading", feature_levels=10, clock_ns=lambda: 9)
    bk.on_start_after_downtime((BTC,), {BTC: (5, 3)})
    gaps, resyncs, _ = bk.take_events()
    assert [(g.reason, g.last_u, g.detected_ns) for g in gaps] == [(GAP_DOWNTIME, 5, 3)]
    assert resyncs == []  # the first subscribe brings the snapshot anyway


def test_a_second_run_records_the_downtime_between_the_runs(tmp_path: Path) -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5, seed=3) as srv:
        first = RecorderProcess(tmp_path, srv.url, "BTCUSDT")
        try:
            first.wait_rows(30)
        finally:
            assert first.stop() == 0
        (last_u, last_recv), = first.query(f"SELECT sequence, recv_time_ns FROM {TABLE} "
                                           "ORDER BY recv_time_ns DESC LIMIT 1")
        n = first.row_count()
        second = RecorderProcess(tmp_path, srv.url, "BTCUSDT")
        try:
            second.wait_rows(n + 30)
        finally:
            assert second.stop() == 0
    gaps = second.query("SELECT reason, last_u, got_u, detected_ns, recovered_ns FROM l2_gaps "
                        "WHERE reason = 'downtime'")
    assert len(gaps) == 1
    _, g_last_u, got_u, detected_ns, recovered_ns = gaps[0]
    assert (g_last_u, detected_ns) == (last_u, last_recv)
    (first_after,), = second.query(f"SELECT MIN(recv_time_ns) FROM {TABLE} WHERE recv_time_ns > ?", (last_recv,))
    # The first row after the gap is the second run's snapshot, unless that snapshot restated the state of
    # the last row (the fake's book does not move while nobody subscribes): one row per book state, so the
    # table already holds it, and the next row is the delta after it.
    want_u = got_u + 1 if got_u == g_last_u else got_u
    assert second.query(f"SELECT sequence FROM {TABLE} WHERE recv_time_ns = ?", (first_after,)) == [(want_u,)]
    assert recovered_ns is not None and detected_ns < recovered_ns


def test_a_killed_shard_s_session_is_closed_and_session_ids_stay_unique(tmp_path: Path) -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5, seed=4) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT", env={"L2REC_RESTART_BACKOFF_MIN_S": "0.1"})
        try:
            rec.wait_rows(20)
            # the root learns of the open session from the connection's status report (about once a second)
            dump = wait_for(lambda: (d := rec.dump())["actors"].get("shard:0:connection", {}).get("connected_ns")
                            and d, 30, "a report of the open session")
            assert isinstance(dump, dict)
            os.kill(dump["processes"]["shard-0"]["pid"], signal.SIGKILL)
            n = rec.row_count()
            wait_for(lambda: rec.row_count() > n + 20, 60, "rows from the restarted shard")
        finally:
            assert rec.stop() == 0
    sessions = rec.query("SELECT session, ended_at IS NOT NULL, reason, graceful FROM l2_sessions ORDER BY id")
    assert len(sessions) == 2
    assert len({s[0] for s in sessions}) == 2  # unique across incarnations
    assert sessions[0][1:] == (1, "killed", 0)
    assert sessions[1][1:] == (1, "shutdown", 1)


def test_when_the_root_vanishes_the_children_say_so_and_leave_no_run_directory(tmp_path: Path) -> None:
    run_tmp = tmp_path / "tmp"
    run_tmp.mkdir()
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5, seed=5) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT", env={"TMPDIR": str(run_tmp)})
        try:
            rec.wait_rows(20)
            pids = [int(p["pid"]) for name, p in rec.dump()["processes"].items() if name != "root"]
            assert list(run_tmp.glob("l2rec-*"))
            rec.proc.kill()
            rec.proc.wait(timeout=30)
            wait_for(lambda: not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status()
                                  != psutil.STATUS_ZOMBIE], 60, "the children to drain and exit")
        finally:
            rec.kill()
    assert not list(run_tmp.glob("l2rec-*"))
    (reason, graceful), = rec.query("SELECT reason, graceful FROM l2_sessions")
    assert reason == "root gone" and graceful == 0


def test_a_frozen_shard_s_gap_spans_the_whole_hole(tmp_path: Path) -> None:
    """SIGSTOP: the root's hang detection kills the frozen shard and restarts it; the gap begins at the last
    row before the freeze, not when the restart was noticed, and the session ends as 'hung'."""
    env = {"L2REC_HEARTBEAT_TIMEOUT_S": "3", "L2REC_CONNECT_TIMEOUT_S": "1", "L2REC_RESTART_BACKOFF_MIN_S": "0.1"}
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5, seed=6) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT", env=env)
        try:
            rec.wait_rows(20)
            dump = wait_for(lambda: (d := rec.dump())["actors"].get("shard:0:connection", {}).get("connected_ns")
                            and d, 30, "a report of the open session")
            assert isinstance(dump, dict)
            shard = dump["processes"]["shard-0"]["pid"]
            os.kill(shard, signal.SIGSTOP)
            stopped_ns = time.time_ns()
            wait_for(lambda: rec.log_events("child hung; killing it"), 60, "the hang detection")
            n = rec.row_count()
            wait_for(lambda: rec.row_count() > n + 20, 60, "rows from the restarted shard")
        finally:
            assert rec.stop() == 0
    # the last row before the freeze (the restart comes after the 3 s hang timeout, so 1 s is a safe cut)
    (frozen_at,), = rec.query(f"SELECT MAX(recv_time_ns) FROM {TABLE} WHERE recv_time_ns < ?",
                              (stopped_ns + 1_000_000_000,))
    (reason, last_u, got_u, detected_ns, recovered_ns), = rec.query(
        "SELECT reason, last_u, got_u, detected_ns, recovered_ns FROM l2_gaps")
    assert reason == "shard_restart" and detected_ns == frozen_at
    assert rec.query(f"SELECT sequence FROM {TABLE} WHERE recv_time_ns = ?", (frozen_at,)) == [(last_u,)]
    (first_after,), = rec.query(f"SELECT MIN(recv_time_ns) FROM {TABLE} WHERE recv_time_ns > ?", (frozen_at,))
    assert recovered_ns - detected_ns >= 3_000_000_000  # the hole is the whole freeze, > the hang timeout
    assert rec.query(f"SELECT sequence FROM {TABLE} WHERE recv_time_ns = ?", (first_after,)) == [(got_u,)]
    sessions = rec.query("SELECT reason, graceful FROM l2_sessions ORDER BY id")
    assert sessions[0] == ("hung", 0)
