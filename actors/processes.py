"""Entry points of the spawned child processes: a shard (source -> parser -> features) and the writer.

Children ignore SIGINT and SIGTERM: a Ctrl-C or a service manager's SIGTERM reaches the whole process
group, and the root alone decides the order of shutdown (sources first, writer last). A child whose root
disappeared stops by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

import pykka

from actors.connection import ConnectionActor
from actors.features import FeaturesActor
from actors.parser import ParserActor
from actors.replay import ReplayActor
from actors.reporting import Reporter
from actors.writer import WriterActor
from messages.control import Begin, Tick
from messages.writer import RowBatch, ShardDone, StopWriter
from recorder.config import RecorderConfig
from recorder.logs import child_logging

log = logging.getLogger("actors.processes")

TICK_S = 0.02
EXIT_OK = 0
EXIT_FAILED = 1


def _child_setup(log_q: Any, level: str, role: str) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child_logging(log_q, level, role)
    return os.getppid()


def _ticker(refs: list[pykka.ActorRef[Any]], stop: threading.Event) -> None:
    while not stop.wait(TICK_S):
        tick = Tick(time.time_ns())
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(tick)


def run_shard(shard_id: int, cfg: RecorderConfig, topics: tuple[str, ...], writer_q: Any, status_q: Any,
              log_q: Any, stop_event: Any) -> None:
    """Shard process: one source (websocket or replay file) and its parser and features actors."""
    parent = _child_setup(log_q, cfg.log_level, f"shard-{shard_id}")
    fatal: list[str] = []
    fatal_event = threading.Event()

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        fatal_event.set()

    end_of_stream = threading.Event()
    replay = cfg.replay is not None
    credits = threading.Semaphore(4) if replay else None

    if replay:
        source = ReplayActor.start(cfg.replay, credits, on_fatal)
    else:
        source = ConnectionActor.start(cfg, shard_id, topics, on_fatal)
    features = FeaturesActor.start(
        cfg, shard_id, writer_q, connection=None if replay else source, credits=credits,
        end_of_stream=end_of_stream, reporter=Reporter(status_q, "shard", "features", shard_id))
    parser = ParserActor.start(
        features, None if replay else source,
        topics=None if replay else frozenset(topics),
        symbols=frozenset(cfg.symbols) if replay and cfg.replay_filter_symbols else None,
        depth=cfg.orderbook_depth if replay and cfg.replay_filter_depth else None,
        reporter=Reporter(status_q, "shard", "parser", shard_id))
    actors = [source, parser, features]
    ticker_stop = threading.Event()
    ticker = threading.Thread(target=_ticker, args=([parser, features] if replay else actors, ticker_stop),
                              name="ticker", daemon=True)
    ticker.start()
    source.tell(Begin(parser))
    log.info("shard started", extra={"fields": {"shard": shard_id, "topics": len(topics),
                                                "source": cfg.replay or cfg.url}})

    while True:
        if stop_event.wait(0.1) or end_of_stream.is_set() or fatal_event.is_set():
            break
        if os.getppid() != parent:
            on_fatal("root process went away")
            break
        dead = [name for name, ref in zip(("source", "parser", "features"), actors, strict=True)
                if not ref.is_alive()]
        if dead:
            on_fatal(f"actor(s) died: {', '.join(dead)}")
            break

    # Reverse of the data flow: the source closes (draining what the server already sent), then the
    # parser and features finish their inboxes; features flushes and tells the writer it is done.
    deadline = cfg.shutdown_deadline_s
    ticker_stop.set()
    for ref in actors:
        try:
            ref.stop(block=True, timeout=deadline)
        except pykka.Timeout:
            log.error("actor did not stop in time", extra={"fields": {"shard": shard_id}})
        except pykka.ActorDeadError:
            pass
    if fatal:
        log.error("shard failed", extra={"fields": {"shard": shard_id, "reason": fatal[0]}})
        pykka.ActorRegistry.stop_all(block=True, timeout=2.0)
        sys.exit(EXIT_FAILED)
    log.info("shard stopped", extra={"fields": {"shard": shard_id}})


def run_writer(cfg: RecorderConfig, writer_q: Any, status_q: Any, log_q: Any, ready: Any) -> None:
    """Writer process: pumps batches from the bounded queue to the WriterActor until the stop marker."""
    parent = _child_setup(log_q, cfg.log_level, "writer")
    inflight = threading.Semaphore(2)
    try:
        writer = WriterActor.start(cfg, inflight, Reporter(status_q, "writer", "writer", None))
    except Exception:
        log.critical("cannot open the database", exc_info=True, extra={"fields": {"db_path": cfg.db_path}})
        sys.exit(3)
    ready.set()
    shards_done = 0
    stopping = None
    while True:
        try:
            item = writer_q.get(timeout=0.2)
        except queue.Empty:
            item = None
        if not writer.is_alive():
            log.critical("writer actor died; exiting so that the supervisor restarts the writer")
            sys.exit(EXIT_FAILED)
        if item is None:
            if os.getppid() != parent:
                stopping = "root process went away"
                break
            writer.tell(Tick(time.time_ns()))
            continue
        if isinstance(item, RowBatch):
            while not inflight.acquire(timeout=0.5):
                if not writer.is_alive():
                    sys.exit(EXIT_FAILED)
            writer.tell(item)
        elif isinstance(item, ShardDone):
            shards_done += 1
        elif isinstance(item, StopWriter):
            stopping = item.reason
            break
    try:
        writer.stop(block=True, timeout=max(30.0, cfg.shutdown_deadline_s))
    except pykka.Timeout:
        log.critical("writer did not finish in time")
        sys.exit(EXIT_FAILED)
    log.info("writer stopped", extra={"fields": {"reason": stopping, "shards_done": shards_done}})
