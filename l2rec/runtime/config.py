"""Recorder configuration: defaults < config file (TOML) < environment (``L2REC_*``) < command-line flags.

Every value is checked once, here; a bad one raises :class:`ConfigError` naming the key, the value and
what is allowed, and ``supervisor.py`` turns that into exit code 78 (EX_CONFIG).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2rec.storage.dburl import is_postgres_url, redact_url
from l2rec.supervision.policy import RESTART_TYPES, PolicyConfig
from l2rec.supervision.states import RestartType
from l2rec.venue.dumps import infer_category
from l2rec.venue.endpoints import CATEGORIES, LIVE_DEPTHS, NETWORKS, public_ws_url
from l2rec.venue.protocol import MAX_ARGS_CHARS, args_chars

ENV_PREFIX = "L2REC_"
EX_CONFIG = 78
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9\-_]{0,40}$")
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ConfigError(ValueError):
    """A configuration value is wrong; ``key`` names it."""

    def __init__(self, key: str, value: object, why: str) -> None:
        super().__init__(f"config key '{key}' = {value!r}: {why}")
        self.key = key
        self.value = value
        self.why = why


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    """Everything the processes need, immutable and picklable (it crosses to spawned children)."""

    symbols: tuple[str, ...] = ("BTCUSDT",)
    category: str = "linear"
    network: str = "mainnet"
    ws_url: str | None = None
    orderbook_depth: int = 50  # the subscribed Bybit depth (after _check: always one the category serves)
    # The seed's `orderbook_depth` meant "the levels I want": when it is not a Bybit depth, the smallest
    # depth holding it is subscribed (orderbook_depth) and the value asked for is kept here.
    depth_requested: int | None = None
    feature_levels: int = 10
    db_path: str = "./trading_bot_live.db"
    table_name: str = "l2_training_data_practical"
    # PostgreSQL: who wrote a row of l2_gaps / l2_sessions when many recorders share a database (None: the
    # writer uses host:pid of the root process)
    recorder_id: str | None = None
    buffer_size: int = 1000
    write_interval: float = 0.05
    writer_queue_rows: int = 50_000
    max_reconnect_attempts: int = 0
    reconnect_delay: float = 0.5
    reconnect_delay_max_s: float = 60.0
    connect_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    pong_timeout_s: float = 10.0
    topic_silence_s: float = 60.0
    max_frame_bytes: int = 4 * 1024 * 1024
    db_busy_timeout_s: float = 1.0
    db_max_pages: int = 0
    data_retention_hours: float = 0.0
    cleanup_interval_s: float = 60.0
    archive_dir: str | None = None
    archive_grace_s: float = 60.0
    subscribe_batch_args: int = 10
    shutdown_deadline_s: float = 15.0
    symbols_per_shard: int = 250
    replay_shards: int = 2
    heartbeat_timeout_s: float = 30.0
    restart_backoff_min_s: float = 0.5
    restart_backoff_max_s: float = 60.0
    restart_backoff_factor: float = 2.0
    restart_backoff_jitter: float = 0.2
    restart_reset_after_s: float = 30.0
    restart_max_restarts: int = 5
    restart_period_s: float = 60.0
    breaker_cooldown_s: float = 30.0
    breaker_cooldown_max_s: float = 900.0
    breaker_escalate_after_reopens: int = 3
    shard_restart: RestartType = RestartType.PERMANENT
    writer_restart: RestartType = RestartType.PERMANENT
    replay: str | None = None
    replay_filter_symbols: bool = False
    replay_filter_depth: bool = False
    health_file: str = "./health.json"
    pid_file: str | None = None
    log_file: str | None = None
    log_level: str = "INFO"
    log_updates: bool = False  # the seed's key: one log line per update, rate-limited like repeated warnings
    # /metrics in Prometheus' text format, served by the root (l2rec.runtime.metrics); port 0 = not served.
    # Loopback by default: the figures name the symbols and paths of this host.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    @property
    def url(self) -> str:
        """The websocket endpoint: ``ws_url`` when given, else Bybit's public URL for network/category."""
        return self.ws_url or public_ws_url(self.network, self.category)

    @property
    def levels_wanted(self) -> int:
        """The levels a side of an update callback's ``L2Update`` holds at most (the seed's orderbook_depth)."""
        return self.depth_requested or self.orderbook_depth

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(f"orderbook.{self.orderbook_depth}.{s}" for s in self.symbols)

    def shard_topics(self) -> list[tuple[str, ...]]:
        """The live topics split into shards: one connection and process each.

        In order, a shard takes topics until it holds ``symbols_per_shard`` of them or one more would take
        its subscribe args past Bybit's per-connection limit (``MAX_ARGS_CHARS``, counted by
        ``args_chars``). A topic too long to fit even alone gets a shard of its own; ``_check`` refuses it.
        """
        n = self.symbols_per_shard
        groups: list[tuple[str, ...]] = []
        group: list[str] = []
        chars = 2  # the empty array's brackets
        for topic in self.topics:
            quoted = args_chars((topic,)) - 2  # the topic in quotes; a comma before it unless it comes first
            if group and (len(group) >= n or chars + 1 + quoted > MAX_ARGS_CHARS):
                groups.append(tuple(group))
                group, chars = [], 2
            chars += quoted + (1 if group else 0)
            group.append(topic)
        if group:
            groups.append(tuple(group))
        return groups

    def policy(self, restart: RestartType, *, critical: bool) -> PolicyConfig:
        return PolicyConfig(
            restart=restart, backoff_min_s=self.restart_backoff_min_s, backoff_max_s=self.restart_backoff_max_s,
            backoff_factor=self.restart_backoff_factor, backoff_jitter=self.restart_backoff_jitter,
            reset_after_s=self.restart_reset_after_s, max_restarts=self.restart_max_restarts,
            period_s=self.restart_period_s, cooldown_s=self.breaker_cooldown_s,
            cooldown_max_s=self.breaker_cooldown_max_s,
            escalate_after_reopens=self.breaker_escalate_after_reopens, critical=critical)


# Fields the configuration derives and no key sets (conf/recorder.toml lists every other one).
DERIVED_FIELDS = frozenset({"depth_requested"})
FIELDS = {f.name for f in dataclasses.fields(RecorderConfig)} - DERIVED_FIELDS
# Keys users of the seed know, mapped to today's fields. `sandbox` meant "testnet" in the seed.
ALIASES = {"symbol": "symbols", "depth": "orderbook_depth", "db": "db_path"}
LEGACY_ONLY = {"sandbox", "exchange"}


def _as_int(key: str, v: object, lo: int, hi: int) -> int:
    if isinstance(v, bool):
        raise ConfigError(key, v, f"must be a whole number from {lo} to {hi}")
    try:
        n = int(str(v).strip()) if not isinstance(v, int) else v
    except ValueError:
        raise ConfigError(key, v, f"must be a whole number from {lo} to {hi}") from None
    if not lo <= n <= hi:
        raise ConfigError(key, v, f"must be a whole number from {lo} to {hi}")
    return n


def _as_float(key: str, v: object, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ConfigError(key, v, f"must be a number of seconds from {lo} to {hi}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(key, v, f"must be a number of seconds from {lo} to {hi}") from None
    if not lo <= x <= hi:  # also rejects nan
        raise ConfigError(key, v, f"must be a number of seconds from {lo} to {hi}")
    return x


def _as_hours(key: str, v: object) -> float:
    """Hours, fractions allowed (0.05 = 3 minutes); 0 = keep everything."""
    why = "must be a number of hours from 0 (keep everything) to 1000000, e.g. 24 or 0.05"
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ConfigError(key, v, why)
    try:
        x = float(v)
    except ValueError:
        raise ConfigError(key, v, why) from None
    if not 0.0 <= x <= 1_000_000.0:  # also rejects nan
        raise ConfigError(key, v, why)
    return x


def _as_bool(key: str, v: object) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, v, "must be true or false")


def _as_symbols(key: str, v: object) -> tuple[str, ...]:
    if isinstance(v, str):
        items: list[object] = [p.strip() for p in v.split(",")]
    elif isinstance(v, list | tuple):
        items = list(v)
    else:
        raise ConfigError(key, v, "must be a list of symbols or a comma-separated string")
    out: list[str] = []
    for s in items:
        if not isinstance(s, str) or not s:
            raise ConfigError(key, v, "must be a non-empty list of symbols such as BTCUSDT,ETHUSDT")
        # The seed took ccxt-style "BTC/USDT:USDT"; Bybit's topic wants "BTCUSDT".
        sym = s.split(":")[0].replace("/", "").upper()
        if not _SYMBOL_RE.match(sym):
            raise ConfigError(key, v, f"symbol {s!r} is not a Bybit symbol (letters and digits, e.g. BTCUSDT)")
        if sym not in out:
            out.append(sym)
    if not out:
        raise ConfigError(key, v, "must name at least one symbol")
    return tuple(out)


def _as_choice(key: str, v: object, allowed: tuple[str, ...]) -> str:
    s = str(v).strip().lower()
    if s not in allowed:
        raise ConfigError(key, v, f"must be one of {', '.join(allowed)}")
    return s


def _as_category(key: str, v: object) -> str:
    if str(v).strip().lower() == "option":
        raise ConfigError(key, v, "option order books are not supported (their acks, pongs, depths 25/100 and "
                          "symbols differ); use linear, spot or inverse")
    return _as_choice(key, v, CATEGORIES)


def _as_opt_str(key: str, v: object) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _as_recorder_id(key: str, v: object) -> str | None:
    s = _as_opt_str(key, v)
    if s is not None and (len(s) > 200 or not s.isprintable()):
        raise ConfigError(key, v, "must be a printable name of at most 200 characters, e.g. the host's name")
    return s


_HOST_RE = re.compile(r"^[A-Za-z0-9_.:%\-]{1,253}$")


def _as_host(key: str, v: object) -> str:
    """An address to listen on: an IP (``127.0.0.1``, ``::``, ``0.0.0.0``) or a host name; whether this host
    has it is found when the server binds (a ConfigError naming the key then too)."""
    s = str(v).strip().strip("[]") if isinstance(v, str) else ""
    if not _HOST_RE.match(s):
        raise ConfigError(key, v, "must be an address to listen on, e.g. 127.0.0.1 (this host only), 0.0.0.0 "
                          "or :: (every interface), or a host name")
    return s


def _as_port(key: str, v: object) -> int:
    if isinstance(v, bool):
        raise ConfigError(key, v, "must be a TCP port from 1 to 65535, or 0 (off)")
    try:
        n = v if isinstance(v, int) else int(str(v).strip())
    except ValueError:
        raise ConfigError(key, v, "must be a TCP port from 1 to 65535, or 0 (off)") from None
    if not 0 <= n <= 65535:
        raise ConfigError(key, v, "must be a TCP port from 1 to 65535, or 0 (off)")
    return n


def _check_postgres(cfg: RecorderConfig) -> None:
    """A PostgreSQL ``db_path``: psycopg must be installed, and the Parquet archive is SQLite's. The URL is
    shown without its password."""
    shown = redact_url(cfg.db_path)
    if cfg.archive_dir is not None:
        raise ConfigError("archive_dir", cfg.archive_dir, f"the Parquet archive is for an SQLite db_path; with "
                          f"PostgreSQL ({shown}) leave it unset and archive with the server's own tools")
    try:  # imported, not looked up: a broken install is refused here, not in the writer
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError("db_path", shown, "a PostgreSQL URL needs psycopg: "
                          "pip install 'bybit-l2-recorder[postgres]'") from None


def _as_ws_url(key: str, v: object) -> str | None:
    s = _as_opt_str(key, v)
    if s is not None and not re.match(r"^wss?://[^\s/]+", s):
        raise ConfigError(key, v, "must be a ws:// or wss:// URL")
    return s


_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "symbols": _as_symbols,
    "category": lambda k, v: _as_category(k, v),
    "network": lambda k, v: _as_choice(k, v, NETWORKS),
    "ws_url": _as_ws_url,
    # any level count is read here; _check maps it to a depth Bybit serves or refuses it naming the depths
    "orderbook_depth": lambda k, v: _as_int(k, v, 1, 1_000_000),
    "feature_levels": lambda k, v: _as_int(k, v, 1, 10),
    "db_path": lambda k, v: _as_opt_str(k, v) or _raise(k, v, "must be a file path or a postgresql:// URL"),
    "recorder_id": lambda k, v: _as_recorder_id(k, v),
    "table_name": lambda k, v: str(v) if _TABLE_RE.match(str(v)) else _raise(
        k, v, "must be an SQL identifier (letters, digits, underscore)"),
    "buffer_size": lambda k, v: _as_int(k, v, 1, 100_000),
    "write_interval": lambda k, v: _as_float(k, v, 0.001, 60.0),
    "writer_queue_rows": lambda k, v: _as_int(k, v, 1, 100_000_000),
    "max_reconnect_attempts": lambda k, v: _as_int(k, v, 0, 1_000_000),
    "reconnect_delay": lambda k, v: _as_float(k, v, 0.01, 3600.0),
    "reconnect_delay_max_s": lambda k, v: _as_float(k, v, 0.01, 3600.0),
    "connect_timeout_s": lambda k, v: _as_float(k, v, 0.1, 300.0),
    "ping_interval_s": lambda k, v: _as_float(k, v, 0.05, 540.0),
    "subscribe_batch_args": lambda k, v: _as_int(k, v, 1, 10),
    "pong_timeout_s": lambda k, v: _as_float(k, v, 0.05, 600.0),
    "topic_silence_s": lambda k, v: _as_float(k, v, 0.0, 86_400.0),
    "max_frame_bytes": lambda k, v: _as_int(k, v, 64 * 1024, 1 << 30),
    "db_busy_timeout_s": lambda k, v: _as_float(k, v, 0.0, 600.0),
    "db_max_pages": lambda k, v: _as_int(k, v, 0, 1 << 40),
    "data_retention_hours": lambda k, v: _as_hours(k, v),
    "cleanup_interval_s": lambda k, v: _as_float(k, v, 0.05, 86_400.0),
    "archive_dir": _as_opt_str,
    "archive_grace_s": lambda k, v: _as_float(k, v, 0.0, 86_400.0),
    "shutdown_deadline_s": lambda k, v: _as_float(k, v, 0.5, 3600.0),
    "symbols_per_shard": lambda k, v: _as_int(k, v, 1, 10_000),
    "replay_shards": lambda k, v: _as_int(k, v, 1, 64),
    "heartbeat_timeout_s": lambda k, v: _as_float(k, v, 0.5, 3600.0),
    "restart_backoff_min_s": lambda k, v: _as_float(k, v, 0.0, 3600.0),
    "restart_backoff_max_s": lambda k, v: _as_float(k, v, 0.0, 86_400.0),
    "restart_backoff_factor": lambda k, v: _as_float(k, v, 1.0, 10.0),
    "restart_backoff_jitter": lambda k, v: _as_float(k, v, 0.0, 1.0),
    "restart_reset_after_s": lambda k, v: _as_float(k, v, 0.0, 86_400.0),
    "restart_max_restarts": lambda k, v: _as_int(k, v, 0, 1_000_000),
    "restart_period_s": lambda k, v: _as_float(k, v, 0.1, 86_400.0),
    "breaker_cooldown_s": lambda k, v: _as_float(k, v, 0.0, 86_400.0),
    "breaker_cooldown_max_s": lambda k, v: _as_float(k, v, 0.0, 86_400.0),
    "breaker_escalate_after_reopens": lambda k, v: _as_int(k, v, 1, 1_000_000),
    "shard_restart": lambda k, v: RestartType(_as_choice(k, v, RESTART_TYPES)),
    "writer_restart": lambda k, v: RestartType(_as_choice(k, v, RESTART_TYPES)),
    "replay": _as_opt_str,
    "replay_filter_symbols": _as_bool,
    "replay_filter_depth": _as_bool,
    "health_file": lambda k, v: _as_opt_str(k, v) or _raise(k, v, "must be a file path"),
    "pid_file": _as_opt_str,
    "log_file": _as_opt_str,
    "log_updates": _as_bool,
    "metrics_host": _as_host,
    "metrics_port": _as_port,
    "log_level": lambda k, v: str(v).upper() if str(v).upper() in LOG_LEVELS else _raise(
        k, v, f"must be one of {', '.join(LOG_LEVELS)}"),
}


def _raise(key: str, value: object, why: str) -> Any:
    raise ConfigError(key, value, why)


def _normalise(raw: Mapping[str, object], source: str, prefix: str = "") -> dict[str, object]:
    """Map legacy keys to fields and reject unknown ones, so a typo is an error, not a silent default."""
    out: dict[str, object] = {}
    for key, value in raw.items():
        k = key.strip().lower().replace("-", "_")
        if k == "sandbox":
            # The seed's flag: true meant testnet. It never meant demo (which reads mainnet data).
            out["network"] = "testnet" if _as_bool(prefix + key, value) else out.get("network", "mainnet")
            continue
        if k == "exchange":
            if str(value).strip().lower() != "bybit":
                raise ConfigError(prefix + key, value, "only bybit is supported")
            continue
        k = ALIASES.get(k, k)
        if k not in FIELDS:
            near = difflib.get_close_matches(k, [*FIELDS, *ALIASES, "sandbox", "exchange"], n=1, cutoff=0.6)
            if near:
                hint = f"did you mean '{prefix + near[0].upper() if prefix else near[0]}'?"
            else:
                hint = f"known keys: {', '.join(sorted(FIELDS))}"
            raise ConfigError(prefix + key, value, f"unknown key in {source}; {hint}")
        out[k] = value
    return out


def from_mapping(raw: Mapping[str, object], source: str) -> dict[str, object]:
    """A dict of config keys (the embedding API's ``config_dict``), its legacy keys mapped; an unknown key
    raises ConfigError naming it (with the nearest known one)."""
    return _normalise(raw, source)


def load_toml(path: str | os.PathLike[str]) -> dict[str, object]:
    """Read a config file; keys may sit at the top level or under a ``[recorder]`` table."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", str(p), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(p), f"not valid TOML: {exc}") from None
    if isinstance(data.get("recorder"), dict):
        data = {**{k: v for k, v in data.items() if k != "recorder"}, **data["recorder"]}
    return _normalise(data, f"config file {p}")


# L2REC_* variables that are not config keys: test hooks (recorder.faults), the live-test opt-in and CI's
# demand that the PostgreSQL tests run rather than skip.
RESERVED_ENV = frozenset({"FAULTS", "FAULTS_STATE", "LIVE_TESTS", "REQUIRE_POSTGRES"})


def from_env(environ: Mapping[str, str]) -> dict[str, object]:
    raw = {k[len(ENV_PREFIX):]: v for k, v in environ.items()
           if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):] not in RESERVED_ENV}
    return _normalise(raw, f"environment ({ENV_PREFIX}*)", ENV_PREFIX)


def build_config(
    file_values: Mapping[str, object],
    env_values: Mapping[str, object],
    flag_values: Mapping[str, object],
) -> RecorderConfig:
    """Merge the layers (later wins), validate every value, and check the combination."""
    merged: dict[str, object] = {}
    for layer in (file_values, env_values, flag_values):
        merged.update({k: v for k, v in layer.items() if v is not None})
    values = {k: _PARSERS[k](k, v) for k, v in merged.items()}
    cfg = RecorderConfig(**values)
    # In replay, symbols/depth given on the command line or in the environment filter the file; the
    # config file's values (defaults for live recording) do not.
    explicit = {k for layer in (env_values, flag_values) for k, v in layer.items() if v is not None}
    if file_values.get("category") is not None and file_values.get("replay") is not None:
        explicit.add("category")  # a config file written for this replay: its category is the user's word
    return _check(cfg, explicit=explicit)


def replay_category(path: str, default: str) -> str:
    """The category of a replay file the user did not label: from its path, else its first lines
    (``l2rec.venue.dumps.infer_category``). Raises ConfigError naming ``category`` when they do not tell
    (``--category`` is then required) or tell option (not supported). ``default`` is used only for a file
    without a single order book frame: nothing is labelled, and the replay exits 65 saying so."""
    try:
        found = infer_category(path)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ConfigError("replay", path, f"cannot be read: {exc}") from None
    if found.category is None:
        if not found.needed:
            return default
        raise ConfigError("category", None, f"cannot tell the category of the replay file {path}: {found.why}; "
                          "give it with --category linear|spot|inverse")
    if found.category == "option":
        raise ConfigError("category", "option", f"the replay file {path} holds option order books "
                          f"({found.why}), which are not supported")
    return found.category


def _check(cfg: RecorderConfig, explicit: set[str]) -> RecorderConfig:
    if is_postgres_url(cfg.db_path):
        _check_postgres(cfg)
    if cfg.archive_dir is not None:
        try:  # imported, not just looked up: a broken install must be refused here too, not at the first hour
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ConfigError("archive_dir", cfg.archive_dir, "the Parquet archive needs pyarrow: "
                              "pip install 'bybit-l2-recorder[parquet]'") from None
    if cfg.restart_backoff_min_s > cfg.restart_backoff_max_s:
        raise ConfigError("restart_backoff_min_s", cfg.restart_backoff_min_s,
                          f"must not exceed restart_backoff_max_s ({cfg.restart_backoff_max_s})")
    if cfg.heartbeat_timeout_s <= cfg.connect_timeout_s:
        raise ConfigError("heartbeat_timeout_s", cfg.heartbeat_timeout_s,
                          f"must exceed connect_timeout_s ({cfg.connect_timeout_s}): a connect blocks the "
                          "connection actor that long")
    if cfg.reconnect_delay > cfg.reconnect_delay_max_s:
        raise ConfigError("reconnect_delay", cfg.reconnect_delay,
                          f"must not exceed reconnect_delay_max_s ({cfg.reconnect_delay_max_s})")
    if cfg.replay is not None:
        if not Path(cfg.replay).is_file():
            raise ConfigError("replay", cfg.replay, "file not found")
        # In replay the topics come from the frames; symbols/depth only filter when the user set them.
        # The category labels every row (and is part of the key): the user's, else the file's, never a default.
        return dataclasses.replace(
            cfg, category=cfg.category if "category" in explicit else replay_category(cfg.replay, cfg.category),
            replay_filter_symbols=cfg.replay_filter_symbols or "symbols" in explicit,
            replay_filter_depth=cfg.replay_filter_depth or "orderbook_depth" in explicit,
        )
    allowed = LIVE_DEPTHS[cfg.category]
    if cfg.orderbook_depth not in allowed:
        # The seed's meaning: the levels wanted. The smallest depth that holds them is subscribed (the
        # root says so once at INFO); more than the deepest book is an error.
        holding = [d for d in allowed if d >= cfg.orderbook_depth]
        if not holding:
            raise ConfigError(
                "orderbook_depth", cfg.orderbook_depth,
                f"Bybit serves {cfg.category} order books at depths {', '.join(map(str, allowed))}; "
                f"more than {allowed[-1]} levels cannot be had (500 was removed in 2025; replay still accepts it)",
            )
        cfg = dataclasses.replace(cfg, orderbook_depth=holding[0], depth_requested=cfg.orderbook_depth)
    # Bybit's args limit is per connection, and shard_topics() packs the connections under it; only a
    # topic too long for a connection of its own could break it (a valid symbol is at most 41 characters).
    for group in cfg.shard_topics():
        if args_chars(group) > MAX_ARGS_CHARS:
            raise ConfigError("symbols", group[0].split(".", 2)[2],
                              f"topic too long for one connection (Bybit's args limit is {MAX_ARGS_CHARS:,} "
                              "characters per connection)")
    return cfg
