"""Issue 13: the recorder embedded in a host process with the seed's API (``create_data_ingestor``), against
the fake Bybit server on 127.0.0.1: the seed's flow end to end, slow and raising callbacks, a database that
cannot be used, an endpoint that refuses, two ingestors in one process, a script that never calls stop()."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from l2rec import DataIngestorConfig, L2Update, create_data_ingestor
from l2rec.embed import CallbackError, StartFailed
from l2rec.runtime.config import ConfigError
from tests.fakes.bybit_server import FakeBybit
from tests.helpers import TABLE, clean_env, query, wait_for
from tests.recorder_process import frame_key

LEVELS = 10


def seed_config(db: Path, url: str, **over: object) -> dict[str, object]:
    """The seed's test-script configuration, verbatim but for the database and ``ws_url``."""
    return {
        "exchange": "bybit", "symbol": "BTC/USDT:USDT", "sandbox": False,
        "db_path": str(db), "table_name": "l2_training_data_practical",
        "log_updates": False, "buffer_size": 50, "write_interval": 2.0, "orderbook_depth": 10,
        "data_retention_hours": 1, "max_reconnect_attempts": 3, "reconnect_delay": 2.0,
        "ws_url": url, **over,
    }


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server():
    srv = FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=5, seed=13)
    srv.start()
    yield srv
    srv.stop()


class Collector:
    """An update callback that keeps what it saw; an error callback too."""

    def __init__(self) -> None:
        self.updates: list[L2Update] = []
        self.errors: list[Exception] = []
        self.threads: set[str] = set()

    def on_update(self, update: L2Update) -> None:
        self.threads.add(threading.current_thread().name)
        self.updates.append(update)

    def on_error(self, error: Exception) -> None:
        self.errors.append(error)


def table_rows(db: Path) -> dict[tuple[str, int, int], tuple]:
    """(symbol, u, seq) -> (timestamp, exchange_timestamp, bids, asks, mid, microprice) of every row."""
    bid_cols = ", ".join(f"bid_price_{i}, bid_size_{i}" for i in range(1, LEVELS + 1))
    ask_cols = ", ".join(f"ask_price_{i}, ask_size_{i}" for i in range(1, LEVELS + 1))
    out = {}
    for r in query(db, f"SELECT symbol, sequence, cross_sequence, timestamp, exchange_timestamp, mid_price, "
                       f"microprice, {bid_cols}, {ask_cols} FROM {TABLE}"):
        levels = r[7:]
        bids = tuple((levels[2 * i], levels[2 * i + 1]) for i in range(LEVELS) if levels[2 * i] is not None)
        asks = tuple((levels[2 * LEVELS + 2 * i], levels[2 * LEVELS + 2 * i + 1]) for i in range(LEVELS)
                     if levels[2 * LEVELS + 2 * i] is not None)
        out[(r[0], r[1], r[2])] = (r[3], r[4], bids, asks, r[5], r[6])
    return out


def assert_in_order_per_topic(updates: list[L2Update]) -> None:
    last: dict[str, int] = {}
    for u in updates:
        assert u.sequence > last.get(u.symbol, -1), (u.symbol, u.sequence, last.get(u.symbol))
        last[u.symbol] = u.sequence


def test_the_seeds_flow_end_to_end(server: FakeBybit, tmp_path: Path) -> None:
    db = tmp_path / "trading_bot_live.db"
    seen = Collector()
    ingestor = create_data_ingestor(seed_config(db, server.url))
    ingestor.set_update_callback(seen.on_update)
    ingestor.set_error_callback(seen.on_error)
    try:
        assert ingestor.start() is True
        assert ingestor.start() is True  # idempotent while running
        wait_for(lambda: len(seen.updates) >= 300, 60, "300 updates through the callback")
        stats = ingestor.get_stats()
        assert {"total_updates", "successful_writes", "failed_writes", "reconnections", "buffer_size",
                "callback_dropped", "health"} <= set(stats)
        assert stats["health"]["topics"]["orderbook.50.BTCUSDT"]["shard"] == 0
        wait_for(ingestor.is_healthy, 30, "is_healthy()")
    finally:
        ingestor.stop()
    ingestor.stop()  # idempotent
    assert not ingestor.is_healthy()

    # every frame the server sent is a row, and every row reached the callback, in order, with its levels
    sent = [r.text for r in server.records() if r.topic is not None]
    rows = table_rows(db)
    assert {frame_key(t) for t in sent} == {(s, u, ts) for (s, u, _), (_, ts, *_) in rows.items()}
    assert len(rows) == len(sent)
    assert len(seen.updates) == len(rows)
    assert_in_order_per_topic(seen.updates)
    for u in seen.updates:
        timestamp, exchange_ts, bids, asks, mid, micro = rows[(u.symbol, u.sequence, u.cross_sequence)]
        assert (u.timestamp, u.exchange_timestamp, u.mid_price, u.microprice) == (timestamp, exchange_ts, mid, micro)
        assert u.bids == bids and u.asks == asks and len(u.bids) == 10
        assert u.bids[0][0] < u.asks[0][0] and u.symbol == "BTCUSDT" and u.recv_time_ns
    assert seen.threads == {f"l2rec-callbacks-{ingestor.number}"}
    # the seed's counters equal the table once stopped
    stats = ingestor.get_stats()
    assert stats["total_updates"] == stats["successful_writes"] == len(rows)
    assert (stats["failed_writes"], stats["buffer_size"], stats["callback_dropped"]) == (0, 0, 0)
    assert stats["reconnections"] == 0 and stats["exit_code"] == 0 and stats["running"] is False
    assert seen.errors == []
    assert query(db, "SELECT COUNT(*) FROM l2_gaps") == [(0,)]
    assert multiprocessing.active_children() == []


def test_a_slow_callback_drops_updates_for_itself_only(server: FakeBybit, tmp_path: Path) -> None:
    db = tmp_path / "slow.db"
    release = threading.Event()
    delivered: list[L2Update] = []

    def slow(update: L2Update) -> None:
        release.wait(120)  # the first update holds the callback thread until the test lets it go
        delivered.append(update)

    ingestor = create_data_ingestor(seed_config(db, server.url, callback_queue=50))
    ingestor.set_update_callback(slow)
    try:
        assert ingestor.start()
        # recording goes on while the callback is stuck: rows keep being committed, updates are dropped
        wait_for(lambda: (query(db, f"SELECT COUNT(*) FROM {TABLE}") or [(0,)])[0][0] >= 400, 60,
                 "400 rows committed while the callback is stuck")
        wait_for(lambda: ingestor.get_stats()["callback_dropped"] > 0, 30, "updates dropped for the callback")
    finally:
        release.set()
        ingestor.stop()
    sent = [r.text for r in server.records() if r.topic is not None]
    n_rows = query(db, f"SELECT COUNT(*) FROM {TABLE}")[0][0]
    assert n_rows == len(sent)  # nothing lost to the slow callback
    stats = ingestor.get_stats()
    assert stats["callback_dropped"] > 0 and stats["callback_dropped"] + len(delivered) == n_rows
    assert stats["successful_writes"] == n_rows
    assert_in_order_per_topic(delivered)


def test_a_raising_callback_goes_to_the_error_callback_and_delivery_goes_on(server: FakeBybit,
                                                                            tmp_path: Path) -> None:
    db = tmp_path / "raising.db"
    seen = Collector()
    calls = [0]

    def flaky(update: L2Update) -> None:
        calls[0] += 1
        if calls[0] % 10 == 0:
            raise ValueError(f"bot bug at {update.sequence}")
        seen.on_update(update)

    ingestor = create_data_ingestor(seed_config(db, server.url))
    ingestor.set_update_callback(flaky)
    ingestor.set_error_callback(seen.on_error)
    try:
        assert ingestor.start()
        wait_for(lambda: calls[0] >= 200, 60, "200 callback calls")
    finally:
        ingestor.stop()
    n_rows = query(db, f"SELECT COUNT(*) FROM {TABLE}")[0][0]
    assert calls[0] == n_rows and len(seen.updates) == n_rows - n_rows // 10
    callback_errors = [e for e in seen.errors if isinstance(e, CallbackError)]
    assert len(callback_errors) == n_rows // 10 == ingestor.get_stats()["callback_errors"]
    assert all(isinstance(e.__cause__, ValueError) for e in callback_errors)


def test_start_is_false_on_a_database_that_cannot_be_used(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    seen = Collector()
    ingestor = create_data_ingestor(seed_config(blocker / "x.db", f"ws://127.0.0.1:{closed_port()}/v5/public/linear"))
    ingestor.set_error_callback(seen.on_error)
    assert ingestor.start() is False
    assert len(seen.errors) == 1 and isinstance(seen.errors[0], StartFailed)
    assert "db_path" in str(seen.errors[0]) and "not a directory" in str(seen.errors[0])
    assert ingestor.start() is False  # an ingestor starts once
    ingestor.stop()
    assert multiprocessing.active_children() == []


def test_start_is_false_when_the_endpoint_refuses(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{closed_port()}/v5/public/linear"
    seen = Collector()
    ingestor = create_data_ingestor(seed_config(tmp_path / "r.db", url, max_reconnect_attempts=2,
                                                reconnect_delay=0.05))
    ingestor.set_error_callback(seen.on_error)
    assert ingestor.start() is False
    failed = [e for e in seen.errors if isinstance(e, StartFailed)]
    assert len(failed) == 1 and "cannot connect" in str(failed[0]) and url in str(failed[0])
    assert multiprocessing.active_children() == []
    # the context manager says so too
    with pytest.raises(StartFailed), create_data_ingestor(seed_config(tmp_path / "r2.db", url,
                                                                      max_reconnect_attempts=1)):
        pass


def test_two_ingestors_in_one_process(server: FakeBybit, tmp_path: Path) -> None:
    a_seen, b_seen = Collector(), Collector()
    a = create_data_ingestor(seed_config(tmp_path / "a.db", server.url, symbol="BTCUSDT"))
    b = create_data_ingestor(seed_config(tmp_path / "b.db", server.url, symbol="ETH/USDT:USDT",
                                         orderbook_depth=3))
    a.set_update_callback(a_seen.on_update)
    b.set_update_callback(b_seen.on_update)
    with a, b:
        wait_for(lambda: len(a_seen.updates) >= 100 and len(b_seen.updates) >= 100, 60, "updates for both")
        assert a.is_healthy() or wait_for(a.is_healthy, 30, "a healthy")
        assert b.is_healthy() or wait_for(b.is_healthy, 30, "b healthy")
    for ing, seen, symbol, db in ((a, a_seen, "BTCUSDT", "a.db"), (b, b_seen, "ETHUSDT", "b.db")):
        rows = query(tmp_path / db, f"SELECT symbol, COUNT(*) FROM {TABLE} GROUP BY symbol")
        assert rows == [(symbol, len(seen.updates))]
        assert {u.symbol for u in seen.updates} == {symbol}
        assert ing.get_stats()["successful_writes"] == len(seen.updates)
    assert {len(u.bids) for u in b_seen.updates} == {3}  # the levels wanted, from an orderbook.50 book
    assert a.number != b.number and multiprocessing.active_children() == []


def test_levels_beyond_the_rows_ten_come_from_the_book(server: FakeBybit, tmp_path: Path) -> None:
    seen = Collector()
    ing = create_data_ingestor(seed_config(tmp_path / "deep.db", server.url, orderbook_depth=40))
    ing.set_update_callback(seen.on_update)
    with ing:
        wait_for(lambda: len(seen.updates) >= 50, 60, "50 updates")
    rows = table_rows(tmp_path / "deep.db")
    assert len(seen.updates) == len(rows)
    for u in seen.updates:
        _, _, bids, asks, _, _ = rows[(u.symbol, u.sequence, u.cross_sequence)]
        assert 10 < len(u.bids) <= 40 and u.bids[:10] == bids and u.asks[:10] == asks
        assert all(u.bids[i][0] > u.bids[i + 1][0] for i in range(len(u.bids) - 1))


def test_bad_keys_raise_the_config_error_naming_them(tmp_path: Path) -> None:
    base = seed_config(tmp_path / "x.db", "ws://127.0.0.1:1/v5/public/linear")
    for key, value, fragment in (("exchange", "binance", "only bybit"), ("orderbook_depth", 5000, "1, 50, 200, 1000"),
                                 ("log_update", True, "did you mean 'log_updates'?"),
                                 ("write_interval", "soon", "seconds"), ("callback_queue", 0, "whole number")):
        with pytest.raises(ConfigError) as err:
            create_data_ingestor({**base, key: value})
        assert err.value.key == key and fragment in str(err.value)
    cfg = DataIngestorConfig.from_dict(base, environ={})
    assert (cfg.symbol, cfg.exchange, cfg.sandbox, cfg.orderbook_depth) == ("BTCUSDT", "bybit", False, 10)
    assert cfg.recorder.topics == ("orderbook.50.BTCUSDT",) and cfg.recorder.data_retention_hours == 1
    assert DataIngestorConfig.from_dict({**base, "sandbox": True, "ws_url": None}, environ={}).recorder.url == \
        "wss://stream-testnet.bybit.com/v5/public/linear"


SCRIPT = """
import sys
from l2rec import create_data_ingestor
updates = []
ing = create_data_ingestor({{'exchange': 'bybit', 'symbol': 'BTC/USDT:USDT', 'sandbox': False,
    'db_path': {db!r}, 'table_name': 'l2_training_data_practical', 'log_updates': False, 'buffer_size': 50,
    'write_interval': 2.0, 'orderbook_depth': 10, 'data_retention_hours': 1, 'max_reconnect_attempts': 3,
    'reconnect_delay': 2.0, 'ws_url': {url!r}}})
ing.set_update_callback(updates.append)
if not ing.start():
    sys.exit(3)
import time
deadline = time.monotonic() + 60
while len(updates) < 100 and time.monotonic() < deadline:
    time.sleep(0.01)
print("started", flush=True)
# no stop(), no __main__ guard: the interpreter's exit runs the same drain
"""


def test_a_script_without_main_guard_or_stop_still_drains_at_exit(server: FakeBybit, tmp_path: Path) -> None:
    db = tmp_path / "script.db"
    script = tmp_path / "bot.py"
    script.write_text(SCRIPT.format(db=str(db), url=server.url))
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=clean_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("started") == 1  # the children did not run the script again
    sent = {frame_key(r.text) for r in server.records() if r.topic is not None}
    assert sent == set(query(db, f"SELECT symbol, sequence, exchange_timestamp FROM {TABLE}"))


def test_update_order_is_per_topic_across_symbols(server: FakeBybit, tmp_path: Path) -> None:
    seen = Collector()
    config = {k: v for k, v in seed_config(tmp_path / "two.db", server.url).items() if k != "symbol"}
    ing = create_data_ingestor({**config, "symbols": "BTCUSDT,ETHUSDT"})
    ing.set_update_callback(seen.on_update)
    with ing:
        wait_for(lambda: len(seen.updates) >= 200, 60, "200 updates")
    by_symbol: dict[str, int] = defaultdict(int)
    for u in seen.updates:
        by_symbol[u.symbol] += 1
    assert set(by_symbol) == {"BTCUSDT", "ETHUSDT"}
    assert_in_order_per_topic(seen.updates)
    assert len(seen.updates) == query(tmp_path / "two.db", f"SELECT COUNT(*) FROM {TABLE}")[0][0]
