"""The right labels on replayed data (issue 12, item 5): a replay's category is the user's (flag,
environment, or a config file naming the replay), else the file's path, else its frames; where they do not
tell, exit 78 asking for --category, never a default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from l2rec.cli import load_config, parse_args
from l2rec.runtime.config import ConfigError, build_config
from l2rec.venue.dumps import category_from_lines, category_from_path, infer_category
from tests.helpers import DATA, TABLE, query, run_supervisor

NAUTILUS = DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data"  # Bybit's linear dump, no category in its path
FASTMM = DATA / "FastMM__raw_md_stream.jsonl"  # testnet spot capture
TICKVAULT = DATA / "tickvault__bybit_orderbook.jsonl"  # mainnet spot capture


def book_lines(symbol: str = "BTCUSDT", depth: int = 50) -> list[bytes]:
    """A snapshot and a delta as linear and spot both send them (seq and cts included)."""
    topic = f"orderbook.{depth}.{symbol}"
    snap = {"topic": topic, "type": "snapshot", "ts": 1_733_011_200_000, "data": {
        "s": symbol, "b": [["100.0", "1"]], "a": [["100.5", "2"]], "u": 10, "seq": 5000}, "cts": 1_733_011_199_990}
    delta = {"topic": topic, "type": "delta", "ts": 1_733_011_200_020, "data": {
        "s": symbol, "b": [["100.1", "1"]], "a": [], "u": 11, "seq": 5001}, "cts": 1_733_011_200_010}
    return [json.dumps(snap).encode(), json.dumps(delta).encode()]


def write(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def category(path: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    return load_config(parse_args(["--replay", str(path), *flags]), env or {}).category


# ------------------------------------------------------------------------------------------------ frames


def test_the_shipped_recordings_are_recognised_from_their_frames():
    assert category(FASTMM) == "spot"  # its ack: "ret_msg":"subscribe"
    assert category(TICKVAULT) == "spot"
    assert category(NAUTILUS) == "linear"  # depth 500 (linear/inverse only), XRPUSDT (not inverse)


def test_the_frames_narrow_the_category_by_each_clue():
    linear_ack = b'{"success":true,"ret_msg":"","conn_id":"c","req_id":"","op":"subscribe"}'
    assert category_from_lines([linear_ack, *book_lines()]).category == "linear"  # ack: linear/inverse; USDT
    assert category_from_lines([linear_ack, *book_lines("BTCUSD")]).category == "inverse"
    assert category_from_lines(book_lines("BTC-6JAN23-18000-C", 25)).category == "option"
    assert category_from_lines(book_lines("ETHBTC")).category is None  # spot or linear or inverse: who knows
    both = category_from_lines(book_lines())
    assert both.category is None and both.allowed == {"linear", "spot"}
    mixed = category_from_lines([*book_lines(), *book_lines("BTC-6JAN23-18000-C", 25)])
    assert mixed.category is None and "contradict" in mixed.why


# -------------------------------------------------------------------------------------------------- path


def test_a_directory_named_after_a_category_labels_the_file(tmp_path: Path):
    # Bybit's dumps: .../orderbook/{linear,spot,inverse,option}/SYMBOL/DATE_SYMBOL_obN.data.zip
    spot = write(tmp_path / "orderbook" / "spot" / "BTCUSDT" / "2024-12-01_BTCUSDT_ob50.data", book_lines())
    linear = write(tmp_path / "orderbook" / "linear" / "BTCUSDT" / "2024-12-01_BTCUSDT_ob50.data", book_lines())
    assert category_from_path(spot) == "spot"
    assert category(spot) == "spot" and category(linear) == "linear"
    copied = tmp_path / "orderbook" / "linear" / "XRPUSDT" / NAUTILUS.name
    copied.parent.mkdir(parents=True)
    shutil.copy(NAUTILUS, copied)
    assert category(copied) == "linear"


def test_a_path_the_frames_contradict_is_refused(tmp_path: Path):
    moved = tmp_path / "orderbook" / "inverse" / "XRPUSD" / NAUTILUS.name  # frames: linear only
    moved.parent.mkdir(parents=True)
    shutil.copy(NAUTILUS, moved)
    found = infer_category(moved)
    assert found.category is None and "its path says inverse" in found.why
    with pytest.raises(ConfigError) as err:
        category(moved)
    assert err.value.key == "category" and "--category" in str(err.value)


# ---------------------------------------------------------------------------------------- the user's word


def test_the_flag_or_the_environment_wins_over_the_path_and_the_frames(tmp_path: Path):
    assert category(FASTMM, "--category", "linear") == "linear"
    assert category(FASTMM, env={"L2REC_CATEGORY": "inverse"}) == "inverse"
    spot_dir = write(tmp_path / "spot" / "s.jsonl", book_lines())
    assert category(spot_dir, "--category", "linear") == "linear"
    ambiguous = write(tmp_path / "s.jsonl", book_lines())
    assert category(ambiguous, "--category", "spot") == "spot"


def test_a_config_file_counts_only_when_it_names_the_replay_file_too(tmp_path: Path):
    ambiguous = write(tmp_path / "s.jsonl", book_lines())
    assert build_config({"category": "spot", "replay": str(ambiguous)}, {}, {}).category == "spot"
    # the checkout's conf/recorder.toml says category = "linear" for live recording: not a replay's label
    assert build_config({"category": "linear"}, {}, {"replay": str(FASTMM)}).category == "spot"
    with pytest.raises(ConfigError):
        build_config({"category": "linear"}, {}, {"replay": str(ambiguous)})


# ------------------------------------------------------------------------------------------------ refused


def test_an_ambiguous_file_exits_78_with_one_line_asking_for_the_category(tmp_path: Path):
    path = write(tmp_path / "capture.jsonl", book_lines())
    res = run_supervisor("--replay", str(path), "--db", str(tmp_path / "r.db"), timeout=30)
    assert res.returncode == 78, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "config key 'category'" in lines[0] and "--category linear|spot|inverse" in lines[0]
    assert "linear or spot" in lines[0]
    assert not (tmp_path / "r.db").exists()  # nothing started


def test_an_option_file_is_refused_as_the_flag_is(tmp_path: Path):
    path = write(tmp_path / "opt.jsonl", book_lines("BTC-6JAN23-18000-C", 25))
    with pytest.raises(ConfigError) as err:
        category(path)
    assert err.value.key == "category" and "option order books" in str(err.value)


def test_a_file_without_any_book_frame_still_exits_65(tmp_path: Path):
    path = write(tmp_path / "garbage.jsonl", [b"not json", b'{"op":"nonsense"}'])
    res = run_supervisor("--replay", str(path), "--db", str(tmp_path / "g.db"), timeout=60)
    assert res.returncode == 65, res.stderr


# ------------------------------------------------------------------------------------------- end to end


def test_replaying_with_and_without_the_flag_stores_each_row_once_and_labelled_right(tmp_path: Path):
    db = tmp_path / "r.db"
    first = run_supervisor("--replay", str(FASTMM), "--db", str(db), timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    assert '"category": "spot"' in first.stderr or "category=spot" in first.stderr
    again = run_supervisor("--replay", str(FASTMM), "--db", str(db), "--category", "spot", timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert query(db, f"SELECT category, COUNT(*) FROM {TABLE} GROUP BY category") == [("spot", 32)]
