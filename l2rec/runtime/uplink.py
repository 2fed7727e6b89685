"""Child -> root channel for log records and status reports: one pipe per child process incarnation.

A process killed with SIGKILL cannot wedge anyone else's channel (a shared ``multiprocessing.Queue``
would keep its lock taken forever); the root sees EOF on that pipe and drops it.
"""

from __future__ import annotations

import threading
from multiprocessing.connection import Connection


class Uplink:
    """Thread-safe sender; has ``put``/``put_nowait`` so that ``logging.handlers.QueueHandler`` can use it
    (QueueHandler renders the message and traceback first, so records pickle)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.broken = False

    def put(self, obj: object, block: bool = True, timeout: float | None = None) -> None:
        if self.broken:
            return
        try:
            with self.lock:
                self.conn.send(obj)
        except (OSError, ValueError):
            self.broken = True  # the root is gone; the control pipe's EOF stops this process

    def put_nowait(self, obj: object) -> None:
        self.put(obj)
