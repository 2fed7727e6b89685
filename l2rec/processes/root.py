"""The root process: starts the writer, then the shards (spawn context), supervises them under their
restart policies, detects hangs by heartbeats, runs the HealthActor and the log sink, handles signals,
and stops everything in order (shards first: they drain and flush; the writer last: it commits)."""

from __future__ import annotations

import contextlib
import importlib.machinery
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.sharedctypes import Synchronized
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, cast

import pykka

from l2rec.actors.health import HealthActor
from l2rec.messages.book import RowsPublished
from l2rec.messages.health import (
    ChildInfo,
    DumpHealth,
    HealthRequest,
    MetricsRequest,
    Status,
    SupervisorState,
    TotalsRequest,
)
from l2rec.processes.child import EXIT_RATE_LIMITED, print_stacks
from l2rec.processes.children import Child, ShardChild, WriterChild
from l2rec.runtime.config import EX_CONFIG, RecorderConfig
from l2rec.runtime.logs import HostLogging, RootLogging
from l2rec.runtime.summary import MetricsSnapshot, RunTotals
from l2rec.storage.dburl import redact_url
from l2rec.supervision.policy import ChildPolicy
from l2rec.supervision.states import Action, RestartType

if TYPE_CHECKING:
    from l2rec.runtime.metrics import MetricsServer

log = logging.getLogger("supervisor")

EXIT_OK = 0
EXIT_CHILD_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_ESCALATED = 75
EX_DATAERR = 65  # a replay file with no usable frame

_SPAWN_LOCK = threading.Lock()


@contextlib.contextmanager
def host_main_not_rerun() -> Iterator[None]:
    """While a child is spawned from an embedding host: the child does not run the host's ``__main__``.

    A spawned child runs the parent's main script again (as ``__mp_main__``) before its target, unless
    ``__main__.__spec__`` names a package's ``__main__`` module, which it leaves alone. The children's
    targets live in ``l2rec``, so nothing of the host's script is needed there; running it again would
    start a second ingestor in each child of a script without an ``if __name__ == "__main__"`` guard, and
    import whatever the bot imports (a model, a GPU library) in every child."""
    main = sys.modules.get("__main__")
    with _SPAWN_LOCK:
        if main is None:
            yield
            return
        had_spec = "__spec__" in vars(main)
        saved = vars(main).get("__spec__")
        main.__spec__ = importlib.machinery.ModuleSpec("l2rec.__main__", None)
        try:
            yield
        finally:
            if had_spec:
                main.__spec__ = saved
            else:
                with contextlib.suppress(AttributeError):
                    del main.__spec__


class RootObserver(Protocol):
    """What an embedding host (``l2rec.embed``) hears from the root, besides the logs' own route. The
    methods run on the root's threads and must return quickly."""

    def rows(self, batch: RowsPublished) -> None:
        """Rows a shard made (only while the publish switch is on), in order per shard."""

    def record(self, record: logging.LogRecord) -> None:
        """A child process's log record (after it went to the host's logging)."""

    def child_exited(self, name: str, exitcode: int | None, action: str, error: str | None) -> None:
        """A child process ended; ``action`` is the supervisor's decision (restart, escalate, none)."""

    def changed(self) -> None:
        """Something ``Root.ready`` or ``Root.exit_code`` reads may have changed."""


class NullObserver:
    """The CLI's observer: hears nothing."""

    def rows(self, batch: RowsPublished) -> None:
        pass

    def record(self, record: logging.LogRecord) -> None:
        pass

    def child_exited(self, name: str, exitcode: int | None, action: str, error: str | None) -> None:
        pass

    def changed(self) -> None:
        pass


class Root:
    """The root supervisor: ordered start (writer, then shards), restarts under each child's policy,
    hang detection by heartbeats, ordered stop (shards, then the writer).

    ``embedded``: run inside a host process (``l2rec.embed``), in a thread of its own: no signal handlers
    (the host's stay as they are), logs go to the host's logging configuration, and ``observer`` hears
    rows, child records and child exits. ``run()`` is the same otherwise."""

    def __init__(self, cfg: RecorderConfig, *, embedded: bool = False, observer: RootObserver | None = None) -> None:
        self.cfg = cfg
        self.embedded = embedded
        self.observer: RootObserver = observer if observer is not None else NullObserver()
        self.ctx = multiprocessing.get_context("spawn")
        # An embedding host's "send me the rows" switch, read by every shard's book actor (shared memory).
        self.publish: Synchronized[int] | None = self.ctx.Value("b", 0, lock=False) if embedded else None
        self.final_health: dict[str, Any] | None = None  # the last health dump, kept after the run ended
        self.exit_code: int | None = None  # set when run() returned
        self.final_totals: RunTotals | None = None  # the run's figures, kept after the run ended
        self.stop_requested = threading.Event()
        self.interrupts = 0
        self.stop_signal: int | None = None  # the first SIGINT/SIGTERM: a replay it stopped did not finish
        self.dump_requested = False
        self.reopen_requested = False
        self.started_ns = time.time_ns()
        self.rundir = tempfile.mkdtemp(prefix="l2rec-")
        self.writer_address = os.path.join(self.rundir, "writer.sock")
        self.uplinks: dict[Connection, Child] = {}
        self.uplinks_lock = threading.Lock()
        replay = cfg.replay is not None
        self.writer = WriterChild("writer", cfg, ChildPolicy("writer", cfg.policy(cfg.writer_restart, critical=True)),
                                  ("writer",), address=self.writer_address)
        # A replay shard is done when it ends normally; a failing replay escalates at its breaker's first
        # opening rather than waiting out cooldowns.
        shard_restart = RestartType.TRANSIENT if replay else cfg.shard_restart
        # Replay: the file's topics are split over replay_shards processes (each reads the file and keeps
        # its own topics); live: symbols_per_shard topics per process and connection.
        groups: list[tuple[str, ...]] = [()] * cfg.replay_shards if replay else cfg.shard_topics()
        self.shards = [
            ShardChild(f"shard-{i}", cfg, ChildPolicy(f"shard-{i}", cfg.policy(shard_restart, critical=replay)),
                       ("parser", "features") if replay else ("connection", "parser", "features"),
                       shard_id=i, shard_count=len(groups), topics=topics, writer_address=self.writer_address)
            for i, topics in enumerate(groups)
        ]
        for shard in self.shards:
            shard.publish = self.publish
        self.metrics: MetricsServer | None = None

    def ready(self) -> bool:
        """Running: the writer is up and every shard connected and has every topic in sync (or refused)."""
        return (self.writer.ready.is_set() and self.writer.running
                and all(s.running and s.subscribed for s in self.shards))

    def request_stop(self) -> None:
        """The same ordered stop as SIGTERM, from any thread."""
        self.stop_requested.set()

    def snapshot(self, timeout_s: float = 5.0) -> tuple[dict[str, Any], RunTotals | None]:
        """The health dump (as a dict) and the run's totals, from any thread: live while the run goes on,
        the final ones once it ended ({} and None before it started)."""
        health = getattr(self, "health", None)
        if health is not None and self.exit_code is None:
            try:
                return (cast(dict[str, Any], health.ask(HealthRequest(), timeout=timeout_s)),
                        cast(RunTotals, health.ask(TotalsRequest(), timeout=timeout_s)))
            except (pykka.ActorDeadError, pykka.Timeout):
                pass  # stopping right now: the final figures follow
        return self.final_health or {}, self.final_totals

    # -- /metrics ----------------------------------------------------------------------------------------

    def start_metrics(self) -> None:
        """Listen on ``metrics_host:metrics_port`` (when the port is set) and serve ``/metrics`` from a
        thread of this process. Called before any child starts (``run()`` does, or an embedding host's
        ``start()`` on its own thread first), so that a port in use is a ConfigError naming
        ``metrics_port`` (exit 78) and never a run without the metrics it was asked for."""
        if self.cfg.metrics_port and self.metrics is None:
            # prometheus_client is imported only here: a recorder without metrics does not pay for it
            from l2rec.runtime.metrics import start_metrics_server

            self.metrics = start_metrics_server(self.cfg.metrics_host, self.cfg.metrics_port,
                                                self.metrics_snapshot)

    def metrics_snapshot(self) -> MetricsSnapshot | None:
        """The figures of ``/metrics`` now (any thread: the scrape's); None before the run started or once
        it ended."""
        health = getattr(self, "health", None)
        if health is None or self.exit_code is not None:
            return None
        try:
            snap = cast(MetricsSnapshot, health.ask(MetricsRequest(), timeout=5.0))
        except (pykka.ActorDeadError, pykka.Timeout):
            return None  # stopping right now
        from l2rec.runtime.metrics import db_file_figures

        db_file_figures(self.cfg.db_path, snap)
        return snap

    def abandon(self) -> None:
        """A root that will not run after all (its metrics port could not be had): release what it took."""
        self._stop_metrics()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    # -- signals (handlers only set flags; the main loop acts) ----------------------------------------

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
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
        def dump_all_stacks(_signum: int, _frame: FrameType | None) -> None:
            # The root's own stacks, then every child's (a hang is usually in the writer or a shard).
            print_stacks("root")
            for child in (self.writer, *self.shards):
                if child.proc is not None and child.proc.pid and child.running:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.proc.pid, signal.SIGUSR2)

        signal.signal(signal.SIGUSR2, dump_all_stacks)

    # -- run ------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Start the children, supervise them until a stop (a signal, ``request_stop``, a replay's end, an
        escalation), stop them in order; returns the exit code. A metrics port that cannot be had raises
        ConfigError before anything started."""
        cfg = self.cfg
        try:
            self.start_metrics()
        except BaseException:
            self.abandon()
            raise
        self.logs: RootLogging | HostLogging
        if self.embedded:
            self.logs = HostLogging(self.observer.record)
        else:
            self.logs = RootLogging(cfg.log_level, cfg.log_file)
            self._install_signals()
        self.health = HealthActor.start(self.started_ns)
        if self.metrics is not None:
            log.info("serving metrics", extra={"fields": {"url": self.metrics.url}})
        pump_stop = threading.Event()
        pump = threading.Thread(target=self._pump_uplinks, args=(pump_stop,), name="uplink-pump", daemon=True)
        pump.start()
        exit_code = EXIT_CHILD_FAILED
        try:
            exit_code = self._supervise()
        finally:
            self._final_dump()
            exit_code = self._summarise(exit_code)
            self._stop_metrics()  # the last scrapes saw the final figures; the port is free again at exit
            pump_stop.set()
            pump.join(timeout=2.0)
            # this root's actor only: a host may run other roots (and actors of its own) beside it
            with contextlib.suppress(pykka.ActorDeadError):
                self.health.stop(block=True, timeout=5.0)
            self.logs.stop()
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.exit_code = exit_code
            self.observer.changed()
        return exit_code

    def _summarise(self, exit_code: int) -> int:
        """Log the run's one-line summary (every incarnation counted) and settle a replay's exit code:
        0 only when the file was read to its end, 128 + the signal after an interrupt, 65 (EX_DATAERR)
        when no frame of the file could be used. An error's code (1, 75, 78) stays."""
        try:
            totals = cast(RunTotals, self.health.ask(TotalsRequest(), timeout=5.0))
        except Exception:  # the health actor is gone: nothing to add up, say nothing false
            return exit_code
        self.final_totals = totals
        failed = totals.not_stored
        if self.cfg.replay is not None and exit_code == EXIT_OK:
            if self.stop_signal is not None:
                exit_code = 128 + self.stop_signal
            elif totals.book_frames == 0 and totals.filtered:
                # The file was usable; the user's filter left nothing. Not a data error, but say so.
                log.warning(f"replay of {self.cfg.replay} recorded nothing: every order book frame was "
                            "filtered out by --symbols/--depth", extra={"fields": {"filtered": totals.filtered}})
            elif totals.book_frames == 0:
                exit_code = EX_DATAERR
                log.error(f"replay of {self.cfg.replay} recorded nothing: no valid order book frame in it")
        if failed and exit_code == EXIT_OK:
            exit_code = EXIT_CHILD_FAILED
        what = "replay" if self.cfg.replay is not None else "run"
        if self.cfg.replay is not None and self.stop_signal is not None:
            what = "replay interrupted"
        log.log(logging.ERROR if failed else logging.INFO, f"{what} summary: {totals.line()}",
                extra={"fields": {"exit_code": exit_code}})
        return exit_code

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
        with contextlib.suppress(Exception):
            self.final_health = cast(dict[str, Any], self.health.ask(HealthRequest(), timeout=5.0))

    def _start(self, child: Child) -> None:
        ctl_child, ctl_root = self.ctx.Pipe(duplex=False)
        up_root, up_child = self.ctx.Pipe(duplex=False)
        child.reset()
        target, args = child.process_args(self.ctx, ctl_child, up_child)
        proc = self.ctx.Process(target=target, name=child.name, args=args)
        if self.embedded:
            with host_main_not_rerun():
                proc.start()
        else:
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
            ready: list[Connection] = wait(conns, timeout=0.1)  # type: ignore[assignment]  # wait() returns the objects it was given
            for conn in ready:
                child = self.uplinks[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    with self.uplinks_lock:
                        self.uplinks.pop(conn, None)
                    continue
                if isinstance(msg, RowsPublished):
                    self.observer.rows(msg)
                elif isinstance(msg, logging.LogRecord):
                    self.logs.handle(msg)
                elif isinstance(msg, Status):
                    child.on_status(msg, time.monotonic())
                    with contextlib.suppress(pykka.ActorDeadError):
                        self.health.tell(msg)
                    self.observer.changed()
                elif msg == "ready":
                    child.ready.set()
                    self.observer.changed()

    def _supervise(self) -> int:
        cfg = self.cfg
        replay = cfg.replay is not None
        # In replay the topics come from the file; symbols and depth only filter, when given.
        symbols = ",".join(cfg.symbols) if not replay or cfg.replay_filter_symbols else "all in the file"
        depth = cfg.orderbook_depth if not replay or cfg.replay_filter_depth else "all in the file"
        log.info("starting", extra={"fields": {
            "pid": os.getpid(), "mode": "replay" if replay else "live", "source": cfg.replay or cfg.url,
            "symbols": symbols, "depth": depth, "category": cfg.category, "db": redact_url(cfg.db_path),
            "table": cfg.table_name,
            "shards": len(self.shards)}})
        if cfg.depth_requested is not None and not replay:
            log.info(f"orderbook_depth {cfg.depth_requested} is not a depth Bybit serves; subscribing "
                     f"orderbook.{cfg.orderbook_depth} (the smallest that holds it)", extra={"fields": {
                         "levels_wanted": cfg.depth_requested, "depth": cfg.orderbook_depth}})
        self._start(self.writer)
        while not self.writer.ready.wait(0.05):
            if not self.writer.running:
                self.writer.join(5.0)
                code = self.writer.exitcode
                log.critical("writer failed to start", extra={"fields": {"exitcode": code}})
                # The database's table refuses our rows (the writer said which column): a configuration
                # problem, the same exit code as any bad value.
                return EX_CONFIG if code == EX_CONFIG else EXIT_CHILD_FAILED
            if self.stop_requested.is_set():
                self._kill(self.writer)
                return EXIT_OK
        for shard in self.shards:
            self._start(shard)

        exit_code = EXIT_OK
        next_state = 0.0
        children: list[Child] = [self.writer, *self.shards]
        while True:
            sentinels = [c.proc.sentinel for c in children if c.proc is not None and c.proc.is_alive()]
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
                    child.policy.on_health(now, child.healthy(now, cfg.heartbeat_timeout_s))
            if cfg.replay and all(s.finished for s in self.shards):
                log.info("replay finished")
                break
            if self.dump_requested or now >= next_state:
                self.health.tell(SupervisorState(
                    {c.name: {"role": c.role, "pid": c.proc.pid if c.proc else None, "alive": c.running,
                              "exitcode": c.exitcode, **c.policy.snapshot(now)}
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
            silent = child.silent_actor(now, timeout)
            if silent is not None:
                actor, silent_s = silent
                child.hang_reason = f"hung: actor {actor} sent no heartbeat for {silent_s:.1f}s"
                log.error("child hung; killing it", extra={"fields": {
                    "child": child.name, "actor": actor, "silent_s": round(silent_s, 1)}})
                self._kill(child)

    def _handle_exits(self, children: list[Child], now: float) -> int | None:
        """Apply each exited child's policy; returns an exit code when the tree must stop."""
        for child in children:
            proc = child.proc
            if proc is None or child.exit_handled or proc.is_alive():
                continue
            child.exit_handled = True
            code = proc.exitcode
            if code == EX_CONFIG and child is not self.writer:
                # Bybit refused every topic of the shard (its log says which, with Bybit's message):
                # restarting cannot help. The others go on; when none is left, the run exits 78.
                child.finished = True
                log.error("shard stopped: every topic refused", extra={"fields": {"child": child.name}})
                if all(s.finished for s in self.shards):
                    return EX_CONFIG
                continue
            retry_after = child.retry_after_s() if code == EXIT_RATE_LIMITED else None
            error = child.hang_reason or (f"exit code {code}" if code else None)
            if isinstance(child, ShardChild):
                # what its next incarnation writes as the end of the websocket session this one left open
                why = "hung" if child.hang_reason else "killed" if code == -signal.SIGKILL else f"exit code {code}"
                child.ended = (why, time.time_ns())
            decision = child.policy.on_exit(now, abnormal=code != 0, error=error, retry_after_s=retry_after)
            self.observer.child_exited(child.name, code, str(decision.action), error)
            fields = {"child": child.name, "exitcode": code, "action": decision.action,
                      "attempt": decision.attempt, "delay_s": round(decision.delay_s, 3),
                      "breaker": decision.breaker, "reason": decision.reason, "error": error}
            if decision.action is Action.ESCALATE:
                log.critical("escalating: stopping everything", extra={"fields": fields})
                return EXIT_ESCALATED
            if decision.action is Action.RESTART:
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
            child.send_stop()
        t0 = time.monotonic()
        for child in running:
            while child.running:
                child.join(0.2)
                now = time.monotonic()
                last_drain = child.heartbeats.get("drain", 0.0)
                if now - t0 > grace and now - last_drain > grace:
                    log.error("shard did not stop in time; killing it", extra={"fields": {"shard": child.name}})
                    self._kill(child)
                    exit_code = exit_code or EXIT_CHILD_FAILED
                    break
            if child.exitcode not in (0, None):
                # e.g. rows it could not hand to the writer: the run was not clean, say so
                log.error("shard stopped with an error", extra={"fields": {
                    "shard": child.name, "exitcode": child.exitcode}})
                exit_code = exit_code or EXIT_CHILD_FAILED
        w = self.writer
        if w.running:
            w.send_stop()
            w.join(max(10.0, 2 * self.cfg.shutdown_deadline_s + 5.0))
            if w.running:
                log.critical("writer did not stop in time; killing it (uncommitted batches are lost)")
                self._kill(w)
                exit_code = exit_code or EXIT_CHILD_FAILED
            elif w.exitcode != 0:
                exit_code = exit_code or EXIT_CHILD_FAILED
        log.info("stopped", extra={"fields": {"exit_code": exit_code}})
        return exit_code


    @staticmethod
    def _kill(child: Child) -> None:
        if child.proc is not None:
            child.proc.kill()
            child.proc.join(timeout=5.0)
