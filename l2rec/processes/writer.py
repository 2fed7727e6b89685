"""The writer process: the link server hands waiting batches to the WriterActor, which commits them and
acknowledges each on its shard's link."""

from __future__ import annotations

import logging
import sys
import threading
import time
from multiprocessing.connection import Connection

import pykka

from l2rec.actors.base import Reporter
from l2rec.actors.writer import WriterActor
from l2rec.messages.control import Tick
from l2rec.messages.writer import WriteBatch, WriteGroup
from l2rec.processes.child import EXIT_DB, EXIT_FAILED, child_setup, stop_requested
from l2rec.runtime.faults import Faults
from l2rec.storage.link_server import LinkServer, WriterGone
from l2rec.supervision.specs import WriterSpec
from l2rec.supervision.states import Role

log = logging.getLogger("actors.processes")

INFLIGHT_BATCHES = 32  # batches handed to the actor, not yet committed (group commit)


def run_writer(spec: WriterSpec, ctl: Connection, uplink_conn: Connection) -> None:
    """Writer process: accepts shard links, hands batches to the WriterActor, acks after each commit."""
    cfg = spec.cfg
    uplink = child_setup(uplink_conn, cfg.log_level, Role.WRITER)
    faults = Faults.from_env()
    inflight = threading.Semaphore(INFLIGHT_BATCHES)
    try:
        writer = WriterActor.start(cfg, inflight, Reporter(uplink, Role.WRITER, "writer", None), faults)
    except Exception:
        log.critical("cannot open the database", exc_info=True, extra={"fields": {"db_path": cfg.db_path}})
        sys.exit(EXIT_DB)
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
