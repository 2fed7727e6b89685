"""Writer faults: a database locked by another process, a full database, a slow writer (backpressure)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.fakes.bybit_server import FakeBybit
from tests.helpers import wait_for
from tests.recorder_process import TABLE, RecorderProcess, frame_keys


@pytest.fixture
def server():
    srv = FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=5, seed=11)
    srv.start()
    yield srv
    srv.stop()


def test_database_locked_for_seconds_is_retried_and_nothing_is_lost(server: FakeBybit, tmp_path: Path):
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT,ETHUSDT")
    try:
        rec.wait_rows(100)
        other = sqlite3.connect(rec.db, timeout=30, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        wait_for(lambda: rec.log_events("database write failed; batch kept and retried"), 30, "the retry log")
        held_rows = rec.row_count()
        wait_for(lambda: len(rec.log_events("database write failed; batch kept and retried")) >= 1
                 and server.sent_count() > held_rows + 300, 30, "frames while locked")
        other.execute("COMMIT")
        other.close()
        wait_for(lambda: rec.log_events("database writes resumed"), 30, "the writer to resume")
        assert rec.stop() == 0
    finally:
        rec.kill()
    failed = rec.log_events("database write failed; batch kept and retried")[0]
    assert failed["level"] == "WARNING" and "locked" in str(failed["error"])
    assert frame_keys(server.sent_frames()) <= rec.row_keys()
    assert rec.query("SELECT COUNT(*) FROM l2_gaps") == [(0,)]


def test_full_database_is_critical_keeps_rows_and_resumes_when_space_returns(server: FakeBybit, tmp_path: Path):
    # A page cap stands in for a full disk (PRAGMA max_page_count), and deleting rows frees pages.
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT,ETHUSDT", env={"L2REC_DB_MAX_PAGES": "400"})
    try:
        wait_for(lambda: rec.log_events("database write failed; batch kept and retried"), 60, "a full database")
        full = rec.log_events("database write failed; batch kept and retried")[0]
        assert full["level"] == "CRITICAL" and "full" in str(full["error"])
        stop_deleting = threading.Event()

        def make_space() -> None:
            with sqlite3.connect(rec.db, timeout=30, isolation_level=None) as c:
                while not stop_deleting.wait(0.2):
                    c.execute(f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} ORDER BY id LIMIT 400)")

        deleter = threading.Thread(target=make_space, daemon=True)
        deleter.start()
        wait_for(lambda: rec.log_events("database writes resumed"), 60, "the writer to resume")
        stop_deleting.set()
        deleter.join(timeout=10)
        assert rec.stop() == 0
    finally:
        rec.kill()
    # Nothing silently lost: every frame sent became a row (some deleted by us since) or fell in a gap.
    dump_topics = json.loads(rec.health_file.read_text())["topics"] if rec.health_file.exists() else None
    gaps = rec.query("SELECT reason FROM l2_gaps")
    assert all(r == ("backpressure",) for r in gaps)
    assert dump_topics is None or all(t["unaccounted"] == 0 for t in dump_topics.values())


def test_slow_writer_sheds_rows_into_a_backpressure_gap_then_resubscribes(server: FakeBybit, tmp_path: Path):
    # A tiny link (60 rows) and a database held locked: the live shard must not pile up in memory.
    env = {"L2REC_WRITER_QUEUE_ROWS": "60", "L2REC_BUFFER_SIZE": "20"}
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT,ETHUSDT", env=env)
    try:
        rec.wait_rows(100)
        other = sqlite3.connect(rec.db, timeout=30, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        wait_for(lambda: rec.log_events("writer too slow: link full, rows shed, topics marked out of sync"), 60,
                 "backpressure")
        other.execute("COMMIT")
        other.close()
        wait_for(lambda: rec.log_events("link drained; resubscribing for fresh snapshots"), 60, "the recovery")
        dump = wait_for(lambda: (d := rec.dump()) and len(d["topics"]) == 2
                        and all(t["synced"] for t in d["topics"].values())
                        and d["actors"]["shard:0:features"]["rows_shed"] > 0 and d, 60, "topics back in sync")
        rows = rec.row_count()
        rec.wait_rows(rows + 100)
        assert rec.stop() == 0
    finally:
        rec.kill()
    gaps = rec.query("SELECT topic, reason, recovered_at IS NOT NULL FROM l2_gaps ORDER BY topic")
    assert gaps == [("orderbook.50.BTCUSDT", "backpressure", 1), ("orderbook.50.ETHUSDT", "backpressure", 1)]
    for topic in dump["topics"].values():
        assert topic["unaccounted"] == 0 and topic["in_gap"] > 0
    assert dump["actors"]["shard:0:features"]["rows_shed"] > 0


def test_rows_the_writer_never_acknowledged_make_the_stop_fail_loudly(server: FakeBybit, tmp_path: Path):
    # The writer hangs: the shards cannot hand over their rows, and must not pretend they did.
    env = {"L2REC_FAULTS": "writer:hang_after=5", "L2REC_SHUTDOWN_DEADLINE_S": "1",
           "L2REC_HEARTBEAT_TIMEOUT_S": "600"}
    rec = RecorderProcess(tmp_path, server.url, "BTCUSDT", env=env)
    try:
        wait_for(lambda: server.sent_count() >= 200, 30, "frames sent")
        code = rec.stop(timeout=90)
    finally:
        rec.kill()
    assert code == 1
    lost = rec.log_events("rows lost at stop: the writer acknowledged nothing for shutdown_deadline_s")
    assert lost and lost[0]["level"] == "CRITICAL" and int(lost[0]["rows"]) > 0


def test_closing_the_link_waits_for_a_batch_without_rows(tmp_path: Path) -> None:
    """The last batch of a stop often holds only a session's end (or a gap's close): the link's close waits
    until the writer acknowledged it too, or the session would stay open in l2_sessions."""
    from multiprocessing.connection import Listener

    from l2rec.messages.writer import SessionRecord
    from l2rec.storage.link import WriterLink, decode

    address = str(tmp_path / "writer.sock")
    received = []
    close_returned = threading.Event()
    with Listener(address, family="AF_UNIX") as listener:
        def writer() -> None:
            with listener.accept() as conn:
                batch = decode(conn.recv_bytes())
                received.append(batch)
                # a slow commit: acknowledged half a second later, unless close() returned before that
                close_returned.wait(0.5)
                with contextlib.suppress(OSError):
                    conn.send(batch.batch_no)
                conn.poll(10.0)  # until the shard's side closes

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        link = WriterLink(address, capacity_rows=100)
        ended = SessionRecord(0, 1, "ws://127.0.0.1/x", 1, 1_000, 2_000, "root gone", False)
        link.put((), (), 0, (ended,))
        assert link.close(progress_timeout_s=10.0) == 0
        close_returned.set()
        assert link.acked == 1  # close returned only once the writer had acknowledged it
        t.join(timeout=10.0)
    assert [b.sessions for b in received] == [(ended,)]
