"""Bybit v5 L2 order book recorder: the root supervisor.

    python supervisor.py                                  # mainnet linear BTCUSDT depth 50 -> ./trading_bot_live.db
    python supervisor.py --replay tests/data/FILE --db out.db

The root process starts the writer process, then the shard process(es), all with the spawn context; it
runs the HealthActor and the log listener, handles signals, and drives an ordered shutdown: shards first
(they drain their sockets and flush), the writer last (it commits and closes). See README.md.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import pykka

from actors.health import ChildInfo, HealthActor, SupervisorState
from actors.processes import run_shard, run_writer
from messages.health import DumpHealth
from messages.writer import StopWriter
from recorder.config import ENV_PREFIX, EX_CONFIG, ConfigError, RecorderConfig, build_config, from_env, load_toml
from recorder.logs import RootLogging

log = logging.getLogger("supervisor")

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "conf" / "recorder.toml"
EXIT_OK = 0
EXIT_CHILD_FAILED = 1
EXIT_INTERRUPTED = 130

_FLAGS = {  # flag dest -> config field
    "db": "db_path", "symbols": "symbols", "category": "category", "depth": "orderbook_depth",
    "network": "network", "ws_url": "ws_url", "replay": "replay", "health_file": "health_file",
    "log_file": "log_file", "log_level": "log_level",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python supervisor.py",
        description="Record Bybit v5 public L2 order books into an SQLite training table "
                    "(one row per book update, with microstructure features).",
        epilog=f"Precedence: defaults < config file < environment ({ENV_PREFIX}<KEY>, e.g. {ENV_PREFIX}DB_PATH) "
               "< flags. A bad value exits 78 naming the key. Signals: SIGTERM/SIGINT stop cleanly (every row "
               "committed); a second SIGINT exits at once; SIGUSR1 writes the health dump; SIGUSR2 dumps "
               "thread stacks to stderr; SIGHUP reopens the log file.",
    )
    p.add_argument("--config", metavar="PATH",
                   help=f"TOML config file (default: {DEFAULT_CONFIG.relative_to(HERE)} when it exists)")
    p.add_argument("--db", metavar="PATH", help="SQLite database file (default ./trading_bot_live.db)")
    p.add_argument("--symbols", metavar="SYM[,SYM...]", help="symbols to record (default BTCUSDT)")
    p.add_argument("--category", choices=("linear", "spot", "inverse"), metavar="linear|spot|inverse",
                   help="Bybit category (default linear)")
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


class Root:
    """The root supervisor: ordered start (writer, then shards), ordered stop (shards, then writer)."""

    def __init__(self, cfg: RecorderConfig) -> None:
        self.cfg = cfg
        self.ctx = multiprocessing.get_context("spawn")
        self.stop_requested = threading.Event()
        self.interrupts = 0
        self.dump_requested = False
        self.reopen_requested = False
        self.started_ns = time.time_ns()

    # -- signals (handlers only set flags; the main loop acts) ----------------------------------------

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts >= 2:
                # At once. SQLite in WAL mode loses at most the uncommitted batch, never the file.
                for p in multiprocessing.active_children():
                    p.kill()
                os._exit(EXIT_INTERRUPTED)
        self.stop_requested.set()

    def _on_usr1(self, _signum: int, _frame: FrameType | None) -> None:
        self.dump_requested = True

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reopen_requested = True

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGHUP, self._on_hup)
        faulthandler.register(signal.SIGUSR2, all_threads=True)

    # -- run ------------------------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.cfg
        logs = RootLogging(cfg.log_level, cfg.log_file)
        self._install_signals()
        health = HealthActor.start(self.started_ns)
        status_q = self.ctx.Queue(maxsize=10_000)
        writer_q = self.ctx.Queue(maxsize=cfg.writer_queue_batches)
        pump_stop = threading.Event()
        pump = threading.Thread(target=_pump_status, args=(status_q, health, pump_stop), name="status-pump",
                                daemon=True)
        pump.start()
        try:
            return self._supervise(health, logs, status_q, writer_q)
        finally:
            pump_stop.set()
            pump.join(timeout=2.0)
            pykka.ActorRegistry.stop_all(block=True, timeout=5.0)
            logs.stop()

    def _supervise(self, health: pykka.ActorRef[Any], logs: RootLogging, status_q: Any, writer_q: Any) -> int:
        cfg = self.cfg
        stop_event = self.ctx.Event()
        ready = self.ctx.Event()
        log.info("starting", extra={"fields": {
            "mode": "replay" if cfg.replay else "live", "source": cfg.replay or cfg.url,
            "symbols": ",".join(cfg.symbols), "depth": cfg.orderbook_depth, "db": cfg.db_path,
            "table": cfg.table_name}})
        writer = self.ctx.Process(target=run_writer, name="writer",
                                  args=(cfg, writer_q, status_q, logs.queue, ready))
        writer.start()
        health.tell(ChildInfo("writer", "writer", writer.pid or 0, time.time_ns()))
        while not ready.wait(0.05):
            if not writer.is_alive():
                log.critical("writer failed to start", extra={"fields": {"exitcode": writer.exitcode}})
                return EXIT_CHILD_FAILED
            if self.stop_requested.is_set():
                writer.kill()
                return EXIT_OK

        topics = () if cfg.replay else cfg.topics
        shard = self.ctx.Process(target=run_shard, name="shard-0",
                                 args=(0, cfg, topics, writer_q, status_q, logs.queue, stop_event))
        shard.start()
        health.tell(ChildInfo("shard-0", "shard", shard.pid or 0, time.time_ns()))
        shards = [shard]

        exit_code = EXIT_OK
        next_state_ns = 0
        while True:
            multiprocessing.connection.wait([p.sentinel for p in (*shards, writer)], timeout=0.2)
            if self.reopen_requested:
                self.reopen_requested = False
                logs.reopen()
                log.info("log file reopened")
            now = time.time_ns()
            if self.dump_requested or now >= next_state_ns:
                health.tell(SupervisorState(
                    {p.name: {"pid": p.pid, "alive": p.is_alive(), "exitcode": p.exitcode, "restarts": 0}
                     for p in (*shards, writer)},
                    {"writer": {"depth": _qsize(writer_q), "capacity": cfg.writer_queue_batches}}))
                next_state_ns = now + 1_000_000_000
            if self.dump_requested:
                self.dump_requested = False
                health.tell(DumpHealth(cfg.health_file, "SIGUSR1"))
            if self.stop_requested.is_set():
                log.info("stop requested: stopping shards, then the writer")
                break
            if not writer.is_alive():
                log.critical("writer exited unexpectedly", extra={"fields": {"exitcode": writer.exitcode}})
                exit_code = EXIT_CHILD_FAILED
                break
            ended = [p for p in shards if not p.is_alive()]
            if ended:
                if cfg.replay and all(p.exitcode == 0 for p in ended) and len(ended) == len(shards):
                    log.info("replay finished")
                    break
                if any(p.exitcode != 0 for p in ended):
                    for p in ended:
                        log.error("shard exited", extra={"fields": {"shard": p.name, "exitcode": p.exitcode}})
                    exit_code = EXIT_CHILD_FAILED
                    break
        return self._shutdown(shards, writer, writer_q, stop_event, exit_code)

    def _shutdown(self, shards: list[Any], writer: Any, writer_q: Any, stop_event: Any, exit_code: int) -> int:
        deadline = time.monotonic() + self.cfg.shutdown_deadline_s
        stop_event.set()
        for p in shards:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                log.error("shard did not stop in time; killing it", extra={"fields": {"shard": p.name}})
                p.kill()
                p.join(timeout=5.0)
                exit_code = exit_code or EXIT_CHILD_FAILED
        if writer.is_alive():
            try:
                writer_q.put(StopWriter("shutdown"), timeout=max(1.0, deadline - time.monotonic()))
            except queue.Full:
                log.error("writer queue full at shutdown")
            writer.join(timeout=max(30.0, deadline - time.monotonic()))
            if writer.is_alive():
                log.critical("writer did not stop in time; killing it (uncommitted batches are lost)")
                writer.kill()
                writer.join(timeout=5.0)
                exit_code = exit_code or EXIT_CHILD_FAILED
            elif writer.exitcode != 0:
                exit_code = exit_code or EXIT_CHILD_FAILED
        log.info("stopped", extra={"fields": {"exit_code": exit_code}})
        return exit_code


def _qsize(q: Any) -> int | None:
    try:
        return int(q.qsize())
    except NotImplementedError:  # macOS
        return None


def _pump_status(status_q: Any, health: pykka.ActorRef[Any], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            msg = status_q.get(timeout=0.2)
        except queue.Empty:
            continue
        except (EOFError, OSError):
            return
        try:
            health.tell(msg)
        except pykka.ActorDeadError:
            return


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args, os.environ)
    except ConfigError as exc:
        print(f"python supervisor.py: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    return Root(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
