"""A shard process: one source (websocket or replay file) -> ParserActor -> BookActor -> writer link.

The shard is the unit of failure: if any of its actors dies (including in ``on_start``), the process
stops the others and exits 1, and the root restarts it under its restart policy; the new connection
subscribes afresh, so every book is rebuilt from a fresh snapshot.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized

import pykka

from l2rec.actors.base import Reporter
from l2rec.actors.book import BookActor
from l2rec.actors.connection import ConnectionActor
from l2rec.actors.parser import ParserActor
from l2rec.actors.replay import ReplayActor
from l2rec.messages.control import Begin
from l2rec.messages.health import Status
from l2rec.processes.child import EXIT_FAILED, EXIT_OK, EXIT_RATE_LIMITED, child_setup, run_ticker, stop_requested
from l2rec.runtime.faults import Faults
from l2rec.storage.link import WriterLink
from l2rec.supervision.specs import ShardSpec
from l2rec.supervision.states import Role

log = logging.getLogger("actors.processes")

REPLAY_CREDITS = 4  # replay batches in flight between the file reader and the book actor


def run_shard(spec: ShardSpec, ctl: Connection, uplink_conn: Connection, retry_after: Synchronized[float]) -> None:
    """Shard process entry point. ``retry_after`` is set (seconds) when the exchange rate-limited us."""
    cfg, shard_id, topics = spec.cfg, spec.shard_id, spec.topics
    uplink = child_setup(uplink_conn, cfg.log_level, f"shard-{shard_id}")
    faults = Faults.from_env()
    fatal: list[str] = []
    fatal_exit: list[int] = []  # an exit code a fatal reason asks for (78: every topic refused)
    fatal_event = threading.Event()

    def on_fatal(reason: str, retry_after_s: float | None = None, exit_code: int | None = None) -> None:
        if retry_after_s is not None:
            retry_after.value = retry_after_s
        if exit_code is not None:
            fatal_exit.append(exit_code)
        fatal.append(reason)
        fatal_event.set()

    def reporter(actor: str) -> Reporter:
        return Reporter(uplink, Role.SHARD, actor, shard_id)

    end_of_stream = threading.Event()
    replay = spec.replay
    credits = threading.Semaphore(REPLAY_CREDITS) if replay else None
    link = WriterLink(spec.writer_address, capacity_rows=cfg.writer_queue_rows)

    source: pykka.ActorRef[ReplayActor] | pykka.ActorRef[ConnectionActor]
    if cfg.replay is not None and credits is not None:
        source = ReplayActor.start(cfg.replay, credits, on_fatal, spec.partition)
    else:
        source = ConnectionActor.start(cfg, shard_id, topics, on_fatal, reporter("connection"), faults)
    books = BookActor.start(
        cfg, shard_id, link, connection=None if replay else source, credits=credits,
        end_of_stream=end_of_stream, reporter=reporter("features"), faults=faults,
        topics=() if replay else topics, restarted_topics=topics if spec.incarnation > 0 and not replay else ())
    parser = ParserActor.start(
        books, None if replay else source,
        topics=None if replay else frozenset(topics),
        symbols=frozenset(cfg.symbols) if replay and cfg.replay_filter_symbols else None,
        depth=cfg.orderbook_depth if replay and cfg.replay_filter_depth else None,
        reporter=reporter("parser"), faults=faults, coalesce=not replay)
    actors: list[pykka.ActorRef[pykka.ThreadingActor]] = [source, parser, books]  # type: ignore[list-item]  # ActorRef is invariant in its actor type
    names = ("source", "parser", "features")
    ticker_stop = threading.Event()
    ticker = threading.Thread(target=run_ticker, args=([parser, books] if replay else actors, ticker_stop),
                              name="ticker", daemon=True)
    ticker.start()
    try:
        source.tell(Begin(parser))
    except pykka.ActorDeadError:
        on_fatal("actor(s) died: source (in on_start)")
    log.info("shard started", extra={"fields": {"shard": shard_id, "topics": len(topics),
                                                "source": cfg.replay or cfg.url}})
    why: str | None = None
    while why is None:
        why = stop_requested(ctl, 0.05)
        if end_of_stream.is_set():
            why = "end of stream"
        elif fatal_event.is_set():
            why = fatal[0]
        elif dead := [n for n, r in zip(names, actors, strict=True) if not r.is_alive()]:
            on_fatal(f"actor(s) died: {', '.join(dead)}")
            why = fatal[0]

    # Reverse of the data flow: the source closes (draining what the server already sent), then the
    # parser and the book actor finish their inboxes; the book actor flushes into the writer link, which
    # waits until the writer acknowledged (committed) every batch.
    ticker_stop.set()
    dead = [n for n, r in zip(names, actors, strict=True) if not r.is_alive()]
    for ref in actors:
        try:
            ref.stop(block=True, timeout=cfg.shutdown_deadline_s)
        except pykka.Timeout:
            log.error("actor did not stop in time", extra={"fields": {"shard": shard_id}})
        except pykka.ActorDeadError:
            pass

    def draining(rows_held: int) -> None:
        # Tells the root this shard is still draining into a writer that makes progress: wait for it.
        uplink.put(Status(Role.SHARD, "drain", shard_id, os.getpid(), time.time_ns(), {"rows_held": rows_held}))

    # A replay read to its end waits for the writer however long it retries (a full disk, a held lock),
    # as live recording does, until the root says stop: giving up would make the supervisor restart the
    # shard, which reads the file again, and again.
    stop_seen = why != "end of stream"

    def patient() -> bool:
        nonlocal stop_seen
        if not stop_seen and stop_requested(ctl, 0.0) is not None:
            stop_seen = True
        return not stop_seen

    if not stop_seen and link.rows_held:
        log.info("replay read to its end; waiting for the writer to commit", extra={"fields": {
            "shard": shard_id, "rows_held": link.rows_held}})
    lost = link.close(progress_timeout_s=cfg.shutdown_deadline_s, on_wait=draining, patient=patient)
    uplink.put(Status(Role.SHARD, "drain", shard_id, os.getpid(), time.time_ns(), {"rows_held": lost,
                                                                                     "rows_lost": lost}))
    if lost:
        log.critical("rows lost at stop: the writer acknowledged nothing for shutdown_deadline_s",
                     extra={"fields": {"shard": shard_id, "rows": lost}})
    if fatal:
        log.error("shard failed", extra={"fields": {"shard": shard_id, "reason": fatal[0], "dead_actors": dead}})
        pykka.ActorRegistry.stop_all(block=True, timeout=2.0)
        if fatal_exit:
            sys.exit(fatal_exit[0])
        sys.exit(EXIT_RATE_LIMITED if retry_after.value > 0 else EXIT_FAILED)
    log.info("shard stopped", extra={"fields": {"shard": shard_id, "why": why}})
    sys.exit(EXIT_FAILED if lost else EXIT_OK)
