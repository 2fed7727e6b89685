"""Progress of long work (a replay, an export, a report): how much is done, how fast, what share, how long
still.

:class:`Progress` is plain arithmetic on a clock it is given, so it is tested without threads or sleeps; it
says *when* a line is due and what it reads. Where the line goes is the caller's: on a terminal one line
rewritten in place (:class:`TerminalLine`, about once a second), otherwise one log line every 10 s.

The root process's stderr is shared by the log records of every process and the replay's progress line;
:func:`set_terminal` registers the root's :class:`TerminalLine` so that the log handler clears the line
before a record and draws it again after (``l2rec.runtime.logs``), and the HealthActor finds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TextIO

TTY_INTERVAL_S = 1.0  # a terminal line: often enough to look alive, rarely enough to cost nothing
LOG_INTERVAL_S = 10.0  # a log line: one every 10 s keeps a log file readable
# Tests only: a shorter interval, so that a short replay or export shows its lines (never documented as a
# setting; not an L2REC_* name, which the configuration would take for a key and refuse).
INTERVAL_ENV = "_L2REC_PROGRESS_INTERVAL_S"


def default_interval(tty: bool, environ: Mapping[str, str] | None = None) -> float:
    """Seconds between progress lines: ``TTY_INTERVAL_S`` on a terminal, else ``LOG_INTERVAL_S`` (or the
    tests' ``_L2REC_PROGRESS_INTERVAL_S``)."""
    env = os.environ if environ is None else environ
    raw = env.get(INTERVAL_ENV)
    if raw:
        with contextlib.suppress(ValueError):
            return max(0.0, float(raw))
    return TTY_INTERVAL_S if tty else LOG_INTERVAL_S


def duration(seconds: float) -> str:
    """``42 s``, ``3:07``, ``1:02:03``: short enough for a terminal line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Lines like ``1,234,000 frames, 61,700 frames/s, 42.1 % of the file, ETA 0:27``, at most one every
    ``interval_s`` seconds of ``now_s``.

    ``done`` counts the work (frames, rows); ``position`` out of ``total`` is what the share and the ETA
    come from (bytes of a file, rowids of a table), so work whose items vary in size still gets a fair ETA.
    Without a total there is no share and no ETA.
    """

    def __init__(self, unit: str, total: float | None = None, *, of: str = "the file", interval_s: float = 10.0,
                 now_s: Callable[[], float] = time.monotonic) -> None:
        self.unit = unit
        self.total: float | None = total if total else None  # may be set later, once known
        self.of = of
        self.interval_s = interval_s
        self.now_s = now_s
        self.started = now_s()
        self.next_at = self.started + interval_s
        self.lines = 0  # lines given out so far

    def due(self) -> bool:
        """Whether :meth:`update` would give a line now (lets a caller skip gathering the figures)."""
        return self.now_s() >= self.next_at

    def update(self, done: int, position: float | None = None) -> str | None:
        """The line, when one is due (the interval passed since the last); else None."""
        now = self.now_s()
        if now < self.next_at:
            return None
        self.next_at = now + self.interval_s
        self.lines += 1
        return self.line(done, position, now)

    def line(self, done: int, position: float | None = None, now: float | None = None) -> str:
        """The line for ``done`` (and ``position`` of the total) at ``now``, whether due or not."""
        elapsed = max(0.0, (self.now_s() if now is None else now) - self.started)
        parts = [f"{done:,} {self.unit}"]
        if elapsed > 0:
            parts.append(f"{done / elapsed:,.0f} {self.unit}/s")
        if self.total is not None and position is not None:
            share = min(1.0, max(0.0, position / self.total))
            parts.append(f"{share * 100:.1f} % of {self.of}")
            if 0 < share < 1:
                # The average pace so far: steadier than the last interval's, and right for a uniform file.
                parts.append(f"ETA {duration(elapsed * (1 - share) / share)}")
        parts.append(f"{duration(elapsed)} elapsed")
        return ", ".join(parts)


class TerminalLine:
    """One line of a terminal rewritten in place (``\\r`` and erase-to-end), which other output can clear
    and restore around itself (:meth:`paused`), so that a log record never lands in the middle of it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""  # what the line shows now ("" = nothing)
        self.lock = threading.RLock()

    def show(self, text: str) -> None:
        """Replace the line with ``text``."""
        with self.lock:
            self.text = text
            self._write(f"\r{text}\x1b[K")

    def clear(self) -> None:
        """Erase the line (the cursor stays at its start)."""
        with self.lock:
            if self.text:
                self.text = ""
                self._write("\r\x1b[K")

    def finish(self, text: str | None = None) -> None:
        """Leave ``text`` (or what the line shows) on the terminal for good, and start a new line."""
        with self.lock:
            final = self.text if text is None else text
            if final:
                self._write(f"\r{final}\x1b[K\n")
            self.text = ""

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Erase the line for the duration (other output is written then), and draw it again after."""
        with self.lock:
            shown = self.text
            if shown:
                self._write("\r\x1b[K")
            try:
                yield
            finally:
                if shown:
                    self._write(f"\r{shown}\x1b[K")

    def _write(self, s: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed or gone terminal is not an error of ours
            self.stream.write(s)
            self.stream.flush()


class CommandProgress:
    """The progress of a command run in the foreground (``l2rec export``, ``l2rec report``) on stderr: on a
    terminal one line rewritten in place, otherwise a line each (the caller's :class:`Progress` says when:
    every 10 s), prefixed with the command's name."""

    def __init__(self, prog: str, stream: TextIO, tty: bool) -> None:
        self.prog = prog
        self.stream = stream
        self.line = TerminalLine(stream) if tty else None

    def show(self, text: str) -> None:
        """Show (or write) one progress line."""
        if self.line is not None:
            self.line.show(f"{self.prog}: {text}")
        else:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write(f"{self.prog}: progress: {text}\n")
                self.stream.flush()

    def clear(self) -> None:
        """Erase the terminal line (before the command's last words)."""
        if self.line is not None:
            self.line.clear()


_terminal: TerminalLine | None = None


def set_terminal(line: TerminalLine | None) -> None:
    """Register (or, with None, remove) this process's terminal line: set by the root's logging when its
    stderr is a terminal."""
    global _terminal
    _terminal = line


def terminal() -> TerminalLine | None:
    """This process's terminal line, if its stderr is a terminal that the root's logging writes to."""
    return _terminal


class ReplayProgress:
    """A replay's progress over its shards, from their readers' reports (about once a second each): the
    frames read by all, the share of the file (every replay shard reads the whole file, keeping its own
    topics: the share is the mean of theirs) and the ETA. Shown on the root's terminal line, or logged
    every 10 s when stderr is not a terminal (or when embedded in a host process: the host's log)."""

    def __init__(self, log: logging.Logger, now_s: Callable[[], float] = time.monotonic,
                 line: Callable[[], TerminalLine | None] = terminal, interval_s: float | None = None) -> None:
        self.log = log
        self.now_s = now_s
        self.terminal_of = line
        self.interval_s = interval_s
        self.progress: Progress | None = None
        self.shards: dict[int, tuple[int, int, int, bool]] = {}  # shard -> frames, bytes read, file bytes, done
        self.partitions = 1
        self.finished = False

    def on_report(self, shard_id: int, stats: Mapping[str, object]) -> str | None:
        """Take a replay reader's report; returns the line shown or logged, if one was due."""
        def num(key: str) -> int:
            value = stats.get(key)
            return value if isinstance(value, int) else 0

        self.shards[shard_id] = (num("frames_read"), num("bytes_read"), num("file_bytes"), stats.get("done") is True)
        self.partitions = max(1, num("partitions"), len(self.shards))
        file_bytes = max(v[2] for v in self.shards.values())
        tty = self.terminal_of()
        if self.progress is None:
            interval = self.interval_s if self.interval_s is not None else default_interval(tty is not None)
            self.progress = Progress("frames", file_bytes * self.partitions, interval_s=interval, now_s=self.now_s)
        frames = sum(v[0] for v in self.shards.values())
        position = sum(v[1] for v in self.shards.values())
        all_done = len(self.shards) >= self.partitions and all(v[3] for v in self.shards.values())
        if all_done and not self.finished:
            self.finished = True
            if tty is not None and self.progress.lines:
                # The last figures stay on the terminal, above the summary that follows.
                tty.finish("replay: " + self.progress.line(frames, position))
            return None
        text = self.progress.update(frames, position)
        if text is None or self.finished:
            return None
        if tty is not None:
            tty.show("replay: " + text)
        else:
            self.log.info(f"replay progress: {text}", extra={"fields": {
                "frames": frames, "bytes_read": position, "file_bytes": file_bytes * self.partitions}})
        return text
