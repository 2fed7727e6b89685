"""ReplayActor: the connection's stand-in for ``--replay``; a reader thread feeds the file to the parser.

Frames go in batches (one tell per ``batch_lines``) and each batch takes a credit that the features actor
gives back once it processed the batch, so a large file never floods an unbounded inbox.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pykka

from l2rec.actors.base import RecorderActor, handles
from l2rec.messages.control import Begin
from l2rec.messages.frames import EndOfStream, RawFrames
from l2rec.venue.dumps import read_batches

log = logging.getLogger("actors.replay")


class ReplayActor(RecorderActor):
    """The shard's source in replay: Begin starts the reader thread; stopping stops it."""

    name = "replay"

    def __init__(self, path: str, credits: threading.Semaphore, on_fatal: Callable[[str], None],
                 partition: tuple[int, int] = (0, 1), batch_lines: int = 1000) -> None:
        super().__init__()
        self.path = path
        self.partition = partition
        self.credits = credits
        self.on_fatal = on_fatal
        self.batch_lines = batch_lines
        self.stop_reading = threading.Event()
        self.thread: threading.Thread | None = None
        self.frames_read = 0

    @handles(Begin)
    def _on_begin(self, message: Begin) -> None:
        self.thread = threading.Thread(target=self._read, args=(message.parser,), name="replay-reader",
                                       daemon=True)
        self.thread.start()

    def _read(self, parser: pykka.ActorRef[Any]) -> None:
        try:
            for batch in read_batches(self.path, self.batch_lines, self.partition):
                while not self.credits.acquire(timeout=0.5):
                    if self.stop_reading.is_set():
                        return
                if self.stop_reading.is_set():
                    return
                parser.tell(RawFrames(0, tuple((None, line) for line in batch)))
                self.frames_read += len(batch)
            parser.tell(EndOfStream(self.frames_read))
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
