"""WriterActor: the only database connection; one transaction per batch, acknowledged after commit.

A transient database error (another process holds a lock, the disk or ``db_max_pages`` is full) never
drops a batch: it stays at the head of the backlog and is retried with backoff, and no later batch
overtakes it. Meanwhile the writer stops reading (its in-flight permits are held), so the shards' bounded
links fill up and their backpressure policy takes over.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from bisect import bisect_left
from collections import deque
from itertools import chain

from l2rec.actors.base import RecorderActor, Reporter, handles, tell_later
from l2rec.messages.control import Tick
from l2rec.messages.writer import RetryWrites, WriteBatch, WriteGroup
from l2rec.runtime.buckets import COMMIT_BUCKETS_S, RECV_TO_COMMIT_BUCKETS_S, Buckets
from l2rec.runtime.faults import Faults
from l2rec.runtime.logs import RateLimited
from l2rec.storage.schema import COL
from l2rec.storage.sink import Sink
from l2rec.supervision.backoff import Backoff
from l2rec.supervision.states import ActorState

log = logging.getLogger("actors.writer")

_RECV = COL["recv_time_ns"]
MAX_GROUP_ROWS = 20_000


class WriterActor(RecorderActor):
    """Commits groups of batches into its sink and acknowledges each batch after the commit. The sink is
    opened by the writer process before the actor starts (a bad database fails the process at once)."""

    name = "writer"

    def __init__(self, sink: Sink, inflight: threading.Semaphore, reporter: Reporter, faults: Faults,
                 final_cleanup_s: float = 10.0) -> None:
        super().__init__(reporter, faults)
        self.store = sink
        self.final_cleanup_s = final_cleanup_s
        self.rows_failed_logged = 0
        self.inflight = inflight
        self.gaps_written = 0
        self.batches_committed = 0
        self.backlog: deque[WriteBatch] = deque()
        self.failures = 0
        self.retry_pending = False
        self.backoff = Backoff(0.05, 5.0, 2.0, 0.2)
        self.last_error: str | None = None
        self.rate = RateLimited(10.0)
        self.latency_ms: deque[float] = deque(maxlen=20_000)
        # Counted over the writer's life (not a window as latency_ms): /metrics' histograms
        self.commit_hist = Buckets(COMMIT_BUCKETS_S)
        self.recv_to_commit_hist = Buckets(RECV_TO_COMMIT_BUCKETS_S)

    @handles(WriteGroup, fault_point=True)
    def _on_group(self, message: WriteGroup) -> None:
        self.backlog.extend(message.batches)
        if not self.retry_pending:
            self._drain()

    @handles(RetryWrites)
    def _on_retry(self, _message: RetryWrites) -> None:
        self.retry_pending = False
        self._drain()

    @handles(Tick)
    def _on_tick(self, tick: Tick) -> None:
        # Retention and archive: one short step per Tick (the sink bounds it to a few tens of ms), between
        # write groups, so a commit never waits behind a long DELETE.
        self.store.cleanup_step(tick.now_ns)
        self.report(tick.now_ns)

    def _drain(self) -> None:
        # Group commit: everything waiting goes into one transaction (up to MAX_GROUP_ROWS rows). Live,
        # many shards each flush small batches every write_interval; one commit per batch would cost more
        # than the rows themselves.
        store = self.store
        while self.backlog:
            group: list[WriteBatch] = []
            n_rows = 0
            for wb in self.backlog:
                if group and n_rows + len(wb.batch.rows) > MAX_GROUP_ROWS:
                    break
                group.append(wb)
                n_rows += len(wb.batch.rows)
            batches = [wb.batch for wb in group]
            rows = list(chain.from_iterable(b.rows for b in batches)) if len(batches) > 1 else batches[0].rows
            try:
                store.write(rows, chain.from_iterable(b.gaps for b in batches),
                            chain.from_iterable(b.sessions for b in batches))
            except Exception as exc:
                if not store.is_transient(exc):
                    raise
                self._schedule_retry(exc)
                return
            if store.rows_failed != self.rows_failed_logged:
                self._log_failed_rows()
            if self.failures:
                log.warning("database writes resumed", extra={"fields": {
                    "failed_attempts": self.failures, "backlog_batches": len(self.backlog)}})
                self.failures = 0
            now = time.time_ns()
            self.commit_hist.observe_ns(round(store.last_commit_s * 1e9))
            lat = self.latency_ms
            hist = self.recv_to_commit_hist
            bounds, counts, total = hist.bounds_ns, hist.counts, 0
            for row in rows:
                recv = row[_RECV]
                if recv is not None:
                    d: int = now - recv  # type: ignore[operator]  # recv_time_ns is an int when set
                    lat.append(d / 1e6)
                    counts[bisect_left(bounds, d)] += 1  # Buckets.observe_ns, inlined: this loop runs per row
                    total += d
            hist.sum_ns += total
            for wb in group:
                self.backlog.popleft()
                self.inflight.release()
                self.gaps_written += len(wb.batch.gaps)
                self.batches_committed += 1
                # Only now may the shard forget the batch; a shard that died meanwhile needs no ack.
                with contextlib.suppress(OSError, ValueError):
                    wb.reply.send(wb.batch.batch_no)

    def _log_failed_rows(self, force: bool = False) -> None:
        store = self.store
        ok, suppressed = self.rate.allow("rows_failed")
        if ok or force:
            log.error("rows refused by the table: not stored", extra={"fields": {
                "rows": store.rows_failed - self.rows_failed_logged, "rows_failed_total": store.rows_failed,
                "error": store.last_row_error, "suppressed_since_last": suppressed}})
            self.rows_failed_logged = store.rows_failed

    def _schedule_retry(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = str(exc)
        delay = self.backoff.delay(self.failures)
        full = "full" in str(exc).lower()
        # a sink may say how grave it is (a PostgreSQL server gone: ERROR); SQLite's lock is a WARNING
        level = getattr(exc, "log_level", logging.CRITICAL if full else logging.WARNING)
        ok, suppressed = self.rate.allow(f"retry:{level}")
        if ok:
            log.log(level,
                    "database write failed; batch kept and retried", extra={"fields": {
                        "error": str(exc), "attempt": self.failures, "delay_s": round(delay, 3),
                        "backlog_batches": len(self.backlog), "suppressed_since_last": suppressed}})
        self.retry_pending = True
        tell_later(self.actor_ref, delay, RetryWrites(self.failures))

    def _final_cleanup(self) -> None:
        """Archive the hours closed by the last rows and clean up once more, for at most final_cleanup_s:
        what is left (a very large first cleanup) is done at the next start."""
        deadline = time.monotonic() + self.final_cleanup_s
        while not self.store.cleanup_step(time.time_ns(), final=True):
            if time.monotonic() > deadline:
                log.warning("retention/archive work left for the next start", extra={"fields": {
                    "after_s": self.final_cleanup_s}})
                return

    def status(self) -> dict[str, object]:
        s = self.store
        lat = sorted(self.latency_ms)
        pct = {f"p{int(q * 100)}": round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)
               for q in (0.5, 0.9, 0.99)} if lat else {}
        return {**self.base_status(ActorState.RETRYING if self.failures else ActorState.RUNNING),
                "backlog_batches": len(self.backlog),
                "rows_committed": s.rows_inserted, "rows_offered": s.rows_offered,
                "rows_failed": s.rows_failed, "last_row_error": s.last_row_error,
                "batches": self.batches_committed, "transactions": s.batches,
                "gaps_written": self.gaps_written, "last_commit_ms": round(s.last_commit_s * 1000, 3),
                "recv_to_commit_ms": {**pct, "max": round(lat[-1], 3) if lat else None, "samples": len(lat)},
                "failed_attempts": self.failures, "last_error": self.last_error,
                "commit_hist": self.commit_hist.status(), "recv_to_commit_hist": self.recv_to_commit_hist.status(),
                **s.committed.status(),
                "db_path": s.path, "table": s.table, **s.status()}

    def on_stop(self) -> None:
        if self.backlog:
            # Stopping while the database refuses writes: try once more, then say what is lost.
            self.retry_pending = False
            with contextlib.suppress(Exception):
                self._drain()
            if self.backlog:
                log.critical("writer stopped with uncommitted batches", extra={"fields": {
                    "batches": len(self.backlog), "rows": sum(len(w.batch.rows) for w in self.backlog),
                    "error": self.last_error}})
        if self.store.rows_failed != self.rows_failed_logged:
            self._log_failed_rows(force=True)  # the last word on them, whatever was held back
        self._final_cleanup()
        self.report(time.time_ns(), force=True)
        self.store.close()
        log.info("writer closed", extra={"fields": {"rows_committed": self.store.rows_inserted,
                                                   "rows_failed": self.store.rows_failed,
                                                   "batches": self.batches_committed,
                                                   "transactions": self.store.batches}})
