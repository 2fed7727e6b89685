"""Configuration: precedence, legacy keys, endpoints (the seed's sandbox/demo bug), clear errors (exit 78)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from l2rec.cli import load_config, parse_args
from l2rec.runtime.config import ConfigError, build_config, from_env, load_toml
from l2rec.venue.endpoints import public_ws_url
from tests.helpers import DATA, clean_env, run_supervisor


def cfg_from(argv: list[str], env: dict[str, str] | None = None):
    return load_config(parse_args(argv), env or {})


def test_defaults_match_the_documented_ones():
    cfg = cfg_from([])
    assert cfg.symbols == ("BTCUSDT",)
    assert cfg.category == "linear"
    assert cfg.orderbook_depth == 50
    assert cfg.db_path == "./trading_bot_live.db"
    assert cfg.table_name == "l2_training_data_practical"
    assert cfg.url == "wss://stream.bybit.com/v5/public/linear"
    assert cfg.topics == ("orderbook.50.BTCUSDT",)


@pytest.mark.parametrize(("network", "category", "url"), [
    ("mainnet", "linear", "wss://stream.bybit.com/v5/public/linear"),
    ("mainnet", "spot", "wss://stream.bybit.com/v5/public/spot"),
    ("testnet", "linear", "wss://stream-testnet.bybit.com/v5/public/linear"),
    ("testnet", "inverse", "wss://stream-testnet.bybit.com/v5/public/inverse"),
    # Demo trading has no public stream: its market data is mainnet's (the seed sent it elsewhere).
    ("demo", "linear", "wss://stream.bybit.com/v5/public/linear"),
    ("demo", "spot", "wss://stream.bybit.com/v5/public/spot"),
])
def test_endpoints_per_network_and_category(network, category, url):
    assert public_ws_url(network, category) == url
    assert cfg_from(["--network", network, "--category", category]).url == url


def test_seed_sandbox_key_means_testnet_and_never_demo_host(tmp_path: Path):
    """The seed inverted this logic; `sandbox = true` is testnet, `false` is mainnet, no stream-demo ever."""
    conf = tmp_path / "c.toml"
    conf.write_text("sandbox = true\nsymbol = 'BTC/USDT:USDT'\n")
    cfg = cfg_from(["--config", str(conf)])
    assert cfg.network == "testnet"
    assert cfg.url == "wss://stream-testnet.bybit.com/v5/public/linear"
    assert cfg.symbols == ("BTCUSDT",)
    conf.write_text("sandbox = false\n")
    assert cfg_from(["--config", str(conf)]).url == "wss://stream.bybit.com/v5/public/linear"
    for network in ("mainnet", "testnet", "demo"):
        assert "stream-demo" not in cfg_from(["--network", network]).url


def test_precedence_defaults_file_env_flags(tmp_path: Path):
    conf = tmp_path / "c.toml"
    conf.write_text('db_path = "file.db"\nsymbols = "ETHUSDT"\nbuffer_size = 7\n[recorder]\nwrite_interval = 0.2\n')
    cfg = cfg_from(["--config", str(conf)])
    assert (cfg.db_path, cfg.symbols, cfg.buffer_size, cfg.write_interval) == ("file.db", ("ETHUSDT",), 7, 0.2)
    cfg = cfg_from(["--config", str(conf)], {"L2REC_DB_PATH": "env.db", "L2REC_BUFFER_SIZE": "9"})
    assert (cfg.db_path, cfg.buffer_size) == ("env.db", 9)
    cfg = cfg_from(["--config", str(conf), "--db", "flag.db", "--symbols", "solusdt,XRPUSDT"],
                   {"L2REC_DB_PATH": "env.db"})
    assert cfg.db_path == "flag.db"
    assert cfg.symbols == ("SOLUSDT", "XRPUSDT")
    assert cfg.topics == ("orderbook.50.SOLUSDT", "orderbook.50.XRPUSDT")


@pytest.mark.parametrize(("layer", "key", "value", "fragment"), [
    ("flags", "orderbook_depth", "2000", "1, 50, 200, 1000"),
    ("flags", "orderbook_depth", "abc", "whole number"),
    ("flags", "network", "demonet", "mainnet, testnet, demo"),
    ("flags", "ws_url", "http://x", "ws:// or wss://"),
    ("flags", "symbols", "BTC USDT", "not a Bybit symbol"),
    ("flags", "log_level", "LOUD", "DEBUG"),
    ("env", "buffer_size", "0", "from 1 to"),
    ("env", "write_interval", "nan", "seconds"),
    ("env", "reconnect_delay", "-1", "seconds"),
    ("env", "nonsense_key", "1", "unknown key"),
])
def test_bad_values_name_the_key(layer, key, value, fragment):
    flags: dict[str, object] = {}
    env: dict[str, object] = {}
    if layer == "flags":
        flags[key] = value
    else:
        env = from_env({f"L2REC_{key.upper()}": value}) if key != "nonsense_key" else {}
    with pytest.raises(ConfigError) as err:
        if key == "nonsense_key":
            from_env({"L2REC_NONSENSE_KEY": value})
        build_config({}, env, flags)
    assert key in str(err.value).lower()
    assert fragment in str(err.value)


def test_unknown_key_in_file_is_an_error(tmp_path: Path):
    conf = tmp_path / "c.toml"
    conf.write_text("buffer_sise = 10\n")
    with pytest.raises(ConfigError, match="buffer_sise"):
        load_toml(conf)


def test_depth_is_the_levels_wanted_live_and_500_is_accepted_in_replay(tmp_path: Path):
    # the seed's meaning: levels wanted; the smallest Bybit depth holding them is subscribed
    for wanted, subscribed in ((1, 1), (5, 50), (10, 50), (50, 50), (51, 200), (500, 1000), (1000, 1000)):
        cfg = build_config({}, {}, {"orderbook_depth": wanted})
        assert (cfg.orderbook_depth, cfg.levels_wanted) == (subscribed, wanted)
        assert cfg.depth_requested == (None if wanted == subscribed else wanted)
        assert cfg.topics == (f"orderbook.{subscribed}.BTCUSDT",)
    with pytest.raises(ConfigError, match=r"orderbook_depth' = 1001.*1, 50, 200, 1000"):
        build_config({}, {}, {"orderbook_depth": 1001})
    with pytest.raises(ConfigError, match="unknown key"):  # derived, not a key
        load_toml_text(tmp_path, "depth_requested = 5\n")
    replay = DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data"
    cfg = build_config({}, {}, {"orderbook_depth": 500, "replay": str(replay)})
    assert cfg.replay_filter_depth and not cfg.replay_filter_symbols


def load_toml_text(tmp_path: Path, text: str) -> dict[str, object]:
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    return load_toml(conf)


def test_replay_filters_only_what_the_user_gave():
    replay = str(DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data")
    cfg = load_config(parse_args(["--replay", replay]), {})
    assert not cfg.replay_filter_symbols and not cfg.replay_filter_depth
    cfg = load_config(parse_args(["--replay", replay, "--symbols", "XRPUSDT"]), {})
    assert cfg.replay_filter_symbols and not cfg.replay_filter_depth


def test_cli_bad_value_exits_78_with_the_key(tmp_path: Path):
    res = run_supervisor("--depth", "2000", "--db", str(tmp_path / "x.db"), timeout=30)
    assert res.returncode == 78
    assert "orderbook_depth" in res.stderr and "1, 50, 200, 1000" in res.stderr
    assert not (tmp_path / "x.db").exists()


def test_cli_bad_env_exits_78(tmp_path: Path):
    res = run_supervisor("--db", str(tmp_path / "x.db"), env=clean_env(L2REC_CATEGORY="futures"), timeout=30)
    assert res.returncode == 78
    assert "category" in res.stderr and "linear, spot, inverse" in res.stderr


def test_cli_missing_replay_file_exits_78(tmp_path: Path):
    res = run_supervisor("--replay", str(tmp_path / "nope.jsonl"), timeout=30)
    assert res.returncode == 78
    assert "replay" in res.stderr and "file not found" in res.stderr


def test_help_documents_every_flag():
    res = run_supervisor("--help", timeout=30)
    assert res.returncode == 0
    for flag in ("--config", "--db", "--symbols", "--category", "--depth", "--network", "--ws-url", "--replay",
                 "--health-file", "--log-file", "--log-level"):
        assert flag in res.stdout


def test_argparse_namespace_has_no_unmapped_flag():
    ns = parse_args([])
    assert isinstance(ns, argparse.Namespace)
