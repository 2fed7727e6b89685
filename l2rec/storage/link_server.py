"""The writer's half of the shard -> writer link: accepts shard connections, reads waiting batches as
groups, and holds one in-flight permit per batch until it is committed.

The shard's half (bounded, acknowledged, resent after a writer restart) is :mod:`l2rec.storage.link`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener, wait

from l2rec.messages.writer import RowBatch
from l2rec.storage.link import decode

log = logging.getLogger("actors.processes")

MAX_GROUP_BATCHES = 64


class LinkServer:
    """A Unix-socket listener with an accept thread; one connection per shard incarnation.

    ``inflight`` bounds the batches read but not yet committed: while the database is slow the server
    reads nothing more, so the shards' bounded links fill up and their backpressure policy takes over.
    """

    def __init__(self, address: str, inflight: threading.Semaphore) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)  # left by a killed predecessor
        self.listener = Listener(address, family="AF_UNIX", backlog=64)
        self.inflight = inflight
        self.conns: list[Connection] = []
        self._accepted: list[Connection] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept_loop, name="writer-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._accepted.append(conn)

    def has_links(self) -> bool:
        """Any shard connected (taking in the ones accepted since the last call)."""
        with self._lock:
            self.conns += self._accepted
            self._accepted.clear()
        return bool(self.conns)

    def read_group(self, timeout_s: float,
                   writer_alive: Callable[[], bool]) -> list[tuple[RowBatch, Connection]]:
        """Every batch already waiting (up to MAX_GROUP_BATCHES), each with the connection to acknowledge
        it on, so the writer can commit them in one transaction (group commit). Each batch takes an
        in-flight permit; the caller releases it after the commit. Raises ``WriterGone`` when the writer
        died while this waited for a permit."""
        group: list[tuple[RowBatch, Connection]] = []
        ready: list[Connection] = wait(self.conns, timeout=timeout_s) if self.conns else []  # type: ignore[assignment]  # wait() returns the objects it was given
        inflight = self.inflight
        for conn in ready:
            while len(group) < MAX_GROUP_BATCHES:
                if not group:
                    while not inflight.acquire(timeout=0.5):
                        if not writer_alive():
                            raise WriterGone
                elif not inflight.acquire(blocking=False):
                    break
                try:
                    group.append((decode(conn.recv_bytes()), conn))
                except (EOFError, OSError):
                    inflight.release()
                    self.conns.remove(conn)
                    break
                except (ValueError, TypeError):  # not a batch: a broken peer; drop its connection
                    inflight.release()
                    log.error("undecodable batch; dropping that shard's link")
                    self.conns.remove(conn)
                    conn.close()
                    break
                if not conn.poll(0):
                    break
        return group

    def close(self) -> None:
        self.listener.close()


class WriterGone(Exception):
    """The writer actor died while the link server waited for it to free an in-flight permit."""
