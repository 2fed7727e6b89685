"""ReplayActor: the connection's stand-in for ``--replay``; a reader thread feeds the file to the parser.

Frames go in batches (one tell per ``batch_lines``) and each batch takes a credit that the features actor
gives back once it processed the batch, so a large file never floods an unbounded inbox.

The reader reports its progress to the root (frames read, bytes of the file read, the file's size) about
once a second, as every actor reports its status; the root's HealthActor adds up the shards and shows it.
The clock is read once per batch, not per frame.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from l2rec.actors.base import RecorderActor, Reporter, handles
from l2rec.messages.control import Begin
from l2rec.messages.frames import EndOfStream, RawFrames
from l2rec.venue.dumps import ReadPosition, read_batches

log = logging.getLogger("actors.replay")


class ReplayActor(RecorderActor):
    """The shard's source in replay: Begin starts the reader thread; stopping stops it."""

    name = "replay"

    def __init__(self, path: str, credits: threading.Semaphore, on_fatal: Callable[[str], None],
                 partition: tuple[int, int] = (0, 1), batch_lines: int = 1000, reporter: Reporter | None = None,
                 ) -> None:
        super().__init__(reporter)
        self.path = path
        self.partition = partition
        self.credits = credits
        self.on_fatal = on_fatal
        self.batch_lines = batch_lines
        self.stop_reading = threading.Event()
        self.thread: threading.Thread | None = None
        self.frames_read = 0
        self.position = ReadPosition()
        self.file_bytes = 0
        self.finished = False

    @handles(Begin)
    def _on_begin(self, message: Begin) -> None:
        self.thread = threading.Thread(target=self._read, args=(message.parser,), name="replay-reader",
                                       daemon=True)
        self.thread.start()

    def status(self) -> dict[str, object]:
        """The reader's progress: frames of this shard's part read, and how far into the file it got (every
        replay shard reads the whole file, keeping its own topics)."""
        return {"frames_read": self.frames_read, "bytes_read": self.position.bytes_read(),
                "file_bytes": self.file_bytes or self.position.size, "partitions": self.partition[1],
                "done": self.finished}

    def _progress(self, force: bool = False) -> None:
        # Called by the reader thread once per batch: one clock read per batch_lines frames.
        if self.reporter is not None:
            now = time.time_ns()
            if force or self.reporter.due(now):
                self.reporter.maybe(now, self.status(), force=True)

    def _read(self, parser: pykka.ActorRef[Any]) -> None:
        try:
            self.file_bytes = os.path.getsize(self.path)
            self._progress(force=True)  # the root learns the file's size before the first batch is parsed
            for batch in read_batches(self.path, self.batch_lines, self.partition, self.position):
                while not self.credits.acquire(timeout=0.5):
                    if self.stop_reading.is_set():
                        return
                if self.stop_reading.is_set():
                    return
                parser.tell(RawFrames(0, tuple((None, line) for line in batch)))
                self.frames_read += len(batch)
                self._progress()
            parser.tell(EndOfStream(self.frames_read))
            self.finished = True
            self._progress(force=True)
            log.info("replay read", extra={"fields": {"path": self.path, "frames": self.frames_read}})
        except pykka.ActorDeadError:
            return
        except Exception as exc:  # an unreadable file: say so and stop the shard, never hang
            log.exception("replay failed")
            self.on_fatal(f"replay of {self.path} failed: {exc!r}")

    def on_stop(self) -> None:
        self.stop_reading.set()
        if self.thread is not None:
            self.thread.join(timeout=5.0)
