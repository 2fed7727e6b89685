"""The command line: ``l2rec record`` (= ``python supervisor.py``), ``python -m l2rec``.

Arguments become a :class:`~l2rec.runtime.config.RecorderConfig` (defaults < config file < environment <
flags); a bad value, wherever it came from, is one line on stderr and exit 78 (EX_CONFIG).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from l2rec.runtime.config import ENV_PREFIX, EX_CONFIG, ConfigError, RecorderConfig, build_config, from_env, load_toml
from l2rec.runtime.pidfile import PidFile
from l2rec.storage.sink import check_sink

# The checkout's config file: used when present (running from a clone or an editable install); an
# installed wheel has none, and the defaults apply.
CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = CHECKOUT / "conf" / "recorder.toml"
SUPERVISOR_PROG = "python supervisor.py"

_FLAGS = {  # flag dest -> config field
    "db": "db_path", "symbols": "symbols", "category": "category", "depth": "orderbook_depth",
    "network": "network", "ws_url": "ws_url", "replay": "replay", "health_file": "health_file",
    "log_file": "log_file", "log_level": "log_level", "pid_file": "pid_file",
}

_RECORD_DESCRIPTION = ("Record Bybit v5 public L2 order books into an SQLite training table "
                       "(one row per book update, with microstructure features).")
_RECORD_EPILOG = (
    f"Precedence: defaults < config file < environment ({ENV_PREFIX}<KEY>, e.g. {ENV_PREFIX}DB_PATH) "
    "< flags. A bad value exits 78 naming the key. Signals: SIGTERM/SIGINT stop cleanly (every row "
    "committed); a second SIGINT exits at once; SIGUSR1 writes the health dump; SIGUSR2 dumps "
    "thread stacks to stderr; SIGHUP reopens the log file.")


def package_version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a checkout never installed)."""
    try:
        return version("bybit-l2-recorder")
    except PackageNotFoundError:
        return "0+unknown"


def add_record_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``record``; ``python supervisor.py`` takes exactly the same."""
    p.add_argument("--config", metavar="PATH",
                   help=f"TOML config file (default: {DEFAULT_CONFIG.relative_to(CHECKOUT)} when it exists)")
    p.add_argument("--db", metavar="PATH", help="SQLite database file (default ./trading_bot_live.db)")
    p.add_argument("--symbols", metavar="SYM[,SYM...]", help="symbols to record (default BTCUSDT)")
    # No argparse `choices`: a bad value must exit 78 naming the key, as it does from a file or the env.
    p.add_argument("--category", metavar="linear|spot|inverse", help="Bybit category (default linear)")
    p.add_argument("--depth", metavar="N",
                   help="order book depth to subscribe: 1, 50, 200 or 1000 (default 50); in replay a filter")
    p.add_argument("--network", metavar="mainnet|testnet|demo",
                   help="mainnet (default), testnet, or demo (demo's public data is mainnet's)")
    p.add_argument("--ws-url", metavar="URL", help="websocket endpoint replacing Bybit's (local server, proxy)")
    p.add_argument("--replay", metavar="PATH",
                   help="record from a file of websocket messages (.jsonl/.data, plain, .gz or .zip) instead "
                        "of the network; exits 0 once every row is committed")
    p.add_argument("--health-file", metavar="PATH", help="where SIGUSR1 writes the JSON health dump")
    p.add_argument("--log-file", metavar="PATH", help="JSON-lines log file (stderr gets readable text)")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO (default), WARNING, ERROR")
    p.add_argument("--pid-file", metavar="PATH",
                   help="write the root's pid here (for kill -USR1/-TERM); removed at exit")
    p.add_argument("--version", action="version", version=f"l2rec {package_version()}")


def parse_args(argv: Sequence[str] | None, prog: str = SUPERVISOR_PROG) -> argparse.Namespace:
    """The flags of ``python supervisor.py`` (the same as ``l2rec record``)."""
    p = argparse.ArgumentParser(prog=prog, description=_RECORD_DESCRIPTION, epilog=_RECORD_EPILOG)
    add_record_arguments(p)
    return p.parse_args(argv)


def load_config(args: argparse.Namespace, environ: Mapping[str, str]) -> RecorderConfig:
    """Defaults < config file < environment < flags; raises ConfigError naming the bad key."""
    if args.config:
        file_values = load_toml(args.config)
    elif DEFAULT_CONFIG.is_file():
        file_values = load_toml(DEFAULT_CONFIG)
    else:
        file_values = {}
    flags = {field: getattr(args, dest) for dest, field in _FLAGS.items() if getattr(args, dest) is not None}
    return build_config(file_values, from_env(environ), flags)


def record(args: argparse.Namespace, prog: str) -> int:
    """Run the recorder until it is stopped (or its replay ends); returns the process exit code."""
    try:
        cfg = load_config(args, os.environ)
        check_sink(cfg)
        with PidFile(cfg.pid_file):
            # Imported here: the root's modules start nothing on import, but `--help` and a config error
            # should not pay for pykka and psutil.
            from l2rec.processes.root import Root
            return Root(cfg).run()
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return EX_CONFIG


def supervisor_main(argv: Sequence[str] | None = None) -> int:
    """``python supervisor.py [flags]``: the design card's entry point, the same as ``l2rec record``."""
    return record(parse_args(argv), SUPERVISOR_PROG)


def main(argv: Sequence[str] | None = None) -> int:
    """``l2rec COMMAND [flags]`` (the console script and ``python -m l2rec``)."""
    top = argparse.ArgumentParser(prog="l2rec", description="Bybit v5 L2 order book recorder.")
    top.add_argument("--version", action="version", version=f"l2rec {package_version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rec = commands.add_parser("record", help="record order books (what `python supervisor.py` does)",
                              description=_RECORD_DESCRIPTION, epilog=_RECORD_EPILOG)
    add_record_arguments(rec)
    args = top.parse_args(argv)
    if args.command == "record":
        return record(args, "l2rec record")
    top.error(f"unknown command {args.command!r}")  # argparse's choices catch this first
    return 2
