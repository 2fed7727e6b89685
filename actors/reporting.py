"""Periodic status reports from actors to the root's HealthActor (up the process's uplink pipe)."""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from messages.health import Status

REPORT_INTERVAL_NS = 1_000_000_000


class Reporter:
    """Sends an actor's status at most once per interval (the uplink drops it if the root is gone)."""

    def __init__(self, status_q: Any, role: str, actor: str, shard_id: int | None) -> None:
        self.q = status_q
        self.role = role
        self.actor = actor
        self.shard_id = shard_id
        self.pid = os.getpid()
        self.next_ns = 0

    def maybe(self, now_ns: int, stats: dict[str, object], force: bool = False) -> None:
        if self.q is None or (not force and now_ns < self.next_ns):
            return
        self.next_ns = now_ns + REPORT_INTERVAL_NS
        # The process's peak RSS rides along: the final dump still shows it after the process exited.
        stats["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.q.put_nowait(Status(self.role, self.actor, self.shard_id, self.pid, time.time_ns(), stats))
