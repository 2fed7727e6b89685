"""The writer process: the link server hands waiting batches to the WriterActor, which commits them and
acknowledges each on its shard's link."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from multiprocessing.connection import Connection

import pykka

from l2rec.actors.base import Reporter
from l2rec.actors.writer import WriterActor
from l2rec.messages.control import Tick
from l2rec.messages.writer import WriteBatch, WriteGroup
from l2rec.processes.child import EXIT_DB, EXIT_FAILED, EXIT_ROWS_FAILED, child_setup, stop_requested
from l2rec.runtime.config import EX_CONFIG, ConfigError, RecorderConfig
from l2rec.runtime.faults import Faults
from l2rec.runtime.logs import RateLimited
from l2rec.storage.dburl import redact_url
from l2rec.storage.link_server import LinkServer, WriterGone
from l2rec.storage.sidecar import read_sidecars
from l2rec.storage.sink import Sink, SinkUnavailable, open_error_is_transient, open_sink
from l2rec.storage.sqlite import SchemaError
from l2rec.supervision.backoff import Backoff
from l2rec.supervision.specs import WriterSpec
from l2rec.supervision.states import Role

log = logging.getLogger("actors.processes")

INFLIGHT_BATCHES = 32  # batches handed to the actor, not yet committed (group commit)


def _open(cfg: RecorderConfig, ctl: Connection) -> Sink | None:
    """Open the sink; while another process holds the database's lock (its schema check needs a write
    transaction), wait and retry with backoff, as the writer does for a batch. None: stop requested."""
    backoff = Backoff(0.05, 5.0, 2.0, 0.2)
    rate = RateLimited(10.0)
    attempt = 0
    while True:
        try:
            return open_sink(cfg)
        except SchemaError as exc:  # the root's preflight checks this too; a table changed meanwhile
            log.critical("cannot use the table: %s", exc, extra={"fields": {"column": exc.column}})
            sys.exit(EX_CONFIG)
        except ConfigError as exc:  # a PostgreSQL server that refuses the login (the URL without its password)
            log.critical("cannot use the database: %s", exc, extra={"fields": {"key": exc.key}})
            sys.exit(EX_CONFIG)
        except Exception as exc:
            if not open_error_is_transient(cfg, exc):
                log.critical("cannot open the database", exc_info=True,
                             extra={"fields": {"db_path": redact_url(cfg.db_path)}})
                sys.exit(EXIT_DB)
            attempt += 1
            ok, suppressed = rate.allow("open")
            if ok:
                # a server that cannot be reached is an ERROR (it says why); a lock held by another process
                # a WARNING
                unavailable = isinstance(exc, SinkUnavailable)
                log.log(exc.log_level if isinstance(exc, SinkUnavailable) else logging.WARNING,
                        "database unreachable at start; retrying" if unavailable else
                        "database busy at start; retrying", extra={"fields": {
                            "error": str(exc), "attempt": attempt, "suppressed_since_last": suppressed}})
        if stop_requested(ctl, backoff.delay(attempt)) is not None:
            return None


def _record_earlier_losses(sink: Sink, db_path: str) -> None:
    """Rows an earlier run could not store (its shards wrote them to sidecar files) become gap rows now."""
    gaps, files = read_sidecars(db_path)
    if not gaps:
        return
    try:
        sink.write((), gaps)
    except Exception as exc:  # still full or locked: keep the files for the next start, and say so
        log.error("could not record the rows an earlier run lost; kept for the next start", extra={"fields": {
            "files": len(files), "error": str(exc)}})
        return
    for path in files:
        path.unlink(missing_ok=True)
    log.warning("recorded the rows an earlier run could not store as gaps", extra={"fields": {
        "gaps": len(gaps), "reason": "lost_at_stop"}})


def run_writer(spec: WriterSpec, ctl: Connection, uplink_conn: Connection) -> None:
    """Writer process: accepts shard links, hands batches to the WriterActor, acks after each commit."""
    cfg = spec.cfg
    uplink = child_setup(uplink_conn, cfg.log_level, Role.WRITER)
    faults = Faults.from_env()
    inflight = threading.Semaphore(INFLIGHT_BATCHES)
    sink = _open(cfg, ctl)
    if sink is None:
        return  # asked to stop while the database was still locked
    _record_earlier_losses(sink, cfg.db_path)
    writer = WriterActor.start(sink, inflight, Reporter(uplink, Role.WRITER, "writer", None), faults,
                               final_cleanup_s=cfg.shutdown_deadline_s / 2)
    server = LinkServer(spec.address, inflight)
    uplink.put("ready")
    stopping: str | None = None
    next_tick = 0.0
    while True:
        linked = server.has_links()
        if stopping is None:
            stopping = stop_requested(ctl, 0.0)
        if stopping is not None and not linked:
            break
        try:
            group = server.read_group(0.05, writer.is_alive)
        except WriterGone:
            sys.exit(EXIT_FAILED)
        if group:
            writer.tell(WriteGroup(tuple(WriteBatch(batch, conn) for batch, conn in group)))
        if not writer.is_alive():
            log.critical("writer actor died; exiting so that the supervisor restarts the writer")
            sys.exit(EXIT_FAILED)
        if not linked and stopping is None:
            stopping = stop_requested(ctl, 0.05)
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + 0.25
            writer.tell(Tick(time.time_ns()))
    server.close()
    try:
        writer.stop(block=True, timeout=max(5.0, 2 * cfg.shutdown_deadline_s))
    except pykka.Timeout:
        log.critical("writer did not finish in time")
        sys.exit(EXIT_FAILED)
    log.info("writer stopped", extra={"fields": {"reason": stopping}})
    if stopping == "root gone":
        # The root was killed and cannot remove its run directory (this socket's); the writer leaves last.
        shutil.rmtree(os.path.dirname(spec.address), ignore_errors=True)
    if sink.rows_failed:
        sys.exit(EXIT_ROWS_FAILED)  # the run was not clean: the root's exit code says so
