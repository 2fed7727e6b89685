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
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized

import pykka

from l2rec.actors.base import Reporter, tell_quietly
from l2rec.actors.book import BookActor
from l2rec.actors.connection import CREDIT_WINDOW_FRAMES, ConnectionActor
from l2rec.actors.parser import ParserActor
from l2rec.actors.replay import ReplayActor
from l2rec.messages.control import Begin, StopReason
from l2rec.messages.health import Status
from l2rec.processes.child import EXIT_FAILED, EXIT_OK, EXIT_RATE_LIMITED, child_setup, run_ticker, stop_requested
from l2rec.runtime.faults import Faults
from l2rec.runtime.publish import RowPublisher
from l2rec.storage.link import WriterLink
from l2rec.storage.sidecar import lost_gaps, write_sidecar
from l2rec.supervision.specs import ShardSpec
from l2rec.supervision.states import Role
from l2rec.venue.credits import ByteCredits

log = logging.getLogger("actors.processes")

REPLAY_CREDITS = 4  # replay batches in flight between the file reader and the book actor
SESSIONS_PER_INCARNATION = 1_000_000  # session ids: incarnation * this + n, unique across restarts
STOP_POLL_S = 0.25


def stop_in_order(actors: Sequence[pykka.ActorRef[pykka.ThreadingActor]], names: Sequence[str],
                  idle_s: float, progress: Callable[[], object], on_progress: Callable[[], None]) -> list[str]:
    """Stop ``actors`` one after the other, each once it finished its inbox (pykka queues the stop behind
    it), for as long as ``progress()`` keeps changing; one that made none for ``idle_s`` is left behind.

    Returns what went wrong, one line each: an actor that did not stop in time, or that died while
    draining (what it held is lost either way). ``on_progress`` is called on progress (the root's
    heartbeat: a shard working through a backlog is not hung).
    """
    problems: list[str] = []
    for name, ref in zip(names, actors, strict=True):
        if not ref.is_alive():
            continue  # died before the stop: the main loop reported it
        future = ref.stop(block=False)
        assert not isinstance(future, bool)  # block=False: a future
        mark, last = progress(), time.monotonic()
        while True:
            try:
                if not future.get(timeout=STOP_POLL_S):
                    problems.append(f"{name} died while draining")
                break
            except pykka.Timeout:
                now, moved = time.monotonic(), progress()
                if moved != mark:
                    mark, last = moved, now
                    on_progress()
                elif now - last > idle_s:
                    problems.append(f"{name} did not stop within {idle_s:g} s without progress")
                    break
    return problems


def run_shard(spec: ShardSpec, ctl: Connection, uplink_conn: Connection, retry_after: Synchronized[float],
              publish: Synchronized[int] | None = None) -> None:
    """Shard process entry point. ``retry_after`` is set (seconds) when the exchange rate-limited us.
    ``publish`` (an embedding host's switch, None for the CLI): while non-zero, the rows made go up the
    uplink too (``l2rec.runtime.publish``)."""
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
    # Live: the bytes read from the socket and not yet parsed are bounded (reader -> parser backpressure).
    byte_credits = None if replay else ByteCredits(CREDIT_WINDOW_FRAMES * cfg.max_frame_bytes)

    source: pykka.ActorRef[ReplayActor] | pykka.ActorRef[ConnectionActor]
    if cfg.replay is not None and credits is not None:
        source = ReplayActor.start(cfg.replay, credits, on_fatal, spec.partition, reporter=reporter("replay"))
    else:
        source = ConnectionActor.start(cfg, shard_id, topics, on_fatal, reporter("connection"), faults,
                                       byte_credits, session_base=spec.incarnation * SESSIONS_PER_INCARNATION)
    books = BookActor.start(
        cfg, shard_id, link, connection=None if replay else source, credits=credits,
        end_of_stream=end_of_stream, byte_credits=byte_credits, reporter=reporter("features"), faults=faults,
        topics=() if replay else topics, restarted_topics=topics if spec.incarnation > 0 and not replay else (),
        resume=spec.resume, close_session=spec.close_session,
        publisher=None if publish is None else RowPublisher(uplink, publish, shard_id, cfg.levels_wanted))
    parser = ParserActor.start(
        books, None if replay else source,
        topics=None if replay else frozenset(topics),
        symbols=frozenset(cfg.symbols) if replay and cfg.replay_filter_symbols else None,
        depth=cfg.orderbook_depth if replay and cfg.replay_filter_depth else None,
        reporter=reporter("parser"), faults=faults, coalesce=not replay, credits=byte_credits)
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
    if why == "root gone" and not replay:
        tell_quietly(source, StopReason(why))  # the session's record says so, not "shutdown"

    def draining(rows_held: int) -> None:
        # Tells the root this shard is still draining into a writer that makes progress: wait for it.
        uplink.put(Status(Role.SHARD, "drain", shard_id, os.getpid(), time.time_ns(), {"rows_held": rows_held}))

    # Waiting is bounded by progress, not by a fixed time: after a flood the parser may hold a backlog
    # (up to the byte credits' window) that takes longer than any fixed deadline would guess.
    stuck = stop_in_order(
        actors, names, cfg.shutdown_deadline_s,
        progress=lambda: (byte_credits.progress() if byte_credits else 0, link.acked, link.rows_held),
        on_progress=lambda: draining(link.rows_held))
    for problem in stuck:
        log.critical("actor did not finish its backlog at stop: what it held is lost", extra={"fields": {
            "shard": shard_id, "problem": problem}})
    # Frames read from the socket that were never parsed: told to a parser that died or was stuck, or
    # read by a reader that could not hand them over. Never silent: logged, reported and exit code 1.
    frames_lost = byte_credits.lost if byte_credits is not None else 0
    if frames_lost:
        log.critical("frames lost at stop: read from the socket but never parsed", extra={"fields": {
            "shard": shard_id, "frames": frames_lost}})

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
    uplink.put(Status(Role.SHARD, "drain", shard_id, os.getpid(), time.time_ns(), {
        "rows_held": lost, "rows_lost": lost, "frames_lost": frames_lost, "actors_stuck": len(stuck)}))
    if lost:
        log.critical("rows lost at stop: the writer acknowledged nothing for shutdown_deadline_s",
                     extra={"fields": {"shard": shard_id, "rows": lost}})
        # ... and in the database, at the writer's next start (storage/sidecar.py)
        write_sidecar(cfg.db_path, shard_id, lost_gaps(link.unsent_rows()))
    if fatal:
        log.error("shard failed", extra={"fields": {"shard": shard_id, "reason": fatal[0], "dead_actors": dead}})
        pykka.ActorRegistry.stop_all(block=True, timeout=2.0)
        if fatal_exit:
            sys.exit(fatal_exit[0])
        sys.exit(EXIT_RATE_LIMITED if retry_after.value > 0 else EXIT_FAILED)
    log.info("shard stopped", extra={"fields": {"shard": shard_id, "why": why}})
    if stuck and any(r.is_alive() for r in actors):
        # A stuck actor's thread is not a daemon: a normal exit would wait for it forever.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_FAILED)
    sys.exit(EXIT_FAILED if lost or frames_lost or stuck else EXIT_OK)
