"""The host side of the update callback: a bounded queue and the one thread that calls the callbacks.

The root's uplink pump offers each batch of rows without ever waiting (recording must not wait for the
host): what does not fit in ``capacity`` updates is dropped for the callback only and counted. The callback
thread turns rows into ``L2Update``s (only those it delivers) and calls the update callback in the order
the rows came, so in order per topic; errors for the error callback take the same thread, in their own
queue (a full update queue never hides an error). An exception in a callback goes to the error callback
(one in the error callback goes to the log) and delivery goes on.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from l2rec.embed.errors import CallbackError, IngestorError
from l2rec.embed.updates import L2Update, update_from_row
from l2rec.messages.book import RowsPublished
from l2rec.runtime.logs import RateLimited

log = logging.getLogger("l2rec.embed")

UpdateCallback = Callable[[L2Update], object]
ErrorCallback = Callable[[Exception], object]
MAX_ERRORS_QUEUED = 1000  # errors waiting for the error callback; older ones are dropped beyond


class Delivery:
    """Bounded queue of row batches + the callback thread (started by ``start``, ended by ``close``)."""

    def __init__(self, capacity: int, levels: int, name: str) -> None:
        self.capacity = capacity
        self.levels = levels
        self.name = name
        self.on_update: UpdateCallback | None = None
        self.on_error: ErrorCallback | None = None
        self._cond = threading.Condition()
        self._batches: deque[RowsPublished] = deque()
        self._queued = 0  # updates in _batches
        self._busy = False  # the thread holds a batch it took (drain() waits for it too)
        self._errors: deque[Exception] = deque(maxlen=MAX_ERRORS_QUEUED)
        self._closing = False
        self._thread: threading.Thread | None = None
        self._rate = RateLimited(10.0)
        self.dropped = 0  # updates the callback could not take in time (recording unaffected)
        self.delivered = 0
        self.callback_errors = 0
        self.offered = 0

    @property
    def thread(self) -> threading.Thread | None:
        """The callback thread (None before ``start``)."""
        return self._thread

    def start(self) -> None:
        """Start the callback thread (a daemon: a host exiting without stop() is not held up by it)."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def offer(self, batch: RowsPublished) -> None:
        """From the root's pump thread: queue what fits, drop (and count) the rest. Never waits."""
        n = len(batch.rows)
        with self._cond:
            self.offered += n
            if self.on_update is None:
                return
            room = self.capacity - self._queued
            if room < n:
                self.dropped += n - max(room, 0)
                if room <= 0:
                    return
                levels = batch.levels[:room] if batch.levels is not None else None
                batch = RowsPublished(batch.shard_id, batch.rows[:room], levels, batch.sent_ns)
                n = room
            self._batches.append(batch)
            self._queued += n
            self._cond.notify()

    def error(self, exc: Exception) -> None:
        """Queue an error for the error callback (from any thread)."""
        with self._cond:
            self._errors.append(exc)
            self._cond.notify()

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued was handed to the callbacks; False after ``timeout_s``."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._batches and not self._errors and not self._busy, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """End the thread; what is still queued is not delivered (call ``drain`` first) and counts as
        dropped, so that delivered + dropped is every update offered while a callback was set."""
        with self._cond:
            self._closing = True
            self.dropped += self._queued
            self._queued = 0
            self._batches.clear()
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout_s)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                cond.wait_for(lambda: self._closing or self._batches or self._errors)
                if self._closing:
                    return
                errors = list(self._errors)
                self._errors.clear()
                batch = self._batches.popleft() if self._batches else None
                if batch is not None:
                    self._queued -= len(batch.rows)
                self._busy = True
            try:
                for exc in errors:
                    self._call_error(exc)
                if batch is not None:
                    self._deliver(batch)
            finally:
                with cond:
                    self._busy = False
                    cond.notify_all()

    def _deliver(self, batch: RowsPublished) -> None:
        fn = self.on_update
        if fn is None:
            return
        levels = self.levels
        deep = batch.levels
        for i, row in enumerate(batch.rows):
            update = update_from_row(row, levels, deep[i] if deep is not None else None)
            try:
                fn(update)
            except Exception as exc:
                self.callback_errors += 1
                err = CallbackError(f"the update callback raised {exc!r}", {"symbol": update.symbol,
                                                                             "sequence": update.sequence})
                err.__cause__ = exc
                self._call_error(err)
            self.delivered += 1

    def _call_error(self, exc: Exception) -> None:
        fn = self.on_error
        if fn is None:
            self._log(exc)
            return
        try:
            fn(exc)
        except Exception:
            ok, suppressed = self._rate.allow("error_callback")
            if ok:
                log.exception("the error callback raised", extra={"fields": {"suppressed_since_last": suppressed}})

    def _log(self, exc: Exception) -> None:
        """No error callback: the log, rate-limited per kind (child records were logged already)."""
        if isinstance(exc, IngestorError) and not isinstance(exc, CallbackError):
            return  # its log record went to the host's logging already
        ok, suppressed = self._rate.allow(type(exc).__name__)
        if ok:
            log.error("%s", exc, exc_info=exc.__cause__ or exc,
                      extra={"fields": {"suppressed_since_last": suppressed}})
