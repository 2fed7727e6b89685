"""Fault injection for tests of supervision: crash or hang an actor on purpose.

Off unless the environment variable ``L2REC_FAULTS`` is set. Syntax: comma-separated
``actor:kind[=n][@times]``, where actor is connection, parser, features or writer and kind is
``crash_on_start``, ``crash_after=n`` (the n-th data message raises) or ``hang_after=n`` (the n-th data
message blocks its actor forever). ``@times`` limits how many process incarnations trigger it; the count
lives in files under ``L2REC_FAULTS_STATE`` (a directory), so that "crash once, then recover" is testable.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path


class InjectedFault(RuntimeError):
    """Raised by an injected crash; never raised in production (no L2REC_FAULTS)."""


@dataclass(slots=True)
class ActorFault:
    actor: str
    kind: str
    n: int
    times: int | None
    state_dir: str | None
    seen: int = 0
    armed: bool = True

    def _claim(self) -> bool:
        """Whether this incarnation may trigger (counts triggers across restarts when @times is set)."""
        if self.times is None or self.state_dir is None:
            return True
        counter = Path(self.state_dir) / f"{self.actor}.{self.kind}"
        fired = int(counter.read_text()) if counter.exists() else 0
        if fired >= self.times:
            return False
        counter.write_text(str(fired + 1))
        return True

    def on_start(self) -> None:
        if self.kind == "crash_on_start" and self._claim():
            raise InjectedFault(f"injected crash in {self.actor}.on_start")

    def on_message(self) -> None:
        if not self.armed:
            return
        self.seen += 1
        if self.seen < self.n or self.kind == "crash_on_start":
            return
        self.armed = False
        if not self._claim():
            return
        if self.kind == "crash_after":
            raise InjectedFault(f"injected crash in {self.actor} after {self.n} messages")
        if self.kind == "hang_after":
            threading.Event().wait()  # blocks this actor's thread for good: only heartbeats can tell


class Faults:
    def __init__(self, faults: dict[str, ActorFault]) -> None:
        self.faults = faults

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Faults:
        env = os.environ if environ is None else environ
        spec = env.get("L2REC_FAULTS", "").strip()
        state = env.get("L2REC_FAULTS_STATE")
        faults: dict[str, ActorFault] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            actor, _, rest = item.partition(":")
            rest, _, times = rest.partition("@")
            kind, _, n = rest.partition("=")
            faults[actor] = ActorFault(actor, kind, int(n or 1), int(times) if times else None, state)
        return cls(faults)

    def for_actor(self, actor: str) -> ActorFault | None:
        return self.faults.get(actor)
