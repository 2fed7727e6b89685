"""The root's handle on each supervised child process, one class per role.

A handle outlives incarnations: it holds the child's restart policy and what the root knows of the
current process (pipes, heartbeats, health). ``process_args`` builds the frozen spec the next
incarnation starts with.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.sharedctypes import Synchronized
from typing import Any, ClassVar

from l2rec.messages.health import Status
from l2rec.messages.writer import SessionRecord
from l2rec.processes.shard import run_shard
from l2rec.processes.writer import run_writer
from l2rec.runtime.config import RecorderConfig
from l2rec.storage.sink import last_recorded
from l2rec.supervision.policy import ChildPolicy
from l2rec.supervision.specs import ShardSpec, WriterSpec
from l2rec.supervision.states import Role


@dataclass(eq=False)
class Child(ABC):
    """A supervised child process and what the root knows of its current incarnation."""

    role: ClassVar[Role]

    name: str
    cfg: RecorderConfig
    policy: ChildPolicy
    expected_actors: tuple[str, ...]  # each must heartbeat, or the process is judged hung
    proc: SpawnProcess | None = None
    ctl: Connection | None = None
    started_mono: float = 0.0
    heartbeats: dict[str, float] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    hang_reason: str | None = None
    exit_handled: bool = True
    finished: bool = False  # a transient child that ended normally (a replay shard)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.proc.exitcode if self.proc is not None else None

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the current incarnation to end."""
        if self.proc is not None:
            self.proc.join(timeout=timeout_s)

    @abstractmethod
    def process_args(self, ctx: SpawnContext, ctl: Connection,
                     uplink: Connection) -> tuple[Callable[..., None], tuple[Any, ...]]:
        """The entry point and arguments of the next incarnation."""

    def reset(self) -> None:
        """A new incarnation starts: forget what the root knew of the last one."""
        self.ready.clear()
        self.heartbeats = {}
        self.hang_reason = None

    def on_status(self, msg: Status, now: float) -> None:
        """A status report arrived: the actor is alive."""
        self.heartbeats[msg.actor] = now

    def heard_from_all(self, now: float, timeout_s: float) -> bool:
        """Every expected actor reported within ``timeout_s``."""
        return all(now - self.heartbeats.get(a, 0.0) < timeout_s for a in self.expected_actors)

    def silent_actor(self, now: float, timeout_s: float) -> tuple[str, float] | None:
        """An expected actor that sent no heartbeat for ``timeout_s`` (and for how long), if any. A shard
        whose actors stopped and that reports it is still draining into the writer is not silent."""
        draining = self.heartbeats.get("drain", 0.0)
        for actor in self.expected_actors:
            last = max(self.heartbeats.get(actor, self.started_mono), draining)
            if now - last > timeout_s:
                return actor, now - last
        return None

    def healthy(self, now: float, timeout_s: float) -> bool:
        """Healthy enough for the restart policy to trust it again (and reset its backoff)."""
        return self.heard_from_all(now, timeout_s)

    def retry_after_s(self) -> float | None:
        """Seconds the exchange asked us to wait (HTTP 429), if the last incarnation was rate-limited."""
        return None

    def send_stop(self) -> None:
        """Ask the running incarnation to stop in order (it drains and flushes first)."""
        if self.ctl is not None and self.running:
            with contextlib.suppress(OSError):
                self.ctl.send("stop")


@dataclass(eq=False)
class WriterChild(Child):
    """The writer process: the only database connection."""

    role: ClassVar[Role] = Role.WRITER

    address: str = ""

    def process_args(self, ctx: SpawnContext, ctl: Connection,
                     uplink: Connection) -> tuple[Callable[..., None], tuple[Any, ...]]:
        return run_writer, (WriterSpec(self.cfg, self.address), ctl, uplink)


@dataclass(eq=False)
class ShardChild(Child):
    """A shard process: one connection (or one part of a replay file) and its actors."""

    role: ClassVar[Role] = Role.SHARD

    shard_id: int = 0
    shard_count: int = 1
    topics: tuple[str, ...] = ()
    writer_address: str = ""
    synced: bool = False  # every book of the shard in sync, by its book actor's last report
    subscribed: bool = False  # connected, and every topic in sync or refused (an embedding host's start())
    retry_after: Synchronized[float] | None = None
    publish: Synchronized[int] | None = None  # an embedding host's "send me the rows" switch (root-wide)
    refused: frozenset[str] = frozenset()  # topics Bybit refused, by the connection's last report
    connected: bool = False  # by the connection's last report
    not_synced: frozenset[str] = frozenset()  # topics not in sync, by the book actor's last report
    # The websocket session the last incarnation had open (its connection's last report), and how that
    # incarnation ended: the next one closes the session in l2_sessions, which the dead one could not.
    open_session: SessionRecord | None = None
    ended: tuple[str, int] | None = None  # (reason, when in ns)

    def process_args(self, ctx: SpawnContext, ctl: Connection,
                     uplink: Connection) -> tuple[Callable[..., None], tuple[Any, ...]]:
        self.retry_after = ctx.Value("d", 0.0, lock=False)
        # One index seek per topic, read-only, beside the writer (WAL: readers never wait for it).
        resume = last_recorded(self.cfg, self.topics) if self.cfg.replay is None else ()
        closing = None
        if self.open_session is not None and self.ended is not None:
            s, (reason, ended_ns) = self.open_session, self.ended
            closing = SessionRecord(s.shard_id, s.session_id, s.url, s.topics, s.connected_ns, ended_ns, reason,
                                    False)
        self.open_session = self.ended = None
        spec = ShardSpec(self.cfg, self.shard_id, self.topics, self.writer_address, self.policy.restarts,
                         (self.shard_id, self.shard_count), resume, closing)
        return run_shard, (spec, ctl, uplink, self.retry_after, self.publish)

    def reset(self) -> None:
        super().reset()
        self.synced = False
        self.subscribed = False
        self.connected = False
        self.not_synced = frozenset(self.topics)

    def on_status(self, msg: Status, now: float) -> None:
        super().on_status(msg, now)
        if msg.actor == "connection":
            s = msg.stats
            sid, connected_ns, url, topics = s.get("session"), s.get("connected_ns"), s.get("url"), s.get("topics")
            if s.get("connected") and isinstance(sid, int) and isinstance(connected_ns, int):
                self.open_session = SessionRecord(self.shard_id, sid, str(url), int(topics) if isinstance(
                    topics, int) else len(self.topics), connected_ns, None, None, None)
            else:
                self.open_session = None
            self.connected = bool(s.get("connected"))
            refused = s.get("topics_refused")
            self.refused = frozenset(refused) if isinstance(refused, list) else frozenset()
        elif msg.actor == "features":
            topics = msg.stats.get("topics")
            self.synced = isinstance(topics, dict) and len(topics) >= len(self.topics) and all(
                t.get("synced") for t in topics.values())
            self.not_synced = frozenset(name for name, t in topics.items() if not t.get("synced")) if isinstance(
                topics, dict) and len(topics) >= len(self.topics) else frozenset(self.topics)
        # Subscribed: connected, and every topic has had its snapshot or was refused (it never will have one).
        self.subscribed = self.connected and self.not_synced <= self.refused

    def healthy(self, now: float, timeout_s: float) -> bool:
        return self.heard_from_all(now, timeout_s) and self.synced

    def retry_after_s(self) -> float | None:
        return float(self.retry_after.value) or None if self.retry_after is not None else None
