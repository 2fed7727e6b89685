"""Issue 10, what a new user ran into: an offline start, every topic refused, stack dumps of every process,
a bad --db, config errors that agree wherever the value came from, finding the process, leftovers."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest

from l2rec.runtime.config import DERIVED_FIELDS, RecorderConfig
from l2rec.supervision.backoff import Backoff
from l2rec.venue.refusals import RefusalTracker
from tests.fakes.bybit_server import FakeBybit
from tests.helpers import DATA, ROOT, clean_env, run_supervisor, supervisor_cmd, wait_for
from tests.recorder_process import RecorderProcess

NAUTILUS = DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once this socket is closed


# -- 5. offline start -----------------------------------------------------------------------------------

def test_backoff_jitter_never_exceeds_the_cap() -> None:
    b = Backoff(0.5, 60.0, 2.0, 0.2)
    rng = random.Random(5)
    delays = [b.delay(n, rng) for n in range(1, 40) for _ in range(50)]
    assert max(delays) <= 60.0 and min(delays) >= 0.4
    assert max(b.delay(n, rng) for n in range(12, 20) for _ in range(50)) == 60.0  # the cap is reached


def test_an_unreachable_endpoint_lists_its_topics_counts_attempts_and_says_how_to_work_offline(
        tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{closed_port()}/v5/public/linear"
    rec = RecorderProcess(tmp_path, url, "BTCUSDT", env={"L2REC_RECONNECT_DELAY": "0.1",
                                                         "L2REC_RECONNECT_DELAY_MAX_S": "0.2"})
    try:
        wait_for(lambda: "cannot reach" in rec.stderr_text(), 30, "the unreachable-endpoint warning")
        warning = next(ln for ln in rec.stderr_text().splitlines() if "cannot reach" in ln)
        assert url in warning and "--replay" in warning and "--ws-url" in warning
        assert rec.stderr_text().count("cannot reach") == 1  # once, not per attempt
        # status reports reach the root about once a second: wait for one that counts the attempts
        dump = wait_for(lambda: (d := rec.dump())["actors"].get("shard:0:connection", {}).get(
            "connect_failures", 0) >= 3 and d, 30, "a dump counting 3 failed attempts")
        assert isinstance(dump, dict)
        topic = dump["topics"]["orderbook.50.BTCUSDT"]
        assert topic["synced"] is False and topic["sessions"] == 0 and topic["frames"] == 0
        assert "127.0.0.1" in dump["actors"]["shard:0:connection"]["last_error"]
        assert "0/1 topics in sync (1 never connected)" in rec.stderr_text()
    finally:
        assert rec.stop() == 0


# -- 6. every topic refused -------------------------------------------------------------------------------

def test_refusal_tracker_probes_what_one_reply_cannot_tell() -> None:
    t = RefusalTracker(("orderbook.50.NOPEUSDT", "orderbook.50.ZZZUSDT", "orderbook.50.BTCUSDT"))
    # one reply for a request of three: it names the first unknown symbol only
    probes = t.on_reply(1, False, None, "orderbook.50.NOPEUSDT", "Invalid symbol :[orderbook.50.NOPEUSDT]")
    assert probes == ["orderbook.50.ZZZUSDT", "orderbook.50.BTCUSDT"] and not t.all_refused
    t.probe_sent("q1", "orderbook.50.ZZZUSDT")
    t.probe_sent("q2", "orderbook.50.BTCUSDT")
    assert t.on_reply(1, False, None, "orderbook.50.ZZZUSDT", "Invalid symbol :[orderbook.50.ZZZUSDT]") == []
    assert not t.all_refused
    t.on_reply(1, False, "q2", "orderbook.50.BTCUSDT", "error:already subscribed,topic:orderbook.50.BTCUSDT")
    assert t.good == {"orderbook.50.BTCUSDT"} and not t.all_refused
    only_bad = RefusalTracker(("orderbook.50.NOPEUSDT",))
    only_bad.on_reply(1, False, None, "orderbook.50.NOPEUSDT", "Invalid symbol :[orderbook.50.NOPEUSDT]")
    assert only_bad.all_refused


@pytest.mark.parametrize("symbols", ["NOPEUSDT", "NOPEUSDT,ZZZUSDT"])
def test_every_topic_refused_exits_78_with_bybits_message(symbols: str, tmp_path: Path) -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5) as srv:
        res = run_supervisor("--ws-url", srv.url, "--symbols", symbols, "--db", str(tmp_path / "r.db"),
                             timeout=60)
    assert res.returncode == 78, res.stderr[-3000:]
    assert "Invalid symbol :[orderbook.50.NOPEUSDT]" in res.stderr and "refused every topic" in res.stderr
    assert "Traceback" not in res.stderr


def test_some_topics_refused_the_rest_recorded(tmp_path: Path) -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "NOPEUSDT,BTCUSDT")
        try:
            rec.wait_rows(20)
            assert "Invalid symbol" in rec.stderr_text()
        finally:
            assert rec.stop() == 0


# -- 7. stacks of every process ---------------------------------------------------------------------------

def test_sigusr2_prints_every_process_stacks_labelled_and_kills_nobody(tmp_path: Path) -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT")
        try:
            rec.wait_rows(5)
            before = {k: v["pid"] for k, v in rec.dump()["processes"].items()}
            rec.signal(signal.SIGUSR2)
            for role in ("root", "writer", "shard-0"):
                pid = before[role]
                wait_for(lambda r=role, p=pid: f"--- stacks of {r} (pid {p}) ---" in rec.stderr_text(), 30,
                         f"the stacks of {role}")
            # sent to a shard directly: it prints, and lives on
            os.kill(before["shard-0"], signal.SIGUSR2)
            wait_for(lambda: rec.stderr_text().count(f"--- stacks of shard-0 (pid {before['shard-0']}) ---") == 2,
                     30, "the shard's own stacks")
            n = rec.row_count()
            rec.wait_rows(n + 5)
            after = {k: v["pid"] for k, v in rec.dump()["processes"].items()}
            assert after == before  # no process died or was restarted
            assert "Thread 0x" in rec.stderr_text() or "Current thread" in rec.stderr_text()
        finally:
            assert rec.stop() == 0
    assert "shard_restart" not in {r[0] for r in rec.query("SELECT reason FROM l2_gaps")}


# -- 8. a bad --db ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("db", "says"), [
    ("{tmp}", "is a directory"),
    ("/proc/x.db", "cannot open the database"),
    ("{tmp}/notadb.db", "file is not a database"),
])
def test_a_bad_db_path_is_one_line_and_exit_78(tmp_path: Path, db: str, says: str) -> None:
    (tmp_path / "notadb.db").write_text("hello, I am a text file\n" * 100)
    path = db.format(tmp=tmp_path)
    res = run_supervisor("--replay", str(NAUTILUS), "--db", path)
    assert res.returncode == 78
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "config key 'db_path'" in lines[0] and says in lines[0], res.stderr


def test_a_missing_parent_directory_is_created(tmp_path: Path) -> None:
    db = tmp_path / "new" / "deeper" / "l2.db"
    res = run_supervisor("--replay", str(NAUTILUS), "--db", str(db))
    assert res.returncode == 0, res.stderr
    assert db.is_file()


# -- 9. config errors agree -----------------------------------------------------------------------------------

def test_a_bad_category_exits_78_from_a_flag_the_environment_and_a_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('category = "option"\n')
    for res in (run_supervisor("--category", "option"),
                run_supervisor(env=clean_env(L2REC_CATEGORY="option")),
                run_supervisor("--config", str(conf)),
                run_supervisor("--category", "futures")):
        assert res.returncode == 78, res.stderr
        assert "config key" in res.stderr and "category" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "option order books are not supported" in run_supervisor("--category", "option").stderr


def test_an_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('db_pth = "x.db"\n')
    res = run_supervisor("--config", str(conf))
    assert res.returncode == 78 and "did you mean 'db_path'?" in res.stderr
    res = run_supervisor(env=clean_env(L2REC_ORDERBOOK_DEPHT="50"))
    assert res.returncode == 78 and "did you mean 'L2REC_ORDERBOOK_DEPTH'?" in res.stderr


def test_conf_recorder_toml_lists_every_key() -> None:
    text = (ROOT / "conf" / "recorder.toml").read_text()
    listed = set(tomllib.loads(text)) | {ln.lstrip("# ").split(" ")[0] for ln in text.splitlines()
                                         if ln.startswith("# ") and " = " in ln}
    fields = {f.name for f in dataclasses.fields(RecorderConfig)} - DERIVED_FIELDS
    assert fields <= listed, sorted(fields - listed)


# -- 10. finding the process ----------------------------------------------------------------------------------

def test_pid_file_version_and_the_pid_in_the_start_line(tmp_path: Path) -> None:
    pid_file = tmp_path / "l2rec.pid"
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT", "--pid-file", str(pid_file))
        try:
            wait_for(pid_file.exists, 30, "the pid file")
            assert int(pid_file.read_text()) == rec.pid
            wait_for(lambda: any(r.get("event") == "starting" for r in rec.logs()), 30, "the start line")
            assert next(r for r in rec.logs() if r.get("event") == "starting")["pid"] == rec.pid
            # a second recorder on the same pid file is refused: it names the live one
            second = run_supervisor("--ws-url", srv.url, "--db", str(tmp_path / "b.db"), "--pid-file",
                                    str(pid_file))
            assert second.returncode == 78 and f"process {rec.pid}" in second.stderr
        finally:
            assert rec.stop() == 0
    assert not pid_file.exists()
    version = subprocess.run(supervisor_cmd("--version"), capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("l2rec ")


# -- 11. leftovers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sent.jsonl", "recorder.log.1", "l2rec.pid", "replay.db", "fake.db"])
def test_what_the_readme_examples_leave_behind_is_ignored_by_git(name: str) -> None:
    res = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT, capture_output=True, timeout=30)
    assert res.returncode == 0, f"{name} is not ignored"


def test_the_health_dump_json_is_valid_after_the_readme_replay(tmp_path: Path) -> None:
    health = tmp_path / "h.json"
    res = run_supervisor("--replay", str(NAUTILUS), "--db", str(tmp_path / "r.db"), "--health-file", str(health))
    assert res.returncode == 0
    assert json.loads(health.read_text())["topics"]["orderbook.500.XRPUSDT"]["rows"] == 50
