"""Entry points of the spawned child processes: a shard (source -> parser -> features) and the writer.

Each child gets two pipes of its own from the root: ``ctl`` (root -> child: "stop"; EOF means the root is
gone) and ``uplink`` (child -> root: log records and status reports). Children ignore SIGINT and SIGTERM:
a Ctrl-C or a service manager's SIGTERM reaches the whole process group, and the root alone decides the
order of shutdown (shards first, writer last).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection, Listener, wait
from typing import Any

import pykka

from actors.connection import ConnectionActor
from actors.features import FeaturesActor
from actors.parser import ParserActor
from actors.replay import ReplayActor
from actors.reporting import Reporter
from actors.writer import WriteBatch, WriteGroup, WriterActor
from messages.control import Begin, Tick
from messages.health import Status
from recorder.config import RecorderConfig
from recorder.faults import Faults
from recorder.logs import child_logging
from recorder.uplink import Uplink
from recorder.writer_link import WriterLink, decode

log = logging.getLogger("actors.processes")

TICK_S = 0.05  # flush-by-age granularity and watchdogs; finer ticks cost live CPU for nothing
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DB = 3
EXIT_RATE_LIMITED = 4
MAX_GROUP_BATCHES = 64


def _child_setup(uplink_conn: Connection, level: str, role: str) -> Uplink:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    uplink = Uplink(uplink_conn)
    child_logging(uplink, level, role)
    _tune_gc()
    return uplink


def _tune_gc() -> None:
    """The hot path makes ~15 container objects a frame (parsed JSON, levels, updates, rows) and frees
    them by reference counting; none forms a cycle. With the default threshold (700) the cyclic
    collector ran every ~50 frames and, each time its older generations came due, walked every object
    of the process. Modules and classes loaded by now are frozen (never scanned again) and collections
    are rarer; cycles, if any, are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _stop_requested(ctl: Connection, timeout: float) -> str | None:
    """"stop" from the root, or "root gone" when its end of the pipe closed; None otherwise."""
    try:
        if ctl.poll(timeout):
            return str(ctl.recv())
    except (EOFError, OSError):
        return "root gone"
    return None


def _ticker(refs: list[pykka.ActorRef[Any]], stop: threading.Event) -> None:
    while not stop.wait(TICK_S):
        tick = Tick(time.time_ns())
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(tick)


def run_shard(shard_id: int, cfg: RecorderConfig, topics: tuple[str, ...], writer_address: str,
              ctl: Connection, uplink_conn: Connection, retry_after: Any, incarnation: int,
              partition: tuple[int, int] = (0, 1)) -> None:
    """Shard process: one source (websocket or replay file), its parser and features actors.

    The shard is the unit of failure: if any of its actors dies (including in ``on_start``), the process
    stops the others and exits 1, and the root restarts it under its restart policy; the new connection
    subscribes afresh, so every book is rebuilt from a fresh snapshot.
    """
    uplink = _child_setup(uplink_conn, cfg.log_level, f"shard-{shard_id}")
    faults = Faults.from_env()
    fatal: list[str] = []
    fatal_event = threading.Event()

    def on_fatal(reason: str, retry_after_s: float | None = None) -> None:
        if retry_after_s is not None:
            retry_after.value = retry_after_s
        fatal.append(reason)
        fatal_event.set()

    end_of_stream = threading.Event()
    replay = cfg.replay is not None
    credits = threading.Semaphore(4) if replay else None
    link = WriterLink(writer_address, capacity_rows=cfg.writer_queue_rows)

    if replay:
        source = ReplayActor.start(cfg.replay, credits, on_fatal, partition)
    else:
        source = ConnectionActor.start(cfg, shard_id, topics, on_fatal,
                                       Reporter(uplink, "shard", "connection", shard_id), faults)
    features = FeaturesActor.start(
        cfg, shard_id, link, connection=None if replay else source, credits=credits,
        end_of_stream=end_of_stream, reporter=Reporter(uplink, "shard", "features", shard_id), faults=faults,
        restarted_topics=topics if incarnation > 0 and not replay else ())
    parser = ParserActor.start(
        features, None if replay else source,
        topics=None if replay else frozenset(topics),
        symbols=frozenset(cfg.symbols) if replay and cfg.replay_filter_symbols else None,
        depth=cfg.orderbook_depth if replay and cfg.replay_filter_depth else None,
        reporter=Reporter(uplink, "shard", "parser", shard_id), faults=faults, coalesce=not replay)
    actors = [source, parser, features]
    ticker_stop = threading.Event()
    ticker = threading.Thread(target=_ticker, args=([parser, features] if replay else actors, ticker_stop),
                              name="ticker", daemon=True)
    ticker.start()
    try:
        source.tell(Begin(parser))
    except pykka.ActorDeadError:
        on_fatal("actor(s) died: source (in on_start)")
    log.info("shard started", extra={"fields": {"shard": shard_id, "topics": len(topics),
                                                "source": cfg.replay or cfg.url}})
    why = None
    while why is None:
        why = _stop_requested(ctl, 0.05)
        if end_of_stream.is_set():
            why = "end of stream"
        elif fatal_event.is_set():
            why = fatal[0]
        elif dead := [n for n, r in zip(("source", "parser", "features"), actors, strict=True) if not r.is_alive()]:
            on_fatal(f"actor(s) died: {', '.join(dead)}")
            why = fatal[0]

    # Reverse of the data flow: the source closes (draining what the server already sent), then the
    # parser and features finish their inboxes; features flushes into the writer link, which waits until
    # the writer acknowledged (committed) every batch.
    ticker_stop.set()
    dead = [n for n, r in zip(("source", "parser", "features"), actors, strict=True) if not r.is_alive()]
    for ref in actors:
        try:
            ref.stop(block=True, timeout=cfg.shutdown_deadline_s)
        except pykka.Timeout:
            log.error("actor did not stop in time", extra={"fields": {"shard": shard_id}})
        except pykka.ActorDeadError:
            pass
    def draining(rows_held: int) -> None:
        # Tells the root this shard is still draining into a writer that makes progress: wait for it.
        uplink.put(Status("shard", "drain", shard_id, os.getpid(), time.time_ns(), {"rows_held": rows_held}))

    lost = link.close(progress_timeout_s=cfg.shutdown_deadline_s, on_wait=draining)
    if lost:
        log.critical("rows lost at stop: the writer acknowledged nothing for shutdown_deadline_s",
                     extra={"fields": {"shard": shard_id, "rows": lost}})
    if fatal:
        log.error("shard failed", extra={"fields": {"shard": shard_id, "reason": fatal[0], "dead_actors": dead}})
        pykka.ActorRegistry.stop_all(block=True, timeout=2.0)
        sys.exit(EXIT_RATE_LIMITED if retry_after.value > 0 else EXIT_FAILED)
    log.info("shard stopped", extra={"fields": {"shard": shard_id, "why": why}})
    sys.exit(EXIT_FAILED if lost else EXIT_OK)


def run_writer(cfg: RecorderConfig, address: str, ctl: Connection, uplink_conn: Connection) -> None:
    """Writer process: accepts shard links, hands batches to the WriterActor, acks after each commit."""
    uplink = _child_setup(uplink_conn, cfg.log_level, "writer")
    faults = Faults.from_env()
    inflight = threading.Semaphore(32)  # batches handed to the actor, not yet committed (group commit)
    try:
        writer = WriterActor.start(cfg, inflight, Reporter(uplink, "writer", "writer", None), faults)
    except Exception:
        log.critical("cannot open the database", exc_info=True, extra={"fields": {"db_path": cfg.db_path}})
        sys.exit(EXIT_DB)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)  # left by a killed predecessor
    listener = Listener(address, family="AF_UNIX", backlog=64)
    accepted: list[Connection] = []
    lock = threading.Lock()

    def accept_loop() -> None:
        while True:
            try:
                conn = listener.accept()
            except OSError:
                return
            with lock:
                accepted.append(conn)

    threading.Thread(target=accept_loop, name="writer-accept", daemon=True).start()
    uplink.put("ready")
    conns: list[Connection] = []
    stopping: str | None = None
    next_tick = 0.0
    while True:
        with lock:
            conns += accepted
            accepted.clear()
        if stopping is None:
            stopping = _stop_requested(ctl, 0.0)
        if stopping is not None and not conns:
            break
        # Everything already waiting goes to the actor as one group, so it can commit it in one
        # transaction (group commit); each batch takes an in-flight permit, so reading stops while the
        # database is slow and the shards' links fill up.
        group: list[WriteBatch] = []
        for conn in wait(conns, timeout=0.05) if conns else ():
            while len(group) < MAX_GROUP_BATCHES:
                if not group:
                    while not inflight.acquire(timeout=0.5):
                        if not writer.is_alive():
                            sys.exit(EXIT_FAILED)
                elif not inflight.acquire(blocking=False):
                    break
                try:
                    group.append(WriteBatch(decode(conn.recv_bytes()), conn))  # type: ignore[union-attr]
                except (EOFError, OSError):
                    inflight.release()
                    conns.remove(conn)  # type: ignore[arg-type]
                    break
                except (ValueError, TypeError):  # not a batch: a broken peer; drop its connection
                    inflight.release()
                    log.error("undecodable batch; dropping that shard's link")
                    conns.remove(conn)  # type: ignore[arg-type]
                    conn.close()  # type: ignore[union-attr]
                    break
                if not conn.poll(0):  # type: ignore[union-attr]
                    break
        if group:
            writer.tell(WriteGroup(tuple(group)))
        if not writer.is_alive():
            log.critical("writer actor died; exiting so that the supervisor restarts the writer")
            sys.exit(EXIT_FAILED)
        if not conns and stopping is None:
            stopping = _stop_requested(ctl, 0.05)
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + 0.25
            writer.tell(Tick(time.time_ns()))
    listener.close()
    try:
        writer.stop(block=True, timeout=max(5.0, 2 * cfg.shutdown_deadline_s))
    except pykka.Timeout:
        log.critical("writer did not finish in time")
        sys.exit(EXIT_FAILED)
    log.info("writer stopped", extra={"fields": {"reason": stopping}})
