"""``DataIngestorConfig``: the seed's configuration dict, checked into the recorder's own configuration.

Every key of the recorder (``conf/recorder.toml``) is accepted, under the seed's names too (``symbol``,
``sandbox``, ``exchange``); a bad key or value raises :class:`~l2rec.runtime.config.ConfigError` naming it,
before anything starts. Precedence: defaults < environment (``L2REC_*``) < the dict.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from l2rec.runtime.config import (
    ConfigError,
    RecorderConfig,
    _as_float,
    _as_int,
    build_config,
    from_env,
    from_mapping,
)
from l2rec.storage.dburl import local_base

DEFAULT_CALLBACK_QUEUE = 10_000  # updates waiting for the callback; beyond, they are dropped (and counted)
DEFAULT_START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class DataIngestorConfig:
    """The embedding API's configuration: the recorder's (``recorder``) plus the API's own two keys,
    ``callback_queue`` (updates the callback may fall behind by) and ``start_timeout_s``. The seed's keys
    read back as properties."""

    recorder: RecorderConfig
    callback_queue: int = DEFAULT_CALLBACK_QUEUE
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S

    @classmethod
    def from_dict(cls, values: Mapping[str, object], environ: Mapping[str, str] | None = None) -> DataIngestorConfig:
        """Check ``values`` (the seed's ``config_dict``); ConfigError names the first bad key."""
        if not isinstance(values, Mapping):
            raise ConfigError("config", values, "must be a dict of config keys")
        own = {k: v for k, v in values.items() if k in ("callback_queue", "start_timeout_s")}
        rest = {k: v for k, v in values.items() if k not in own}
        env = from_env(os.environ if environ is None else environ)
        given = from_mapping(rest, "the config dict")
        cfg = build_config({}, env, given)
        if cfg.replay is not None:
            raise ConfigError("replay", cfg.replay, "the embedding API records live; replay a file with "
                              "python supervisor.py --replay")
        if "health_file" not in given and "health_file" not in env:
            # Beside the database: two ingestors of one host (or a host beside the CLI) keep their own.
            cfg = dataclasses.replace(cfg, health_file=f"{local_base(cfg.db_path)}.health.json")
        return cls(
            cfg,
            callback_queue=_as_int("callback_queue", own.get("callback_queue", DEFAULT_CALLBACK_QUEUE), 1,
                                   10_000_000),
            start_timeout_s=_as_float("start_timeout_s", own.get("start_timeout_s", DEFAULT_START_TIMEOUT_S), 0.1,
                                      3600.0),
        )

    # The seed's keys, as it named them.
    @property
    def exchange(self) -> str:
        return "bybit"

    @property
    def symbol(self) -> str:
        return self.recorder.symbols[0]

    @property
    def sandbox(self) -> bool:
        return self.recorder.network == "testnet"

    @property
    def db_path(self) -> str:
        return self.recorder.db_path

    @property
    def table_name(self) -> str:
        return self.recorder.table_name

    @property
    def log_updates(self) -> bool:
        return self.recorder.log_updates

    @property
    def buffer_size(self) -> int:
        return self.recorder.buffer_size

    @property
    def write_interval(self) -> float:
        return self.recorder.write_interval

    @property
    def orderbook_depth(self) -> int:
        """The levels wanted (the subscribed Bybit depth is ``recorder.orderbook_depth``)."""
        return self.recorder.levels_wanted

    @property
    def data_retention_hours(self) -> float:
        return self.recorder.data_retention_hours

    @property
    def max_reconnect_attempts(self) -> int:
        return self.recorder.max_reconnect_attempts

    @property
    def reconnect_delay(self) -> float:
        return self.recorder.reconnect_delay
