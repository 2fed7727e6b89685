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

from l2rec.runtime.config import (
    ENV_PREFIX,
    EX_CONFIG,
    ConfigError,
    RecorderConfig,
    _as_symbols,
    build_config,
    from_env,
    load_toml,
)
from l2rec.runtime.pidfile import PidFile
from l2rec.runtime.progress import CommandProgress, Progress, default_interval
from l2rec.storage.sink import check_sink

# The checkout's config file: used when present (running from a clone or an editable install); an
# installed wheel has none, and the defaults apply.
CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = CHECKOUT / "conf" / "recorder.toml"
SUPERVISOR_PROG = "python supervisor.py"

_FLAGS = {  # flag dest -> config field
    "db": "db_path", "symbols": "symbols", "category": "category", "depth": "orderbook_depth",
    "network": "network", "ws_url": "ws_url", "replay": "replay", "health_file": "health_file",
    "log_file": "log_file", "log_level": "log_level", "pid_file": "pid_file", "metrics_port": "metrics_port",
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
    p.add_argument("--category", metavar="linear|spot|inverse",
                   help="Bybit category (default linear; in replay the file's: its path, else its frames)")
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
    p.add_argument("--metrics-port", metavar="N",
                   help="serve Prometheus metrics on http://127.0.0.1:N/metrics (metrics_host to change the "
                        "address; default 0: off)")
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


_EXPORT_DESCRIPTION = (
    "Write a training table (this recorder's, or an older one) to files in the archive's layout: "
    "DIR/TABLE/date=YYYY-MM-DD/symbol=SYMBOL/HH.parquet (zstd) or .csv.gz, one file per UTC hour of "
    "exchange_timestamp. A file already there is merged with the new rows (deduplicated by the natural key). "
    "The database is opened read-only. Needs pyarrow: pip install 'bybit-l2-recorder[parquet]'.")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``l2rec export``."""
    p.add_argument("--db", metavar="DB", required=True, help="SQLite database file")
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write into (made if missing)")
    p.add_argument("--format", metavar="parquet|csv", default="parquet", help="parquet (default) or csv (gzip)")
    p.add_argument("--table", metavar="NAME", default="l2_training_data_practical",
                   help="table to export (default l2_training_data_practical)")
    p.add_argument("--symbols", metavar="A,B", help="only these symbols")
    p.add_argument("--since", metavar="ISO", help="rows at or after this UTC time (e.g. 2024-12-01T00:00)")
    p.add_argument("--until", metavar="ISO", help="rows before this UTC time")


def parse_iso_ms(key: str, value: str | None) -> int | None:
    """An ISO-8601 time (``2024-12-01``, ``2024-12-01T13:00``, with ``Z`` or an offset; naive = UTC) as
    epoch milliseconds; ConfigError naming the flag otherwise."""
    if value is None:
        return None
    from datetime import UTC, datetime

    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(key, value, "must be an ISO-8601 time such as 2024-12-01T13:00Z") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def export_command(args: argparse.Namespace, prog: str) -> int:
    """``l2rec export``: 0 when every file was written; 78 for a bad flag, database or table (or no pyarrow);
    1 when a file could not be written (its path in the message). Progress on stderr only on a terminal."""
    from l2rec.storage.archive import ArchiveError
    from l2rec.storage.export import ExportProgress, export

    tty = sys.stderr.isatty()
    shown = CommandProgress(prog, sys.stderr, tty)
    # Started now, so that the rate and the ETA count the time before the first file too.
    progress = Progress("rows", None, of="the rows", interval_s=default_interval(tty))

    def on_file(p: ExportProgress) -> None:
        if progress.total is None and p.total_rows:
            progress.total = p.total_rows
        text = progress.update(p.rows, p.rows)
        if text is not None:
            shown.show(f"{text}; {p.files:,} files, {p.bytes / 1e6:,.1f} MB ({p.at})")

    try:
        symbols = None
        if args.symbols:
            symbols = list(_as_symbols("symbols", args.symbols))
        since, until = parse_iso_ms("since", args.since), parse_iso_ms("until", args.until)
        done = export(args.db, args.table, args.out, args.format.strip().lower(), symbols, since, until, on_file)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except ArchiveError as exc:
        shown.clear()
        print(f"{prog}: cannot write {exc.path}: {exc.cause}", file=sys.stderr)
        return 1
    shown.clear()
    print(f"exported {done.rows} rows to {done.files} files ({done.bytes} bytes) under {args.out} "
          f"in {done.seconds:.1f} s")
    return 0


_REPORT_DESCRIPTION = (
    "Write what a training table holds as PNG charts, an index.html that shows them with a table of figures "
    "per symbol, and summary.json: per symbol the mid price with the spread as a band, the order-book "
    "imbalance and rows per minute, with the gaps of l2_gaps shaded; a coverage grid (symbol x hour); the "
    "receive latency histogram. Reads SQL aggregates in one pass, never the rows; the database is opened "
    "read-only, so a running recorder is not disturbed. Needs matplotlib: pip install 'bybit-l2-recorder[report]'.")


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``l2rec report``."""
    p.add_argument("--db", metavar="DB", required=True, help="SQLite database file")
    p.add_argument("--out", metavar="DIR", required=True, help="directory to write into (made if missing)")
    p.add_argument("--table", metavar="NAME", default="l2_training_data_practical",
                   help="table to report on (default l2_training_data_practical)")
    p.add_argument("--symbols", metavar="A,B", help="only these symbols")
    p.add_argument("--since", metavar="ISO", help="rows at or after this UTC time (e.g. 2024-12-01T00:00)")
    p.add_argument("--until", metavar="ISO", help="rows before this UTC time")


def report_command(args: argparse.Namespace, prog: str) -> int:
    """``l2rec report``: 0 when the report was written; 78 for a bad flag, database or table, or without
    matplotlib; 65 when no row is in range; 1 when a file could not be written (its path in the message)."""
    from l2rec.report.queries import NoRows
    from l2rec.report.write import MissingMatplotlib, ReportWriteError, write_report

    tty = sys.stderr.isatty()
    shown = CommandProgress(prog, sys.stderr, tty)
    progress = Progress("rows", None, of="the table", interval_s=default_interval(tty))

    def on_block(rows: int, rowids_done: int, rowids: int) -> None:
        if progress.total is None and rowids:
            progress.total = rowids
        text = progress.update(rows, rowids_done)
        if text is not None:
            shown.show(text)

    try:
        symbols = list(_as_symbols("symbols", args.symbols)) if args.symbols else None
        since, until = parse_iso_ms("since", args.since), parse_iso_ms("until", args.until)
        done = write_report(args.db, args.out, args.table, symbols, since, until, on_block)
    except (ConfigError, MissingMatplotlib) as exc:
        shown.clear()
        print(f"{prog}: {'config error: ' if isinstance(exc, ConfigError) else ''}{exc}", file=sys.stderr)
        return EX_CONFIG
    except NoRows:
        shown.clear()
        what = f" of {', '.join(symbols)}" if symbols else ""
        span = "".join(f" {k} {v}" for k, v in (("since", args.since), ("until", args.until)) if v)
        print(f"{prog}: no rows{what} in table {args.table} of {args.db}{span}: nothing to report", file=sys.stderr)
        return os.EX_DATAERR
    except ReportWriteError as exc:
        shown.clear()
        print(f"{prog}: cannot write {exc.path}: {exc.cause}", file=sys.stderr)
        return 1
    shown.clear()
    if done.missing_symbols:
        print(f"{prog}: no rows of {', '.join(done.missing_symbols)} in range", file=sys.stderr)
    print(f"report of {done.rows} rows of {done.symbols} symbol{'' if done.symbols == 1 else 's'} written to "
          f"{done.out / 'index.html'} "
          f"({len(done.files)} files) in {done.seconds:.1f} s")
    return 0


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
    exp = commands.add_parser("export", help="write a table to Parquet/CSV files, the archive's layout",
                              description=_EXPORT_DESCRIPTION)
    add_export_arguments(exp)
    rep = commands.add_parser("report", help="charts, index.html and summary.json of what a table holds",
                              description=_REPORT_DESCRIPTION)
    add_report_arguments(rep)
    args = top.parse_args(argv)
    if args.command == "record":
        return record(args, "l2rec record")
    if args.command == "export":
        return export_command(args, "l2rec export")
    if args.command == "report":
        return report_command(args, "l2rec report")
    top.error(f"unknown command {args.command!r}")  # argparse's choices catch this first
    return 2
