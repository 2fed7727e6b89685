"""Issue 10, "loses data silently" and "says what is not so": rows a table refuses, a full database in
replay, replay exit codes and the run's summary, counted over every process incarnation."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from bench.make_stream import write_stream
from tests.helpers import DATA, TABLE, clean_env, count_rows, query, run_supervisor, supervisor_cmd, wait_for

NAUTILUS = DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data"
# Short deadlines, so that a shard that gave up waiting (the bug) would show within seconds.
FAST = {"L2REC_SHUTDOWN_DEADLINE_S": "2", "L2REC_CONNECT_TIMEOUT_S": "1", "L2REC_HEARTBEAT_TIMEOUT_S": "3"}


def summary(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if "summary: frames read" in ln]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def figure(line: str, name: str) -> int:
    m = re.search(rf"{name} (\d+)", line)
    assert m, (name, line)
    return int(m.group(1))


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,000 synthetic orderbook.50 frames of 2 symbols (bench/make_stream.py)."""
    # linear/: synthetic frames look like linear and spot alike; the directory says which (as in Bybit's dumps)
    path = tmp_path_factory.mktemp("stream") / "linear" / "s.jsonl"
    write_stream(path, 2, 6000, 3)
    return path


def test_a_table_our_rows_cannot_meet_is_refused_at_start_naming_the_column(tmp_path: Path) -> None:
    db = tmp_path / "s4.db"
    with sqlite3.connect(db) as c:
        c.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL, "
                  "symbol TEXT NOT NULL, note TEXT NOT NULL)")
    res = run_supervisor("--replay", str(NAUTILUS), "--db", str(db))
    assert res.returncode == 78, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in res.stderr
    assert "config key 'table_name'" in err[0] and "column note is NOT NULL" in err[0]
    cols = [r[1] for r in query(db, f"PRAGMA table_info({TABLE})")]
    assert cols == ["id", "timestamp", "symbol", "note"]  # refused before anything was changed


def test_rows_a_check_constraint_refuses_are_counted_logged_and_fail_the_run(tmp_path: Path) -> None:
    db = tmp_path / "check.db"
    with sqlite3.connect(db) as c:
        c.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME NOT NULL, "
                  "symbol TEXT NOT NULL, sequence INTEGER CHECK (sequence % 2 = 0))")
    health = tmp_path / "h.json"
    res = run_supervisor("--replay", str(NAUTILUS), "--db", str(db), "--health-file", str(health))
    assert res.returncode == 1, res.stderr
    stored = count_rows(db)
    us = [int(json.loads(line)["data"]["u"]) for line in NAUTILUS.read_text().splitlines()]
    assert stored == sum(1 for u in us if u % 2 == 0) and 0 < stored < 50  # every other row went in
    refused = 50 - stored
    assert "rows refused by the table: not stored" in res.stderr and "CHECK constraint failed" in res.stderr
    line = summary(res.stderr)
    assert figure(line, "rows written") == stored and figure(line, "not stored") == refused
    assert " ERROR " in line
    writer = json.loads(health.read_text())["actors"]["writer:writer"]
    assert writer["rows_failed"] == refused and writer["rows_committed"] == stored


def test_replay_exit_codes_and_summary_for_a_finished_a_repeated_and_a_useless_file(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    first = run_supervisor("--replay", str(NAUTILUS), "--db", str(db))
    assert first.returncode == 0, first.stderr
    line = summary(first.stderr)
    assert figure(line, "frames read") == 50 and figure(line, "rows written") == 50
    assert "topics: orderbook.500.XRPUSDT" in line
    # the start line says where the topics come from, not the live defaults
    start = next(ln for ln in first.stderr.splitlines() if "starting" in ln)
    assert "symbols=all in the file" in start and "depth=all in the file" in start and "pid=" in start

    again = run_supervisor("--replay", str(NAUTILUS), "--db", str(db))
    assert again.returncode == 0, again.stderr
    line = summary(again.stderr)
    assert figure(line, "rows written") == 0 and figure(line, "already present") == 50
    assert "0 rows written this run (50 already present)" in again.stderr  # the dump's summary too

    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('not json\n{"topic": 5}\n[1, 2]\n{"op": "nonsense"}\n')
    bad = run_supervisor("--replay", str(garbage), "--db", str(tmp_path / "g.db"))
    assert bad.returncode == 65, bad.stderr
    assert "no valid order book frame" in bad.stderr and "Traceback" not in bad.stderr
    line = summary(bad.stderr)
    assert figure(line, "frames read") == 4 and figure(line, "usable") == 0 and "not_json 1" in line


def test_an_interrupted_replay_exits_130_and_says_so(tmp_path: Path) -> None:
    big = tmp_path / "linear" / "big.jsonl"  # linear: synthetic frames fit linear and spot; the path says
    write_stream(big, 2, 100_000, 4)  # a few seconds of replay: the interrupt lands in the middle
    db = tmp_path / "i.db"
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err_file:
        proc = subprocess.Popen(supervisor_cmd("--replay", str(big), "--db", str(db)), env=clean_env(),
                                stderr=err_file, text=True)
        wait_for(lambda: (count_rows(db) or 0) > 0, 60, "the first rows")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    err = err_path.read_text()
    line = summary(err)
    assert "replay interrupted summary" in line
    stored = count_rows(db)
    assert stored is not None and 0 < stored < 100_000
    assert figure(line, "rows written") == stored
    assert figure(line, "not stored") == 0  # every row read before the stop was handed over


def test_a_replay_interrupted_while_the_database_is_locked_exits_130(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    assert run_supervisor("--replay", str(NAUTILUS), "--db", str(db)).returncode == 0  # the tables exist
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    err_path = tmp_path / "stderr.txt"
    try:
        with err_path.open("w") as err_file:
            proc = subprocess.Popen(supervisor_cmd("--replay", str(NAUTILUS), "--db", str(db)),
                                    env=clean_env(), stderr=err_file, text=True)
            wait_for(lambda: "database busy at start; retrying" in err_path.read_text(), 30,
                     "the writer waiting for the lock")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = err_path.read_text()
    assert "Traceback" not in err
    assert "replay interrupted summary" in summary(err)


def test_a_full_database_in_replay_waits_and_never_rereads_the_file(tmp_path: Path, stream: Path) -> None:
    db = tmp_path / "full.db"
    health = tmp_path / "h.json"
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err_file:
        proc = subprocess.Popen(supervisor_cmd("--replay", str(stream), "--db", str(db), "--health-file",
                                               str(health)),
                                env=clean_env(L2REC_DB_MAX_PAGES="300", **FAST), stderr=err_file, text=True)
        # SIGUSR1 before the root installed its handler would kill it: wait for its start line
        wait_for(lambda: "starting" in err_path.read_text(), 30, "the start line")

        def writer_attempts() -> int:
            proc.send_signal(signal.SIGUSR1)
            try:
                dump = json.loads(health.read_text())
            except (OSError, ValueError):
                return 0
            return int(dump["actors"].get("writer:writer", {}).get("failed_attempts", 0))

        # 8 failed attempts take ~6 s of backoff: past the heartbeat timeout (3 s) and the shutdown
        # deadline (2 s) that made the shards give up, exit 1 and be restarted to read the file again.
        wait_for(lambda: writer_attempts() >= 8, 60, "8 failed attempts of the writer", interval=0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 1  # rows were not stored, and the exit code says so
    err = err_path.read_text()
    assert "database or disk is full" in err
    assert "restart" not in err.lower(), err[-3000:]
    assert err.count("replay read path=") == 2  # each of the 2 shards read the file once
    line = summary(err)
    stored = count_rows(db)
    assert stored is not None and stored < 6000  # 0 when the first group commit alone overflowed the cap
    assert figure(line, "rows written") == stored and figure(line, "not stored") == 6000 - stored
    # the loss is in the database too, at the next start (issue 11): sidecar files, then gap rows
    sidecars = sorted(tmp_path.glob("full.db.lost.shard-*.json"))
    assert len(sidecars) == 2
    again = run_supervisor("--replay", str(NAUTILUS), "--db", str(db))  # no page cap: space is back
    assert again.returncode == 0, again.stderr
    assert "recorded the rows an earlier run could not store as gaps" in again.stderr
    assert not list(tmp_path.glob("full.db.lost.*"))
    gaps = query(db, "SELECT topic, last_u, got_u, detected_ns, recovered_ns FROM l2_gaps "
                     "WHERE reason = 'lost_at_stop' ORDER BY topic")
    assert [g[0] for g in gaps] == ["orderbook.50.BTCUSDT", "orderbook.50.ETHUSDT"]
    stored_u = {sym: {u for (u,) in query(db, f"SELECT sequence FROM {TABLE} WHERE symbol = ?", (sym,))}
                for sym in ("BTCUSDT", "ETHUSDT")}
    for topic, first_u, last_u, t0, t1 in gaps:
        sym = topic.rsplit(".", 1)[1]
        assert first_u <= last_u and t0 <= t1
        assert first_u not in stored_u[sym] and last_u not in stored_u[sym]  # the gap is the rows not stored


def test_the_summary_counts_every_incarnation(tmp_path: Path, stream: Path) -> None:
    """A shard that crashes mid-replay is restarted and reads its part again; the summary adds up both
    incarnations and equals the database."""
    db = tmp_path / "c.db"
    state = tmp_path / "faults"
    state.mkdir()
    res = run_supervisor("--replay", str(stream), "--db", str(db), timeout=120,
                         env=clean_env(L2REC_FAULTS="features:crash_after=3@1", L2REC_FAULTS_STATE=str(state)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "restart scheduled" in res.stderr
    line = summary(res.stderr)
    assert figure(line, "rows written") == count_rows(db) == 6000
    assert figure(line, "frames read") > 6000  # the restarted shard read its part of the file again


class CollectingUplink:
    """Stands where a child's uplink pipe is: keeps what the actors report."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def put_nowait(self, obj: object) -> None:
        self.sent.append(obj)


def test_an_actor_that_dies_reports_its_last_counters() -> None:
    """A parser whose book actor is gone dies on its next batch (pykka then skips on_stop); the frames it
    had counted still reach the root, or a crashed incarnation's work would be missing from the summary."""
    import pykka

    from l2rec.actors.base import Reporter
    from l2rec.actors.parser import ParserActor
    from l2rec.messages.frames import RawFrames
    from l2rec.messages.health import Status
    from l2rec.runtime.faults import Faults
    from l2rec.supervision.states import Role

    class Gone(pykka.ThreadingActor):
        pass

    books = Gone.start()
    books.stop()
    uplink = CollectingUplink()
    parser = ParserActor.start(books, None, topics=None, symbols=None, depth=None,
                               reporter=Reporter(uplink, Role.SHARD, "parser", 0),  # type: ignore[arg-type]  # duck-typed uplink
                               faults=Faults({}))
    lines = NAUTILUS.read_text().splitlines()[:7]
    parser.tell(RawFrames(0, tuple((None, line) for line in lines)))
    wait_for(lambda: not parser.is_alive(), 10, "the parser to die telling a dead actor")
    reports = [s for s in uplink.sent if isinstance(s, Status) and s.actor == "parser"]
    assert reports and reports[-1].stats["frames"] == 7 and reports[-1].stats["book"] == 7
