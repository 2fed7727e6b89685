"""Issue 15, progress on long work: the Progress arithmetic on a fake clock, the terminal line, the replay's
progress over its shards, the share of a file read; end to end, an export and a replay that print their
progress, as log lines when stderr is not a terminal and in place when it is."""

from __future__ import annotations

import gzip
import io
import logging
import os
import select
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from l2rec.runtime.progress import (
    INTERVAL_ENV,
    CommandProgress,
    Progress,
    ReplayProgress,
    TerminalLine,
    default_interval,
    duration,
)
from l2rec.venue.dumps import ReadPosition, read_batches, read_lines
from tests.helpers import DATA, ROOT, TABLE, clean_env, run_supervisor, supervisor_cmd

NAUTILUS = DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- Progress ---------------------------------------------------------------------------------------------

def test_a_line_at_most_every_interval_with_done_rate_share_and_eta() -> None:
    clock = Clock()
    p = Progress("frames", 1_000, interval_s=10.0, now_s=clock)
    assert p.update(10, 10) is None  # nothing before the first interval
    clock.t += 9.9
    assert not p.due() and p.update(99, 99) is None
    clock.t += 0.1
    assert p.due()
    assert p.update(250, 250) == "250 frames, 25 frames/s, 25.0 % of the file, ETA 30 s, 10 s elapsed"
    clock.t += 5.0
    assert p.update(300, 300) is None  # the interval counts from the last line
    clock.t += 5.0
    assert p.update(400_000, 500) == "400,000 frames, 20,000 frames/s, 50.0 % of the file, ETA 20 s, 20 s elapsed"
    assert p.lines == 2


def test_the_share_comes_from_the_position_not_the_count() -> None:
    clock = Clock()
    p = Progress("rows", 4_000_000, of="the table", interval_s=1.0, now_s=clock)
    clock.t += 90
    # 1 million rows done but 3 million rowids behind: 75 % of the table, ETA 30 s
    assert p.update(1_000_000, 3_000_000) == ("1,000,000 rows, 11,111 rows/s, 75.0 % of the table, ETA 30 s, "
                                              "1:30 elapsed")


def test_without_a_total_there_is_no_share_and_no_eta() -> None:
    clock = Clock()
    p = Progress("rows", None, interval_s=1.0, now_s=clock)
    clock.t += 2
    assert p.update(10) == "10 rows, 5 rows/s, 2 s elapsed"
    done = Progress("rows", 10, interval_s=1.0, now_s=clock)
    clock.t += 1
    assert done.update(10, 10) == "10 rows, 10 rows/s, 100.0 % of the file, 1 s elapsed"  # no ETA at the end


def test_durations_and_intervals() -> None:
    assert [duration(s) for s in (0, 42.4, 59.6, 187, 3723)] == ["0 s", "42 s", "1:00", "3:07", "1:02:03"]
    assert default_interval(True, {}) == 1.0 and default_interval(False, {}) == 10.0
    assert default_interval(False, {INTERVAL_ENV: "0.5"}) == 0.5
    assert default_interval(False, {INTERVAL_ENV: "soon"}) == 10.0


# -- where lines go ---------------------------------------------------------------------------------------

def test_the_terminal_line_is_rewritten_in_place_and_steps_aside_for_other_output() -> None:
    out = io.StringIO()
    line = TerminalLine(out)
    line.show("a")
    line.show("b")
    with line.paused():
        out.write("log record\n")
    line.clear()
    line.clear()  # nothing shown: nothing written
    line.show("c")
    line.finish()
    assert out.getvalue() == "\ra\x1b[K\rb\x1b[K\r\x1b[Klog record\n\rb\x1b[K\r\x1b[K\rc\x1b[K\rc\x1b[K\n"


def test_a_command_writes_lines_when_not_on_a_terminal() -> None:
    out = io.StringIO()
    shown = CommandProgress("l2rec export", out, tty=False)
    shown.show("5 rows")
    shown.clear()
    assert out.getvalue() == "l2rec export: progress: 5 rows\n"
    tty = io.StringIO()
    on_tty = CommandProgress("l2rec export", tty, tty=True)
    on_tty.show("5 rows")
    on_tty.clear()
    assert tty.getvalue() == "\rl2rec export: 5 rows\x1b[K\r\x1b[K"


def report(frames: int, read: int, size: int = 1_000, parts: int = 2, done: bool = False) -> dict[str, object]:
    return {"frames_read": frames, "bytes_read": read, "file_bytes": size, "partitions": parts, "done": done}


def test_replay_progress_adds_up_the_shards_and_logs_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = logging.getLogger("test.replay.progress")
    rp = ReplayProgress(log, now_s=clock, line=lambda: None, interval_s=10.0)
    with caplog.at_level(logging.INFO, logger=log.name):
        assert rp.on_report(0, report(0, 0)) is None
        clock.t += 10
        # shard 1 has not reported yet: it counts as nothing read
        assert rp.on_report(0, report(3_000, 500)) == "3,000 frames, 300 frames/s, 25.0 % of the file, ETA 30 s, " \
                                                     "10 s elapsed"
        clock.t += 5
        assert rp.on_report(1, report(1_000, 500)) is None
        clock.t += 5
        assert rp.on_report(1, report(2_000, 1_000)) == ("5,000 frames, 250 frames/s, 75.0 % of the file, "
                                                         "ETA 7 s, 20 s elapsed")
        assert rp.on_report(0, report(3_000, 1_000, done=True)) is None
        assert rp.on_report(1, report(2_000, 1_000, done=True)) is None
        clock.t += 60
        assert rp.on_report(1, report(2_000, 1_000, done=True)) is None  # finished: nothing more
    assert [r.getMessage() for r in caplog.records] == [
        "replay progress: 3,000 frames, 300 frames/s, 25.0 % of the file, ETA 30 s, 10 s elapsed",
        "replay progress: 5,000 frames, 250 frames/s, 75.0 % of the file, ETA 7 s, 20 s elapsed"]
    assert caplog.records[0].fields == {"frames": 3_000, "bytes_read": 500, "file_bytes": 2_000}  # type: ignore[attr-defined]


def test_replay_progress_on_a_terminal_stays_there_once_the_file_is_read() -> None:
    clock = Clock()
    out = io.StringIO()
    terminal = TerminalLine(out)
    rp = ReplayProgress(logging.getLogger("unused"), now_s=clock, line=lambda: terminal, interval_s=1.0)
    rp.on_report(0, report(0, 0, parts=1))
    clock.t += 1
    rp.on_report(0, report(50, 500, parts=1))
    clock.t += 1
    rp.on_report(0, report(100, 1_000, parts=1, done=True))
    assert out.getvalue() == ("\rreplay: 50 frames, 50 frames/s, 50.0 % of the file, ETA 1 s, 1 s elapsed\x1b[K"
                              "\rreplay: 100 frames, 50 frames/s, 100.0 % of the file, 2 s elapsed\x1b[K\n")


# -- the share of a replay file -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["plain", "gz", "zip"])
def test_the_position_of_a_replay_file_grows_to_its_size(kind: str, tmp_path: Path) -> None:
    lines = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 300)) for i in range(20_000)]
    raw = b"\n".join(lines) + b"\n"
    path = tmp_path / f"f.{kind}"
    if kind == "plain":
        path.write_bytes(raw)
    elif kind == "gz":
        path.write_bytes(gzip.compress(raw))
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a.jsonl", b"\n".join(lines[:10_000]) + b"\n")
            zf.writestr("b.jsonl", b"\n".join(lines[10_000:]) + b"\n")
    pos = ReadPosition()
    seen: list[int] = []
    got = 0
    for batch in read_batches(path, 1_000, position=pos):
        got += len(batch)
        seen.append(pos.bytes_read())
    assert got == 20_000 and pos.size == path.stat().st_size
    assert seen == sorted(seen) and 0 < seen[0] < pos.size and pos.bytes_read() == pos.size
    assert list(read_lines(path)) == lines  # the lines themselves are unchanged


# -- end to end ---------------------------------------------------------------------------------------------

def test_an_export_not_on_a_terminal_logs_its_progress(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    db = tmp_path / "r.db"
    res = run_supervisor("--replay", str(NAUTILUS), "--db", str(db), "--health-file", str(tmp_path / "h.json"))
    assert res.returncode == 0, res.stderr[-2000:]
    out = subprocess.run([sys.executable, "-m", "l2rec", "export", "--db", str(db), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120, env=clean_env(**{INTERVAL_ENV: "0"}))
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[0].startswith("l2rec export: progress: 50 rows, ")
    assert "100.0 % of the rows" in out.stderr and "1 files" in out.stderr and "\r" not in out.stderr


def test_a_replay_not_on_a_terminal_logs_its_progress(tmp_path: Path) -> None:
    res = run_supervisor("--replay", str(NAUTILUS), "--db", str(tmp_path / "r.db"), "--health-file",
                         str(tmp_path / "h.json"), env=clean_env(**{INTERVAL_ENV: "0"}))
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if "replay progress: " in ln]
    assert lines and all("% of the file" in ln and "frames/s" in ln for ln in lines), res.stderr[-2000:]
    assert "\r" not in res.stderr
    # at the default interval (10 s) a replay this short logs none
    quiet = run_supervisor("--replay", str(NAUTILUS), "--db", str(tmp_path / "q.db"), "--health-file",
                           str(tmp_path / "h2.json"))
    assert quiet.returncode == 0 and "replay progress" not in quiet.stderr


def test_a_replay_on_a_terminal_shows_its_progress_in_place(tmp_path: Path) -> None:
    """stderr is a pseudo-terminal: the progress line is drawn with carriage returns, log records are
    written on lines of their own around it, and the final figures stay on the terminal."""
    master, slave = os.openpty()
    db = tmp_path / "r.db"
    proc = subprocess.Popen(supervisor_cmd("--replay", str(NAUTILUS), "--db", str(db), "--health-file",
                                           str(tmp_path / "h.json")),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=ROOT,
                            env=clean_env(**{INTERVAL_ENV: "0"}))
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:  # read until the last writer closed the terminal (the recorder and its children ended)
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, "no output from the recorder for 60 s"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        code = proc.wait(timeout=60)
    text = b"".join(chunks).decode()
    assert code == 0, text[-2000:]
    assert "\rreplay: " in text and "100.0 % of the file" in text
    final = next(ln for ln in text.replace("\r\n", "\n").split("\n") if "100.0 % of the file" in ln)
    assert final.rsplit("\r", 1)[-1].startswith("replay: 50 frames")
    # the summary is a line of its own, after the final progress line
    assert text.index("100.0 % of the file") < text.index("replay summary")
    with sqlite3.connect(db) as c:
        assert c.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 50
