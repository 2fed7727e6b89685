"""`python supervisor.py --replay FILE --db DB`: all processes, real recordings, committed rows."""

from __future__ import annotations

import gzip
import json
import sqlite3
import zipfile
from pathlib import Path

import pytest

from tests.helpers import DATA, TABLE, clean_env, run_supervisor

NAUTILUS = "nautilus_trader__2024-12-01_XRPUSDT_ob500.data"
FASTMM = "FastMM__raw_md_stream.jsonl"
TICKVAULT = "tickvault__bybit_orderbook.jsonl"


def rows(db: Path, sql: str = f"SELECT COUNT(*) FROM {TABLE}") -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


def replay(path: Path, db: Path, *extra: str) -> None:
    res = run_supervisor("--replay", str(path), "--db", str(db), "--health-file", str(db) + ".health.json",
                         *extra, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.parametrize("packing", ["plain", "gz", "zip"])
def test_bybit_daily_dump_replays_in_every_packing(tmp_path: Path, packing: str):
    src = DATA / NAUTILUS
    if packing == "gz":
        path = tmp_path / (NAUTILUS + ".gz")
        path.write_bytes(gzip.compress(src.read_bytes()))
    elif packing == "zip":
        path = tmp_path / "xrpusdt-ob500.data.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(src, NAUTILUS)
    else:
        path = src
    db = tmp_path / "r.db"
    replay(path, db)
    assert rows(db) == [(50,)]
    last = rows(db, f"SELECT symbol, depth, category, bid_price_1, ask_price_1, data_quality_score, sequence, "
                    f"timestamp, data_source, recv_time_ns FROM {TABLE} ORDER BY sequence DESC LIMIT 1")
    assert last == [("XRPUSDT", 500, "linear", 1.9537, 1.9538, 1.0, 20254918, "2024-12-01T00:00:05.490Z",
                     "replay", None)]
    seqs = [r[0] for r in rows(db, f"SELECT sequence FROM {TABLE} ORDER BY sequence")]
    assert seqs == list(range(20254869, 20254919))


def test_replaying_the_same_file_twice_adds_nothing(tmp_path: Path):
    db = tmp_path / "r.db"
    replay(DATA / NAUTILUS, db)
    replay(DATA / NAUTILUS, db)
    assert rows(db) == [(50,)]


def test_live_spot_capture_rows_per_topic(tmp_path: Path):
    db = tmp_path / "r.db"
    replay(DATA / FASTMM, db)  # spot: its subscribe ack says so ("ret_msg":"subscribe")
    got = dict(rows(db, f"SELECT depth, COUNT(*) FROM {TABLE} GROUP BY depth"))
    # ob50: snapshot + 18 deltas; ob1: 14 snapshots, one of them the 3 s re-push of the state before it (same
    # u, same seq): one row per book state, 13.
    assert got == {50: 19, 1: 13}
    assert rows(db, f"SELECT DISTINCT category FROM {TABLE}") == [("spot",)]
    replay(DATA / FASTMM, db, "--category", "spot")  # the same file, labelled by hand: nothing new
    assert rows(db) == [(32,)]
    replay(DATA / TICKVAULT, db)
    assert rows(db, f"SELECT COUNT(*) FROM {TABLE} WHERE depth = 50 AND sequence >= 217107084") == [(9,)]


def test_symbols_and_depth_flags_filter_a_replay(tmp_path: Path):
    db = tmp_path / "r.db"
    replay(DATA / FASTMM, db, "--depth", "1")
    assert rows(db, f"SELECT depth, COUNT(*) FROM {TABLE} GROUP BY depth") == [(1, 13)]
    db2 = tmp_path / "r2.db"
    replay(DATA / FASTMM, db2, "--symbols", "ETHUSDT")
    assert rows(db2) == [(0,)]


def test_malformed_lines_are_dropped_and_the_rest_recorded(tmp_path: Path):
    lines = (DATA / NAUTILUS).read_bytes().splitlines()
    bad = [b"not json", b"{\"topic\": 5}", b"[1,2,3]", b"\xff\xfe garbage"]
    path = tmp_path / "mixed.jsonl"
    # garbage before the snapshot and after the last delta: the book never misses an update
    path.write_bytes(b"\n".join([*bad, *lines, *bad]) + b"\n")
    db = tmp_path / "r.db"
    replay(path, db)
    assert rows(db) == [(50,)]
    # the final health dump accounts for every frame, by reason
    dump = json.loads(Path(str(db) + ".health.json").read_text())
    # (replay splits the file's topics over replay_shards processes: add their parsers up)
    parsers = [a for name, a in dump["actors"].items() if name.endswith(":parser")]
    assert len(parsers) == 2

    def total(key: str) -> int:
        return sum(int(p.get(key, 0)) for p in parsers)

    assert (total("frames"), total("book"), total("reject:not_json"), total("reject:bad_topic"),
            total("reject:not_object"), total("unaccounted")) == (58, 50, 4, 2, 2, 0)
    topic = dump["topics"]["orderbook.500.XRPUSDT"]
    assert (topic["frames"], topic["rows"], topic["unaccounted"], topic["synced"]) == (50, 50, 0, True)


def test_a_rejected_frame_of_the_topic_is_a_gap_and_no_row_until_the_next_snapshot(tmp_path: Path):
    lines = (DATA / NAUTILUS).read_bytes().splitlines()
    # Corrupt a price in delta 10: the book missed that update, so nothing after it may be a row.
    broken = lines[10].replace(b'["1.95', b'["nan', 1)
    assert broken != lines[10]
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b"\n".join([*lines[:10], broken, *lines[11:], lines[0]]) + b"\n")
    db = tmp_path / "r.db"
    replay(path, db)
    # 10 rows before the bad frame, then nothing until the snapshot at the end (1 row; same key as the
    # first row, so the unique key keeps one): 10 rows in all.
    assert rows(db) == [(10,)]
    gaps = rows(db, "SELECT topic, reason, last_u, recovered_at IS NOT NULL FROM l2_gaps")
    assert gaps == [("orderbook.500.XRPUSDT", "rejected_frame", 20254878, 1)]


def test_replay_shards_split_topics_and_agree_with_a_single_shard(tmp_path: Path):
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    replay(DATA / FASTMM, one, "--category", "spot")
    res = run_supervisor("--replay", str(DATA / FASTMM), "--db", str(two), "--category", "spot",
                         "--health-file", str(two) + ".json", timeout=120,
                         env={**clean_env(), "L2REC_REPLAY_SHARDS": "3"})
    assert res.returncode == 0, res.stderr[-2000:]
    cols = "symbol, depth, sequence, exchange_timestamp, bid_price_1, ask_price_1, microprice, data_quality_score"
    q = f"SELECT {cols} FROM {TABLE} ORDER BY depth, sequence, exchange_timestamp"
    assert rows(one, q) == rows(two, q) and len(rows(one, q)) == 32
