"""The shard -> writer channel: batches over a Unix socket, acknowledged after commit, resent after a
writer restart.

Why not one ``multiprocessing.Queue`` shared by all processes: a process killed with SIGKILL while it
holds the queue's internal lock (the writer waits in ``get()`` holding the read lock most of its idle
time) leaves the lock taken forever, and the restarted writer (or every other shard) deadlocks. Here each
shard incarnation has its own connection; a dead peer is an EOF on that connection only.

Shard side: ``put()`` blocks while ``capacity_rows`` rows are held (the bound, and the backpressure); a sender
thread keeps at most ``window`` batches unacknowledged, and resends them, in order, after reconnecting.
The writer inserts with ``INSERT OR IGNORE`` on the natural key, so a resent batch adds nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from multiprocessing.connection import Client, Connection
from typing import Any

from l2rec.messages.writer import GapRecord, RowBatch, SessionRecord

log = logging.getLogger("recorder.writer_link")


def _plain(value: object) -> object:
    """marshal takes exact types only: a StrEnum member (a gap's reason) goes as its plain string."""
    return str(value) if isinstance(value, str) else value


def encode(batch: RowBatch) -> bytes:
    """A batch as bytes for the socket. marshal, not pickle: rows are tuples of str/int/float/None, and
    marshal is ~1.5x faster both ways (0.81/0.73 us per row against 1.10/1.21, measured here)."""
    # Rows hold only str/int/float/None; typeshed's _Marshallable cannot say so of `object` values.
    payload: Any = (
        batch.shard_id, batch.rows,
        tuple(tuple(_plain(getattr(g, f)) for f in GapRecord.__slots__) for g in batch.gaps),
        batch.batch_no,
        tuple(tuple(_plain(getattr(x, f)) for f in SessionRecord.__slots__) for x in batch.sessions),
    )
    return marshal.dumps(payload)


def decode(data: bytes) -> RowBatch:
    shard_id, rows, gaps, batch_no, sessions = marshal.loads(data)
    return RowBatch(shard_id, rows, tuple(GapRecord(*g) for g in gaps), batch_no,
                    tuple(SessionRecord(*x) for x in sessions))


class WriterLink:
    """Not an actor: a plain object with one sender thread, owned by a shard process.

    The bound is in rows (waiting plus unacknowledged), not batches: live batches vary in size with the
    traffic, and memory follows rows.
    """

    def __init__(self, address: str, *, capacity_rows: int, window: int = 8,
                 reconnect_max_s: float = 1.0) -> None:
        self.address = address
        self.capacity_rows = capacity_rows
        self.window = window
        self.reconnect_max_s = reconnect_max_s
        # Batches are held encoded, (batch_no, rows, bytes): a row as bytes is ~400 B against ~1.6 KB as
        # Python objects, so a full link (capacity_rows) costs ~20 MB rather than ~80 MB, and a resend
        # after a writer restart encodes nothing again.
        self.pending: deque[tuple[int, int, bytes]] = deque()
        self.unacked: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self.rows_held = 0  # rows in pending + unacked
        self.cond = threading.Condition()
        self.conn: Connection | None = None
        self.next_no = 0
        self.acked = 0
        self.reconnects = 0
        self.resent = 0
        self._abort = threading.Event()
        self.thread = threading.Thread(target=self._run, name="writer-link", daemon=True)
        self.thread.start()

    def _has_room(self, n: int) -> bool:
        # An empty link always takes a batch, however large: a batch bigger than the bound must not wedge.
        return self.rows_held == 0 or self.rows_held + n <= self.capacity_rows

    def _append(self, rows: tuple[tuple[object, ...], ...], gaps: tuple[GapRecord, ...], shard_id: int,
                sessions: tuple[SessionRecord, ...]) -> None:
        # Encoded outside the lock (~1.5 ms for 1,000 rows), so the sender thread is never held up by it.
        # One producer (the features actor) calls put/try_put, so numbers and order stay as appended, and
        # the room checked before can only have grown since.
        self.next_no += 1
        data = encode(RowBatch(shard_id, rows, gaps, self.next_no, sessions))
        with self.cond:
            self.pending.append((self.next_no, len(rows), data))
            self.rows_held += len(rows)
            self.cond.notify_all()

    def put(self, rows: tuple[tuple[object, ...], ...], gaps: tuple[GapRecord, ...], shard_id: int,
            sessions: tuple[SessionRecord, ...] = ()) -> None:
        """Queue a batch; blocks while the link holds ``capacity_rows`` rows. One caller thread only."""
        with self.cond:
            while not self._has_room(len(rows)):
                self.cond.wait(0.1)
        self._append(rows, gaps, shard_id, sessions)

    def try_put(self, rows: tuple[tuple[object, ...], ...], gaps: tuple[GapRecord, ...], shard_id: int,
                sessions: tuple[SessionRecord, ...] = ()) -> bool:
        """Queue a batch unless the link is full; False means the writer is too slow. One caller thread
        only."""
        with self.cond:
            if not self._has_room(len(rows)):
                return False
        self._append(rows, gaps, shard_id, sessions)
        return True

    def unsent_rows(self) -> list[tuple[object, ...]]:
        """The rows of every batch the writer has not acknowledged (after ``close`` gave up: the loss)."""
        with self.cond:
            blobs = [data for _, _, data in self.pending] + [data for _, data in self.unacked.values()]
        return [row for data in blobs for row in decode(data).rows]

    def depth(self) -> int:
        """Batches not yet acknowledged."""
        return len(self.pending) + len(self.unacked)

    def close(self, progress_timeout_s: float, on_wait: Callable[[int], None] | None = None,
              patient: Callable[[], bool] | None = None) -> int:
        """Wait until every batch is acknowledged (committed). Waits as long as the writer makes progress;
        gives up after ``progress_timeout_s`` without a single acknowledgement, except while ``patient()``
        says to wait on (a replay read to its end waits for a writer that retries, e.g. on a full disk,
        until the root asks it to stop). Returns the number of rows not acknowledged (lost)."""
        last_acked = self.acked
        last_progress = time.monotonic()
        next_report = 0.0
        with self.cond:
            # Batches, not rows: the last batch of a stop often holds only the session's end (or a gap's
            # close) and no row; waiting on rows_held alone dropped it, and the session stayed open.
            while self.pending or self.unacked:
                self.cond.wait(timeout=0.05)
                now = time.monotonic()
                if self.acked != last_acked or (patient is not None and patient()):
                    last_acked, last_progress = self.acked, now
                elif now - last_progress > progress_timeout_s:
                    break
                if on_wait is not None and now >= next_report:
                    next_report = now + 0.5
                    on_wait(self.rows_held)
            lost = self.rows_held
        self._abort.set()
        self.thread.join(timeout=2.0)
        if self.conn is not None:
            self.conn.close()
        return lost

    # -- sender thread ------------------------------------------------------------------------------

    def _connect(self) -> Connection | None:
        delay = 0.02
        while not self._abort.is_set():
            try:
                conn = Client(self.address, family="AF_UNIX")
            except OSError:
                self._abort.wait(delay)
                delay = min(self.reconnect_max_s, delay * 2)
                continue
            if self.unacked:
                self.resent += len(self.unacked)
                for _, data in list(self.unacked.values()):  # in order: a gap's close never precedes its open
                    conn.send_bytes(data)
            return conn
        return None

    def _run(self) -> None:
        while not self._abort.is_set():
            if self.conn is None:
                self.conn = self._connect()
                if self.conn is None:
                    return
            conn = self.conn
            try:
                while len(self.unacked) < self.window:
                    with self.cond:
                        if not self.pending:
                            if not self.unacked:
                                self.cond.wait(0.05)
                            if not self.pending:
                                break
                        batch_no, n_rows, data = self.pending.popleft()
                        self.unacked[batch_no] = (n_rows, data)
                    conn.send_bytes(data)
                while conn.poll(0.0 if len(self.unacked) < self.window and self.pending else 0.02):
                    no = conn.recv()
                    with self.cond:
                        done = self.unacked.pop(no, None)
                        if done is not None:
                            self.acked += 1
                            self.rows_held -= done[0]
                            self.cond.notify_all()
            except (EOFError, OSError):
                # The writer went away (restart): reconnect and resend what it never acknowledged.
                self.reconnects += 1
                with contextlib.suppress(OSError):
                    conn.close()
                self.conn = None
