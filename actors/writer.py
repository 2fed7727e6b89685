"""WriterActor: the only database connection; one transaction per batch."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pykka

from actors.reporting import Reporter
from messages.control import Tick
from messages.writer import RowBatch
from recorder.config import RecorderConfig
from recorder.storage import Store

log = logging.getLogger("actors.writer")


class WriterActor(pykka.ThreadingActor):
    """Opens (and migrates) the database in ``__init__``, which runs in the starting thread, so a bad
    path or schema fails ``start()`` loudly instead of killing the actor silently in ``on_start``."""

    def __init__(self, cfg: RecorderConfig, inflight: threading.Semaphore, reporter: Reporter) -> None:
        super().__init__()
        self.store = Store(cfg.db_path, cfg.table_name)
        self.inflight = inflight
        self.reporter = reporter
        self.gaps_written = 0
        self.commit_latencies_ms: list[float] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RowBatch):
            try:
                self.store.write(message.rows, message.gaps)
                self.gaps_written += len(message.gaps)
            finally:
                self.inflight.release()
        elif isinstance(message, Tick):
            self.reporter.maybe(message.now_ns, self.status())
        return None

    def status(self) -> dict[str, object]:
        s = self.store
        return {"rows_committed": s.rows_inserted, "rows_offered": s.rows_offered, "batches": s.batches,
                "gaps_written": self.gaps_written, "last_commit_ms": round(s.last_commit_s * 1000, 3),
                "db_path": s.path, "table": s.table}

    def on_stop(self) -> None:
        self.reporter.maybe(time.time_ns(), self.status(), force=True)
        self.store.close()
        log.info("writer closed", extra={"fields": {"rows_committed": self.store.rows_inserted,
                                                   "batches": self.store.batches}})
