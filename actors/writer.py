"""WriterActor: the only database connection; one transaction per batch, acknowledged after commit."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pykka

from actors.reporting import Reporter
from messages.control import Tick
from messages.writer import RowBatch
from recorder.config import RecorderConfig
from recorder.faults import Faults
from recorder.storage import Store

log = logging.getLogger("actors.writer")


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """Writer pump -> WriterActor: a batch and the shard link to acknowledge it on."""

    batch: RowBatch
    reply: Connection


class WriterActor(pykka.ThreadingActor):
    """Opens (and migrates) the database in ``__init__``, which runs in the starting thread, so a bad
    path or schema fails ``start()`` loudly instead of killing the actor silently in ``on_start``."""

    def __init__(self, cfg: RecorderConfig, inflight: threading.Semaphore, reporter: Reporter,
                 faults: Faults) -> None:
        super().__init__()
        self.store = Store(cfg.db_path, cfg.table_name)
        self.inflight = inflight
        self.reporter = reporter
        self.fault = faults.for_actor("writer")
        self.gaps_written = 0
        self.msgs_in = 0

    def on_start(self) -> None:
        if self.fault is not None:
            self.fault.on_start()

    def on_receive(self, message: Any) -> Any:
        self.msgs_in += 1
        if isinstance(message, WriteBatch):
            try:
                if self.fault is not None:
                    self.fault.on_message()
                batch = message.batch
                self.store.write(batch.rows, batch.gaps)
                self.gaps_written += len(batch.gaps)
            finally:
                self.inflight.release()
            # Only now may the shard forget the batch; a shard that died meanwhile needs no ack.
            with contextlib.suppress(OSError, ValueError):
                message.reply.send(batch.batch_no)
        elif isinstance(message, Tick):
            self.reporter.maybe(message.now_ns, self.status())
        return None

    def status(self) -> dict[str, object]:
        s = self.store
        return {"state": "running", "messages_in": self.msgs_in, "mailbox": self.actor_inbox.qsize(),
                "rows_committed": s.rows_inserted, "rows_offered": s.rows_offered, "batches": s.batches,
                "gaps_written": self.gaps_written, "last_commit_ms": round(s.last_commit_s * 1000, 3),
                "db_path": s.path, "table": s.table}

    def on_stop(self) -> None:
        self.reporter.maybe(time.time_ns(), self.status(), force=True)
        self.store.close()
        log.info("writer closed", extra={"fields": {"rows_committed": self.store.rows_inserted,
                                                   "batches": self.store.batches}})
