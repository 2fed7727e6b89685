"""Byte credits between a connection's reader thread and the actors after it: the bound on what a shard holds
read and not yet applied to its books.

The reader takes credit for the payload bytes of each ``RawFrames`` before it tells it to the parser. The
parser gives back the credit of frames that made no book update (replies, rejects); the credit of the rest
travels in their ``ParsedBatch`` and the book actor gives it back once it applied them. When either falls
behind, the reader waits instead of reading on: the backlog stays in the kernel's socket buffers and the
sender's, and TCP flow control slows the sender down (backpressure), where it used to pile up in unbounded
pykka inboxes.

The same object is the ledger of that path: frames handed on and never applied (a parser or book actor that
died or did not finish in time), and frames the reader read but could not hand over, are what a stop lost.
A ``threading.Condition`` and counters; no pykka, no sockets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLL_S = 0.25  # how often a waiting reader checks that its parser still lives (and that nobody closed this)


class ByteCredits:
    """A window of ``window_bytes`` of payload that may be told to the parser and not yet parsed.

    One reader takes (``take``), one parser gives back (``give_back``); any thread may read the counters.
    A message larger than the whole window takes the whole window (it waits until nothing else is held),
    so no message can wait forever for room that never comes.
    """

    def __init__(self, window_bytes: int) -> None:
        if window_bytes < 1:
            raise ValueError(f"window_bytes must be >= 1, got {window_bytes}")
        self.window_bytes = window_bytes
        self._cond = threading.Condition(threading.Lock())
        self.held_bytes = 0  # taken and not given back: told to the parser, not yet parsed
        self.peak_bytes = 0
        self.closed = False
        self.frames_in = 0  # frames told to the parser (credit taken)
        self.frames_out = 0  # frames the parser finished (credit given back)
        self.frames_dropped = 0  # frames the reader read but could not hand over (closed, or the parser gone)
        self.waits = 0  # messages the reader had to wait for: the parser was behind
        self.wait_s = 0.0  # time the reader spent waiting (waits that ended)
        self.waiting_since: float | None = None  # monotonic start of the wait going on, if any

    def take(self, nbytes: int, frames: int, alive: Callable[[], bool], poll_s: float = POLL_S) -> int | None:
        """Take credit for a message of ``frames`` frames and ``nbytes`` payload bytes, waiting while the
        window is full, for as long as ``alive()`` (the parser) is true and nobody called ``close``.

        Returns the credit taken, which the message carries and ``give_back`` returns (``nbytes``, or the
        window if larger), or None when the wait was given up: the caller must not tell the message, and
        counts it with ``drop``.
        """
        need = min(nbytes, self.window_bytes)
        with self._cond:
            if self.held_bytes + need > self.window_bytes and not self.closed:
                self.waits += 1
                t0 = self.waiting_since = time.monotonic()
                try:
                    while self.held_bytes + need > self.window_bytes and not self.closed:
                        if not alive():
                            return None
                        self._cond.wait(poll_s)
                finally:
                    self.wait_s += time.monotonic() - t0
                    self.waiting_since = None
            if self.closed:
                return None
            self.held_bytes += need
            self.frames_in += frames
            if self.held_bytes > self.peak_bytes:
                self.peak_bytes = self.held_bytes
            return need

    def give_back(self, credit: int, frames: int) -> None:
        """The parser finished a message that carried ``credit`` and ``frames`` frames."""
        with self._cond:
            self.held_bytes -= credit
            self.frames_out += frames
            self._cond.notify_all()

    def drop(self, frames: int) -> None:
        """The reader read ``frames`` frames it could not hand over (``take`` gave up): they are lost."""
        with self._cond:
            self.frames_dropped += frames

    def close(self) -> None:
        """No more credit from now on: a waiting ``take`` (and every later one) returns None at once.
        The parser may still give back what it holds."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        """Frames told to the parser and not (yet) parsed; once the parser stopped, frames it never parsed."""
        return self.frames_in - self.frames_out

    @property
    def lost(self) -> int:
        """Once reader and parser are done: frames read from the socket that were never parsed."""
        return self.in_flight + self.frames_dropped

    def progress(self) -> int:
        """A number that grows whenever a frame moves across this edge (told, parsed or dropped)."""
        return self.frames_in + self.frames_out + self.frames_dropped

    def status(self, now: float | None = None) -> dict[str, object]:
        """Counters for the health dump (the connection's section); ``credit_wait_s`` includes the wait
        going on at ``now`` (``time.monotonic()``), if any."""
        since = self.waiting_since
        waiting = 0.0 if since is None else max(0.0, (time.monotonic() if now is None else now) - since)
        return {"credit_window_bytes": self.window_bytes, "credit_held_bytes": self.held_bytes,
                "credit_peak_bytes": self.peak_bytes, "credit_waits": self.waits,
                "credit_wait_s": round(self.wait_s + waiting, 3), "reader_waiting": since is not None,
                "frames_unparsed": self.in_flight}
