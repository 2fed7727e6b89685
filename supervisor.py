"""Bybit v5 L2 order book recorder: the root supervisor.

    python supervisor.py                                  # mainnet linear BTCUSDT depth 50 -> ./trading_bot_live.db
    python supervisor.py --replay tests/data/FILE --db out.db

The root process starts the writer process, then the shard process(es), all with the spawn context; it
runs the HealthActor and the log listener, handles signals, and drives an ordered shutdown: shards first
(they drain their sockets and flush), the writer last (it commits and closes). See README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import Any

import pykka

from actors.health import ChildInfo, HealthActor, SupervisorState
from actors.processes import EXIT_RATE_LIMITED, run_shard, run_writer
from messages.health import DumpHealth, Status
from recorder.config import ENV_PREFIX, EX_CONFIG, ConfigError, RecorderConfig, build_config, from_env, load_toml
from recorder.logs import RootLogging
from recorder.restart_policy import ESCALATE, RESTART, ChildPolicy

log = logging.getLogger("supervisor")

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "conf" / "recorder.toml"
EXIT_OK = 0
EXIT_CHILD_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_ESCALATED = 75

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



@dataclass(eq=False)
class Child:
    """A supervised child process and what the root knows of its current incarnation."""

    name: str
    role: str  # "writer" | "shard"
    shard_id: int | None
    topics: tuple[str, ...]
    policy: ChildPolicy
    expected_actors: tuple[str, ...]
    proc: Any = None
    ctl: Connection | None = None
    started_mono: float = 0.0
    heartbeats: dict[str, float] = field(default_factory=dict)
    synced: bool = False
    ready: threading.Event = field(default_factory=threading.Event)
    retry_after: Any = None
    hang_reason: str | None = None
    exit_handled: bool = True
    finished: bool = False  # a transient child that ended normally (a replay shard)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.is_alive()


class Root:
    """The root supervisor: ordered start (writer, then shards), restarts under each child's policy,
    hang detection by heartbeats, ordered stop (shards, then the writer)."""

    def __init__(self, cfg: RecorderConfig) -> None:
        self.cfg = cfg
        self.ctx = multiprocessing.get_context("spawn")
        self.stop_requested = threading.Event()
        self.interrupts = 0
        self.dump_requested = False
        self.reopen_requested = False
        self.started_ns = time.time_ns()
        self.rundir = tempfile.mkdtemp(prefix="l2rec-")
        self.writer_address = os.path.join(self.rundir, "writer.sock")
        self.uplinks: dict[Connection, Child] = {}
        self.uplinks_lock = threading.Lock()
        replay = cfg.replay is not None
        self.writer = Child("writer", "writer", None, (),
                            ChildPolicy("writer", cfg.policy(cfg.writer_restart, critical=True)), ("writer",))
        # A replay shard is done when it ends normally; a failing replay escalates at its breaker's first
        # opening rather than waiting out cooldowns.
        shard_restart = "transient" if replay else cfg.shard_restart
        # Replay: the file's topics are split over replay_shards processes (each reads the file and keeps
        # its own topics); live: symbols_per_shard topics per process and connection.
        groups: list[tuple[str, ...]] = [()] * cfg.replay_shards if replay else cfg.shard_topics()
        self.shards = [
            Child(f"shard-{i}", "shard", i, topics,
                  ChildPolicy(f"shard-{i}", cfg.policy(shard_restart, critical=replay)),
                  ("parser", "features") if replay else ("connection", "parser", "features"))
            for i, topics in enumerate(groups)
        ]

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
        self.logs = RootLogging(cfg.log_level, cfg.log_file)
        self._install_signals()
        self.health = HealthActor.start(self.started_ns)
        pump_stop = threading.Event()
        pump = threading.Thread(target=self._pump_uplinks, args=(pump_stop,), name="uplink-pump", daemon=True)
        pump.start()
        try:
            return self._supervise()
        finally:
            self._final_dump()
            pump_stop.set()
            pump.join(timeout=2.0)
            pykka.ActorRegistry.stop_all(block=True, timeout=5.0)
            self.logs.stop()
            shutil.rmtree(self.rundir, ignore_errors=True)

    def _final_dump(self) -> None:
        """At exit, once every child's last report arrived (its uplink reached EOF), write the dump: the
        final counters of the run, for the operator and for tests."""
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with self.uplinks_lock:
                if not self.uplinks:
                    break
            time.sleep(0.02)
        with contextlib.suppress(Exception):
            self.health.ask(DumpHealth(self.cfg.health_file, "exit"), timeout=5.0)

    def _start(self, child: Child) -> None:
        cfg = self.cfg
        ctl_child, ctl_root = self.ctx.Pipe(duplex=False)
        up_root, up_child = self.ctx.Pipe(duplex=False)
        child.ready.clear()
        child.heartbeats = {}
        child.synced = False
        child.hang_reason = None
        if child.role == "writer":
            proc = self.ctx.Process(target=run_writer, name=child.name,
                                    args=(cfg, self.writer_address, ctl_child, up_child))
        else:
            child.retry_after = self.ctx.Value("d", 0.0, lock=False)
            proc = self.ctx.Process(target=run_shard, name=child.name,
                                    args=(child.shard_id, cfg, child.topics, self.writer_address, ctl_child,
                                          up_child, child.retry_after, child.policy.restarts,
                                          (child.shard_id, len(self.shards))))
        proc.start()
        ctl_child.close()
        up_child.close()
        child.proc = proc
        child.ctl = ctl_root
        child.exit_handled = False
        child.started_mono = time.monotonic()
        with self.uplinks_lock:
            self.uplinks[up_root] = child
        self.health.tell(ChildInfo(child.name, child.role, proc.pid or 0, time.time_ns()))

    def _pump_uplinks(self, stop: threading.Event) -> None:
        """Log records and status reports from every child; the heartbeats the hang detector reads."""
        while not stop.is_set():
            with self.uplinks_lock:
                conns = list(self.uplinks)
            if not conns:
                stop.wait(0.05)
                continue
            for conn in wait(conns, timeout=0.1):
                child = self.uplinks[conn]  # type: ignore[index]
                try:
                    msg = conn.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    with self.uplinks_lock:
                        self.uplinks.pop(conn, None)  # type: ignore[arg-type]
                    continue
                if isinstance(msg, logging.LogRecord):
                    self.logs.handle(msg)
                elif isinstance(msg, Status):
                    child.heartbeats[msg.actor] = time.monotonic()
                    if msg.actor == "features":
                        topics = msg.stats.get("topics")
                        child.synced = isinstance(topics, dict) and len(topics) >= len(child.topics) and all(
                            t.get("synced") for t in topics.values())
                    with contextlib.suppress(pykka.ActorDeadError):
                        self.health.tell(msg)
                elif msg == "ready":
                    child.ready.set()

    def _supervise(self) -> int:
        cfg = self.cfg
        log.info("starting", extra={"fields": {
            "mode": "replay" if cfg.replay else "live", "source": cfg.replay or cfg.url,
            "symbols": ",".join(cfg.symbols), "depth": cfg.orderbook_depth, "db": cfg.db_path,
            "table": cfg.table_name, "shards": len(self.shards)}})
        self._start(self.writer)
        while not self.writer.ready.wait(0.05):
            if not self.writer.running:
                log.critical("writer failed to start", extra={"fields": {"exitcode": self.writer.proc.exitcode}})
                return EXIT_CHILD_FAILED
            if self.stop_requested.is_set():
                self.writer.proc.kill()
                return EXIT_OK
        for shard in self.shards:
            self._start(shard)

        exit_code = EXIT_OK
        next_state = 0.0
        children = [self.writer, *self.shards]
        while True:
            sentinels = [c.proc.sentinel for c in children if c.running]
            if sentinels:
                wait(sentinels, timeout=0.1)
            else:
                self.stop_requested.wait(0.1)
            now = time.monotonic()
            if self.reopen_requested:
                self.reopen_requested = False
                self.logs.reopen()
                log.info("log file reopened")
            if self.stop_requested.is_set():
                log.info("stop requested: stopping shards, then the writer")
                break
            self._detect_hangs(children, now)
            escalate = self._handle_exits(children, now)
            if escalate is not None:
                exit_code = escalate
                break
            for child in children:
                if not child.running and not child.finished and child.policy.due(now):
                    log.warning("restarting", extra={"fields": {
                        "child": child.name, "attempt": child.policy.attempt, "breaker": child.policy.breaker,
                        "last_error": child.policy.last_error}})
                    child.policy.on_restart(now)
                    self._start(child)
                elif child.running:
                    heard = all(now - child.heartbeats.get(a, 0.0) < cfg.heartbeat_timeout_s
                                for a in child.expected_actors)
                    child.policy.on_health(now, heard and (child.role == "writer" or child.synced))
            if cfg.replay and all(s.finished for s in self.shards):
                log.info("replay finished")
                break
            if self.dump_requested or now >= next_state:
                self.health.tell(SupervisorState(
                    {c.name: {"role": c.role, "pid": c.proc.pid if c.proc else None, "alive": c.running,
                              "exitcode": c.proc.exitcode if c.proc else None, **c.policy.snapshot(now)}
                     for c in children}))
                next_state = now + 1.0
            if self.dump_requested:
                self.dump_requested = False
                self.health.tell(DumpHealth(cfg.health_file, "SIGUSR1"))
        return self._shutdown(exit_code)

    def _detect_hangs(self, children: list[Child], now: float) -> None:
        """``is_alive()`` cannot see a hung actor; one silent past the deadline fails its whole process."""
        timeout = self.cfg.heartbeat_timeout_s
        for child in children:
            if not child.running or now - child.started_mono < timeout:
                continue
            for actor in child.expected_actors:
                last = child.heartbeats.get(actor, child.started_mono)
                if now - last > timeout:
                    child.hang_reason = f"hung: actor {actor} sent no heartbeat for {now - last:.1f}s"
                    log.error("child hung; killing it", extra={"fields": {
                        "child": child.name, "actor": actor, "silent_s": round(now - last, 1)}})
                    child.proc.kill()
                    child.proc.join(timeout=5.0)
                    break

    def _handle_exits(self, children: list[Child], now: float) -> int | None:
        """Apply each exited child's policy; returns an exit code when the tree must stop."""
        for child in children:
            proc = child.proc
            if proc is None or child.exit_handled or proc.is_alive():
                continue
            child.exit_handled = True
            code = proc.exitcode
            retry_after = None
            if code == EXIT_RATE_LIMITED and child.retry_after is not None:
                retry_after = float(child.retry_after.value) or None
            error = child.hang_reason or (f"exit code {code}" if code else None)
            decision = child.policy.on_exit(now, abnormal=code != 0, error=error, retry_after_s=retry_after)
            fields = {"child": child.name, "exitcode": code, "action": decision.action,
                      "attempt": decision.attempt, "delay_s": round(decision.delay_s, 3),
                      "breaker": decision.breaker, "reason": decision.reason, "error": error}
            if decision.action == ESCALATE:
                log.critical("escalating: stopping everything", extra={"fields": fields})
                return EXIT_ESCALATED
            if decision.action == RESTART:
                log.warning("child exited; restart scheduled", extra={"fields": fields})
            else:
                child.finished = True
                log.info("child finished", extra={"fields": fields})
                if child is self.writer:
                    return EXIT_CHILD_FAILED
        return None

    def _shutdown(self, exit_code: int) -> int:
        # A shard gets shutdown_deadline_s to close its socket and flush, and then as long as it reports
        # that it is still draining into a writer that makes progress (a backlog of acked batches).
        grace = self.cfg.shutdown_deadline_s + 5.0
        running = [c for c in self.shards if c.running]  # one waiting for its restart was already judged
        for child in running:
            _send_stop(child)
        t0 = time.monotonic()
        for child in running:
            while child.proc.is_alive():
                child.proc.join(timeout=0.2)
                now = time.monotonic()
                last_drain = child.heartbeats.get("drain", 0.0)
                if now - t0 > grace and now - last_drain > grace:
                    log.error("shard did not stop in time; killing it", extra={"fields": {"shard": child.name}})
                    child.proc.kill()
                    child.proc.join(timeout=5.0)
                    exit_code = exit_code or EXIT_CHILD_FAILED
                    break
            if child.proc.exitcode not in (0, None):
                # e.g. rows it could not hand to the writer: the run was not clean, say so
                log.error("shard stopped with an error", extra={"fields": {
                    "shard": child.name, "exitcode": child.proc.exitcode}})
                exit_code = exit_code or EXIT_CHILD_FAILED
        w = self.writer
        if w.running:
            _send_stop(w)
            w.proc.join(timeout=max(10.0, 2 * self.cfg.shutdown_deadline_s + 5.0))
            if w.proc.is_alive():
                log.critical("writer did not stop in time; killing it (uncommitted batches are lost)")
                w.proc.kill()
                w.proc.join(timeout=5.0)
                exit_code = exit_code or EXIT_CHILD_FAILED
            elif w.proc.exitcode != 0:
                exit_code = exit_code or EXIT_CHILD_FAILED
        log.info("stopped", extra={"fields": {"exit_code": exit_code}})
        return exit_code


def _send_stop(child: Child) -> None:
    if child.ctl is not None and child.running:
        with contextlib.suppress(OSError):
            child.ctl.send("stop")


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
