"""Issue 13: the seed's configuration, verbatim but for ``ws_url``, as a TOML file through ``python
supervisor.py --config`` and in the environment; ``orderbook_depth`` as the levels wanted; ``log_updates``."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from l2rec.runtime.config import build_config, from_env, load_toml
from tests.fakes.bybit_server import FakeBybit
from tests.helpers import ROOT, TABLE, clean_env, query, supervisor_cmd, wait_for
from tests.recorder_process import frame_key

# The seed's keys, as its test script and README wrote them (db_path and ws_url filled in per test).
SEED_TOML = """\
exchange = "bybit"
symbol = "BTC/USDT:USDT"
sandbox = false
db_path = "{db}"
table_name = "l2_training_data_practical"
log_updates = {log_updates}
buffer_size = 50
write_interval = 2.0
orderbook_depth = 10
data_retention_hours = 1
max_reconnect_attempts = 3
reconnect_delay = 2.0
ws_url = "{url}"
"""


def run_seed_file(tmp_path: Path, srv: FakeBybit, log_updates: bool, frames: int) -> tuple[int, Path, list[dict]]:
    db = tmp_path / "seed.db"
    conf = tmp_path / "seed.toml"
    conf.write_text(SEED_TOML.format(db=db, url=srv.url, log_updates=str(log_updates).lower()))
    log_file = tmp_path / "recorder.log"
    with (tmp_path / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(supervisor_cmd("--config", str(conf), "--log-file", str(log_file),
                                               "--health-file", str(tmp_path / "health.json")),
                                cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for(lambda: srv.sent_count() >= frames, 60, f"{frames} frames sent")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    logs = [json.loads(ln) for ln in log_file.read_text().splitlines() if ln.strip()]
    return code, db, logs


def test_the_seed_config_file_runs_through_supervisor_py(tmp_path: Path) -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5, seed=8) as srv:
        code, db, logs = run_seed_file(tmp_path, srv, log_updates=False, frames=300)
        sent = {frame_key(r.text) for r in srv.records() if r.topic is not None}
        subscribed = {t for _, t in srv.subscriptions()}
    assert code == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert sent == set(query(db, f"SELECT symbol, sequence, exchange_timestamp FROM {TABLE}"))
    # 10 levels wanted: orderbook.50 subscribed (the smallest Bybit depth holding 10), said once at INFO
    assert subscribed <= {"orderbook.50.BTCUSDT"}
    assert query(db, f"SELECT DISTINCT depth FROM {TABLE}") == [(50,)]
    said = [r for r in logs if "is not a depth Bybit serves" in str(r.get("event"))]
    assert len(said) == 1 and said[0]["level"] == "INFO" and said[0]["levels_wanted"] == 10
    assert not [r for r in logs if r.get("event") == "update"]  # log_updates = false


def test_log_updates_logs_updates_rate_limited(tmp_path: Path) -> None:
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=5, seed=9) as srv:
        code, db, logs = run_seed_file(tmp_path, srv, log_updates=True, frames=300)
    assert code == 0
    updates = [r for r in logs if r.get("event") == "update"]
    rows = query(db, f"SELECT COUNT(*) FROM {TABLE}")[0][0]
    # one line per symbol per 10 s (with the count held back), not one per update
    assert 1 <= len(updates) <= 3 < rows
    first = updates[0]
    assert first["symbol"] == "BTCUSDT" and first["bid"] < first["ask"] and first["role"] == "shard-0"


def test_the_seed_keys_in_the_environment_and_a_file_agree(tmp_path: Path) -> None:
    env = {"L2REC_EXCHANGE": "bybit", "L2REC_SYMBOL": "ETH/USDT:USDT", "L2REC_SANDBOX": "true",
           "L2REC_LOG_UPDATES": "1", "L2REC_ORDERBOOK_DEPTH": "5", "L2REC_DATA_RETENTION_HOURS": "1",
           "L2REC_MAX_RECONNECT_ATTEMPTS": "3", "L2REC_RECONNECT_DELAY": "2.0", "L2REC_WRITE_INTERVAL": "2.0",
           "L2REC_BUFFER_SIZE": "50"}
    from_environment = build_config({}, from_env(env), {})
    conf = tmp_path / "seed.toml"
    conf.write_text(SEED_TOML.format(db="x.db", url="ws://127.0.0.1:1/v5/public/linear", log_updates="true")
                    .replace("BTC/USDT:USDT", "ETH/USDT:USDT").replace("orderbook_depth = 10", "orderbook_depth = 5")
                    .replace("sandbox = false", "sandbox = true"))
    from_file = build_config(load_toml(conf), {}, {})
    for cfg in (from_environment, from_file):
        assert cfg.symbols == ("ETHUSDT",) and cfg.network == "testnet" and cfg.log_updates
        assert (cfg.orderbook_depth, cfg.levels_wanted) == (50, 5)
        assert (cfg.buffer_size, cfg.write_interval, cfg.data_retention_hours) == (50, 2.0, 1.0)
        assert (cfg.max_reconnect_attempts, cfg.reconnect_delay) == (3, 2.0)
    res = subprocess.run(supervisor_cmd("--db", str(tmp_path / "y.db")), cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=clean_env(L2REC_EXCHANGE="kraken"))
    assert res.returncode == 78 and "config key 'L2REC_EXCHANGE' = 'kraken': only bybit" in res.stderr
